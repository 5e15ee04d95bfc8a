"""The idempotency store of flows and reversals (issue 15, item 4; migration 0011).

A flow call's or reversal's request (``pyxp.xp_requests``) keeps its key's hash and its inputs'
digest; its ledger rows hold the key and rebuild the inputs (``pyxp.rebuilt_request_inputs``).
These tests hold it to what the full copy did: replays, PX010 with the first call's inputs in
the detail, the consults of later calls, the audit, and about 100 bytes per request.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, Callable

import psycopg
import pytest

import pyxp
from pyxp import XP

CAMPAIGN = "0f8fad5b-d9cb-469f-a165-70867728950e"  # ids and wallets as long as real ones
WALLET = "0x" + "ab" * 20


def detail_inputs(error: pyxp.XPError) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two JSON objects of a PX010/PX014 detail: the first call's inputs, this call's."""
    assert error.detail is not None and error.detail.startswith("first call: ")
    first, this = error.detail.removeprefix("first call: ").split("; this call: ")
    return json.loads(first), json.loads(this)


def request_row(db: psycopg.Connection[Any], key: str) -> tuple[Any, ...] | None:
    return db.execute("SELECT idempotency_key, inputs FROM pyxp.xp_requests WHERE key_hash = pyxp.key_hash(%s)",
                      (key,)).fetchone()


def test_a_call_whose_rows_rebuild_its_inputs_keeps_only_their_digest(xp: XP, db: psycopg.Connection[Any]) -> None:
    created = xp.award_campaign_creation(WALLET, CAMPAIGN, "B2C", mint_value=1000, winstory_creates_video=True)
    assert len(created.rows) == 2  # the MINT and the video option
    assert request_row(db, f"campaign.created:{CAMPAIGN}") == (None, None)
    # The auditors' view still names the key and its wallet.
    assert db.execute("SELECT idempotency_key, claimed_in, user_wallet FROM pyxp.idempotency_keys").fetchall() == \
        [(f"campaign.created:{CAMPAIGN}", "xp_requests", WALLET)]
    again = xp.award_campaign_creation(WALLET, CAMPAIGN, "B2C", mint_value=1000, winstory_creates_video=True)
    assert again.replayed and [r.transaction_id for r in again.rows] == [r.transaction_id for r in created.rows]


def test_a_call_that_writes_no_row_keeps_its_key_and_inputs(xp: XP, db: psycopg.Connection[Any],
                                                             unchanged: Any) -> None:
    """No rule awards an INDIVIDUAL campaign's creation: no row holds the call, the request does."""
    created = xp.award_campaign_creation(WALLET, CAMPAIGN, "INDIVIDUAL")
    assert created.rows == ()
    key, inputs = request_row(db, f"campaign.created:{CAMPAIGN}") or (None, None)
    assert key == f"campaign.created:{CAMPAIGN}"
    assert inputs == {"wallet": WALLET, "campaign_type": "INDIVIDUAL", "mint_value": None,
                      "winstory_creates_video": False, "no_rewards": False}
    with unchanged():
        assert xp.award_campaign_creation(WALLET, CAMPAIGN, "INDIVIDUAL").rows == ()  # a replay of no rows
    with unchanged(), pytest.raises(pyxp.IdempotencyConflict) as refused:
        xp.award_campaign_creation(WALLET, CAMPAIGN, "INDIVIDUAL", no_rewards=True)
    assert detail_inputs(refused.value)[0] == inputs


