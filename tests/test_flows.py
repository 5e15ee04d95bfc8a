"""Behaviours of the Winstory flows (sql/06_flows.sql) under the default ruleset ``winstory``.

Campaign registry, natural idempotency (SPEC section 4), approval, rounding of
formula results (SPEC section 2), agency client registration and onboarding,
and concurrent calls on one key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from conftest import called_behind_holder, database_state

import pyxp
from pyxp import XP
from pyxp.results import Award

CREATOR = "0x_creator"
AGENCY = "0x_agency"
OTHER_AGENCY = "0x_other_agency"
MODERATOR = "0x_moderator"
COMPLETER = "0x_completer"
CLIENT = "0x_client"
EMAIL = "client@example.com"
ADDRESS = "0x52908400098527886e0f7030069857d2e4169ee7"  # a 0x + 40 hex wallet, lower case
ADDRESS_CHECKSUM = "0x52908400098527886E0F7030069857D2E4169EE7"


def assert_audit_clean(db: psycopg.Connection[Any]) -> None:
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def registry(db: psycopg.Connection[Any], campaign_id: str) -> tuple[str, str] | None:
    row = db.execute("SELECT campaign_type, creator_wallet FROM pyxp.campaigns WHERE campaign_id = %s",
                     (campaign_id,)).fetchone()
    return None if row is None else (row[0], row[1])


def ledger(db: psycopg.Connection[Any], transaction_type: str | None = None) -> list[tuple[Any, ...]]:
    """(user_wallet, transaction_type, xp_amount) of the ledger rows, oldest first."""
    return db.execute("""SELECT user_wallet, transaction_type, xp_amount FROM pyxp.xp_transactions
                          WHERE %(type)s::text IS NULL OR transaction_type = %(type)s ORDER BY id""",
                      {"type": transaction_type}).fetchall()


def registrations(db: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute("SELECT * FROM pyxp.agency_b2c_clients ORDER BY id").fetchall()


# ============================================================================ campaign registry
# SPEC section 4, "Campaign registry".

def test_creation_records_campaign_type_and_creator(xp: XP, db: psycopg.Connection[Any]) -> None:
    xp.award_campaign_creation(CREATOR, "camp_b2c", "B2C")
    xp.award_campaign_creation(AGENCY, "camp_agency", "AGENCY_B2C")
    assert registry(db, "camp_b2c") == ("B2C", CREATOR)
    assert registry(db, "camp_agency") == ("AGENCY_B2C", AGENCY)


def test_registry_keeps_the_normalised_creator_wallet(xp: XP, db: psycopg.Connection[Any]) -> None:
    """A checksum-cased 0x address and its lower-case form are one user (SPEC section 1)."""
    xp.award_campaign_creation(f"  {ADDRESS_CHECKSUM} ", "camp_1", "B2C")
    assert registry(db, "camp_1") == ("B2C", ADDRESS)
    assert xp.balance(ADDRESS).total_xp == 1000


@pytest.mark.parametrize(("campaign_type", "completion_action", "mint"), [
    ("B2C", "Completion_Submit_B2C_Free", None),
    ("AGENCY_B2C", "Completion_Submit_Agency_Free", None),
    ("INDIVIDUAL", "Completion_Submit_Individual", 2000),
])
def test_later_calls_may_omit_the_campaign_type(xp: XP, campaign_type: str, completion_action: str,
                                                mint: int | None) -> None:
    xp.award_campaign_creation(CREATOR, "camp_1", campaign_type)
    vote = xp.award_moderation_vote(MODERATOR, "camp_1", "VALID")
    submission = xp.award_completion(COMPLETER, "camp_1", "comp_1", mint_value_winc=mint)
    completion_vote = xp.award_completion_moderation(MODERATOR, "camp_1", "comp_1", vote_decision="REFUSE")
    assert vote.transaction_types == ["MODERATION_VALIDATED_BY_MODERATOR"]
    assert submission.transaction_types == [completion_action]
    assert completion_vote.transaction_types == ["Completion_Moderation_Refused"]


def test_later_calls_may_pass_the_registry_type(xp: XP) -> None:
    xp.award_campaign_creation(CREATOR, "camp_1", "AGENCY_B2C")
    submission = xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="AGENCY_B2C",
                                     is_paid=True, price_completion=50)
    assert (submission.transaction_types, submission.xp) == (["Completion_Submit_Agency_Paid"], 150)


MISMATCHED_CALLS: list[Any] = [
    pytest.param(lambda xp: xp.award_moderation_vote(MODERATOR, "camp_1", "VALID",
                                                     campaign_type="INDIVIDUAL"),
                 id="campaign-vote"),
    pytest.param(lambda xp: xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="AGENCY_B2C"),
                 id="completion"),
    pytest.param(lambda xp: xp.award_completion_moderation(MODERATOR, "camp_1", "comp_1",
                                                           vote_decision="VALID",
                                                           campaign_type="FOR_INDIVIDUAL"),
                 id="completion-vote"),
]


@pytest.mark.parametrize("call", MISMATCHED_CALLS)
def test_a_type_other_than_the_registry_one_is_refused(xp: XP, unchanged: Any,
                                                       call: Callable[[XP], Award]) -> None:
    xp.award_campaign_creation(CREATOR, "camp_1", "B2C")
    with unchanged(), pytest.raises(pyxp.errors.CampaignMismatch):
        call(xp)


UNTYPED_CALLS: list[Any] = [
    pytest.param(lambda xp: xp.award_moderation_vote(MODERATOR, "camp_unknown", "VALID"), id="campaign-vote"),
    pytest.param(lambda xp: xp.award_completion(COMPLETER, "camp_unknown", "comp_1"), id="completion"),
    pytest.param(lambda xp: xp.award_completion(COMPLETER, "camp_unknown", "comp_1", is_validated=True),
                 id="completion-validation"),
    pytest.param(lambda xp: xp.award_completion_moderation(MODERATOR, "camp_unknown", "comp_1",
                                                           vote_decision="VALID"), id="completion-vote"),
]


@pytest.mark.parametrize("call", UNTYPED_CALLS)
def test_an_unknown_campaign_without_type_is_refused(xp: XP, unchanged: Any,
                                                     call: Callable[[XP], Award]) -> None:
    with unchanged(), pytest.raises(pyxp.errors.UnknownCampaign):
        call(xp)


def test_an_unknown_campaign_with_its_type_is_accepted_and_its_type_recorded(
        xp: XP, db: psycopg.Connection[Any]) -> None:
    """SPEC 4: campaigns created before pyxp: the first call naming one with a type records the type
    (creator unknown), so later votes and outcomes may omit it; a later type mismatch is PX011."""
    assert xp.award_moderation_vote(MODERATOR, "camp_unknown", "REFUSE", campaign_type="B2C").xp == -1
    assert registry(db, "camp_unknown") == ("B2C", None)
    with pytest.raises(pyxp.CampaignMismatch):
        xp.award_completion(COMPLETER, "camp_unknown", "comp_1", campaign_type="AGENCY_B2C")
    submission = xp.award_completion(COMPLETER, "camp_unknown", "comp_1")
    assert submission.transaction_types == ["Completion_Submit_B2C_Free"]
    assert xp.award_completion_moderation(MODERATOR, "camp_unknown", "comp_1", "VALID").xp == 2
    assert xp.award_completion(COMPLETER, "camp_unknown", "comp_1", is_validated=True).xp == 100


def test_a_submission_records_an_unknown_campaign_for_later_votes(xp: XP, db: psycopg.Connection[Any]) -> None:
    """Issue 9 item 5: a submission naming a type registers the campaign; votes then need no type."""
    xp.award_completion(COMPLETER, "camp_s", "comp_s", campaign_type="FOR_AGENCY_B2C")
    assert registry(db, "camp_s") == ("AGENCY_B2C", None)
    assert xp.award_completion_moderation(MODERATOR, "camp_s", "comp_s", "VALID").xp == 2
    # The creation, awarded later, fills in the creator and keeps the type.
    assert xp.award_campaign_creation(CREATOR, "camp_s", "AGENCY_B2C").transaction_types == ["AGENCY_B2C_MINT"]
    assert registry(db, "camp_s") == ("AGENCY_B2C", CREATOR)


def test_a_creation_with_another_type_than_recorded_is_refused(xp: XP, db: psycopg.Connection[Any],
                                                               unchanged: Any) -> None:
    xp.award_moderation_vote(MODERATOR, "camp_r", "VALID", campaign_type="B2C")
    with unchanged(), pytest.raises(pyxp.CampaignMismatch):
        xp.award_campaign_creation(CREATOR, "camp_r", "INDIVIDUAL")


@pytest.mark.parametrize(("spelling", "canonical", "mint_action"), [
    ("FOR_B2C", "B2C", "B2C_MINT"),
    ("b2c", "B2C", "B2C_MINT"),
    (" for_b2c ", "B2C", "B2C_MINT"),
    ("FOR_AGENCY_B2C", "AGENCY_B2C", "AGENCY_B2C_MINT"),
    ("agency_b2c", "AGENCY_B2C", "AGENCY_B2C_MINT"),
    ("For_Individual", "INDIVIDUAL", None),
    ("individual", "INDIVIDUAL", None),
])
def test_campaign_type_spellings_are_accepted(xp: XP, db: psycopg.Connection[Any], spelling: str,
                                              canonical: str, mint_action: str | None) -> None:
    """SPEC section 1: case-insensitive, and the platform's creator_type spelling FOR_*."""
    creation = xp.award_campaign_creation(CREATOR, "camp_1", spelling)
    assert creation.transaction_types == ([mint_action] if mint_action else [])
    assert registry(db, "camp_1") == (canonical, CREATOR)
    # The same spelling (or the canonical one) on a later call is no mismatch.
    assert xp.award_moderation_vote(MODERATOR, "camp_1", "VALID", campaign_type=spelling).xp == 2
    assert xp.award_moderation_vote("0x_moderator_2", "camp_1", "VALID", campaign_type=canonical).xp == 2



