"""Faults never leave a half-written award (SPEC §4 "Atomicity": one call is one transaction,
all its rows and the balance update or none; concurrent calls never lose or double an award).

* A backend killed (pg_terminate_backend) in the middle of an award, a multi-row campaign
  creation or an award_many batch: nothing of it stays, and a retry writes it once.
* statement_timeout / lock_timeout hitting a blocked award: a clean error, nothing written.
  These are PostgreSQL's own errors (QueryCanceled 57014, LockNotAvailable 55P03), not PX
  refusals: the call was not refused, it was cancelled, and may be retried as is. The Python
  client raises them (they are not XPError), or, with best_effort=True, logs and returns None.
* Backends killed at random under load, and a private cluster stopped with
  ``pg_ctl stop -m immediate`` under load then restarted: every acknowledged award is there
  with the acknowledged ids and amounts, every interrupted call is all-or-nothing, retrying
  the interrupted calls applies each exactly once, and audit() is clean.

A call is made "slow enough to be killed mid-way" without touching the code: another
connection holds a lock the call needs (the wallet's balance row, FOR UPDATE; or an
uncommitted campaign registry row with the same id), so the call waits inside the engine
after its first writes. Waiting is detected in pg_stat_activity; pg_locks shows what the
call had already written. No timing assertions.

Figures (calls acknowledged, faults injected, rows checked) are printed to stderr
(``pytest -s tests/test_faults.py`` shows them).
"""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from conftest import PYXP, database_state
from psycopg import errors as pg_errors
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pyxp import XP, XPError, schema
from pyxp.database import EmbeddedCluster, _postgres_bindir

AWARD = """SELECT * FROM pyxp.award(wallet => %(wallet)s, action => %(action)s,
                                   idempotency_key => %(key)s, params => %(params)s)"""
AWARD_MANY = "SELECT * FROM pyxp.award_many(events => %(events)s)"
CREATION = """SELECT * FROM pyxp.award_campaign_creation(
    creator_wallet => %(creator_wallet)s, campaign_id => %(campaign_id)s, campaign_type => 'B2C',
    winstory_creates_video => true, no_rewards => true)"""

# Oracle (SPEC §2, ruleset winstory).
APPROVED = ("CAMPAIGN_APPROVED", 100)
REFUSED_VOTE = ("MODERATION_REFUSED_BY_MODERATOR", -1)
B2C_CREATION_WITH_OPTIONS = (("B2C_MINT", 1000), ("OPTION_WINSTORY_VIDEO", 500), ("OPTION_NO_REWARDS", 1000))

WALLET = "0x_fault_wallet"  # already has a balance row (setup award) that a test can lock
NEW_WALLET = "0x_fault_newcomer"
SETUP = {"wallet": WALLET, "action": APPROVED[0], "key": "fault:setup", "params": Jsonb({})}


def audit(db: psycopg.Connection[Any]) -> list[Any]:
    return db.execute("SELECT * FROM pyxp.audit()").fetchall()


def stored_keys(db: psycopg.Connection[Any], keys: list[str]) -> list[Any]:
    """Claimed keys (pyxp.idempotency_keys) and ledger rows stored under these keys."""
    return db.execute("""SELECT 'request', idempotency_key FROM pyxp.idempotency_keys
                          WHERE idempotency_key = ANY(%(k)s)
                         UNION ALL
                         SELECT 'row', idempotency_key FROM pyxp.xp_transactions
                          WHERE idempotency_key = ANY(%(k)s)""", {"k": keys}).fetchall()


def report(name: str, **figures: Any) -> None:
    print(f"\n[faults] {name}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in figures.items()),
          file=sys.stderr)


# --------------------------------------------------------------------------- blocking a call


@contextmanager
def wallet_row_locked(conninfo: str, wallet: str) -> Iterator[None]:
    """Another transaction holds the wallet's balance row (FOR UPDATE) until the block ends."""
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SELECT 1 FROM pyxp.xp_balances WHERE user_wallet = %s FOR UPDATE",
                            (wallet,)).fetchone() is not None
        try:
            yield
        finally:
            conn.rollback()