# Each flow, and two calls under one key with different inputs. Whichever comes first, the
# conflict's detail shows it as "first call", exactly as the other order shows it as "this call":
# the inputs rebuilt from the first call's rows are the inputs it was called with.
CONFLICTS: dict[str, tuple[Callable[[XP], Any], Callable[[XP], Any], Callable[[XP], Any]]] = {
    "creation": (lambda xp: None,
                 lambda xp: xp.award_campaign_creation(WALLET, CAMPAIGN, "B2C", mint_value=Decimal("1000.50")),
                 lambda xp: xp.award_campaign_creation(WALLET, CAMPAIGN, "B2C", no_rewards=True)),
    "approval": (lambda xp: None,
                 lambda xp: xp.award_campaign_approval(CAMPAIGN, WALLET),
                 lambda xp: xp.award_campaign_approval(CAMPAIGN, "0xother")),
    "vote": (lambda xp: xp.award_campaign_creation("0xcreator", CAMPAIGN, "B2C"),
             lambda xp: xp.award_moderation_vote(WALLET, CAMPAIGN, "VALID"),
             lambda xp: xp.award_moderation_vote(WALLET, CAMPAIGN, "REFUSE")),
    "submission": (lambda xp: xp.award_campaign_creation("0xcreator", CAMPAIGN, "B2C"),
                   lambda xp: xp.award_completion(WALLET, CAMPAIGN, "cpl-1", is_paid=True, price_completion=300),
                   lambda xp: xp.award_completion(WALLET, CAMPAIGN, "cpl-1", is_paid=True, price_completion=301)),
    "outcome": (lambda xp: xp.award_campaign_creation("0xcreator", CAMPAIGN, "B2C"),
                lambda xp: xp.award_completion(WALLET, CAMPAIGN, "cpl-1", is_validated=True),
                lambda xp: xp.award_completion(WALLET, CAMPAIGN, "cpl-1", is_refused=True)),
    "completion vote": (lambda xp: xp.award_campaign_creation("0xcreator", CAMPAIGN, "B2C"),
                        lambda xp: xp.award_completion_moderation("0xmod", CAMPAIGN, "cpl-1", "VALID"),
                        lambda xp: xp.award_completion_moderation("0xmod", CAMPAIGN, "cpl-1", "REFUSE")),
    "onboarding": (lambda xp: (xp.award_campaign_creation("0xagency", CAMPAIGN, "AGENCY_B2C"),
                               xp.register_agency_client("0xagency", "c@example.com", CAMPAIGN)),
                   lambda xp: xp.onboard_agency_client("c@example.com", WALLET),
                   lambda xp: xp.onboard_agency_client("c@example.com", "0xother")),
}


@pytest.mark.parametrize("flow", sorted(CONFLICTS))
def test_the_conflict_detail_shows_the_first_calls_inputs(flow: str, conninfo: str,
                                                          fresh_database: Callable[[], str]) -> None:
    from pyxp import schema
    setup, one, other = CONFLICTS[flow]
    seen: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for target, (first, second) in ((conninfo, (one, other)), (fresh_database(), (other, one))):
        if target != conninfo:
            schema.upgrade(target)
        with XP(target, max_connections=1) as client:
            setup(client)
            written = first(client)
            assert written.rows, flow  # a call with rows: its request keeps only the digest
            with pytest.raises(pyxp.IdempotencyConflict) as refused:
                second(client)
            seen.append(detail_inputs(refused.value))
            assert first(client).replayed
    (first_a, this_a), (first_b, this_b) = seen
    assert first_a == this_b and first_b == this_a and first_a != first_b


def test_a_reversal_conflict_shows_the_first_reason(xp: XP, db: psycopg.Connection[Any], unchanged: Any) -> None:
    row = xp.award(WALLET, "CAMPAIGN_APPROVED", "to-reverse").rows[0]
    reversal = xp.reverse(row.transaction_id, "duplicate payout")
    assert request_row(db, f"reverse:{row.transaction_id}") == (None, None)
    with unchanged(), pytest.raises(pyxp.ReversalRefused) as refused:
        xp.reverse(row.transaction_id, "another reason")
    assert detail_inputs(refused.value) == ({"transaction_id": row.transaction_id, "reason": "duplicate payout"},
                                            {"transaction_id": row.transaction_id, "reason": "another reason"})
    again = xp.reverse(row.transaction_id, "duplicate payout")
    assert again.replayed and again.rows[0].transaction_id == reversal.rows[0].transaction_id


@pytest.mark.parametrize("price", [Decimal("300.0"), Decimal("300.000"), 300])
def test_a_number_spelled_with_trailing_zeros_replays(xp: XP, price: Any) -> None:
    """The digest compares what jsonb = compared before 0011: numbers by value."""
    xp.award_campaign_creation("0xcreator", CAMPAIGN, "B2C")
    first = xp.award_completion(WALLET, CAMPAIGN, "cpl-z", is_paid=True, price_completion=Decimal("300.00"))
    again = xp.award_completion(WALLET, CAMPAIGN, "cpl-z", is_paid=True, price_completion=price)
    assert again.replayed and again.rows[0].transaction_id == first.rows[0].transaction_id


