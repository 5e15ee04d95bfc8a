"""Concurrency of the award engine on a real server: threads, each with its own connection.

SPEC §4 "Atomicity": concurrent calls on the same wallet or the same key never
lose or double an award; "Idempotency": the same key with the same inputs
returns the original result (replayed), with other inputs it is refused
(PX010) and nothing is written; a row can be reversed once. SPEC §3: a new
curve is applied to every balance, so levels always match the active curve.

No mocks, no sleeps, no timing assertions: a threading.Barrier starts the
racers together, and the assertions are on the database state afterwards.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pyxp import schema

pytestmark = pytest.mark.slow

THREADS = 16
AWARDS_PER_THREAD = 25
VOTE = "MODERATION_VALIDATED_BY_MODERATOR"  # +2 in the default ruleset (SPEC §2)

AWARD = """SELECT * FROM pyxp.award(wallet => %(wallet)s, action => %(action)s,
                                   idempotency_key => %(key)s, params => %(params)s::jsonb)"""
REVERSE = "SELECT * FROM pyxp.reverse_transaction(transaction_id => %(id)s, reason => %(reason)s)"

Outcome = tuple[str, Any]  # ("ok", rows) or ("error", psycopg.Error)


def race(conninfo: str, threads: int, work: Callable[[psycopg.Connection[Any], int], Any]) -> list[Outcome]:
    """Runs ``work(connection, index)`` in ``threads`` threads started together by a barrier.

    Each thread opens its own autocommit connection before the barrier, so the
    calls really overlap on the server. Database errors are returned, not raised.
    """
    barrier = threading.Barrier(threads)

    def run(index: int) -> Outcome:
        with psycopg.connect(conninfo, autocommit=True, row_factory=dict_row) as conn:
            barrier.wait(timeout=60)
            try:
                return ("ok", work(conn, index))
            except psycopg.Error as exc:
                return ("error", exc)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(run, index) for index in range(threads)]
        return [future.result(timeout=300) for future in futures]


def award(conn: psycopg.Connection[Any], wallet: str, key: str, action: str = VOTE,
          params: str = "{}") -> list[dict[str, Any]]:
    return conn.execute(AWARD, {"wallet": wallet, "action": action, "key": key, "params": params}).fetchall()


def errors_of(outcomes: list[Outcome]) -> list[psycopg.Error]:
    return [value for kind, value in outcomes if kind == "error"]


def ledger_rows(db: psycopg.Connection[Any], wallet: str) -> list[tuple[int, int, int]]:
    """(id, xp_amount, balance_after) of the wallet's ledger rows, in id order."""
    return db.execute("""SELECT id, xp_amount, balance_after FROM pyxp.xp_transactions
                          WHERE user_wallet = %s ORDER BY id""", (wallet,)).fetchall()