def test_campaign_types_and_votes_are_trimmed_of_any_whitespace(xp: XP, db: psycopg.Connection[Any]) -> None:
    """0048 (a hostile test, helper-76): btrim took spaces only: B2C with a tab or a no-break space was
    PX003 and VALID with a newline PX008, where wallets and ids are trimmed of whitespace of any kind."""
    xp.award_campaign_creation(CREATOR, "camp_1", "\u00a0B2C\t")
    assert registry(db, "camp_1") == ("B2C", CREATOR)
    assert xp.award_moderation_vote(MODERATOR, "camp_1", "VALID\n", campaign_type="b2c\u3000").xp == 2
    assert xp.award_moderation_vote("0x_moderator_2", "camp_1", "\u2003refuse").transaction_types == [
        "MODERATION_REFUSED_BY_MODERATOR"]

def test_individual_creation_awards_nothing_but_is_recorded(xp: XP, db: psycopg.Connection[Any]) -> None:
    """SPEC section 2: the seeds give no XP for an INDIVIDUAL creation under winstory."""
    before = database_state(db)
    creation = xp.award_campaign_creation(CREATOR, "camp_ind", "INDIVIDUAL", mint_value=5000,
                                          winstory_creates_video=True, no_rewards=True)
    assert creation.rows == ()
    assert registry(db, "camp_ind") == ("INDIVIDUAL", CREATOR)
    assert ledger(db) == []
    assert xp.balance(CREATOR).total_xp == 0
    assert database_state(db) != before
    # The registry answers for the later calls.
    vote = xp.award_moderation_vote(MODERATOR, "camp_ind", "VALID")
    assert vote.transaction_types == ["MODERATION_VALIDATED_BY_MODERATOR"]
    approval = xp.award_campaign_approval("camp_ind")
    assert [(r.user_wallet, r.xp_amount) for r in approval.rows] == [(CREATOR, 100)]


def test_individual_creation_repeated_changes_nothing(xp: XP, db: psycopg.Connection[Any]) -> None:
    xp.award_campaign_creation(CREATOR, "camp_ind", "INDIVIDUAL")
    before = database_state(db)
    assert xp.award_campaign_creation(CREATOR, "camp_ind", "INDIVIDUAL").rows == ()
    assert database_state(db) == before


def test_individual_creation_by_another_creator_is_refused(xp: XP, db: psycopg.Connection[Any],
                                                           unchanged: Any) -> None:
    xp.award_campaign_creation(CREATOR, "camp_ind", "INDIVIDUAL")
    with unchanged(), pytest.raises(pyxp.errors.IdempotencyConflict):
        xp.award_campaign_creation("0x_someone_else", "camp_ind", "INDIVIDUAL")
    assert registry(db, "camp_ind") == ("INDIVIDUAL", CREATOR)


# ============================================================================ natural idempotency
# SPEC section 4: each event at most once per its natural key; the same call
# again replays (replayed = true, nothing written).

def _noop(xp: XP) -> None:
    pass


def _created_b2c(xp: XP) -> None:
    xp.award_campaign_creation(CREATOR, "camp_1", "B2C")


def _submitted(xp: XP) -> None:
    xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="B2C",
                        is_paid=True, price_completion=300)


def _registered(xp: XP) -> None:
    xp.award_campaign_creation(AGENCY, "camp_agency", "AGENCY_B2C")
    xp.register_agency_client(AGENCY, EMAIL, "camp_agency")


EVENTS: list[Any] = [
    pytest.param(_noop, lambda xp: xp.award_campaign_creation(CREATOR, "camp_1", "B2C", mint_value=1000,
                                                              winstory_creates_video=True, no_rewards=True),
                 id="campaign.created"),
    pytest.param(_created_b2c, lambda xp: xp.award_campaign_approval("camp_1"), id="campaign.approved"),
    pytest.param(_created_b2c, lambda xp: xp.award_moderation_vote(MODERATOR, "camp_1", "VALID"),
                 id="campaign.vote"),
    pytest.param(_noop, lambda xp: xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="B2C",
                                                       is_paid=True, price_completion=300),
                 id="completion.submitted"),
    pytest.param(_submitted, lambda xp: xp.award_completion(COMPLETER, "camp_1", "comp_1",
                                                            campaign_type="B2C", is_validated=True),
                 id="completion.validated"),
    pytest.param(_submitted, lambda xp: xp.award_completion(COMPLETER, "camp_1", "comp_1",
                                                            campaign_type="B2C", is_refused=True),
                 id="completion.refused"),
    pytest.param(_noop, lambda xp: xp.award_completion_moderation(MODERATOR, "camp_1", "comp_1",
                                                                  vote_decision="REFUSE",
                                                                  campaign_type="B2C"),
                 id="completion.vote"),
    pytest.param(_registered, lambda xp: xp.onboard_agency_client(EMAIL, CLIENT), id="client.onboarded"),
]