@dataclass(frozen=True)
class BlockedCase:
    query: str
    args: dict[str, Any]
    keys: list[str]
    expected: list[tuple[str, str, int]]  # (wallet, transaction_type, xp_amount) written once it runs
    blocker: Callable[[str], AbstractContextManager[None]]
    written_before_wait: str  # a table the call has already written to when it waits


BLOCKED_CASES = {
    # Blocked in append_rows at the wallet's FOR UPDATE, holding the ruleset-switch lock on
    # xp_balances (its key is claimed later, by its ledger row).
    "award": BlockedCase(
        AWARD, {"wallet": WALLET, "action": APPROVED[0], "key": "fault:award", "params": Jsonb({})},
        ["fault:award"], [(WALLET, *APPROVED)],
        lambda conninfo: wallet_row_locked(conninfo, WALLET), "pyxp.xp_balances"),
    # Its registry row inserted and its key claimed, blocked at the wallet's FOR UPDATE. (Since 0002 a
    # creation locks its registry row first: a registry row taken by another transaction holds it
    # before it writes anything, see test_integrity's registry race.)
    "award_campaign_creation": BlockedCase(
        CREATION, {"creator_wallet": WALLET, "campaign_id": "fault-campaign"},
        ["campaign.created:fault-campaign"], [(WALLET, *row) for row in B2C_CREATION_WITH_OPTIONS],
        lambda conninfo: wallet_row_locked(conninfo, WALLET), "pyxp.campaigns"),
    # The newcomer's balance row inserted, blocked locking the wallets in order.
    "award_many": BlockedCase(
        AWARD_MANY, {"events": Jsonb([
            {"wallet": NEW_WALLET, "action": APPROVED[0], "idempotency_key": "fault:batch:0"},
            {"wallet": WALLET, "action": REFUSED_VOTE[0], "idempotency_key": "fault:batch:1"},
            {"wallet": WALLET, "action": APPROVED[0], "idempotency_key": "fault:batch:2"}])},
        ["fault:batch:0", "fault:batch:1", "fault:batch:2"],
        [(NEW_WALLET, *APPROVED), (WALLET, *REFUSED_VOTE), (WALLET, *APPROVED)],
        lambda conninfo: wallet_row_locked(conninfo, WALLET), "pyxp.xp_balances"),
}