def test_later_calls_read_the_rebuilt_inputs(xp: XP, db: psycopg.Connection[Any], unchanged: Any) -> None:
    """The consults of the first call's inputs: a completion's owner, an onboarded client's wallet."""
    xp.award_campaign_creation("0xagency", CAMPAIGN, "AGENCY_B2C")
    xp.award_completion(WALLET, CAMPAIGN, "cpl-owned")
    assert request_row(db, "completion.submitted:cpl-owned") == (None, None)
    with unchanged(), pytest.raises(pyxp.CampaignMismatch, match=f"belongs to {WALLET}"):
        xp.award_completion("0xsomeone", CAMPAIGN, "cpl-owned", is_validated=True)
    xp.register_agency_client("0xagency", "late@example.com", CAMPAIGN)
    xp.onboard_agency_client("late@example.com", "0xclient")
    assert request_row(db, "client.onboarded:late@example.com") == (None, None)
    xp.award_campaign_creation("0xagency", "second-campaign", "AGENCY_B2C")
    late = xp.register_agency_client("0xagency", "late@example.com", "second-campaign")
    assert (late.client_wallet, late.xp_granted) == ("0xclient", True)
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_a_request_is_about_100_bytes_whatever_its_key(xp: XP, db: psycopg.Connection[Any]) -> None:
    """Issue 15: at most ~100 bytes per award for the idempotency store. 3,000 votes with
    42-character wallets and 36-character campaign ids (keys of ~95 characters): the requests'
    heap and primary key, per request, against what the same requests take in 0009's form."""
    xp.award_campaign_creation("0xcreator", CAMPAIGN, "B2C")
    db.execute("""SELECT pyxp.award_moderation_vote('0x' || lpad(to_hex(i), 40, '0'), %s, 'VALID')
                    FROM generate_series(1, 3000) i""", (CAMPAIGN,))
    requests, size = db.execute("""
        SELECT count(*), pg_relation_size('pyxp.xp_requests') + pg_relation_size('pyxp.xp_requests_pkey')
          FROM pyxp.xp_requests""").fetchone() or (0, 0)
    assert requests == 3001
    # 0009's form: the key text as primary key, the inputs as jsonb.
    db.execute("""CREATE TEMP TABLE full_copy AS
                  SELECT k.idempotency_key, pyxp.rebuilt_request_inputs(k.idempotency_key, NULL, t.user_wallet,
                             t.campaign_id, t.subject, t.metadata, NULL) AS inputs, q.ruleset_id, q.created_at
                    FROM pyxp.idempotency_keys k
                    JOIN pyxp.xp_transactions t ON t.idempotency_key = k.idempotency_key
                    JOIN pyxp.xp_requests q ON q.key_hash = pyxp.key_hash(k.idempotency_key)
                   WHERE k.idempotency_key LIKE 'campaign.vote:%'""")
    db.execute("ALTER TABLE full_copy ADD PRIMARY KEY (idempotency_key)")
    full = db.execute("SELECT pg_total_relation_size('full_copy') / count(*) FROM full_copy").fetchone()[0]  # type: ignore[index]
    assert size / requests <= 110, size / requests
    assert full >= 2.5 * size / requests, (full, size / requests)


def test_audit_reports_a_request_without_its_rows(xp: XP, db: psycopg.Connection[Any], unchanged: Any) -> None:
    """A request that keeps only a digest needs its rows: one without them is reported, and a
    call with its key is refused (PX028), never replayed as nothing."""
    xp.award_campaign_creation("0xcreator", CAMPAIGN, "B2C")
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []
    db.execute("""INSERT INTO pyxp.xp_requests (key_hash, inputs_digest)
                  VALUES (pyxp.key_hash('campaign.created:forged'), 1)""")
    assert [r[0] for r in db.execute("SELECT * FROM pyxp.audit()")] == ["request_rows_missing"]
    with unchanged(), pytest.raises(pyxp.LedgerInconsistent, match="no longer holds"):
        xp.award_campaign_creation("0xcreator", "forged", "B2C")


def test_a_retry_whose_first_rule_is_gone_is_refused(xp: XP, db: psycopg.Connection[Any], unchanged: Any) -> None:
    """Review: the ruleset and a completion's event are read through its rows' rule; with that
    rule row deleted (audit: rule_missing) a retry replayed no rows. It is refused now."""
    xp.award_campaign_creation("0xcreator", CAMPAIGN, "B2C")
    first = xp.award_completion(WALLET, CAMPAIGN, "cpl-r", is_paid=True, price_completion=300)
    assert first.xp == 400
    db.execute("DELETE FROM pyxp.rules WHERE action = 'Completion_Submit_B2C_Paid'")
    with unchanged():
        for price in (300, 301):
            with pytest.raises(pyxp.LedgerInconsistent, match="no longer holds"):
                xp.award_completion(WALLET, CAMPAIGN, "cpl-r", is_paid=True, price_completion=price)
