"""Batch ingestion, ``pyxp.award_many(events jsonb)`` and ``XP.award_many`` (SPEC sections 4, 5, 9).

A batch is a list of generic awards (the parameters of ``pyxp.award``). It must
behave exactly like the same awards made one by one — same amounts, levels,
balance floor, idempotency keys — and be one transaction: any refusal refuses
the whole batch, names the event ("event N: ...", 0-based) and writes nothing.
"""

from __future__ import annotations

from decimal import Decimal

from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pyxp import XP, schema
from pyxp import errors as E
from pyxp.results import Award, AwardRequest

VOTE = "MODERATION_VALIDATED_BY_MODERATOR"  # +2
REFUSE_VOTE = "MODERATION_REFUSED_BY_MODERATOR"  # -1
MAX_BALANCE = 2**62


# --------------------------------------------------------------------------- helpers


def award_many_sql(db: psycopg.Connection[Any], events: Any) -> list[dict[str, Any]]:
    """pyxp.award_many through the SQL API; ``events`` is any Python value sent as jsonb."""
    with db.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM pyxp.award_many(events => %s::jsonb)", (Jsonb(events),))
        return cur.fetchall()


def ledger(db: psycopg.Connection[Any], wallet: str) -> list[dict[str, Any]]:
    with db.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM pyxp.xp_transactions WHERE user_wallet = %s ORDER BY id", (wallet,))
        return cur.fetchall()