class CallInThread:
    """One call on its own connection, run in a thread so that the test can watch and kill it."""

    def __init__(self, conninfo: str, query: str, args: dict[str, Any]) -> None:
        self.conn = psycopg.connect(conninfo, autocommit=True, row_factory=dict_row)
        self.pid = self.conn.info.backend_pid
        self._executor = ThreadPoolExecutor(max_workers=1)
        self.future: Future[list[dict[str, Any]]] = self._executor.submit(
            lambda: self.conn.execute(query, args).fetchall())

    def wait_until_blocked(self, db: psycopg.Connection[Any]) -> None:
        """Returns once the call waits for a lock (pg_stat_activity); fails if it finished instead."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = db.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                             (self.pid,)).fetchone()
            if row is not None and row[0] == "Lock":
                return
            assert not self.future.done(), f"the call did not block: {self.future.exception() or 'returned'}"
            time.sleep(0.01)
        pytest.fail("the call never waited for the lock")

    def has_written_to(self, db: psycopg.Connection[Any], table: str) -> bool:
        return db.execute("SELECT EXISTS (SELECT FROM pg_locks WHERE pid = %s AND relation = %s::regclass "
                          "AND mode = 'RowExclusiveLock' AND granted)", (self.pid, table)).fetchone()[0]

    def close(self) -> None:
        if not self.future.done():  # a failed assertion left it blocked: cancel it, never hang the suite
            self.conn.cancel_safe(timeout=10)
        self._executor.shutdown(wait=True)
        self.conn.close()


@contextmanager
def call_in_thread(conninfo: str, query: str, args: dict[str, Any]) -> Iterator[CallInThread]:
    call = CallInThread(conninfo, query, args)
    try:
        yield call
    finally:
        call.close()


def terminate(db: psycopg.Connection[Any], pid: int) -> bool:
    """pg_terminate_backend, waiting (up to 10 s) for the backend to be gone."""
    return db.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,)).fetchone()[0]


def wrote(rows: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    return [(r["user_wallet"], r["transaction_type"], r["xp_amount"]) for r in rows]


# --------------------------------------------------------------------------- killed mid-way


@pytest.mark.parametrize("name", BLOCKED_CASES)
def test_call_killed_mid_way_leaves_nothing_and_a_retry_writes_once(
        name: str, conninfo: str, db: psycopg.Connection[Any]) -> None:
    case = BLOCKED_CASES[name]
    db.execute(AWARD, SETUP)
    before = database_state(db)

    with case.blocker(conninfo), call_in_thread(conninfo, case.query, case.args) as call:
        call.wait_until_blocked(db)
        assert call.has_written_to(db, case.written_before_wait)  # really mid-way: something is written
        assert terminate(db, call.pid)
        with pytest.raises(psycopg.OperationalError):
            call.future.result(timeout=60)

    assert database_state(db) == before
    assert stored_keys(db, case.keys) == []
    assert audit(db) == []

    with psycopg.connect(conninfo, autocommit=True, row_factory=dict_row) as conn:
        first = conn.execute(case.query, case.args).fetchall()
        again = conn.execute(case.query, case.args).fetchall()
    assert wrote(first) == case.expected and not any(r["replayed"] for r in first)
    assert [r["transaction_id"] for r in again] == [r["transaction_id"] for r in first]
    assert all(r["replayed"] for r in again)
    assert len(stored_keys(db, case.keys)) == len(case.keys) + len(case.expected)
    assert audit(db) == []
    report(f"killed mid-way: {name}", calls_acknowledged=3, faults_injected=1,
           rows_checked=len(case.expected))


# --------------------------------------------------------------------------- timeouts


@pytest.mark.parametrize(("setting", "error"), [("statement_timeout", pg_errors.QueryCanceled),
                                                ("lock_timeout", pg_errors.LockNotAvailable)])
@pytest.mark.parametrize("name", BLOCKED_CASES)
def test_timeout_hitting_a_blocked_call_is_a_clean_error_and_writes_nothing(
        name: str, setting: str, error: type[psycopg.Error], conninfo: str,
        db: psycopg.Connection[Any]) -> None:
    case = BLOCKED_CASES[name]
    db.execute(AWARD, SETUP)
    before = database_state(db)

    with psycopg.connect(conninfo, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(f"SET {setting} = '200ms'")
        with case.blocker(conninfo), pytest.raises(error) as raised:
            conn.execute(case.query, case.args)
        assert not (raised.value.sqlstate or "").startswith("PX")  # PostgreSQL's cancellation, not a refusal

        assert database_state(db) == before
        assert stored_keys(db, case.keys) == []  # key not claimed: the call can be retried as is
        assert audit(db) == []

        conn.execute(f"RESET {setting}")
        retried = conn.execute(case.query, case.args).fetchall()
    assert wrote(retried) == case.expected and not any(r["replayed"] for r in retried)
    assert audit(db) == []
    report(f"{setting} on {name}", calls_acknowledged=2, faults_injected=1, rows_checked=len(case.expected))


def test_client_raises_a_timeout_as_the_psycopg_error_and_writes_nothing(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """Not swallowed, not turned into an XPError: the caller sees PostgreSQL's LockNotAvailable."""
    db.execute(AWARD, SETUP)
    before = database_state(db)
    with XP(make_conninfo(conninfo, options="-c lock_timeout=200"), max_connections=1) as client:
        with wallet_row_locked(conninfo, WALLET), pytest.raises(pg_errors.LockNotAvailable) as raised:
            client.award(WALLET, APPROVED[0], "fault:client")
        assert not isinstance(raised.value, XPError)
        assert database_state(db) == before
        # The lock gone, the same call goes through.
        assert client.award(WALLET, APPROVED[0], "fault:client").xp == APPROVED[1]
    assert audit(db) == []