@pytest.mark.parametrize(("setup", "call"), EVENTS)
def test_a_repeated_call_replays_and_writes_nothing(xp: XP, db: psycopg.Connection[Any],
                                                    setup: Callable[[XP], None],
                                                    call: Callable[[XP], Award]) -> None:
    setup(xp)
    first = call(xp)
    assert first.rows and not any(row.replayed for row in first.rows)
    before = database_state(db)

    again = call(xp)

    assert database_state(db) == before
    assert again.replayed
    assert all(row.replayed for row in again.rows)
    # The original result: same rows, amounts and levels.
    assert [(r.transaction_id, r.user_wallet, r.transaction_type, r.xp_amount, r.total_xp,
             r.current_level, r.xp_to_next_level, r.previous_level) for r in again.rows] == \
           [(r.transaction_id, r.user_wallet, r.transaction_type, r.xp_amount, r.total_xp,
             r.current_level, r.xp_to_next_level, r.previous_level) for r in first.rows]
    assert_audit_clean(db)


def test_a_replayed_vote_does_not_count_as_another_moderation(xp: XP) -> None:
    _created_b2c(xp)
    xp.award_moderation_vote(MODERATOR, "camp_1", "VALID")
    xp.award_moderation_vote(MODERATOR, "camp_1", "VALID")
    xp.award_completion_moderation(MODERATOR, "camp_1", "comp_1", vote_decision="VALID")
    xp.award_completion_moderation(MODERATOR, "camp_1", "comp_1", vote_decision="VALID")
    balance = xp.balance(MODERATOR)
    assert (balance.total_xp, balance.total_moderations) == (4, 2)


def test_a_retry_omitting_the_registry_type_is_a_replay(xp: XP) -> None:
    _created_b2c(xp)
    first = xp.award_moderation_vote(MODERATOR, "camp_1", "VALID", campaign_type="B2C")
    again = xp.award_moderation_vote(MODERATOR, "camp_1", "valid")
    assert again.replayed
    assert [r.transaction_id for r in again.rows] == [r.transaction_id for r in first.rows]


def test_a_retry_with_another_wallet_spelling_of_the_same_address_is_a_replay(xp: XP) -> None:
    first = xp.award_completion(ADDRESS, "camp_1", "comp_1", campaign_type="B2C")
    again = xp.award_completion(ADDRESS_CHECKSUM, "camp_1", "comp_1", campaign_type="B2C")
    assert again.replayed
    assert [r.transaction_id for r in again.rows] == [r.transaction_id for r in first.rows]


@pytest.mark.parametrize("same_price", [300.0, Decimal("300.00"), Decimal("3E+2")])
def test_a_retry_with_the_same_price_written_otherwise_is_a_replay(xp: XP, db: psycopg.Connection[Any],
                                                                   same_price: Any) -> None:
    """A service retrying with 300.0 or "300.00" asks for the same thing as 300."""
    first = xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="B2C", is_paid=True,
                                price_completion=300)
    before = database_state(db)
    again = xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="B2C", is_paid=True,
                                price_completion=same_price)
    assert again.replayed
    assert [r.transaction_id for r in again.rows] == [r.transaction_id for r in first.rows]
    assert database_state(db) == before


def test_an_approval_retry_naming_the_registry_creator_is_a_replay(xp: XP) -> None:
    _created_b2c(xp)
    first = xp.award_campaign_approval("camp_1")
    again = xp.award_campaign_approval("camp_1", creator_wallet=CREATOR)
    assert again.replayed
    assert [r.transaction_id for r in again.rows] == [r.transaction_id for r in first.rows]


# Same natural key, other inputs: PX010, nothing written.
CONFLICTS: list[Any] = [
    pytest.param(_noop,
                 lambda xp: xp.award_campaign_creation(CREATOR, "camp_1", "B2C"),
                 lambda xp: xp.award_campaign_creation(CREATOR, "camp_1", "B2C", winstory_creates_video=True),
                 id="creation-other-option"),
    pytest.param(_noop,
                 lambda xp: xp.award_campaign_creation(CREATOR, "camp_1", "B2C"),
                 lambda xp: xp.award_campaign_creation(CREATOR, "camp_1", "AGENCY_B2C"),
                 id="creation-other-type"),
    pytest.param(_noop,
                 lambda xp: xp.award_campaign_creation(CREATOR, "camp_1", "B2C", mint_value=1000),
                 lambda xp: xp.award_campaign_creation(CREATOR, "camp_1", "B2C", mint_value=2000),
                 id="creation-other-mint-value"),
    pytest.param(_noop,
                 lambda xp: xp.award_campaign_creation(CREATOR, "camp_1", "B2C"),
                 lambda xp: xp.award_campaign_creation("0x_other_creator", "camp_1", "B2C"),
                 id="creation-other-wallet"),
    pytest.param(_noop,
                 lambda xp: xp.award_campaign_approval("camp_legacy", creator_wallet=CREATOR),
                 lambda xp: xp.award_campaign_approval("camp_legacy", creator_wallet="0x_other_creator"),
                 id="approval-of-unregistered-campaign-other-wallet"),
    pytest.param(_created_b2c,
                 lambda xp: xp.award_moderation_vote(MODERATOR, "camp_1", "VALID"),
                 lambda xp: xp.award_moderation_vote(MODERATOR, "camp_1", "REFUSE"),
                 id="campaign-vote-other-decision"),
    pytest.param(_noop,
                 lambda xp: xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="B2C",
                                                is_paid=True, price_completion=300),
                 lambda xp: xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="B2C",
                                                is_paid=True, price_completion=500),
                 id="submission-other-price"),
    pytest.param(_noop,
                 lambda xp: xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="B2C"),
                 lambda xp: xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="B2C",
                                                is_paid=True, price_completion=300),
                 id="submission-free-then-paid"),
    pytest.param(_noop,
                 lambda xp: xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="B2C"),
                 lambda xp: xp.award_completion("0x_other_completer", "camp_1", "comp_1",
                                                campaign_type="B2C"),
                 id="submission-other-wallet"),
    pytest.param(_noop,
                 lambda xp: xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="B2C"),
                 lambda xp: xp.award_completion(COMPLETER, "camp_2", "comp_1", campaign_type="B2C"),
                 id="submission-other-campaign"),
    pytest.param(_noop,
                 lambda xp: xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="INDIVIDUAL",
                                                mint_value_winc=2000),
                 lambda xp: xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="INDIVIDUAL",
                                                mint_value_winc=3000),
                 id="submission-other-mint-value"),
    pytest.param(_submitted,
                 lambda xp: xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="B2C",
                                                is_validated=True),
                 lambda xp: xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="B2C",
                                                is_refused=True),
                 id="validated-then-refused"),
    pytest.param(_submitted,
                 lambda xp: xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="B2C",
                                                is_refused=True),
                 lambda xp: xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="B2C",
                                                is_validated=True),
                 id="refused-then-validated"),
    pytest.param(_noop,
                 lambda xp: xp.award_completion_moderation(MODERATOR, "camp_1", "comp_1",
                                                           vote_decision="VALID", campaign_type="B2C"),
                 lambda xp: xp.award_completion_moderation(MODERATOR, "camp_1", "comp_1",
                                                           vote_decision="REFUSE", campaign_type="B2C"),
                 id="completion-vote-other-decision"),
    pytest.param(_registered,
                 lambda xp: xp.onboard_agency_client(EMAIL, CLIENT),
                 lambda xp: xp.onboard_agency_client(EMAIL, "0x_other_client"),
                 id="onboarding-other-wallet"),
]


@pytest.mark.parametrize(("setup", "first", "conflicting"), CONFLICTS)
def test_the_same_key_with_other_inputs_is_refused(xp: XP, db: psycopg.Connection[Any], unchanged: Any,
                                                   setup: Callable[[XP], None], first: Callable[[XP], Award],
                                                   conflicting: Callable[[XP], Award]) -> None:
    setup(xp)
    first(xp)
    with unchanged(), pytest.raises(pyxp.errors.IdempotencyConflict):
        conflicting(xp)
    # The first call still replays afterwards.
    assert first(xp).replayed
    assert_audit_clean(db)