def ledger_count(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM pyxp.xp_transactions").fetchone()
    assert row is not None
    return int(row[0])


def balance_row(db: psycopg.Connection[Any], wallet: str) -> tuple[Any, ...] | None:
    return db.execute("SELECT total_xp, current_level, xp_to_next_level, total_moderations"
                      " FROM pyxp.xp_balances WHERE user_wallet = %s", (wallet,)).fetchone()


def comparable_rows(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What a ledger row says, without its id, key, wallet and timestamp."""
    return [(r["transaction_type"], r["xp_amount"], r["xp_requested"], r["balance_after"], r["rule_id"],
             r["campaign_id"], r["subject"], r["metadata"], r["reverses"]) for r in rows]


def comparable_award(award: Award) -> list[tuple[Any, ...]]:
    """What an award call reported, without transaction ids and wallets."""
    return [(r.transaction_type, r.xp_amount, r.xp_requested, r.total_xp, r.current_level,
             r.xp_to_next_level, r.previous_level, r.replayed) for r in award.rows]


def ruleset_file(tmp_path: Path, text: str, name: str = "ruleset.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def floor_ruleset(tmp_path: Path, floor: int = 0) -> str:
    """The shipped winstory ruleset with a balance floor."""
    text = (resources.files("pyxp") / "rulesets" / "winstory.toml").read_text(encoding="utf-8")
    assert 'name = "winstory"\n' in text
    text = text.replace('name = "winstory"\n', f'name = "winstory"\nbalance_floor = {floor}\n')
    return ruleset_file(tmp_path, text, "winstory.toml")


# Two good events put before a bad one: the refusal must name index 2 and undo them.
GOOD_EVENTS: list[dict[str, Any]] = [
    {"wallet": "0x_a", "action": "CAMPAIGN_APPROVED", "idempotency_key": "good-0"},
    {"wallet": "0x_b", "action": "Completion_Submit_B2C_Paid", "idempotency_key": "good-1",
     "params": {"PRICE_COMPLETION": 300}},
]


def bad_event(**fields: Any) -> dict[str, Any]:
    """A valid event (a vote) with some fields replaced; a field set to ... is left out."""
    event: dict[str, Any] = {"wallet": "0x_c", "action": VOTE, "idempotency_key": "bad-2"}
    event.update(fields)
    return {name: value for name, value in event.items() if value is not ...}


# =========================================================================== results


def test_batch_returns_one_award_per_event_in_event_order(xp: XP, db: psycopg.Connection[Any]) -> None:
    """SPEC 9: batch variant; one Award per event, in order, each row tagged with its event_index."""
    results = xp.award_many([
        AwardRequest("0x_z", VOTE, "k0"),
        AwardRequest("0x_a", "B2C_MINT", "k1"),
        AwardRequest("0x_z", REFUSE_VOTE, "k2"),
        AwardRequest("0x_m", "Completion_Submit_B2C_Paid", "k3", {"PRICE_COMPLETION": 500}),
        AwardRequest("0x_a", "CAMPAIGN_APPROVED", "k4"),
    ])

    assert len(results) == 5
    assert [[row.event_index for row in result.rows] for result in results] == [[0], [1], [2], [3], [4]]
    assert [(r.rows[0].user_wallet, r.transaction_types, r.xp, r.total_xp, r.level_before, r.level_after,
             r.replayed) for r in results] == [
        ("0x_z", [VOTE], 2, 2, 1, 1, False),
        ("0x_a", ["B2C_MINT"], 1000, 1000, 1, 5, False),
        ("0x_z", [REFUSE_VOTE], -1, 1, 1, 1, False),
        ("0x_m", ["Completion_Submit_B2C_Paid"], 600, 600, 1, 4, False),
        ("0x_a", ["CAMPAIGN_APPROVED"], 100, 1100, 5, 5, False),
    ]
    # Each result names the ledger row it wrote.
    stored = {row["id"]: row for wallet in ("0x_z", "0x_a", "0x_m") for row in ledger(db, wallet)}
    for result in results:
        (row,) = result.rows
        assert stored[row.transaction_id]["idempotency_key"] == f"k{row.event_index}"
        assert stored[row.transaction_id]["balance_after"] == row.total_xp
    assert ledger_count(db) == 5
    assert xp.audit() == []


def test_sql_result_rows_carry_the_event_index_in_order(db: psycopg.Connection[Any], xp: XP) -> None:
    """SPEC 5 (SQL API): the rows come ordered by event_index, whatever the wallets' order."""
    rows = award_many_sql(db, [
        {"wallet": "0x_b", "action": VOTE, "idempotency_key": "k0"},
        {"wallet": "0x_a", "action": VOTE, "idempotency_key": "k1"},
        {"wallet": "0x_b", "action": VOTE, "idempotency_key": "k2"},
    ])
    summary = [(r["event_index"], r["user_wallet"], r["xp_amount"], r["total_xp"], r["replayed"])
               for r in rows]
    assert summary == [(0, "0x_b", 2, 2, False), (1, "0x_a", 2, 2, False), (2, "0x_b", 2, 4, False)]
    assert xp.audit() == []


# Awards made once as a batch and once one by one, on two copies of each wallet.
# {w} is replaced by the copy's wallet suffix; the address appears in both of its
# spellings (SPEC 1: one user).
EQUIVALENCE_EVENTS: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    ("creator", "B2C_MINT", {}, {}),
    ("moderator", VOTE, {}, {}),
    ("creator", "OPTION_WINSTORY_VIDEO", {}, {"campaign_id": "camp-1"}),
    ("ADDRESS", "Completion_Submit_B2C_Paid", {"PRICE_COMPLETION": 300}, {"subject": "completion-1"}),
    ("moderator", REFUSE_VOTE, {}, {}),
    ("address", "Completion_Refused_Individual", {"MINT_VALUE_$WINC": 4999}, {}),  # -2500
    ("moderator", REFUSE_VOTE, {}, {}),
    ("moderator", REFUSE_VOTE, {}, {"note": "below zero"}),
    ("creator", "OPTION_NO_REWARDS", {}, {}),
    ("ADDRESS", "Completion_Submit_Individual", {"mint_value_winc": 2.5}, {}),  # rounds to 3
    ("creator", "CAMPAIGN_APPROVED", {}, {"campaign_id": "camp-1", "subject": "approval", "n": [1, 2]}),
    ("fresh", "Completion_Submit_B2C_Free", {}, {}),
]
ADDRESSES = {"batch": "0x52908400098527886E0F7030069857D2E4169EE7",
             "single": "0xDE709F2102306220921060314715629080E2FB77"}


def copy_wallet(role: str, copy: str) -> str:
    if role == "ADDRESS":
        return ADDRESSES[copy]
    if role == "address":
        return ADDRESSES[copy].lower()
    return f"0x_{role}_{copy}"


def test_batch_writes_what_the_same_single_awards_write(xp: XP, db: psycopg.Connection[Any]) -> None:
    """SPEC 9: a batch is the awards it holds, done at once: same amounts, levels,
    balances, balance_after chain, rule ids and metadata as one call per award."""
    for copy in ("batch", "single"):  # both copies start with a balance
        xp.award(copy_wallet("creator", copy), "CAMPAIGN_APPROVED", f"before-{copy}")

    batch = xp.award_many([
        AwardRequest(copy_wallet(role, "batch"), action, f"batch-{i}", params, context)
        for i, (role, action, params, context) in enumerate(EQUIVALENCE_EVENTS)])
    singles = [xp.award(copy_wallet(role, "single"), action, f"single-{i}", params, context)
               for i, (role, action, params, context) in enumerate(EQUIVALENCE_EVENTS)]

    assert [comparable_award(award) for award in batch] == [comparable_award(award) for award in singles]
    for role in ("creator", "moderator", "address", "fresh"):
        batch_wallet, single_wallet = copy_wallet(role, "batch"), copy_wallet(role, "single")
        assert comparable_rows(ledger(db, batch_wallet)) == comparable_rows(ledger(db, single_wallet)), role
        assert balance_row(db, batch_wallet) == balance_row(db, single_wallet), role
    # A few anchors, so that "equal" is not "equally wrong" (SPEC 2, 3).
    assert balance_row(db, "0x_creator_batch") == (2700, 6, 1300, 0)
    assert balance_row(db, "0x_moderator_batch") == (-1, 1, 101, 0)
    assert balance_row(db, ADDRESSES["batch"].lower()) == (400 - 2500 + 3, 1, 2197, 0)
    address_rows = [row.user_wallet for award in batch for row in award.rows
                    if row.user_wallet.startswith("0x5")]
    assert address_rows == [ADDRESSES["batch"].lower()] * 3
    assert xp.audit() == []


def test_batch_ledger_ids_follow_each_wallets_balance_chain(xp: XP, db: psycopg.Connection[Any]) -> None:
    """SPEC 4: each row's balance_after is the previous row's (by id) plus its amount."""
    xp.award_many([AwardRequest(f"0x_w{i % 3}", VOTE if i % 4 else REFUSE_VOTE, f"k{i}") for i in range(30)])
    for wallet in ("0x_w0", "0x_w1", "0x_w2"):
        running = 0
        for row in ledger(db, wallet):
            running += row["xp_amount"]
            assert row["balance_after"] == running
        assert balance_row(db, wallet)[0] == running  # type: ignore[index]
    assert xp.audit() == []


# =========================================================================== idempotency


def test_batch_replays_keys_of_earlier_single_awards(xp: XP, db: psycopg.Connection[Any]) -> None:
    """SPEC 4: the same key with the same inputs returns the original result, marked replayed.
    The context is not an input: another context still replays."""
    address = ADDRESSES["batch"]
    first = xp.award(address, "Completion_Submit_B2C_Paid", "k-single", {"PRICE_COMPLETION": 300},
                     {"note": "first"})
    xp.award(address, VOTE, "k-later")  # the balance moves on after the first award

    results = xp.award_many([
        AwardRequest("0x_other", VOTE, "k-new"),
        AwardRequest(address.lower(), "Completion_Submit_B2C_Paid", "k-single", {"PRICE_COMPLETION": 300},
                     {"note": "another context"}),
    ])

    assert results[0].replayed is False
    assert results[1].replayed is True
    assert comparable_award(results[1]) == [row[:-1] + (True,) for row in comparable_award(first)]
    assert results[1].rows[0].transaction_id == first.rows[0].transaction_id
    assert ledger_count(db) == 3
    assert balance_row(db, address.lower())[0] == 402  # type: ignore[index]
    assert xp.audit() == []


def test_single_award_replays_a_key_written_by_a_batch(xp: XP, unchanged: Any) -> None:
    results = xp.award_many([
        AwardRequest("0x_a", "B2C_MINT", "k0"),
        AwardRequest("0x_a", "Completion_Submit_B2C_Paid", "k1", {"PRICE_COMPLETION": 50})])
    with unchanged():
        replay = xp.award("0x_a", "Completion_Submit_B2C_Paid", "k1", {"PRICE_COMPLETION": 50})
    assert replay.replayed is True
    assert replay.rows[0].transaction_id == results[1].rows[0].transaction_id
    assert comparable_award(replay) == [row[:-1] + (True,) for row in comparable_award(results[1])]
    assert xp.audit() == []


def test_single_award_with_other_inputs_on_a_batch_key_is_refused(xp: XP, unchanged: Any) -> None:
    xp.award_many([AwardRequest("0x_a", "B2C_MINT", "k0")])
    with unchanged(), pytest.raises(E.IdempotencyConflict):
        xp.award("0x_b", "B2C_MINT", "k0")


def test_repeating_a_whole_batch_replays_every_event_and_writes_nothing(xp: XP, unchanged: Any) -> None:
    events = [AwardRequest(f"0x_w{i % 2}", VOTE, f"k{i}") for i in range(6)]
    first = xp.award_many(events)
    with unchanged():
        again = xp.award_many(events)
    assert all(award.replayed for award in again)
    assert [comparable_award(a) for a in again] == [
        [row[:-1] + (True,) for row in comparable_award(a)] for a in first]
    assert [a.rows[0].transaction_id for a in again] == [a.rows[0].transaction_id for a in first]
    assert xp.audit() == []


def test_a_key_repeated_inside_a_batch_replays_its_first_occurrence(
        xp: XP, db: psycopg.Connection[Any]) -> None:
    """Same inputs (another context is fine): the later events answer with the first one's row."""
    results = xp.award_many([
        AwardRequest("0x_a", "Completion_Submit_B2C_Paid", "dup", {"PRICE_COMPLETION": 10}),
        AwardRequest("0x_a", VOTE, "other"),
        AwardRequest("0x_a", "Completion_Submit_B2C_Paid", "dup", {"PRICE_COMPLETION": 10}),
        AwardRequest("0x_a", "Completion_Submit_B2C_Paid", "dup", {"price_completion": 10}, {"retry": 2}),
    ])
    assert [a.replayed for a in results] == [False, False, True, True]
    first_id = results[0].rows[0].transaction_id
    assert [a.rows[0].transaction_id for a in results[2:]] == [first_id, first_id]
    assert [(a.xp, a.total_xp) for a in results] == [(110, 110), (2, 112), (110, 110), (110, 110)]
    assert [r["idempotency_key"] for r in ledger(db, "0x_a")] == ["dup", "other"]
    assert balance_row(db, "0x_a")[0] == 112  # type: ignore[index]
    assert xp.audit() == []


def test_batch_replays_a_key_whose_action_left_the_active_ruleset(
        conninfo: str, xp: XP, unchanged: Any) -> None:
    """SPEC 4: a repeated call returns the original result, whatever the rules are now; a single
    award does so for an action the new active ruleset (winstory-flows) no longer has."""
    first = xp.award("0x_a", "Completion_Submit_B2C_Free", "k1")
    schema.apply_ruleset(conninfo, "winstory-flows")
    with unchanged():
        single = xp.award("0x_a", "Completion_Submit_B2C_Free", "k1")
        (batch,) = xp.award_many([AwardRequest("0x_a", "Completion_Submit_B2C_Free", "k1")])
    assert single.replayed and batch.replayed
    assert batch.rows[0].transaction_id == single.rows[0].transaction_id == first.rows[0].transaction_id
    assert comparable_award(batch) == comparable_award(single)
    assert xp.audit() == []


def test_batch_replays_a_key_whose_rule_now_gives_more_than_10_to_the_15(
        conninfo: str, xp: XP, tmp_path: Path, unchanged: Any) -> None:
    """As above, when the action's new formula would now refuse the same params (PX004):
    a repetition is not a new award, it returns the original result."""
    schema.apply_ruleset(conninfo, mint_ruleset(tmp_path, None))
    first = xp.award("0x_a", "MINT", "k1", {"MINT_VALUE": 10**13})
    schema.apply_ruleset(conninfo, ruleset_file(tmp_path, Path(mint_ruleset(tmp_path, None)).read_text(
        encoding="utf-8").replace('earn_xp = "MINT_VALUE * 1"', 'earn_xp = "MINT_VALUE * 1000"'), "v2.toml"))
    with unchanged():
        single = xp.award("0x_a", "MINT", "k1", {"MINT_VALUE": 10**13})
        (batch,) = xp.award_many([AwardRequest("0x_a", "MINT", "k1", {"MINT_VALUE": 10**13})])
    assert single.replayed and batch.replayed
    assert batch.rows[0].transaction_id == single.rows[0].transaction_id == first.rows[0].transaction_id
    assert batch.xp == 10**13
    assert xp.audit() == []


def test_null_params_and_context_in_an_event_are_like_omitted_ones(
        xp: XP, db: psycopg.Connection[Any]) -> None:
    """pyxp.award takes NULL params and context as none (its defaults); an event's JSON null
    is the batch's way of saying the same, and XP.award_many passes a mapping's None as null."""
    single = xp.award("0x_a", VOTE, "k-single", None, None)
    (batch,) = xp.award_many([{"wallet": "0x_b", "action": VOTE, "idempotency_key": "k-batch",
                               "params": None, "context": None}])
    assert (batch.xp, batch.total_xp) == (single.xp, single.total_xp) == (2, 2)
    assert [r["metadata"] for r in ledger(db, "0x_b")] == [r["metadata"] for r in ledger(db, "0x_a")]
    assert xp.audit() == []


@pytest.mark.parametrize("other", [
    pytest.param({"params": {"PRICE_COMPLETION": 11}}, id="other params"),
    pytest.param({"wallet": "0x_b"}, id="other wallet"),
    pytest.param({"action": "Completion_Submit_Agency_Paid"}, id="other action"),
])
def test_a_key_repeated_inside_a_batch_with_other_inputs_is_refused(
        xp: XP, unchanged: Any, other: dict[str, Any]) -> None:
    """SPEC 4: same key, different inputs: an error naming both events, nothing written."""
    first = {"wallet": "0x_a", "action": "Completion_Submit_B2C_Paid", "idempotency_key": "dup",
             "params": {"PRICE_COMPLETION": 10}}
    with unchanged(), pytest.raises(E.IdempotencyConflict) as raised:
        xp.award_many([first, {"wallet": "0x_a", "action": VOTE, "idempotency_key": "fine"},
                       {**first, **other}])
    message = raised.value.message
    assert message.startswith("event 2:")
    assert "event 0" in message
    assert "'dup'" in message


def test_a_batch_key_conflicting_with_a_stored_key_is_refused(xp: XP, unchanged: Any) -> None:
    xp.award("0x_a", "B2C_MINT", "stored")
    with unchanged(), pytest.raises(E.IdempotencyConflict) as raised:
        xp.award_many([*GOOD_EVENTS, bad_event(idempotency_key="stored", action="B2C_MINT", wallet="0x_b")])
    assert raised.value.message.startswith("event 2:")
    assert "'stored'" in raised.value.message


# =========================================================================== refusals


@pytest.mark.parametrize(("event", "error"), [
    pytest.param(bad_event(wallet=""), E.InvalidWallet, id="empty wallet"),
    pytest.param(bad_event(wallet="   "), E.InvalidWallet, id="blank wallet"),
    pytest.param(bad_event(wallet="w" * 129), E.InvalidWallet, id="wallet of 129 characters"),
    pytest.param(bad_event(wallet="0x\nab"), E.InvalidWallet, id="wallet with a newline"),
    pytest.param(bad_event(wallet=...), E.InvalidWallet, id="no wallet"),
    pytest.param(bad_event(action="NO_SUCH_ACTION"), E.UnknownAction, id="unknown action"),
    pytest.param(bad_event(action="moderation_validated_by_moderator"), E.UnknownAction, id="action case"),
    pytest.param(bad_event(action=...), E.InvalidIdentifier, id="no action"),
    pytest.param(bad_event(idempotency_key=""), E.InvalidIdentifier, id="empty key"),
    pytest.param(bad_event(idempotency_key="k" * 257), E.InvalidIdentifier, id="key of 257 characters"),
    pytest.param(bad_event(idempotency_key=...), E.InvalidIdentifier, id="no key"),
    pytest.param(bad_event(action="Completion_Submit_B2C_Paid"), E.MissingInput, id="missing input"),
    pytest.param(bad_event(action="Completion_Refused_Individual", params={"PRICE_COMPLETION": 1}),
                 E.MissingInput, id="other input than the formula's"),
    pytest.param(bad_event(params={"PRICE_COMPLETION": 1}), E.InvalidParams, id="unknown param"),
    pytest.param(bad_event(params={"1X": 1}), E.InvalidParams, id="param name not an identifier"),
    pytest.param(bad_event(parms={"PRICE_COMPLETION": 1}), E.InvalidParams, id="misspelt params"),
    pytest.param(bad_event(contxt={"note": "x"}), E.InvalidParams, id="misspelt context"),
    pytest.param(bad_event(campaign_id="camp_1"), E.InvalidParams, id="a context field at the top"),
    pytest.param(bad_event(action="Completion_Submit_B2C_Paid",
                           params={"PRICE_COMPLETION": 1, "price_completion": 1}),
                 E.InvalidParams, id="param given twice"),
    pytest.param(bad_event(params=[1]), E.InvalidParams, id="params not an object"),
    pytest.param(bad_event(context="note"), E.InvalidParams, id="context not an object"),
    pytest.param(bad_event(context={"x": "y" * 17000}), E.InvalidParams, id="context over 16 KiB"),
    pytest.param(bad_event(context={"campaign_id": ""}), E.InvalidIdentifier, id="empty campaign_id"),
    pytest.param(bad_event(action="Completion_Submit_B2C_Paid", params={"PRICE_COMPLETION": "300"}),
                 E.InvalidNumber, id="number as a string"),
    pytest.param(bad_event(action="Completion_Submit_B2C_Paid", params={"PRICE_COMPLETION": -1}),
                 E.InvalidNumber, id="negative number"),
    pytest.param(bad_event(action="Completion_Submit_B2C_Paid", params={"PRICE_COMPLETION": float("nan")}),
                 E.InvalidNumber, id="NaN"),
    pytest.param(bad_event(action="Completion_Submit_B2C_Paid", params={"PRICE_COMPLETION": float("inf")}),
                 E.InvalidNumber, id="Infinity"),
    pytest.param(bad_event(action="Completion_Submit_Individual", params={"MINT_VALUE_WINC": 10**15 + 1}),
                 E.InvalidNumber, id="input over 10^15"),
    pytest.param(bad_event(action="Completion_Submit_B2C_Paid", params={"PRICE_COMPLETION": 10**15}),
                 E.InvalidNumber, id="amount over 10^15"),
])
def test_refused_event_refuses_the_whole_batch_naming_its_index(
        xp: XP, unchanged: Any, event: dict[str, Any], error: type[E.XPError]) -> None:
    """SPEC 4 and 6: one call is one transaction; every refusal is a PX error, nothing written."""
    with unchanged(), pytest.raises(error) as raised:
        xp.award_many([*GOOD_EVENTS, event])
    assert raised.value.message.startswith("event 2: "), raised.value.message
    assert raised.value.hint


def test_a_huge_number_is_shown_briefly(xp: XP, unchanged: Any) -> None:
    """PX004 printed all 130,000 digits of 1e130000 (a hostile test)."""
    with unchanged(), pytest.raises(E.InvalidNumber) as raised:
        xp.award_many([bad_event(action="Completion_Submit_B2C_Paid", params={"PRICE_COMPLETION": Decimal("1e1000")})])
    assert len(raised.value.message) < 200 and "1001 characters" in raised.value.message, raised.value.message


def test_an_unknown_field_is_named(xp: XP, unchanged: Any) -> None:
    """A misspelt field was dropped and the award made without it (0028, a hostile test)."""
    with unchanged(), pytest.raises(E.InvalidParams) as raised:
        xp.award_many([*GOOD_EVENTS, bad_event(walet="0x_c")])
    assert raised.value.message == "event 2: unknown field 'walet'"
    assert "context" in (raised.value.hint or "")


def test_a_retry_replays_whatever_fields_its_events_carry(xp: XP, unchanged: Any) -> None:
    """A batch made before 0028 with a field pyxp never read must replay, not be refused (a hostile
    test); an event whose key is claimed is a retry."""
    first = xp.award_many([bad_event(idempotency_key="made-before")])
    with unchanged():
        again = xp.award_many([bad_event(idempotency_key="made-before", note="from the CRM")])
    assert again[0].replayed and [r.transaction_id for r in again[0].rows] == [r.transaction_id for r in first[0].rows]
    with unchanged(), pytest.raises(E.InvalidParams):
        xp.award_many([bad_event(idempotency_key="made-before", note="x"), bad_event(idempotency_key="new", note="x")])


def test_refused_first_event_is_event_0(xp: XP, unchanged: Any) -> None:
    with unchanged(), pytest.raises(E.UnknownAction) as raised:
        xp.award_many([bad_event(action="NOPE"), *GOOD_EVENTS])
    assert raised.value.message.startswith("event 0: ")
    assert "'NOPE'" in raised.value.message


@pytest.mark.parametrize("element", ["an event", 12, None, [], [GOOD_EVENTS[0]], True])
def test_event_that_is_not_an_object_is_refused(
        db: psycopg.Connection[Any], unchanged: Any, element: Any) -> None:
    with unchanged(), pytest.raises(psycopg.Error) as raised:
        award_many_sql(db, [*GOOD_EVENTS, element])
    assert raised.value.diag.sqlstate == "PX017"
    assert (raised.value.diag.message_primary or "").startswith("event 2: not a JSON object")


@pytest.mark.parametrize("events", ['{}', '{"events": []}', '"[]"', '12', 'null', None])
def test_events_that_are_not_an_array_are_refused(
        db: psycopg.Connection[Any], unchanged: Any, events: str | None) -> None:
    """The literal is sent as is (SQL NULL for None)."""
    with unchanged(), pytest.raises(psycopg.Error) as raised:
        db.execute("SELECT * FROM pyxp.award_many(events => %s::jsonb)", (events,))
    assert raised.value.diag.sqlstate == "PX017"
    assert "JSON array" in (raised.value.diag.message_primary or "")


def test_batch_of_more_than_10000_events_is_refused(xp: XP, unchanged: Any) -> None:
    events = [AwardRequest(f"0x_w{i % 10}", VOTE, f"k{i}") for i in range(10001)]
    with unchanged(), pytest.raises(E.InvalidArgument) as raised:
        xp.award_many(events)
    assert "10000" in raised.value.message


def test_batch_of_10000_events_is_accepted(xp: XP, db: psycopg.Connection[Any]) -> None:
    """The largest batch, its events' amounts mixed (+2, -1) across 10 wallets: every row's
    balance_after and every result's total follow event order (the writer aggregates its arrays
    from one subquery sorted in call order since 0035: a re-test asked for this pin)."""
    events = [AwardRequest(f"0x_w{i % 10}", REFUSE_VOTE if i % 7 == 3 else VOTE, f"k{i}") for i in range(10000)]
    results = xp.award_many(events)
    assert len(results) == 10000
    assert [r.rows[0].event_index for r in results] == list(range(10000))
    running: dict[str, int] = {}
    for event, result in zip(events, results, strict=True):
        running[event.wallet] = running.get(event.wallet, 0) + result.rows[0].xp_amount
        assert result.rows[0].total_xp == running[event.wallet]
    for wallet, total in running.items():
        chain = 0
        for row in ledger(db, wallet):
            chain += row["xp_amount"]
            assert row["balance_after"] == chain
        assert chain == total == balance_row(db, wallet)[0]  # type: ignore[index]
    assert xp.audit() == []


def test_empty_batch_returns_nothing_and_writes_nothing(
        xp: XP, db: psycopg.Connection[Any], unchanged: Any) -> None:
    with unchanged():
        assert xp.award_many([]) == []
        assert award_many_sql(db, []) == []
    assert xp.audit() == []


# =========================================================================== balance floor


# (wallet, action, params) and what the floor 0 makes of it: applied, requested, balance after.
FLOOR_EVENTS: list[tuple[str, str, dict[str, Any], int, int | None, int]] = [
    ("w", "Completion_Refused_B2C", {}, -30, -50, 0),  # w starts at 30
    ("v", "Completion_Refused_B2C", {}, 0, -50, 0),  # v is new: at the floor already
    ("w", "Completion_Submit_B2C_Free", {}, 100, None, 100),
    ("w", "Completion_Refused_Individual", {"MINT_VALUE_WINC": 150}, -75, None, 25),
    ("v", VOTE, {}, 2, None, 2),
    ("w", "Completion_Refused_Individual", {"MINT_VALUE_WINC": 5000}, -25, -2500, 0),
    ("v", REFUSE_VOTE, {}, -1, None, 1),
    ("v", REFUSE_VOTE, {}, -1, None, 0),  # exactly down to the floor: not cut
    ("v", REFUSE_VOTE, {}, 0, -1, 0),
    ("w", "B2C_MINT", {}, 1000, None, 1000),
    ("w", "Completion_Refused_B2C", {}, -50, None, 950),
]


def test_floor_cuts_batch_penalties_per_row_in_event_order_as_single_awards_do(
        conninfo: str, xp: XP, db: psycopg.Connection[Any], tmp_path: Path) -> None:
    """SPEC 4: with a floor the row records the requested and the applied amount; in a
    batch each penalty is cut against the running balance of its wallet, in event order."""
    schema.apply_ruleset(conninfo, floor_ruleset(tmp_path))
    for copy in ("batch", "single"):
        xp.award(f"0x_w_{copy}", "Completion_Submit_Individual", f"start-{copy}", {"MINT_VALUE_WINC": 30})

    batch = xp.award_many([AwardRequest(f"0x_{w}_batch", action, f"batch-{i}", params)
                           for i, (w, action, params, *_) in enumerate(FLOOR_EVENTS)])
    singles = [xp.award(f"0x_{w}_single", action, f"single-{i}", params)
               for i, (w, action, params, *_) in enumerate(FLOOR_EVENTS)]

    assert [(a.rows[0].xp_amount, a.rows[0].xp_requested, a.total_xp) for a in batch] == [
        (applied, requested, after) for *_, applied, requested, after in FLOOR_EVENTS]
    assert [comparable_award(a) for a in batch] == [comparable_award(a) for a in singles]
    for wallet in ("w", "v"):
        batch_rows = ledger(db, f"0x_{wallet}_batch")
        assert comparable_rows(batch_rows) == comparable_rows(ledger(db, f"0x_{wallet}_single"))
        assert balance_row(db, f"0x_{wallet}_batch") == balance_row(db, f"0x_{wallet}_single")
    # xp_requested is stored on the cut rows only.
    assert [(r["xp_amount"], r["xp_requested"]) for r in ledger(db, "0x_v_batch")] == [
        (0, -50), (2, None), (-1, None), (-1, None), (0, -1)]
    assert xp.audit() == []


# =========================================================================== balance bound


def mint_ruleset(tmp_path: Path, floor: int | None) -> str:
    """One rule that earns and one that loses exactly MINT_VALUE XP (at most 10^15 a row)."""
    floor_line = "" if floor is None else f"balance_floor = {floor}\n"
    return ruleset_file(tmp_path, f"""name = "mint"
{floor_line}
[[rules]]
action = "MINT"
earn_xp = "MINT_VALUE * 1"

[[rules]]
action = "BURN"
lose_xp = "MINT_VALUE * 1"
""")


@pytest.mark.slow
@pytest.mark.parametrize(("action", "floor", "sign"), [
    pytest.param("MINT", None, 1, id="up to 2^62"),
    pytest.param("MINT", 0, 1, id="up to 2^62 with a floor"),
    pytest.param("BURN", None, -1, id="down to -2^62"),
])
def test_batch_that_would_push_a_balance_beyond_2_to_the_62_is_refused(
        conninfo: str, xp: XP, db: psycopg.Connection[Any], tmp_path: Path, unchanged: Any,
        action: str, floor: int | None, sign: int) -> None:
    """A balance stays within +-2^62 (PX019). 4612 awards of 10^15 in one batch (<= 10000
    events) cross it: refused at event 4611, nothing written. 4611 of them and the exact
    remainder reach the bound itself, which is a valid balance."""
    schema.apply_ruleset(conninfo, mint_ruleset(tmp_path, floor))
    big = [AwardRequest("0x_whale", action, f"big-{i}", {"MINT_VALUE": 10**15}) for i in range(4612)]

    with unchanged(), pytest.raises(E.BalanceOutOfRange) as raised:
        xp.award_many([AwardRequest("0x_minnow", "MINT", "minnow", {"MINT_VALUE": 1}), *big])
    assert raised.value.message.startswith("event 4612: ")  # the minnow's event is event 0

    rest = MAX_BALANCE - 4611 * 10**15
    results = xp.award_many([*big[:4611], AwardRequest("0x_whale", action, "rest", {"MINT_VALUE": rest})])
    assert results[-1].total_xp == sign * MAX_BALANCE
    assert xp.balance("0x_whale").total_xp == sign * MAX_BALANCE
    assert xp.audit() == []

    # At the bound, one more XP in the same direction is refused too (an existing balance).
    with unchanged(), pytest.raises(E.BalanceOutOfRange) as raised:
        xp.award_many([AwardRequest("0x_minnow", "MINT", "minnow", {"MINT_VALUE": 1}),
                       AwardRequest("0x_whale", action, "one-more", {"MINT_VALUE": 1})])
    assert raised.value.message.startswith("event 1: ")
    assert ledger_count(db) == 4612