def test_best_effort_client_logs_a_timeout_returns_none_and_writes_nothing(
        conninfo: str, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture) -> None:
    db.execute(AWARD, SETUP)
    before = database_state(db)
    with XP(make_conninfo(conninfo, options="-c statement_timeout=200"), max_connections=1,
            best_effort=True) as client:
        with wallet_row_locked(conninfo, WALLET), caplog.at_level(logging.WARNING, logger="pyxp"):
            assert client.award(WALLET, APPROVED[0], "fault:best-effort") is None
    assert database_state(db) == before
    assert [(r.name, r.levelname) for r in caplog.records] == [("pyxp", "WARNING")]
    assert "award" in caplog.text and "57014" in caplog.text
    assert "fault:best-effort" not in caplog.text  # no parameters (personal data) at WARNING


# --------------------------------------------------------------------------- under load

LOAD_WALLETS = [f"0x_fault_load_{i}" for i in range(4)]  # few wallets: calls queue on their locks


@dataclass
class LoadCall:
    """One call of the load, with the keys it uses and the rows the oracle expects per key."""

    query: str
    args: dict[str, Any]
    events: list[tuple[str, list[tuple[str, str, int]]]]  # (key, [(wallet, type, amount)])
    rows: list[list[dict[str, Any]]] | None = None  # acknowledged: result rows per event
    interrupted: int = 0  # attempts that ended in an error (killed, crashed)


def load_call(rng: random.Random, tag: str) -> LoadCall:
    """An award (one row), a campaign creation (three rows) or a batch of three awards
    (three wallets), every key new."""
    kind = rng.choices(["award", "creation", "batch"], weights=[5, 2, 2])[0]
    if kind == "award":
        wallet, price = rng.choice(LOAD_WALLETS), rng.randint(1, 500)
        key = f"load:{tag}"
        return LoadCall(AWARD, {"wallet": wallet, "action": "Completion_Submit_B2C_Paid", "key": key,
                                "params": Jsonb({"PRICE_COMPLETION": price})},
                        [(key, [(wallet, "Completion_Submit_B2C_Paid", 100 + price)])])
    if kind == "creation":
        wallet, campaign = rng.choice(LOAD_WALLETS), f"load-campaign-{tag}"
        return LoadCall(CREATION, {"creator_wallet": wallet, "campaign_id": campaign},
                        [(f"campaign.created:{campaign}",
                          [(wallet, *row) for row in B2C_CREATION_WITH_OPTIONS])])
    items, events = [], []
    for index, wallet in enumerate(rng.sample(LOAD_WALLETS, 3)):
        action, amount = rng.choice([APPROVED, REFUSED_VOTE])
        key = f"load:{tag}:{index}"
        items.append({"wallet": wallet, "action": action, "idempotency_key": key})
        events.append((key, [(wallet, action, amount)]))
    return LoadCall(AWARD_MANY, {"events": Jsonb(items)}, events)


def run(conn: psycopg.Connection[Any], call: LoadCall) -> None:
    rows = conn.execute(call.query, call.args).fetchall()
    if call.query == AWARD_MANY:
        call.rows = [[r for r in rows if r["event_index"] == i] for i in range(len(call.events))]
    else:
        call.rows = [rows]