def test_a_completion_outcome_is_refused_for_both_even_before_submission(xp: XP, unchanged: Any) -> None:
    """Only one of validated / refused ever, whatever the order of arrival."""
    xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="B2C", is_refused=True)
    with unchanged(), pytest.raises(pyxp.errors.IdempotencyConflict):
        xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="B2C", is_validated=True)
    submission = xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="B2C")
    assert submission.xp == 100
    assert xp.balance(COMPLETER).total_xp == 50


def test_a_moderator_votes_once_per_campaign_and_once_per_completion(xp: XP,
                                                                    db: psycopg.Connection[Any]) -> None:
    _created_b2c(xp)
    xp.award_campaign_creation(CREATOR, "camp_2", "B2C")
    xp.award_moderation_vote(MODERATOR, "camp_1", "VALID")
    xp.award_moderation_vote(MODERATOR, "camp_2", "REFUSE")                       # another campaign
    xp.award_completion_moderation(MODERATOR, "camp_1", "comp_1", vote_decision="VALID")  # a completion of it
    xp.award_completion_moderation(MODERATOR, "camp_1", "comp_2", vote_decision="REFUSE")
    xp.award_moderation_vote("0x_moderator_2", "camp_1", "VALID")                 # another moderator
    assert ledger(db)[2:] == [  # after the two B2C_MINT rows
        (MODERATOR, "MODERATION_VALIDATED_BY_MODERATOR", 2),
        (MODERATOR, "MODERATION_REFUSED_BY_MODERATOR", -1),
        (MODERATOR, "Completion_Moderation_Validated", 2),
        (MODERATOR, "Completion_Moderation_Refused", -1),
        ("0x_moderator_2", "MODERATION_VALIDATED_BY_MODERATOR", 2),
    ]


@pytest.mark.parametrize("second_decision", ["REFUSE", "refuse"])
def test_a_second_campaign_vote_with_another_decision_is_refused(xp: XP, unchanged: Any,
                                                                 second_decision: str) -> None:
    _created_b2c(xp)
    xp.award_moderation_vote(MODERATOR, "camp_1", "VALID")
    with unchanged(), pytest.raises(pyxp.errors.IdempotencyConflict):
        xp.award_moderation_vote(MODERATOR, "camp_1", second_decision)


def test_a_second_completion_vote_with_another_decision_is_refused(xp: XP, unchanged: Any) -> None:
    _created_b2c(xp)
    xp.award_completion_moderation(MODERATOR, "camp_1", "comp_1", vote_decision="REFUSE")
    with unchanged(), pytest.raises(pyxp.errors.IdempotencyConflict):
        xp.award_completion_moderation(MODERATOR, "camp_1", "comp_1", vote_decision="VALID")


def test_total_moderations_counts_campaign_and_completion_votes(xp: XP) -> None:
    """Seed: each vote adds one to total_moderations, whatever its decision."""
    _created_b2c(xp)
    xp.award_moderation_vote(MODERATOR, "camp_1", "VALID")
    xp.award_completion_moderation(MODERATOR, "camp_1", "comp_1", vote_decision="VALID")
    xp.award_completion_moderation(MODERATOR, "camp_1", "comp_2", vote_decision="REFUSE")
    xp.award_completion(COMPLETER, "camp_1", "comp_1")
    moderator = xp.balance(MODERATOR)
    assert (moderator.total_xp, moderator.total_moderations) == (3, 3)
    assert xp.balance(COMPLETER).total_moderations == 0
    assert xp.balance(CREATOR).total_moderations == 0


# ============================================================================ approval

def test_approval_goes_to_the_registry_creator(xp: XP, db: psycopg.Connection[Any]) -> None:
    _created_b2c(xp)
    approval = xp.award_campaign_approval("camp_1")
    assert [(r.user_wallet, r.transaction_type, r.xp_amount, r.total_xp) for r in approval.rows] == \
           [(CREATOR, "CAMPAIGN_APPROVED", 100, 1100)]
    assert_audit_clean(db)


def test_approval_accepts_the_registry_creator_in_another_spelling(xp: XP) -> None:
    xp.award_campaign_creation(ADDRESS, "camp_1", "B2C")
    approval = xp.award_campaign_approval("camp_1", creator_wallet=f" {ADDRESS_CHECKSUM}")
    assert [(r.user_wallet, r.xp_amount) for r in approval.rows] == [(ADDRESS, 100)]


def test_approval_for_another_creator_than_the_registry_one_is_refused(xp: XP, unchanged: Any) -> None:
    _created_b2c(xp)
    with unchanged(), pytest.raises(pyxp.errors.CampaignMismatch):
        xp.award_campaign_approval("camp_1", creator_wallet="0x_impostor")


def test_approval_of_an_unknown_campaign_without_creator_is_refused(xp: XP, unchanged: Any) -> None:
    with unchanged(), pytest.raises(pyxp.errors.UnknownCampaign):
        xp.award_campaign_approval("camp_unknown")


def test_approval_of_an_unknown_campaign_goes_to_the_creator_passed(xp: XP) -> None:
    approval = xp.award_campaign_approval("camp_legacy", creator_wallet=CREATOR)
    assert [(r.user_wallet, r.transaction_type, r.xp_amount) for r in approval.rows] == \
           [(CREATOR, "CAMPAIGN_APPROVED", 100)]


# ============================================================================ rounding
# SPEC section 2: a formula result is rounded to the nearest integer, halves
# away from zero.

@pytest.mark.parametrize(("price", "expected"), [
    (Decimal("0.5"), 101),     # 100.5
    (0.5, 101),                # a Python float works too
    (Decimal("2.4"), 102),     # 102.4
    (Decimal("2.5"), 103),     # 102.5
    (Decimal("2.6"), 103),
    (Decimal("0.49"), 100),
    (Decimal("1.5"), 102),     # 101.5: away from zero, not to even
])
def test_a_fractional_price_is_rounded_half_away_from_zero(xp: XP, price: Any, expected: int) -> None:
    award = xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="B2C",
                                is_paid=True, price_completion=price)
    assert award.xp == expected


@pytest.mark.parametrize(("mint", "expected"), [
    (4999, -2500),             # -2499.5 (SPEC: 4999 / 2 -> 2500)
    (1, -1),                   # -0.5
    (3, -2),                   # -1.5
    (5, -3),                   # -2.5: away from zero, not to even
    (5000, -2500),
    (Decimal("2.2"), -1),      # -1.1
])
def test_an_odd_mint_value_refusal_is_rounded_half_away_from_zero(xp: XP, mint: Any, expected: int) -> None:
    award = xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="INDIVIDUAL",
                                is_refused=True, mint_value_winc=mint)
    assert award.transaction_types == ["Completion_Refused_Individual"]
    assert award.xp == expected


@pytest.mark.parametrize(("mint", "expected"), [(Decimal("2000.5"), 2001), (Decimal("2000.49"), 2000)])
def test_a_fractional_mint_value_submission_is_rounded(xp: XP, mint: Decimal, expected: int) -> None:
    award = xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="INDIVIDUAL",
                                mint_value_winc=mint)
    assert award.xp == expected


