"""Input validation of the Winstory flows (SPEC section 5, "Validation"; section 1, vocabulary).

Every refusal is checked twice: the right PX code (pyxp exception class, or
SQLSTATE for raw SQL calls) and nothing written (``with unchanged():``).
Accepted boundary values are checked next to the refusals they border.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import psycopg
import pytest

import pyxp
from pyxp import XP
from pyxp.errors import (
    ConflictingFlags,
    InvalidEmail,
    InvalidIdentifier,
    InvalidNumber,
    InvalidPrice,
    InvalidVote,
    InvalidWallet,
    MissingMintValue,
    UnknownCampaignType,
)
from pyxp.results import Award

CREATOR = "0x_creator"
AGENCY = "0x_agency"
MODERATOR = "0x_moderator"
COMPLETER = "0x_completer"
CLIENT = "0x_client"
EMAIL = "client@example.com"


# ----------------------------------------------------------------------------- calls with valid defaults

def creation(xp: XP, **kw: Any) -> Award:
    return xp.award_campaign_creation(**{"creator_wallet": CREATOR, "campaign_id": "camp_1",
                                         "campaign_type": "B2C", **kw})


def approval(xp: XP, **kw: Any) -> Award:
    return xp.award_campaign_approval(**{"campaign_id": "camp_1", "creator_wallet": CREATOR, **kw})


def vote(xp: XP, **kw: Any) -> Award:
    return xp.award_moderation_vote(**{"moderator_wallet": MODERATOR, "campaign_id": "camp_1",
                                       "vote_decision": "VALID", "campaign_type": "B2C", **kw})


def completion(xp: XP, **kw: Any) -> Award:
    return xp.award_completion(**{"completer_wallet": COMPLETER, "campaign_id": "camp_1",
                                  "completion_id": "comp_1", "campaign_type": "B2C", **kw})


def completion_vote(xp: XP, **kw: Any) -> Award:
    return xp.award_completion_moderation(**{"moderator_wallet": MODERATOR, "campaign_id": "camp_1",
                                             "completion_id": "comp_1", "vote_decision": "VALID",
                                             "campaign_type": "B2C", **kw})


def register(xp: XP, **kw: Any) -> Any:
    return xp.register_agency_client(**{"agency_wallet": AGENCY, "client_email": EMAIL,
                                        "campaign_id": "camp_agency", **kw})


def onboard(xp: XP, **kw: Any) -> Award:
    return xp.onboard_agency_client(**{"client_email": EMAIL, "client_wallet": CLIENT, **kw})


def registered(xp: XP) -> None:
    """A pending registration of EMAIL: an onboarding would award it."""
    xp.award_campaign_creation(AGENCY, "camp_agency", "AGENCY_B2C")
    register(xp)


def no_setup(xp: XP) -> None:
    pass


@contextmanager
def raises_sqlstate(code: str) -> Iterator[None]:
    """A raw SQL call refused with SQLSTATE ``code``."""
    with pytest.raises(psycopg.Error) as info:
        yield
    assert info.value.sqlstate == code, f"{info.value.sqlstate}: {info.value}"


def sql_call(db: psycopg.Connection[Any], function: str, **literals: str) -> list[Any]:
    """SELECT * FROM pyxp.<function>(name => <SQL literal>, ...), as a service would write it."""
    arguments = ", ".join(f"{name} => {literal}" for name, literal in literals.items())
    return db.execute(f"SELECT * FROM pyxp.{function}({arguments})").fetchall()


# ============================================================================ campaign type (PX003)

BAD_TYPES = ["B2B", "", "   ", "FOR_", "FOR_FOR_B2C", "AGENCY", "INDIVIDUALS", "B2C;", "b 2 c"]
TYPED_CALLS = [pytest.param(creation, id="creation"), pytest.param(vote, id="campaign-vote"),
               pytest.param(completion, id="completion"), pytest.param(completion_vote, id="completion-vote")]


@pytest.mark.parametrize("call", TYPED_CALLS)
@pytest.mark.parametrize("bad_type", BAD_TYPES)
def test_unknown_campaign_type_is_refused(xp: XP, unchanged: Any, call: Callable[..., Award],
                                          bad_type: str) -> None:
    with unchanged(), pytest.raises(UnknownCampaignType):
        call(xp, campaign_type=bad_type)


@pytest.mark.parametrize("call", TYPED_CALLS[1:])
def test_unknown_campaign_type_is_refused_on_a_registered_campaign(xp: XP, unchanged: Any,
                                                                   call: Callable[..., Award]) -> None:
    """A malformed type is a malformed type, not a registry mismatch."""
    creation(xp)
    with unchanged(), pytest.raises(UnknownCampaignType):
        call(xp, campaign_type="B2B")


def test_creation_needs_a_campaign_type(xp: XP, unchanged: Any) -> None:
    with unchanged(), pytest.raises(UnknownCampaignType):
        creation(xp, campaign_type=None)


def test_unknown_campaign_type_is_refused_from_sql(db: psycopg.Connection[Any], unchanged: Any) -> None:
    with unchanged(), raises_sqlstate("PX003"):
        sql_call(db, "award_completion", completer_wallet="'0x_completer'", campaign_id="'camp_1'",
                 completion_id="'comp_1'", campaign_type="'FOR_B2B'")


# ============================================================================ completion flags and prices

@pytest.mark.parametrize("kw", [
    pytest.param({"campaign_type": "B2C"}, id="b2c"),
    pytest.param({"campaign_type": "INDIVIDUAL", "mint_value_winc": 5000}, id="individual"),
    pytest.param({"campaign_type": "B2C", "is_paid": True, "price_completion": 300}, id="paid"),
])
def test_validated_and_refused_at_once_is_refused(xp: XP, unchanged: Any, kw: dict[str, Any]) -> None:
    with unchanged(), pytest.raises(ConflictingFlags):
        completion(xp, is_validated=True, is_refused=True, **kw)


@pytest.mark.parametrize("price", [None, 0, Decimal(0), Decimal("0.000")])
@pytest.mark.parametrize("campaign_type", ["B2C", "AGENCY_B2C"])
def test_paid_without_a_positive_price_is_refused(xp: XP, unchanged: Any, price: Any,
                                                  campaign_type: str) -> None:
    with unchanged(), pytest.raises(InvalidPrice):
        completion(xp, campaign_type=campaign_type, is_paid=True, price_completion=price)


@pytest.mark.parametrize("price", [-1, Decimal("-0.01"), -500.0])
def test_paid_with_a_negative_price_is_an_invalid_number(xp: XP, unchanged: Any, price: Any) -> None:
    """A negative number is refused as such (PX004), before the price rule."""
    with unchanged(), pytest.raises(InvalidNumber):
        completion(xp, is_paid=True, price_completion=price)


@pytest.mark.parametrize("price", [500, Decimal("0.01")])
@pytest.mark.parametrize("campaign_type", ["B2C", "AGENCY_B2C"])
def test_a_price_on_a_free_mission_is_refused(xp: XP, unchanged: Any, price: Any, campaign_type: str) -> None:
    with unchanged(), pytest.raises(InvalidPrice):
        completion(xp, campaign_type=campaign_type, is_paid=False, price_completion=price)


def test_a_zero_price_on_a_free_mission_means_no_price(xp: XP) -> None:
    """Platforms send priceCompletion: 0 for free missions: accepted, the free rule applies."""
    award = completion(xp, is_paid=False, price_completion=0)
    assert award.transaction_types == ["Completion_Submit_B2C_Free"] and award.xp == 100


def test_a_price_on_a_free_mission_is_refused_from_sql(db: psycopg.Connection[Any], unchanged: Any) -> None:
    with unchanged(), raises_sqlstate("PX006"):
        sql_call(db, "award_completion", completer_wallet="'0x_completer'", campaign_id="'camp_1'",
                 completion_id="'comp_1'", campaign_type="'B2C'", price_completion="500")


@pytest.mark.parametrize("mint", [None, 0, Decimal("0.0")])
@pytest.mark.parametrize("outcome", [pytest.param({}, id="submission"),
                                     pytest.param({"is_refused": True}, id="refusal")])
def test_individual_submission_or_refusal_needs_a_positive_mint_value(xp: XP, unchanged: Any, mint: Any,
                                                                      outcome: dict[str, Any]) -> None:
    with unchanged(), pytest.raises(MissingMintValue):
        completion(xp, campaign_type="INDIVIDUAL", mint_value_winc=mint, **outcome)


def test_individual_mint_value_is_needed_when_the_type_comes_from_the_registry(xp: XP,
                                                                               unchanged: Any) -> None:
    creation(xp, campaign_type="INDIVIDUAL")
    with unchanged(), pytest.raises(MissingMintValue):
        completion(xp, campaign_type=None)


def test_individual_validation_needs_no_mint_value(xp: XP) -> None:
    award = completion(xp, campaign_type="INDIVIDUAL", is_validated=True)
    assert (award.transaction_types, award.xp) == (["Completion_Validated_Individual"], 100)


@pytest.mark.parametrize("campaign_type", ["B2C", "AGENCY_B2C"])
def test_b2c_refusal_needs_no_mint_value(xp: XP, campaign_type: str) -> None:
    assert completion(xp, campaign_type=campaign_type, is_refused=True).xp == -50


# ============================================================================ numbers (PX004)
# Negative, NaN, infinite or beyond 10^15: refused, whether sent as SQL
# literals by a service or as Python numbers through the client.

NUMBER_ARGUMENTS = [
    # (function, its other arguments as SQL literals, the numeric argument)
    pytest.param("award_completion",
                 {"completer_wallet": "'0x_completer'", "campaign_id": "'camp_1'",
                  "completion_id": "'comp_1'", "campaign_type": "'B2C'", "is_paid": "true"},
                 "price_completion", id="price_completion"),
    pytest.param("award_completion",
                 {"completer_wallet": "'0x_completer'", "campaign_id": "'camp_1'",
                  "completion_id": "'comp_1'", "campaign_type": "'INDIVIDUAL'"},
                 "mint_value_winc", id="mint_value_winc"),
    pytest.param("award_completion",
                 {"completer_wallet": "'0x_completer'", "campaign_id": "'camp_1'",
                  "completion_id": "'comp_1'", "campaign_type": "'INDIVIDUAL'", "is_refused": "true"},
                 "mint_value_winc", id="mint_value_winc-refusal"),
    pytest.param("award_campaign_creation",
                 {"creator_wallet": "'0x_creator'", "campaign_id": "'camp_1'", "campaign_type": "'B2C'"},
                 "mint_value", id="mint_value"),
]

BAD_SQL_NUMBERS = [
    pytest.param("-1", id="negative"),
    pytest.param("-0.5", id="negative-fraction"),
    pytest.param("'NaN'::numeric", id="nan"),
    pytest.param("'Infinity'::numeric", id="infinity"),
    pytest.param("'-Infinity'::numeric", id="minus-infinity"),
    pytest.param("1e16", id="1e16"),
    pytest.param("1000000000000000.5", id="just-above-1e15"),
    pytest.param("1e300", id="1e300"),
]


@pytest.mark.parametrize(("function", "others", "argument"), NUMBER_ARGUMENTS)
@pytest.mark.parametrize("literal", BAD_SQL_NUMBERS)
def test_bad_numbers_are_refused_from_sql(db: psycopg.Connection[Any], unchanged: Any, function: str,
                                          others: dict[str, str], argument: str, literal: str) -> None:
    with unchanged(), raises_sqlstate("PX004"):
        sql_call(db, function, **others, **{argument: literal})


BAD_PYTHON_NUMBERS = [
    pytest.param(float("nan"), id="float-nan"),
    pytest.param(float("inf"), id="float-inf"),
    pytest.param(float("-inf"), id="float-minus-inf"),
    pytest.param(Decimal("NaN"), id="decimal-nan"),
    pytest.param(Decimal("Infinity"), id="decimal-infinity"),
    pytest.param(Decimal("-Infinity"), id="decimal-minus-infinity"),
    pytest.param(-1, id="int-negative"),
    pytest.param(Decimal("-0.01"), id="decimal-negative"),
    pytest.param(10**16, id="int-1e16"),
    pytest.param(1e16, id="float-1e16"),
    pytest.param(Decimal("1E+15") + Decimal("0.001"), id="decimal-just-above-1e15"),
    pytest.param(10**40, id="int-1e40"),
]

PYTHON_NUMBER_CALLS = [
    pytest.param(lambda xp, n: completion(xp, is_paid=True, price_completion=n), id="price_completion"),
    pytest.param(lambda xp, n: completion(xp, campaign_type="INDIVIDUAL", mint_value_winc=n),
                 id="mint_value_winc"),
    pytest.param(lambda xp, n: completion(xp, campaign_type="INDIVIDUAL", is_refused=True, mint_value_winc=n),
                 id="mint_value_winc-refusal"),
    pytest.param(lambda xp, n: creation(xp, mint_value=n), id="mint_value"),
]


@pytest.mark.parametrize("call", PYTHON_NUMBER_CALLS)
@pytest.mark.parametrize("number", BAD_PYTHON_NUMBERS)
def test_bad_numbers_are_refused_from_python(xp: XP, unchanged: Any, call: Callable[[XP, Any], Award],
                                             number: Any) -> None:
    with unchanged(), pytest.raises(InvalidNumber):
        call(xp, number)


def test_the_largest_accepted_number_is_1e15(xp: XP, db: psycopg.Connection[Any]) -> None:
    award = completion(xp, campaign_type="INDIVIDUAL", mint_value_winc=10**15)
    assert award.xp == 10**15
    creation(xp, campaign_id="camp_2", mint_value=Decimal("1E+15"))
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_a_formula_result_beyond_1e15_is_refused(xp: XP, unchanged: Any) -> None:
    """Each input is in range, but 100 + PRICE_COMPLETION is not."""
    with unchanged(), pytest.raises(InvalidNumber):
        completion(xp, is_paid=True, price_completion=10**15)


# ============================================================================ vote decision (PX008)

BAD_DECISIONS = ["", "  ", None, "APPROVE", "VALIDATED", "REFUSED", "yes", "1", "VALID REFUSE",
                 "VALIDE", "REFUS"]
VOTE_CALLS = [pytest.param(vote, id="campaign-vote"), pytest.param(completion_vote, id="completion-vote")]


@pytest.mark.parametrize("call", VOTE_CALLS)
@pytest.mark.parametrize("decision", BAD_DECISIONS)
def test_a_vote_other_than_valid_or_refuse_is_refused(xp: XP, unchanged: Any, call: Callable[..., Award],
                                                      decision: str | None) -> None:
    with unchanged(), pytest.raises(InvalidVote):
        call(xp, vote_decision=decision)


@pytest.mark.parametrize("call", VOTE_CALLS)
@pytest.mark.parametrize(("decision", "amount"), [("valid", 2), ("Valid", 2), (" VALID ", 2),
                                                  ("refuse", -1), ("Refuse", -1)])
def test_vote_decisions_are_accepted_in_any_case(xp: XP, call: Callable[..., Award], decision: str,
                                                 amount: int) -> None:
    assert call(xp, vote_decision=decision).xp == amount


def test_a_bad_vote_is_refused_from_sql(db: psycopg.Connection[Any], unchanged: Any) -> None:
    with unchanged(), raises_sqlstate("PX008"):
        sql_call(db, "award_moderation_vote", moderator_wallet="'0x_moderator'", campaign_id="'camp_1'",
                 vote_decision="'ABSTAIN'", campaign_type="'B2C'")


# ============================================================================ client email (PX002)

BAD_EMAILS = [
    pytest.param("client.example.com", id="no-at"),
    pytest.param("client@@example.com", id="two-at-adjacent"),
    pytest.param("cli@ent@example.com", id="two-at"),
    pytest.param("@example.com", id="empty-local-part"),
    pytest.param("client@", id="empty-domain"),
    pytest.param("client@localhost", id="domain-without-dot"),
    pytest.param("client@example.", id="domain-ending-with-dot"),
    pytest.param("client@.com", id="domain-starting-with-dot"),
    pytest.param("client@.example.com", id="domain-of-labels-starting-with-dot"),
    pytest.param("client@example..com", id="empty-label"),
    pytest.param("a" * 243 + "@example.com", id="255-characters"),
    pytest.param("cli\x01ent@example.com", id="control-character"),
    pytest.param("client@exa\nmple.com", id="newline-inside"),
    pytest.param("cli\tent@example.com", id="tab-inside"),
    pytest.param("cli ent@example.com", id="space-inside"),
    pytest.param("", id="empty"),
    pytest.param("   ", id="blank"),
    pytest.param(None, id="null"),
]


@pytest.mark.parametrize("email", BAD_EMAILS)
def test_a_malformed_email_is_refused_on_register(xp: XP, unchanged: Any, email: str | None) -> None:
    xp.award_campaign_creation(AGENCY, "camp_agency", "AGENCY_B2C")
    with unchanged(), pytest.raises(InvalidEmail):
        register(xp, client_email=email)


@pytest.mark.parametrize("email", BAD_EMAILS)
def test_a_malformed_email_is_refused_on_onboard(xp: XP, unchanged: Any, email: str | None) -> None:
    registered(xp)
    with unchanged(), pytest.raises(InvalidEmail):
        onboard(xp, client_email=email)


def test_a_254_character_email_is_accepted(xp: XP) -> None:
    email = "a" * 242 + "@example.com"
    assert len(email) == 254
    xp.award_campaign_creation(AGENCY, "camp_agency", "AGENCY_B2C")
    assert register(xp, client_email=email).client_email == email
    assert onboard(xp, client_email=email).xp == 1000


def test_a_malformed_email_is_refused_from_sql(db: psycopg.Connection[Any], unchanged: Any) -> None:
    with unchanged(), raises_sqlstate("PX002"):
        sql_call(db, "register_agency_client", agency_wallet="'0x_agency'", client_email="'client@localhost'",
                 campaign_id="'camp_agency'")


# ============================================================================ wallets (PX001)

BAD_WALLETS = [
    pytest.param("", id="empty"),
    pytest.param("   ", id="blank"),
    pytest.param("x" * 129, id="129-characters"),
    pytest.param("0x" + "a" * 127, id="0x-plus-127"),
    pytest.param("0xab\x01cd", id="control-character"),
    pytest.param("0xab\tcd", id="tab-inside"),
    pytest.param("0xab\ncd", id="newline-inside"),
    pytest.param("0xab\x7fcd", id="delete-character"),
]

WALLET_ROLES = [
    # (setup, call with the wallet under test)
    pytest.param(no_setup, lambda xp, w: creation(xp, creator_wallet=w), id="creator"),
    pytest.param(creation, lambda xp, w: approval(xp, creator_wallet=w), id="approval-creator"),
    pytest.param(creation, lambda xp, w: vote(xp, moderator_wallet=w), id="campaign-moderator"),
    pytest.param(no_setup, lambda xp, w: completion(xp, completer_wallet=w), id="completer"),
    pytest.param(no_setup, lambda xp, w: completion_vote(xp, moderator_wallet=w), id="completion-moderator"),
    pytest.param(lambda xp: xp.award_campaign_creation(AGENCY, "camp_agency", "AGENCY_B2C"),
                 lambda xp, w: register(xp, agency_wallet=w), id="agency"),
    pytest.param(registered, lambda xp, w: onboard(xp, client_wallet=w), id="client"),
]


@pytest.mark.parametrize(("setup", "call"), WALLET_ROLES)
@pytest.mark.parametrize("wallet", BAD_WALLETS)
def test_a_bad_wallet_is_refused(xp: XP, unchanged: Any, setup: Callable[[XP], Any],
                                 call: Callable[[XP, Any], Any], wallet: str) -> None:
    setup(xp)
    with unchanged(), pytest.raises(InvalidWallet):
        call(xp, wallet)


@pytest.mark.parametrize(("setup", "call"), [p for p in WALLET_ROLES if p.id != "approval-creator"])
def test_a_missing_wallet_is_refused(xp: XP, unchanged: Any, setup: Callable[[XP], Any],
                                     call: Callable[[XP, Any], Any]) -> None:
    """(The approval's creator_wallet may be omitted: the registry knows it.)"""
    setup(xp)
    with unchanged(), pytest.raises(InvalidWallet):
        call(xp, None)


def test_a_128_character_wallet_is_trimmed_and_accepted(xp: XP) -> None:
    wallet = "w" * 128
    assert completion(xp, completer_wallet=f"  {wallet}\n").rows[0].user_wallet == wallet


def test_a_bad_wallet_is_refused_from_sql(db: psycopg.Connection[Any], unchanged: Any) -> None:
    with unchanged(), raises_sqlstate("PX001"):
        sql_call(db, "award_moderation_vote", moderator_wallet="''", campaign_id="'camp_1'",
                 vote_decision="'VALID'", campaign_type="'B2C'")


# ============================================================================ identifiers (PX016)

BAD_IDS = [
    pytest.param("", id="empty"),
    pytest.param("   ", id="blank"),
    pytest.param(None, id="null"),
    pytest.param("c" * 129, id="129-characters"),
    pytest.param("camp\x01", id="control-character"),
    pytest.param("camp\n1", id="newline-inside"),
    pytest.param("camp\t1", id="tab-inside"),
]

ID_ARGUMENTS = [
    pytest.param(lambda xp, v: creation(xp, campaign_id=v), id="creation-campaign_id"),
    pytest.param(lambda xp, v: approval(xp, campaign_id=v), id="approval-campaign_id"),
    pytest.param(lambda xp, v: vote(xp, campaign_id=v), id="vote-campaign_id"),
    pytest.param(lambda xp, v: completion(xp, campaign_id=v), id="completion-campaign_id"),
    pytest.param(lambda xp, v: completion(xp, completion_id=v), id="completion-completion_id"),
    pytest.param(lambda xp, v: completion(xp, completion_id=v, is_validated=True),
                 id="validation-completion_id"),
    pytest.param(lambda xp, v: completion_vote(xp, campaign_id=v), id="completion-vote-campaign_id"),
    pytest.param(lambda xp, v: completion_vote(xp, completion_id=v), id="completion-vote-completion_id"),
    pytest.param(lambda xp, v: register(xp, campaign_id=v), id="register-campaign_id"),
]


@pytest.mark.parametrize("call", ID_ARGUMENTS)
@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_a_bad_identifier_is_refused(xp: XP, unchanged: Any, call: Callable[[XP, Any], Any],
                                     bad_id: str | None) -> None:
    with unchanged(), pytest.raises(InvalidIdentifier):
        call(xp, bad_id)


def test_a_128_character_identifier_is_accepted(xp: XP, db: psycopg.Connection[Any]) -> None:
    campaign, completion_id = "c" * 128, "d" * 128
    completion(xp, campaign_id=campaign, completion_id=f" {completion_id} ")
    row = db.execute("SELECT campaign_id, subject FROM pyxp.xp_transactions").fetchone()
    assert row == (campaign, completion_id)


def test_a_bad_identifier_is_refused_from_sql(db: psycopg.Connection[Any], unchanged: Any) -> None:
    with unchanged(), raises_sqlstate("PX016"):
        sql_call(db, "award_completion", completer_wallet="'0x_completer'", campaign_id="'camp_1'",
                 completion_id="''", campaign_type="'B2C'")


# ============================================================================ errors explain themselves
# SPEC section 6: the message names the offending value, the hint says what is accepted.

@pytest.mark.parametrize(("call", "error", "value"), [
    pytest.param(lambda xp: completion(xp, campaign_type="B2B"), UnknownCampaignType, "B2B", id="type"),
    pytest.param(lambda xp: vote(xp, vote_decision="ABSTAIN"), InvalidVote, "ABSTAIN", id="vote"),
    pytest.param(lambda xp: register(xp, client_email="client@localhost"), InvalidEmail, "client@localhost",
                 id="email"),
    pytest.param(lambda xp: completion(xp, campaign_type="INDIVIDUAL", mint_value_winc=-3),
                 InvalidNumber, "-3", id="number"),
])
def test_a_refusal_names_the_value_and_hints_at_what_is_accepted(
        xp: XP, call: Callable[[XP], Any], error: type[pyxp.XPError], value: str) -> None:
    with pytest.raises(error) as info:
        call(xp)
    assert value in info.value.message
    assert info.value.hint