def check_ledger(db: psycopg.Connection[Any], acknowledged: list[LoadCall], unsettled: list[LoadCall]) -> int:
    """Every acknowledged call is stored with its acknowledged ids and amounts; every unsettled
    call (interrupted, outcome unknown) is all there or not at all; nothing else is stored; no key
    without its rows, no row without its key; balances are the ledger sums; audit() is clean.
    Returns the number of ledger rows checked."""
    stored: dict[str, list[tuple[int, str, str, int]]] = defaultdict(list)
    for r in db.execute("SELECT id, idempotency_key, user_wallet, transaction_type, xp_amount "
                        "FROM pyxp.xp_transactions ORDER BY id"):
        stored[r[1]].append((r[0], r[2], r[3], r[4]))
    keys = {r[0] for r in db.execute("SELECT idempotency_key FROM pyxp.idempotency_keys")}

    for call in acknowledged:
        assert call.rows is not None
        for (key, expected), rows in zip(call.events, call.rows):
            assert wrote(rows) == expected, key
            assert key in keys, f"acknowledged key {key} lost"
            assert stored[key] == [(r["transaction_id"], *row) for r, row in zip(rows, wrote(rows))], key
    for call in unsettled:
        present = [key in keys for key, _ in call.events]
        assert all(present) or not any(present), f"an interrupted call is half there: {call.events}"
        for key, expected in call.events:
            assert [row[1:] for row in stored.get(key, [])] == (expected if key in keys else []), key

    known = {key for call in acknowledged + unsettled for key, _ in call.events}
    assert keys - known - {SETUP["key"]} == set(), "keys stored that no call used"
    assert [key for key in keys if not stored.get(key)] == [], "requests without their rows"
    assert set(stored) - keys == set(), "rows without their request"
    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions t LEFT JOIN pyxp.idempotency_keys q "
                      "USING (idempotency_key) WHERE q.idempotency_key IS NULL").fetchone()[0] == 0

    sums: Counter[str] = Counter()
    for rows in stored.values():
        for _, wallet, _, amount in rows:
            sums[wallet] += amount
    balances = dict(db.execute("SELECT user_wallet, total_xp FROM pyxp.xp_balances").fetchall())
    assert balances == dict(sums)
    assert audit(db) == []
    return sum(len(rows) for rows in stored.values())


def exactly_once_balances(calls: list[LoadCall]) -> dict[str, int]:
    """The balances if every call applied exactly once (oracle amounts)."""
    totals: Counter[str] = Counter()
    for call in calls:
        for _, expected in call.events:
            for wallet, _, amount in expected:
                totals[wallet] += amount
    return dict(totals)


@pytest.mark.slow
def test_backends_killed_at_random_under_load_leave_every_call_all_or_nothing(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """8 connections run awards, creations and batches; backends are terminated at random;
    each interrupted call is retried (on a new connection) until acknowledged, as a client would.
    Afterwards every call is in the ledger exactly once."""
    workers, calls_per_worker, kills_wanted = 8, 80, 60
    app = "pyxp-fault-load"
    done = threading.Event()

    def worker(index: int) -> list[LoadCall]:
        rng = random.Random(1000 + index)
        calls = [load_call(rng, f"{index}-{n}") for n in range(calls_per_worker)]
        conn: psycopg.Connection[Any] | None = None
        try:
            for call in calls:
                while call.rows is None:
                    try:
                        if conn is None or conn.closed:
                            conn = psycopg.connect(conninfo, autocommit=True, row_factory=dict_row,
                                                   application_name=app)
                        run(conn, call)
                    except psycopg.OperationalError:
                        call.interrupted += 1
                        assert call.interrupted < 50, "a call never got through"
                        if conn is not None:
                            conn.close()
                        conn = None
        finally:
            if conn is not None:
                conn.close()
        return calls

    kills = 0
    rng = random.Random(7)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(worker, index) for index in range(workers)]
        threading.Thread(target=lambda: ([f.exception() for f in futures], done.set()), daemon=True).start()
        while not done.is_set() and kills < kills_wanted:
            pids = [r[0] for r in db.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                "AND datname = current_database() AND state = 'active'", (app,))]
            if pids:
                db.execute("SELECT pg_terminate_backend(%s)", (rng.choice(pids),))
                kills += 1
            time.sleep(rng.uniform(0.002, 0.02))
        calls = [call for future in futures for call in future.result(timeout=300)]

    rows_checked = check_ledger(db, calls, [])
    assert dict(db.execute("SELECT user_wallet, total_xp FROM pyxp.xp_balances").fetchall()) == \
        exactly_once_balances(calls)
    report("backends killed under load", calls_acknowledged=len(calls), faults_injected=kills,
           attempts_interrupted=sum(c.interrupted for c in calls),
           retries_that_replayed=sum(1 for c in calls if c.interrupted and c.rows and c.rows[0]
                                     and c.rows[0][0]["replayed"]),
           rows_checked=rows_checked)