def test_the_ledger_keeps_the_formula_inputs(xp: XP, db: psycopg.Connection[Any]) -> None:
    """SPEC section 5: metadata holds the formula inputs, so an auditor can redo the sum."""
    xp.award_completion(COMPLETER, "camp_1", "comp_1", campaign_type="B2C", is_paid=True,
                        price_completion=Decimal("2.5"))
    row = db.execute("""SELECT campaign_id, subject, (metadata ->> 'PRICE_COMPLETION')::numeric
                          FROM pyxp.xp_transactions""").fetchone()
    assert row == ("camp_1", "comp_1", Decimal("2.5"))


# ============================================================================ agency clients
# Seed: agency-client 'register' then 'onboard'; SPEC section 5.

def test_register_creates_a_pending_registration(xp: XP, db: psycopg.Connection[Any]) -> None:
    _registered(xp)
    (row,) = registrations(db)
    assert (row["agency_wallet"], row["client_email"], row["campaign_id"]) == (AGENCY, EMAIL, "camp_agency")
    assert (row["xp_granted"], row["client_wallet"], row["onboarded_at"]) == (False, None, None)
    assert ledger(db, "B2C_CLIENT_ONBOARDED") == []


def test_register_returns_the_registration(xp: XP) -> None:
    xp.award_campaign_creation(AGENCY, "camp_agency", "AGENCY_B2C")
    registration = xp.register_agency_client(AGENCY, EMAIL, "camp_agency", company_name="Client Corp")
    assert (registration.agency_wallet, registration.client_email, registration.campaign_id,
            registration.company_name, registration.xp_granted) == \
           (AGENCY, EMAIL, "camp_agency", "Client Corp", False)


def test_register_on_a_campaign_unknown_to_pyxp_is_accepted(xp: XP, db: psycopg.Connection[Any]) -> None:
    xp.register_agency_client(AGENCY, EMAIL, "camp_created_before_pyxp")
    assert [r["campaign_id"] for r in registrations(db)] == ["camp_created_before_pyxp"]


def test_email_is_normalised_on_register_and_onboard(xp: XP, db: psycopg.Connection[Any]) -> None:
    xp.award_campaign_creation(AGENCY, "camp_agency", "AGENCY_B2C")
    registration = xp.register_agency_client(AGENCY, "  Client@Example.COM\t", "camp_agency")
    assert registration.client_email == EMAIL
    award = xp.onboard_agency_client(" CLIENT@example.com ", CLIENT)
    assert award.transaction_types == ["B2C_CLIENT_ONBOARDED"]
    assert [r["client_email"] for r in registrations(db)] == [EMAIL]
    assert registrations(db)[0]["xp_granted"] is True


def test_onboarding_awards_the_client_not_the_agency(xp: XP, db: psycopg.Connection[Any]) -> None:
    _registered(xp)
    award = xp.onboard_agency_client(EMAIL, CLIENT)
    assert [(r.user_wallet, r.transaction_type, r.xp_amount, r.total_xp) for r in award.rows] == \
           [(CLIENT, "B2C_CLIENT_ONBOARDED", 1000, 1000)]
    assert xp.balance(AGENCY).total_xp == 1000             # its AGENCY_B2C_MINT only
    metadata = db.execute("""SELECT metadata ->> 'agency_wallet', subject FROM pyxp.xp_transactions
                              WHERE transaction_type = 'B2C_CLIENT_ONBOARDED'""").fetchall()
    assert metadata == [(AGENCY, EMAIL)]
    assert_audit_clean(db)


def test_onboarding_marks_the_registration_granted(xp: XP, db: psycopg.Connection[Any]) -> None:
    _registered(xp)
    xp.onboard_agency_client(EMAIL, CLIENT)
    (row,) = registrations(db)
    assert (row["xp_granted"], row["client_wallet"]) == (True, CLIENT)
    assert row["onboarded_at"] is not None


def test_onboarding_grants_every_pending_registration_once(xp: XP, db: psycopg.Connection[Any]) -> None:
    """Several campaigns of one agency and another agency: one award, every row granted."""
    xp.award_campaign_creation(AGENCY, "camp_a1", "AGENCY_B2C")
    xp.award_campaign_creation(AGENCY, "camp_a2", "AGENCY_B2C")
    xp.award_campaign_creation(OTHER_AGENCY, "camp_b1", "AGENCY_B2C")
    xp.register_agency_client(AGENCY, EMAIL, "camp_a1")
    xp.register_agency_client(AGENCY, EMAIL, "camp_a2")
    xp.register_agency_client(OTHER_AGENCY, EMAIL, "camp_b1")
    xp.register_agency_client(OTHER_AGENCY, "someone.else@example.com", "camp_b1")

    award = xp.onboard_agency_client(EMAIL, CLIENT)

    assert award.xp == 1000
    assert ledger(db, "B2C_CLIENT_ONBOARDED") == [(CLIENT, "B2C_CLIENT_ONBOARDED", 1000)]
    rows = {(r["agency_wallet"], r["campaign_id"]): r
            for r in registrations(db) if r["client_email"] == EMAIL}
    assert len(rows) == 3
    for row in rows.values():
        assert (row["xp_granted"], row["client_wallet"]) == (True, CLIENT)
        assert row["onboarded_at"] is not None
    other = [r for r in registrations(db) if r["client_email"] != EMAIL]
    assert [(r["xp_granted"], r["client_wallet"]) for r in other] == [(False, None)]
    agency = db.execute("""SELECT metadata ->> 'agency_wallet' FROM pyxp.xp_transactions
                            WHERE transaction_type = 'B2C_CLIENT_ONBOARDED'""").fetchone()
    assert agency == (AGENCY,)
    assert xp.balance(CLIENT).total_xp == 1000


def test_onboarding_without_pending_registration_writes_nothing(xp: XP, unchanged: Any) -> None:
    with unchanged():
        award = xp.onboard_agency_client(EMAIL, CLIENT)
    assert award.rows == ()


def test_onboarding_another_email_than_the_registered_one_writes_nothing(xp: XP, unchanged: Any) -> None:
    _registered(xp)
    with unchanged():
        assert xp.onboard_agency_client("someone.else@example.com", CLIENT).rows == ()


def test_onboarding_with_the_agency_wallet_is_refused(xp: XP, unchanged: Any) -> None:
    _registered(xp)
    with unchanged(), pytest.raises(pyxp.errors.ClientIsAgency):
        xp.onboard_agency_client(EMAIL, AGENCY)


def test_onboarding_with_any_registering_agency_wallet_is_refused(xp: XP, unchanged: Any) -> None:
    """The same address in checksum case, and a second registering agency."""
    xp.register_agency_client(OTHER_AGENCY, EMAIL, "camp_b")
    xp.register_agency_client(ADDRESS, EMAIL, "camp_c")
    with unchanged(), pytest.raises(pyxp.errors.ClientIsAgency):
        xp.onboard_agency_client(EMAIL, ADDRESS_CHECKSUM)


def test_registering_the_same_client_again_changes_nothing(xp: XP, db: psycopg.Connection[Any]) -> None:
    xp.award_campaign_creation(AGENCY, "camp_agency", "AGENCY_B2C")
    first = xp.register_agency_client(AGENCY, EMAIL, "camp_agency", company_name="Client Corp")
    before = database_state(db)
    again = xp.register_agency_client(AGENCY, " Client@Example.com", "camp_agency",
                                      company_name="Client Corp")
    assert database_state(db) == before
    assert again == first


def test_register_on_a_known_campaign_that_is_not_agency_b2c_is_refused(xp: XP, unchanged: Any) -> None:
    xp.award_campaign_creation(AGENCY, "camp_b2c", "B2C")
    with unchanged(), pytest.raises(pyxp.errors.RegistrationRefused):
        xp.register_agency_client(AGENCY, EMAIL, "camp_b2c")