def audit(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute("SELECT * FROM pyxp.audit()").fetchall()


# --------------------------------------------------------------- many awards, one wallet


def test_concurrent_awards_to_one_wallet_are_neither_lost_nor_doubled(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """16 connections × 25 distinct keys on one wallet: every award lands exactly once (SPEC §4)."""
    wallet = "0x" + "ab" * 20

    def work(conn: psycopg.Connection[Any], index: int) -> list[dict[str, Any]]:
        return [row for n in range(AWARDS_PER_THREAD)
                for row in award(conn, wallet, f"race-{index}-{n}")]

    outcomes = race(conninfo, THREADS, work)

    assert errors_of(outcomes) == []
    awards = THREADS * AWARDS_PER_THREAD
    returned = [row for _, rows in outcomes for row in rows]
    assert len(returned) == awards
    assert not any(row["replayed"] for row in returned)
    assert len({row["transaction_id"] for row in returned}) == awards

    balance = db.execute("SELECT total_xp, current_level, xp_to_next_level FROM pyxp.xp_balances "
                         "WHERE user_wallet = %s", (wallet,)).fetchone()
    assert balance is not None
    assert balance[0] == awards * 2

    rows = ledger_rows(db, wallet)
    assert len(rows) == awards
    # The running balance chains row after row, in id order: 2, 4, 6, ... 800.
    assert [balance_after for _, _, balance_after in rows] == list(range(2, awards * 2 + 1, 2))
    assert all(amount == 2 for _, amount, _ in rows)
    level = db.execute("SELECT level, xp_to_next_level FROM pyxp.level_for(%s)", (awards * 2,)).fetchone()
    assert (balance[1], balance[2]) == level
    assert audit(db) == []


def test_concurrent_first_awards_to_a_new_wallet_create_one_balance(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """The wallet's balance row does not exist yet: the racers must not fail nor create two (SPEC §4)."""
    wallet = "brand-new-wallet"

    outcomes = race(conninfo, THREADS, lambda conn, index: award(conn, wallet, f"first-{index}"))

    assert errors_of(outcomes) == []
    assert db.execute("SELECT count(*), sum(total_xp) FROM pyxp.xp_balances WHERE user_wallet = %s",
                      (wallet,)).fetchone() == (1, THREADS * 2)
    assert len(ledger_rows(db, wallet)) == THREADS
    assert audit(db) == []


# --------------------------------------------------------------- one key, many callers


def test_concurrent_calls_with_one_key_and_the_same_inputs_write_once(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """16 connections, one key, same inputs: one row; everyone gets its id; one non-replayed result."""
    wallet = "0x" + "cd" * 20

    outcomes = race(conninfo, THREADS, lambda conn, index: award(conn, wallet, "one-key"))

    assert errors_of(outcomes) == []
    results = [rows for _, rows in outcomes]
    assert all(len(rows) == 1 for rows in results)
    rows = [result[0] for result in results]
    assert len({row["transaction_id"] for row in rows}) == 1
    assert [row["replayed"] for row in rows].count(False) == 1
    # A replay returns what the original call returned (SPEC §4).
    assert {(row["xp_amount"], row["total_xp"], row["current_level"], row["previous_level"])
            for row in rows} == {(2, 2, 1, 1)}

    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions WHERE idempotency_key = 'one-key'"
                      ).fetchone() == (1,)
    assert db.execute("SELECT total_xp FROM pyxp.xp_balances WHERE user_wallet = %s",
                      (wallet,)).fetchone() == (2,)
    assert audit(db) == []


def test_concurrent_calls_with_one_key_and_other_inputs_let_exactly_one_win(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """One key, 16 different wallets: one call succeeds, the 15 others are refused with PX010."""
    outcomes = race(conninfo, THREADS,
                    lambda conn, index: award(conn, f"wallet-{index:02d}", "contested-key"))

    successes = [rows for kind, rows in outcomes if kind == "ok"]
    failures = errors_of(outcomes)
    assert len(successes) == 1
    assert len(failures) == THREADS - 1
    assert {exc.sqlstate for exc in failures} == {"PX010"}
    assert successes[0][0]["replayed"] is False

    winner = successes[0][0]["user_wallet"]
    assert db.execute("SELECT user_wallet FROM pyxp.xp_transactions WHERE idempotency_key = 'contested-key'"
                      ).fetchall() == [(winner,)]
    # The refused callers left no balance behind.
    assert db.execute("SELECT array_agg(user_wallet) FROM pyxp.xp_balances").fetchone() == ([winner],)
    assert audit(db) == []


def test_concurrent_calls_with_one_key_and_other_params_let_exactly_one_win(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """Same key and wallet, another formula input (another price): PX010 for all but one."""
    wallet = "0x" + "ef" * 20

    outcomes = race(conninfo, THREADS, lambda conn, index: award(
        conn, wallet, "priced-key", "Completion_Submit_B2C_Paid", f'{{"PRICE_COMPLETION": {100 + index}}}'))

    successes = [rows for kind, rows in outcomes if kind == "ok"]
    assert len(successes) == 1
    assert {exc.sqlstate for exc in errors_of(outcomes)} == {"PX010"}
    amount = successes[0][0]["xp_amount"]
    assert db.execute("SELECT xp_amount FROM pyxp.xp_transactions").fetchall() == [(amount,)]
    assert db.execute("SELECT total_xp FROM pyxp.xp_balances").fetchall() == [(amount,)]
    assert audit(db) == []


# --------------------------------------------------------------- ruleset switch during awards

STEEP_CURVE = "thresholds = [0, 10, 30, 60, 100, 150, 210]"
DEFAULT_CURVE = "thresholds = [0, 100, 250, 500, 1000, 2000, 4000]"


@pytest.fixture
def steep_ruleset(tmp_path: Path) -> Path:
    """The default ruleset with another level curve (same name: a new version when applied)."""
    text = (resources.files("pyxp") / "rulesets" / "winstory.toml").read_text(encoding="utf-8")
    assert DEFAULT_CURVE in text
    path = tmp_path / "winstory-steep.toml"
    path.write_text(text.replace(DEFAULT_CURVE, STEEP_CURVE), encoding="utf-8")
    return path


def test_ruleset_switch_during_concurrent_awards_leaves_levels_on_the_active_curve(
        conninfo: str, db: psycopg.Connection[Any], steep_ruleset: Path) -> None:
    """Awards (single and batched) on several wallets while another connection switches curves.

    Afterwards every balance's level is the active curve's level (audit() is
    empty), nothing is lost, and the switches really happened.
    """
    wallets = [f"switch-wallet-{n}" for n in range(4)]
    switches = 8
    awarders = THREADS
    applied: list[Any] = []

    def work(conn: psycopg.Connection[Any], index: int) -> Any:
        if index == 0:  # the switcher
            for n in range(switches):
                target = str(steep_ruleset) if n % 2 == 0 else "winstory"
                applied.append(schema.apply_ruleset(conninfo, target))
            return None
        if index % 3 == 0:  # some awarders send their awards as one batch
            return award_many(conn, [{"wallet": wallets[index % len(wallets)], "action": VOTE,
                                      "idempotency_key": f"switch-{index}-{n}"}
                                     for n in range(AWARDS_PER_THREAD)])
        return [row for n in range(AWARDS_PER_THREAD)
                for row in award(conn, wallets[index % len(wallets)], f"switch-{index}-{n}")]

    outcomes = race(conninfo, awarders + 1, work)

    assert errors_of(outcomes) == []
    assert all(install.activated for install in applied)
    assert [install.version for install in applied] == [2, 1] * (switches // 2)
    active = db.execute("SELECT name, version FROM pyxp.rulesets WHERE is_active").fetchall()
    assert active == [("winstory", 1)]

    total = db.execute("SELECT sum(total_xp), count(*) FROM pyxp.xp_balances").fetchone()
    assert total == (awarders * AWARDS_PER_THREAD * 2, len(wallets))
    assert audit(db) == []


def test_switch_to_another_curve_right_after_concurrent_awards_relevels_every_wallet(
        conninfo: str, db: psycopg.Connection[Any], steep_ruleset: Path) -> None:
    """Ending on the steep curve: balances were re-derived with it (not left on the default one)."""
    wallets = [f"steep-wallet-{n}" for n in range(4)]

    def work(conn: psycopg.Connection[Any], index: int) -> Any:
        if index == 0:
            return schema.apply_ruleset(conninfo, str(steep_ruleset))
        return [award(conn, wallets[index % len(wallets)], f"steep-{index}-{n}") for n in range(10)]

    outcomes = race(conninfo, THREADS + 1, work)

    assert errors_of(outcomes) == []
    assert db.execute("SELECT version FROM pyxp.rulesets WHERE is_active").fetchone() == (2,)
    # Each wallet holds 4 threads × 10 awards × 2 XP = 80 XP: level 4 on the steep curve
    # (60 <= 80 < 100), level 1 on the default one.
    assert db.execute("SELECT DISTINCT total_xp, current_level, xp_to_next_level FROM pyxp.xp_balances"
                      ).fetchall() == [(80, 4, 20)]
    assert audit(db) == []


# --------------------------------------------------------------- reversal racing


def test_concurrent_reversals_of_one_transaction_write_one_reversal(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """16 connections reverse the same row with the same reason: one REVERSAL row (SPEC §4)."""
    wallet = "reversed-wallet"
    original = db.execute(AWARD, {"wallet": wallet, "action": "CAMPAIGN_APPROVED", "key": "to-reverse",
                                  "params": "{}"}).fetchone()
    assert original is not None
    original_id = original[0]

    outcomes = race(conninfo, THREADS, lambda conn, index: conn.execute(
        REVERSE, {"id": original_id, "reason": "duplicate approval"}).fetchall())

    assert errors_of(outcomes) == []
    rows = [rows[0] for _, rows in outcomes]
    assert len({row["transaction_id"] for row in rows}) == 1
    assert [row["replayed"] for row in rows].count(False) == 1
    assert {(row["transaction_type"], row["xp_amount"], row["total_xp"])
            for row in rows} == {("REVERSAL", -100, 0)}

    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions WHERE reverses = %s",
                      (original_id,)).fetchone() == (1,)
    assert db.execute("SELECT total_xp FROM pyxp.xp_balances WHERE user_wallet = %s",
                      (wallet,)).fetchone() == (0,)
    assert audit(db) == []


def test_concurrent_reversals_with_other_reasons_let_exactly_one_win(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """A row is reversed once: with 16 different reasons, one reversal and 15 PX014 refusals."""
    original = db.execute(AWARD, {"wallet": "reversed-twice", "action": "CAMPAIGN_APPROVED",
                                  "key": "to-reverse-once", "params": "{}"}).fetchone()
    assert original is not None

    outcomes = race(conninfo, THREADS, lambda conn, index: conn.execute(
        REVERSE, {"id": original[0], "reason": f"reason {index}"}).fetchall())

    assert len([rows for kind, rows in outcomes if kind == "ok"]) == 1
    assert {exc.sqlstate for exc in errors_of(outcomes)} == {"PX014"}
    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions WHERE reverses = %s",
                      (original[0],)).fetchone() == (1,)
    assert audit(db) == []


def test_concurrent_awards_and_reversals_on_one_wallet_keep_the_chain(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """Awards and reversals of earlier awards interleaved on one wallet: the chain stays intact."""
    wallet = "busy-wallet"
    originals = [db.execute(AWARD, {"wallet": wallet, "action": "CAMPAIGN_APPROVED", "key": f"seed-{n}",
                                    "params": "{}"}).fetchone()[0] for n in range(THREADS)]

    def work(conn: psycopg.Connection[Any], index: int) -> Any:
        if index % 2:
            return conn.execute(REVERSE, {"id": originals[index], "reason": "undo"}).fetchall()
        return [award(conn, wallet, f"more-{index}-{n}") for n in range(AWARDS_PER_THREAD)]

    outcomes = race(conninfo, THREADS, work)

    assert errors_of(outcomes) == []
    expected = THREADS * 100 - (THREADS // 2) * 100 + (THREADS // 2) * AWARDS_PER_THREAD * 2
    assert db.execute("SELECT total_xp FROM pyxp.xp_balances WHERE user_wallet = %s",
                      (wallet,)).fetchone() == (expected,)
    rows = ledger_rows(db, wallet)
    running = 0
    for _, amount, balance_after in rows:
        running += amount
        assert balance_after == running
    assert running == expected
    assert audit(db) == []


# --------------------------------------------------------------- batches (pyxp.award_many)

AWARD_MANY = "SELECT * FROM pyxp.award_many(events => %(events)s)"


def award_many(conn: psycopg.Connection[Any], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return conn.execute(AWARD_MANY, {"events": Jsonb(events)}).fetchall()


def test_concurrent_batches_and_single_awards_on_shared_wallets_lose_nothing(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """Batches (wallets in shuffled order) race single awards on the same wallets: no deadlock, no loss."""
    wallets = [f"shared-{n}" for n in range(4)]

    def work(conn: psycopg.Connection[Any], index: int) -> Any:
        if index % 2:
            return [award(conn, wallets[n % len(wallets)], f"single-{index}-{n}")
                    for n in range(AWARDS_PER_THREAD)]
        order = random.Random(index).sample(range(AWARDS_PER_THREAD), AWARDS_PER_THREAD)
        return award_many(conn, [{"wallet": wallets[n % len(wallets)], "action": VOTE,
                                  "idempotency_key": f"batch-{index}-{n}"} for n in order])

    outcomes = race(conninfo, THREADS, work)

    assert errors_of(outcomes) == []
    awards = THREADS * AWARDS_PER_THREAD
    assert db.execute("SELECT count(*), sum(xp_amount) FROM pyxp.xp_transactions"
                      ).fetchone() == (awards, awards * 2)
    assert db.execute("SELECT sum(total_xp) FROM pyxp.xp_balances").fetchone() == (awards * 2,)
    for wallet in wallets:
        assert [after for _, _, after in ledger_rows(db, wallet)] == list(
            range(2, 2 * len(ledger_rows(db, wallet)) + 1, 2))
    assert audit(db) == []


def test_concurrent_batches_with_the_same_keys_write_each_key_once(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """16 batches carry the same 20 events in different orders: 20 rows, one original result per key."""
    events = [{"wallet": f"batch-wallet-{n % 5}", "action": VOTE, "idempotency_key": f"shared-key-{n:02d}"}
              for n in range(20)]

    def work(conn: psycopg.Connection[Any], index: int) -> Any:
        batch = random.Random(index).sample(events, len(events))
        return [(batch[row["event_index"]]["idempotency_key"], row) for row in award_many(conn, batch)]

    outcomes = race(conninfo, THREADS, work)

    assert errors_of(outcomes) == []
    by_key: dict[str, list[dict[str, Any]]] = {}
    for _, result in outcomes:
        for key, row in result:
            by_key.setdefault(key, []).append(row)
    assert sorted(by_key) == sorted(event["idempotency_key"] for event in events)
    for key, rows in by_key.items():
        assert len(rows) == THREADS, key
        assert len({row["transaction_id"] for row in rows}) == 1, key
        assert [row["replayed"] for row in rows].count(False) == 1, key
    assert db.execute("SELECT count(*), count(DISTINCT idempotency_key) FROM pyxp.xp_transactions"
                      ).fetchone() == (len(events), len(events))
    assert db.execute("SELECT sum(total_xp) FROM pyxp.xp_balances").fetchone() == (len(events) * 2,)
    assert audit(db) == []


def test_concurrent_batch_and_single_award_with_one_key_and_other_inputs(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """A key raced by batches and single awards with different wallets: one winner, PX010 for the rest,
    and a refused batch writes none of its other events."""
    def work(conn: psycopg.Connection[Any], index: int) -> Any:
        if index % 2:
            return award(conn, f"single-{index}", "raced-key")
        return award_many(conn, [
            {"wallet": f"batch-{index}", "action": VOTE, "idempotency_key": f"own-{index}"},
            {"wallet": f"batch-{index}", "action": VOTE, "idempotency_key": "raced-key"},
        ])

    outcomes = race(conninfo, THREADS, work)

    successes = [result for kind, result in outcomes if kind == "ok"]
    assert len(successes) == 1
    assert {exc.sqlstate for exc in errors_of(outcomes)} == {"PX010"}
    written = db.execute("SELECT count(*) FROM pyxp.xp_transactions").fetchone()
    assert written == (len(successes[0]),)
    assert db.execute("SELECT count(*) FROM pyxp.idempotency_keys").fetchone() == written
    assert audit(db) == []


# --------------------------------------------------------------- the Winstory flows under contention

COMPLETION = """SELECT * FROM pyxp.award_completion(
    completer_wallet => %(wallet)s, campaign_id => 'camp-race', completion_id => 'completion-race',
    campaign_type => 'B2C', is_validated => %(validated)s, is_refused => %(refused)s)"""
VOTE_ON_CAMPAIGN = """SELECT * FROM pyxp.award_moderation_vote(
    moderator_wallet => %(wallet)s, campaign_id => 'camp-votes', vote_decision => %(decision)s,
    campaign_type => 'B2C')"""


def test_concurrent_validation_and_refusal_of_one_completion_let_one_outcome_win(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """SPEC §4: a completion is validated or refused, only one of the two ever, even when raced."""
    def work(conn: psycopg.Connection[Any], index: int) -> Any:
        validated = index % 2 == 0
        return validated, conn.execute(COMPLETION, {"wallet": "0x_completer", "validated": validated,
                                                    "refused": not validated}).fetchall()

    outcomes = race(conninfo, THREADS, work)

    successes = [value for kind, value in outcomes if kind == "ok"]
    failures = errors_of(outcomes)
    assert {exc.sqlstate for exc in failures} == {"PX010"}
    assert len(failures) == THREADS // 2
    assert len({validated for validated, _ in successes}) == 1  # every success is the same outcome
    rows = [row for _, result in successes for row in result]
    assert len({row["transaction_id"] for row in rows}) == 1
    assert [row["replayed"] for row in rows].count(False) == 1
    assert db.execute("SELECT transaction_type FROM pyxp.xp_transactions").fetchall() == [
        ("Completion_Validated_B2C" if successes[0][0] else "Completion_Refused_B2C",)]
    assert audit(db) == []


def test_concurrent_repeated_votes_count_each_moderator_once(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """16 connections, 4 moderators each voting 4 times at once: 4 rows, total_moderations 1 each."""
    moderators = [f"0x_moderator_{n}" for n in range(4)]

    def work(conn: psycopg.Connection[Any], index: int) -> Any:
        wallet = moderators[index % len(moderators)]
        decision = "VALID" if index % len(moderators) < 2 else "REFUSE"
        return conn.execute(VOTE_ON_CAMPAIGN, {"wallet": wallet, "decision": decision}).fetchall()

    outcomes = race(conninfo, THREADS, work)

    assert errors_of(outcomes) == []
    assert db.execute("SELECT user_wallet, total_xp, total_moderations FROM pyxp.xp_balances ORDER BY 1"
                      ).fetchall() == [(moderators[0], 2, 1), (moderators[1], 2, 1),
                                       (moderators[2], -1, 1), (moderators[3], -1, 1)]
    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions").fetchone() == (len(moderators),)
    assert audit(db) == []


def test_concurrent_registrations_and_onboardings_of_one_client_grant_once(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """Agencies register a client while the client signs in from several sessions: +1000 once,
    to the client, and every registration ends granted with the client's wallet (SPEC §2, §4)."""
    email = "client@example.com"
    db.execute("SELECT * FROM pyxp.register_agency_client(agency_wallet => '0x_agency_first', "
               "client_email => %s, campaign_id => 'camp-first')", (email,))

    def work(conn: psycopg.Connection[Any], index: int) -> Any:
        if index % 2:
            return conn.execute("SELECT * FROM pyxp.register_agency_client(agency_wallet => %s, "
                                "client_email => %s, campaign_id => %s)",
                                (f"0x_agency_{index}", email, f"camp-{index}")).fetchall()
        return conn.execute("SELECT * FROM pyxp.onboard_agency_client(client_email => %s, "
                            "client_wallet => '0x_client')", (email,)).fetchall()

    outcomes = race(conninfo, THREADS, work)

    assert errors_of(outcomes) == []
    assert db.execute("SELECT user_wallet, transaction_type, xp_amount FROM pyxp.xp_transactions"
                      ).fetchall() == [("0x_client", "B2C_CLIENT_ONBOARDED", 1000)]
    assert db.execute("SELECT count(*), bool_and(xp_granted), array_agg(DISTINCT client_wallet), "
                      "bool_and(onboarded_at IS NOT NULL) FROM pyxp.agency_b2c_clients"
                      ).fetchone() == (1 + THREADS // 2, True, ["0x_client"], True)
    onboard_rows = [row for index, (_, rows) in enumerate(outcomes) if index % 2 == 0 for row in rows]
    assert len(onboard_rows) == THREADS // 2
    assert [row["replayed"] for row in onboard_rows].count(False) == 1
    assert audit(db) == []