# --------------------------------------------------------------------------- crash


@pytest.fixture
def cluster() -> Iterator[EmbeddedCluster]:
    """A private cluster (started as the postgres OS user when root, on a free port), migrated."""
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (pg_ctl, initdb) to start a private cluster")
    server = EmbeddedCluster(bindir).start()
    try:
        schema.upgrade(server.conninfo)
        yield server
    finally:
        server.stop(mode="immediate")


@pytest.mark.slow
def test_immediate_shutdown_under_load_keeps_every_acknowledged_award(cluster: EmbeddedCluster) -> None:
    """8 connections load a private cluster; ``pg_ctl stop -m immediate`` (no shutdown
    checkpoint: recovery from the WAL at the next start) while calls are in flight; restart on
    the same data directory and port. Every acknowledged call is there with its acknowledged
    ids and amounts; each call cut by the crash is all there or not at all; retrying those
    applies each exactly once."""
    workers = 8
    stopping = threading.Event()

    def worker(index: int) -> tuple[list[LoadCall], list[LoadCall], list[str]]:
        """Runs calls until the crash; returns (acknowledged, cut by the crash, errors before it)."""
        rng = random.Random(2000 + index)
        acknowledged: list[LoadCall] = []
        with psycopg.connect(cluster.conninfo, autocommit=True, row_factory=dict_row) as conn:
            for n in range(100_000):
                call = load_call(rng, f"{index}-{n}")
                try:
                    run(conn, call)
                except psycopg.Error as exc:
                    call.interrupted += 1
                    if not stopping.is_set():
                        return acknowledged, [call], [f"{exc.sqlstate}: {exc}"]
                    return acknowledged, [call], []
                acknowledged.append(call)
        return acknowledged, [], ["the load ended before the crash"]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(worker, index) for index in range(workers)]
        time.sleep(1.5)  # let the load run; nothing below depends on how much got done
        stopping.set()
        cluster.stop_server(mode="immediate")
        results = [future.result(timeout=120) for future in futures]
    acknowledged = [call for done, _, _ in results for call in done]
    unsettled = [call for _, cut, _ in results for call in cut]
    assert [error for _, _, errors in results for error in errors] == []
    assert acknowledged, "nothing was acknowledged before the crash"

    cluster.start_existing()
    with psycopg.connect(cluster.conninfo, autocommit=True) as db:
        if db.execute("SHOW lc_messages").fetchone()[0].startswith(("C", "en")):  # the log's language
            assert "automatic recovery in progress" in cluster.log.read_text(), "no crash recovery ran"
        rows_after_restart = check_ledger(db, acknowledged, unsettled)
        survived = sum(1 for call in unsettled if db.execute(
            "SELECT EXISTS (SELECT FROM pyxp.idempotency_keys WHERE idempotency_key = %s)",
            (call.events[0][0],)).fetchone()[0])

        # A client retries what it did not see acknowledged: each applies exactly once.
        with psycopg.connect(cluster.conninfo, autocommit=True, row_factory=dict_row) as conn:
            for call in unsettled:
                run(conn, call)
        rows_after_retries = check_ledger(db, acknowledged + unsettled, [])
        assert dict(db.execute("SELECT user_wallet, total_xp FROM pyxp.xp_balances").fetchall()) == \
            exactly_once_balances(acknowledged + unsettled)

    report("pg_ctl stop -m immediate under load", calls_acknowledged=len(acknowledged),
           faults_injected=1, calls_cut_by_the_crash=len(unsettled),
           cut_calls_found_committed=survived, rows_checked_after_restart=rows_after_restart,
           rows_checked_after_retries=rows_after_retries)