def test_register_on_another_agencys_campaign_is_refused(xp: XP, unchanged: Any) -> None:
    xp.award_campaign_creation(OTHER_AGENCY, "camp_other", "AGENCY_B2C")
    with unchanged(), pytest.raises(pyxp.errors.RegistrationRefused):
        xp.register_agency_client(AGENCY, EMAIL, "camp_other")


def test_register_after_onboarding_is_granted_at_once_without_new_xp(xp: XP,
                                                                     db: psycopg.Connection[Any]) -> None:
    _registered(xp)
    xp.onboard_agency_client(EMAIL, CLIENT)
    xp.award_campaign_creation(OTHER_AGENCY, "camp_later", "AGENCY_B2C")
    ledger_before = ledger(db)

    late = xp.register_agency_client(OTHER_AGENCY, EMAIL, "camp_later")

    assert (late.xp_granted, late.client_wallet) == (True, CLIENT)
    assert late.onboarded_at is not None
    assert ledger(db) == ledger_before
    # Signing in again is a replay: no second award.
    assert xp.onboard_agency_client(EMAIL, CLIENT).replayed
    assert ledger(db, "B2C_CLIENT_ONBOARDED") == [(CLIENT, "B2C_CLIENT_ONBOARDED", 1000)]
    assert xp.balance(CLIENT).total_xp == 1000


def test_onboarding_again_with_another_wallet_is_refused(xp: XP, unchanged: Any) -> None:
    _registered(xp)
    xp.onboard_agency_client(EMAIL, CLIENT)
    with unchanged(), pytest.raises(pyxp.errors.IdempotencyConflict):
        xp.onboard_agency_client(EMAIL, "0x_other_client")


def test_onboarding_again_with_another_wallet_is_refused_even_with_a_new_registration(
        xp: XP, db: psycopg.Connection[Any], unchanged: Any) -> None:
    _registered(xp)
    xp.onboard_agency_client(EMAIL, CLIENT)
    xp.register_agency_client(OTHER_AGENCY, EMAIL, "camp_later")
    with unchanged(), pytest.raises(pyxp.errors.IdempotencyConflict):
        xp.onboard_agency_client(EMAIL, "0x_other_client")


# ============================================================================ concurrency
# SPEC section 4, atomicity: concurrent calls on one key never double an award.

THREADS = 16


def run_concurrently(conninfo: str, query: str, params: list[dict[str, Any]]) -> list[Any]:
    """Runs query once per params entry, each on its own connection, released together."""
    barrier = threading.Barrier(len(params))
    results: list[Any] = [None] * len(params)
    errors: list[Exception] = []

    def worker(i: int) -> None:
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                barrier.wait(timeout=30)
                results[i] = conn.execute(query, params[i]).fetchall()
        except (psycopg.Error, threading.BrokenBarrierError) as exc:  # reported in the test's thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(params))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a concurrent call never returned"
    assert errors == []
    return results


@pytest.mark.slow
def test_concurrent_onboarding_of_one_email_awards_once(xp: XP, conninfo: str,
                                                        db: psycopg.Connection[Any]) -> None:
    _registered(xp)
    spellings = [EMAIL, "Client@Example.com", " CLIENT@EXAMPLE.COM", "client@example.com "]
    results = run_concurrently(
        conninfo,
        """SELECT transaction_id, user_wallet, xp_amount, replayed
             FROM pyxp.onboard_agency_client(client_email => %(email)s, client_wallet => %(wallet)s)""",
        [{"email": spellings[i % len(spellings)], "wallet": CLIENT} for i in range(THREADS)])

    assert ledger(db, "B2C_CLIENT_ONBOARDED") == [(CLIENT, "B2C_CLIENT_ONBOARDED", 1000)]
    assert all(len(rows) == 1 for rows in results)
    assert len({rows[0][0] for rows in results}) == 1                # the same transaction_id for all
    assert sorted(rows[0][3] for rows in results) == [False] + [True] * (THREADS - 1)
    assert xp.balance(CLIENT).total_xp == 1000
    assert all(r["xp_granted"] for r in registrations(db))
    assert_audit_clean(db)


@pytest.mark.slow
def test_concurrent_submissions_of_one_completion_write_one_row(xp: XP, conninfo: str,
                                                                db: psycopg.Connection[Any]) -> None:
    results = run_concurrently(
        conninfo,
        """SELECT transaction_id, xp_amount, replayed FROM pyxp.award_completion(
               completer_wallet => %(wallet)s, campaign_id => 'camp_1', completion_id => 'comp_1',
               campaign_type => 'B2C', is_paid => true, price_completion => 300)""",
        [{"wallet": COMPLETER} for _ in range(THREADS)])

    assert ledger(db) == [(COMPLETER, "Completion_Submit_B2C_Paid", 400)]
    assert len({rows[0][0] for rows in results}) == 1
    assert sorted(rows[0][2] for rows in results) == [False] + [True] * (THREADS - 1)
    assert xp.balance(COMPLETER).total_xp == 400
    assert_audit_clean(db)


@pytest.mark.slow
def test_concurrent_votes_of_many_moderators_are_all_counted(xp: XP, conninfo: str,
                                                             db: psycopg.Connection[Any]) -> None:
    """Distinct keys in parallel: none lost (one row and one moderation each)."""
    _created_b2c(xp)
    run_concurrently(
        conninfo,
        """SELECT * FROM pyxp.award_moderation_vote(
               moderator_wallet => %(wallet)s, campaign_id => 'camp_1', vote_decision => 'VALID')""",
        [{"wallet": f"0x_moderator_{i:02d}"} for i in range(THREADS)])
    totals = db.execute("""SELECT count(*), sum(xp_amount) FROM pyxp.xp_transactions
                            WHERE transaction_type = 'MODERATION_VALIDATED_BY_MODERATOR'""").fetchone()
    assert totals == (THREADS, 2 * THREADS)
    assert db.execute("SELECT sum(total_moderations) FROM pyxp.xp_balances").fetchone() == (THREADS,)
    assert_audit_clean(db)


def test_votes_whose_ids_once_built_the_same_key_text_are_two_votes(xp: XP, db: psycopg.Connection[Any]) -> None:
    """SPEC 4: keys are injective. (campaign 'c:0xa', moderator '0xb') and (campaign 'c',
    moderator '0xa:0xb') used to build the same 'campaign.vote:c:0xa:0xb': they are two votes."""
    first = xp.award_moderation_vote(moderator_wallet="0xb", campaign_id="c:0xa", vote_decision="VALID",
                                     campaign_type="B2C")
    second = xp.award_moderation_vote(moderator_wallet="0xa:0xb", campaign_id="c", vote_decision="VALID",
                                      campaign_type="B2C")
    assert (first.xp, first.replayed, second.xp, second.replayed) == (2, False, 2, False)
    assert first.rows[0].user_wallet == "0xb" and second.rows[0].user_wallet == "0xa:0xb"
    assert_audit_clean(db)


def test_campaign_creation_without_a_type_says_it_is_required(xp: XP, unchanged: Any) -> None:
    with unchanged(), pytest.raises(pyxp.UnknownCampaignType, match="required"):
        xp.award_campaign_creation(creator_wallet="0x_creator", campaign_id="camp_x", campaign_type=None)  # type: ignore[arg-type]


# ============================================================================ first call wins, retries replay
# SPEC section 4: repeating a call with the same key and inputs returns the original result,
# whatever was recorded about its campaign or completion since; a later call that contradicts
# what an earlier one recorded (another creator, another campaign) is refused, nothing written.