def test_an_owner_operation_held_off_by_an_open_award_names_its_session(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """The operations that hold every award (here the rank rebalance, 1 s lock_timeout) wait for the
    awards in flight; past their lock_timeout the 55P03 names who held the balances (0036; it was
    PostgreSQL's bare "canceling statement due to lock timeout"). Nothing written."""
    db.execute(AWARD, SETUP)
    before = database_state(db)
    with psycopg.connect(conninfo) as open_award:
        open_award.execute(AWARD, {**SETUP, "key": "fault:left-open"})
        holder = open_award.info.backend_pid
        with pytest.raises(pg_errors.LockNotAvailable) as refused:
            db.execute("SELECT * FROM pyxp.rebalance_rank_buckets(16, true)")
        db.rollback()
        assert database_state(db) == before
        open_award.rollback()
    diag = refused.value.diag
    assert diag.message_primary is not None and diag.message_hint is not None
    # (the holder is another role's session, whose state pyxp_owner may not see: its pid alone, where
    # it said "(, transaction started )", a hostile test, 0037)
    assert diag.message_primary == ("pyxp.rebalance_rank_buckets could not hold the awards within "
                                    f"lock_timeout (1s): pyxp.xp_balances is held by session pid {holder}")
    assert diag.message_hint == ("end that transaction (pg_stat_activity shows it by its pid; "
                                 "pg_terminate_backend(pid) ends it), then run this again")


def test_an_award_left_prepared_is_named_by_the_operations_it_holds_off(two_phase_server: str) -> None:
    """A coordinator's prepared award (two-phase commit) holds every owner operation that must hold
    the awards: no session shows it, and the error was a bare 55P03 (a hostile test, 0035). Now the
    SQL functions and the CLI (rules apply: the activation waits 10 s) name its gid; nothing
    written; once it is committed, the same commands go through."""
    def rulesets(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
        return conn.execute("SELECT ruleset_id, name, is_active FROM pyxp.rulesets ORDER BY 1").fetchall()

    with psycopg.connect(two_phase_server, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("SET LOCAL pyxp.feed_wakeups = off")  # (a transaction that notified cannot be prepared)
        conn.execute(AWARD, {**SETUP, "key": "fault:prepared"})
        conn.execute("PREPARE TRANSACTION 'coordinator-42'")
        try:
            before = rulesets(conn)
            with pytest.raises(pg_errors.LockNotAvailable) as refused:
                conn.execute("SELECT * FROM pyxp.rebalance_rank_buckets(16, true)")
            applied = subprocess.run([PYXP, "--database-url", two_phase_server, "rules", "apply", "winstory-flows"],
                                     capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
            assert rulesets(conn) == before
        finally:
            conn.execute("COMMIT PREPARED 'coordinator-42'")
        primary = refused.value.diag.message_primary or ""
        assert "pyxp.xp_balances is held by prepared transaction 'coordinator-42' (prepared " in primary
        assert "COMMIT PREPARED or ROLLBACK PREPARED" in (refused.value.diag.message_hint or "")
        assert applied.returncode == 2 and applied.stdout == ""
        assert ("pyxp.install_ruleset could not hold the awards within lock_timeout (10s): pyxp.xp_balances "
                "is held by prepared transaction 'coordinator-42'") in applied.stderr
        assert "COMMIT PREPARED or ROLLBACK PREPARED" in applied.stderr

        assert conn.execute("SELECT buckets FROM pyxp.rebalance_rank_buckets(16, true)").fetchone()[0] >= 1
        subprocess.run([PYXP, "--database-url", two_phase_server, "rules", "apply", "winstory-flows"],
                       check=True, capture_output=True, stdin=subprocess.DEVNULL)
        assert [r[1] for r in rulesets(conn) if r[2]] == ["winstory-flows"]
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