def test_a_creation_by_another_wallet_than_an_earlier_approval_named_is_refused(
        xp: XP, db: psycopg.Connection[Any], unchanged: Any) -> None:
    """An approval of a campaign pyxp did not know named its creator (and paid it): a creation by
    another wallet is refused, and the approval's retry still replays. Before 0023 the creation was
    accepted, the approval's retry got PX011, and the ledger paid two creators."""
    first = xp.award_campaign_approval("camp_a", creator_wallet=CREATOR)
    with unchanged(), pytest.raises(pyxp.errors.CampaignMismatch) as refused:
        xp.award_campaign_creation("0x_other_creator", "camp_a", "B2C")
    assert CREATOR in str(refused.value)
    again = xp.award_campaign_approval("camp_a", creator_wallet=CREATOR)
    assert again.replayed and [r.transaction_id for r in again.rows] == [r.transaction_id for r in first.rows]
    xp.award_campaign_creation(CREATOR, "camp_a", "B2C")  # the creator it named: accepted
    assert registry(db, "camp_a") == ("B2C", CREATOR)
    assert xp.award_campaign_approval("camp_a").replayed
    assert_audit_clean(db)


def test_an_approval_retry_replays_whatever_the_registry_says_since(xp: XP, db: psycopg.Connection[Any]) -> None:
    """A registry that names another creator than the one an approval was made for (a ledger
    written before 0023 could hold one): the approval's retry replays; another creator's is PX011."""
    first = xp.award_campaign_approval("camp_b", creator_wallet=CREATOR)
    db.execute("INSERT INTO pyxp.campaigns (campaign_id, campaign_type, creator_wallet) "
               "VALUES ('camp_b', 'B2C', '0x_other_creator')")
    again = xp.award_campaign_approval("camp_b", creator_wallet=CREATOR)
    assert again.replayed and [r.transaction_id for r in again.rows] == [r.transaction_id for r in first.rows]
    with pytest.raises(pyxp.errors.CampaignMismatch):
        xp.award_campaign_approval("camp_b", creator_wallet="0x_third_creator")


def test_a_submission_on_another_campaign_than_an_earlier_vote_named_is_refused(
        xp: XP, db: psycopg.Connection[Any], unchanged: Any) -> None:
    """A moderator's vote named the completion first: it fixes the completion's campaign as a
    submission would. A submission naming another campaign is refused, the vote's retry replays.
    Before 0023 the submission was accepted and the vote's retry got PX011."""
    first = xp.award_completion_moderation(MODERATOR, "camp_x", "comp_v", "VALID", campaign_type="B2C")
    with unchanged(), pytest.raises(pyxp.errors.CampaignMismatch) as refused:
        xp.award_completion(COMPLETER, "camp_y", "comp_v", campaign_type="B2C")
    assert "camp_x" in str(refused.value)
    again = xp.award_completion_moderation(MODERATOR, "camp_x", "comp_v", "VALID", campaign_type="B2C")
    assert again.replayed and [r.transaction_id for r in again.rows] == [r.transaction_id for r in first.rows]
    xp.award_completion(COMPLETER, "camp_x", "comp_v", campaign_type="B2C")  # its campaign: accepted
    with unchanged(), pytest.raises(pyxp.errors.CampaignMismatch):
        xp.award_completion_moderation("0x_second_moderator", "camp_y", "comp_v", "VALID", campaign_type="B2C")
    assert_audit_clean(db)


def test_a_vote_retry_replays_after_a_submission_on_another_campaign(
        xp: XP, db: psycopg.Connection[Any]) -> None:
    """A ledger written before 0023 can hold a vote and a submission naming two campaigns: the
    vote's retry replays (a retry is never refused for what came after it)."""
    first = xp.award_completion_moderation(MODERATOR, "camp_x", "comp_w", "VALID", campaign_type="B2C")
    db.execute("UPDATE pyxp.subject_locks SET campaign_id = NULL WHERE subject = 'completion:comp_w'")
    xp.award_completion(COMPLETER, "camp_y", "comp_w", campaign_type="B2C")
    again = xp.award_completion_moderation(MODERATOR, "camp_x", "comp_w", "VALID", campaign_type="B2C")
    assert again.replayed and [r.transaction_id for r in again.rows] == [r.transaction_id for r in first.rows]


def test_a_creation_by_another_agency_than_a_registration_named_is_refused(
        xp: XP, db: psycopg.Connection[Any], unchanged: Any) -> None:
    """A registration on a campaign pyxp did not know makes it the registering agency's AGENCY_B2C
    campaign (SPEC 5: clients are registered on the agency's own campaigns): another agency's
    creation of it is refused, the registration repeated changes nothing. Before 0023 the creation
    was accepted, the same registration then got PX022, and the onboarding named agency A on
    agency B's campaign."""
    first = xp.register_agency_client(AGENCY, EMAIL, "camp_r")
    with unchanged(), pytest.raises(pyxp.errors.CampaignMismatch) as refused:
        xp.award_campaign_creation(OTHER_AGENCY, "camp_r", "AGENCY_B2C")
    assert AGENCY in str(refused.value)
    with unchanged():
        assert xp.register_agency_client(AGENCY, EMAIL, "camp_r") == first
    xp.award_campaign_creation(AGENCY, "camp_r", "AGENCY_B2C")
    assert registry(db, "camp_r") == ("AGENCY_B2C", AGENCY)
    with unchanged(), pytest.raises(pyxp.errors.RegistrationRefused):
        xp.register_agency_client(OTHER_AGENCY, "other@example.com", "camp_r")
    assert_audit_clean(db)


def test_a_registration_repeated_changes_nothing_whatever_the_registry_says_since(
        xp: XP, db: psycopg.Connection[Any], unchanged: Any) -> None:
    """The same (agency, email, campaign) again returns its row and changes nothing (SPEC 5), even
    if the registry now names another agency (a ledger written before 0023 could)."""
    first = xp.register_agency_client(AGENCY, EMAIL, "camp_s")
    db.execute("UPDATE pyxp.campaigns SET creator_wallet = %s WHERE campaign_id = 'camp_s'", (OTHER_AGENCY,))
    with unchanged():
        assert xp.register_agency_client(AGENCY, EMAIL, "camp_s") == first
    with unchanged(), pytest.raises(pyxp.errors.RegistrationRefused):
        xp.register_agency_client(AGENCY, "second@example.com", "camp_s")


APPROVAL_OF_A = "SELECT * FROM pyxp.award_campaign_approval('camp_race', '0x_creator_a')"
APPROVAL_OF_B = "SELECT * FROM pyxp.award_campaign_approval('camp_race', '0x_creator_b')"
CREATION_BY_A = "SELECT * FROM pyxp.award_campaign_creation('0x_creator_a', 'camp_race', 'B2C')"
CREATION_BY_B = "SELECT * FROM pyxp.award_campaign_creation('0x_creator_b', 'camp_race', 'B2C')"


@pytest.mark.parametrize(("held", "second"), [(APPROVAL_OF_A, CREATION_BY_B), (CREATION_BY_A, APPROVAL_OF_B)],
                         ids=["approval-first", "creation-first"])
def test_an_approval_and_a_creation_naming_two_creators_never_both_pass(
        conninfo: str, db: psycopg.Connection[Any], held: str, second: str) -> None:
    """An approval of a campaign pyxp does not know and its creation, naming two creators, the
    second started while the first's transaction is open: it waits for it on the campaign's
    subject lock (0023; without it both passed), then is refused (PX011). Only A was paid."""
    outcome = called_behind_holder(conninfo, db, held, lambda conn: conn.execute(second).fetchall())
    assert outcome == {"sqlstate": "PX011"}
    assert {w for (w,) in db.execute("SELECT DISTINCT user_wallet FROM pyxp.xp_transactions")} == {"0x_creator_a"}
    assert_audit_clean(db)


def test_an_approval_whose_rules_depend_on_an_unknown_campaigns_type_is_refused(
        xp: XP, db: psycopg.Connection[Any], unchanged: Any) -> None:
    """Under rules whose approval is limited to some campaign types, the approval of a campaign pyxp
    does not know the type of cannot tell whether they apply: PX012, nothing written, key unused.
    Before 0023 it wrote no row but used its key up, so the approval after the creation replayed
    that empty result and the creator never got its XP."""
    definition = pyxp.load_ruleset("winstory").definition()
    definition["name"] = "approval-b2c-only"
    for rule in definition["rules"]:
        if rule["action"] == "CAMPAIGN_APPROVED":
            rule["campaign_types"] = ["B2C"]
    db.execute("SELECT * FROM pyxp.install_ruleset(%s, %s)",
               (psycopg.types.json.Jsonb(definition), "# approval limited to B2C"))
    with unchanged(), pytest.raises(pyxp.errors.UnknownCampaign):
        xp.award_campaign_approval("camp_t", creator_wallet=CREATOR)
    xp.award_campaign_creation(CREATOR, "camp_t", "B2C")
    assert [r.transaction_type for r in xp.award_campaign_approval("camp_t").rows] == ["CAMPAIGN_APPROVED"]


# Found by a hostile test of the flows (2026-11-27); each failed at 0027.

def test_a_registration_on_a_campaign_approved_for_another_creator_is_refused(
        xp: XP, db: psycopg.Connection[Any], unchanged: Any) -> None:
    """The approval paid +100 to the creator it named; the registration then made the campaign the
    agency's, and neither wallet could ever create it (PX011 both ways)."""
    xp.award_campaign_approval("camp_ap", creator_wallet=CREATOR)
    with unchanged(), pytest.raises(pyxp.errors.RegistrationRefused) as refused:
        xp.register_agency_client(AGENCY, EMAIL, "camp_ap")
    assert CREATOR in str(refused.value)
    assert registry(db, "camp_ap") is None
    assert [r.transaction_type for r in xp.award_campaign_creation(CREATOR, "camp_ap", "B2C").rows] == ["B2C_MINT"]
    # The agency the approval named registers its clients.
    xp.award_campaign_approval("camp_ag", creator_wallet=AGENCY)
    assert xp.register_agency_client(AGENCY, EMAIL, "camp_ag").campaign_id == "camp_ag"
    assert xp.award_campaign_creation(AGENCY, "camp_ag", "AGENCY_B2C").xp == 1000
    assert_audit_clean(db)


REGISTRATION = f"SELECT * FROM pyxp.register_agency_client('{AGENCY}', '{EMAIL}', 'camp_rr')"
APPROVAL_FOR_CREATOR = f"SELECT * FROM pyxp.award_campaign_approval('camp_rr', '{CREATOR}')"


@pytest.mark.parametrize(("held", "second", "refusal"), [(REGISTRATION, APPROVAL_FOR_CREATOR, "PX011"),
                                                         (APPROVAL_FOR_CREATOR, REGISTRATION, "PX022")],
                         ids=["registration-first", "approval-first"])
def test_a_registration_and_an_approval_naming_two_creators_never_both_pass(
        conninfo: str, db: psycopg.Connection[Any], held: str, second: str, refusal: str) -> None:
    """Raced, the approval did not wait for the registration's uncommitted registry row: +100 to the
    creator while the registry named the agency. Now the second waits on the campaign's subject
    lock, then is refused."""
    outcome = called_behind_holder(conninfo, db, held, lambda conn: conn.execute(second).fetchall())
    assert outcome == {"sqlstate": refusal}
    paid = {w for (w,) in db.execute("SELECT DISTINCT user_wallet FROM pyxp.xp_transactions")}
    registered = registrations(db)
    assert (paid, len(registered)) in [(set(), 1), ({CREATOR}, 0)]
    assert_audit_clean(db)


def test_a_registration_by_the_clients_own_wallet_is_refused(xp: XP, unchanged: Any) -> None:
    """An onboarded client registering itself as its own agency was stored (PX021 the other way round)."""
    xp.award_campaign_creation(AGENCY, "camp_o", "AGENCY_B2C")
    xp.register_agency_client(AGENCY, EMAIL, "camp_o")
    xp.onboard_agency_client(EMAIL, CLIENT)
    xp.award_campaign_creation(CLIENT, "camp_own", "AGENCY_B2C")
    with unchanged(), pytest.raises(pyxp.errors.ClientIsAgency):
        xp.register_agency_client(CLIENT, EMAIL, "camp_own")


def test_an_individual_outcome_names_the_mint_value_of_its_submission(xp: XP, unchanged: Any) -> None:
    """A refusal naming 0.01 took 0.005 XP back (rounded to 0) from a +5,000 submission."""
    assert xp.award_completion(COMPLETER, "camp_i", "comp_i", campaign_type="INDIVIDUAL",
                               mint_value_winc=5000).xp == 5000
    with unchanged(), pytest.raises(pyxp.errors.CampaignMismatch) as refused:
        xp.award_completion(COMPLETER, "camp_i", "comp_i", is_refused=True, mint_value_winc=Decimal("0.01"))
    assert "5000" in str(refused.value)
    assert xp.award_completion(COMPLETER, "camp_i", "comp_i", is_refused=True,
                               mint_value_winc=Decimal("5000.00")).xp == -2500
    # An outcome first fixes it for the submission the same way; a validation names none.
    xp.award_completion(COMPLETER, "camp_i", "comp_j", is_refused=True, mint_value_winc=100)
    with unchanged(), pytest.raises(pyxp.errors.CampaignMismatch):
        xp.award_completion(COMPLETER, "camp_i", "comp_j", mint_value_winc=7000)
    assert xp.award_completion(COMPLETER, "camp_i", "comp_j", mint_value_winc=100).xp == 100
    xp.award_completion(COMPLETER, "camp_i", "comp_k", mint_value_winc=300)
    assert xp.award_completion(COMPLETER, "camp_i", "comp_k", is_validated=True).xp == 100
    # Only a submission and its refusal are compared (a second hostile test: 0028's first form
    # refused a validation naming another MINT, and a B2C outcome, whose MINT no rule reads).
    xp.award_completion(COMPLETER, "camp_i", "comp_l", mint_value_winc=300)
    assert xp.award_completion(COMPLETER, "camp_i", "comp_l", is_validated=True, mint_value_winc=301).xp == 100
    xp.award_completion(COMPLETER, "camp_b", "comp_m", campaign_type="B2C", mint_value_winc=3)
    assert xp.award_completion(COMPLETER, "camp_b", "comp_m", is_validated=True, mint_value_winc=4).xp == 100


@pytest.mark.parametrize("first", [Decimal(0), None], ids=["price-0-first", "no-price-first"])
def test_a_free_missions_price_0_is_no_price(xp: XP, db: psycopg.Connection[Any], first: Decimal | None) -> None:
    """A free submission with price_completion 0, retried without a price, got PX010 (and back)."""
    made = xp.award_completion(COMPLETER, "camp_f", "comp_f", campaign_type="B2C", price_completion=first)
    for retry in (Decimal(0), None, Decimal("0.00")):
        again = xp.award_completion(COMPLETER, "camp_f", "comp_f", campaign_type="B2C", price_completion=retry)
        assert again.replayed and [r.transaction_id for r in again.rows] == [r.transaction_id for r in made.rows]
    assert db.execute("SELECT metadata ? 'PRICE_COMPLETION' FROM pyxp.xp_transactions").fetchall() == [(False,)]
