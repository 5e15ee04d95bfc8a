"""The change feed at the SQL level: pyxp.changes (SPEC §11, sql/11_changes.sql).

The feed's horizon is the cluster-wide xmin: transactions of other tests on the
same server hold it back for a while, so a reader here never expects a row right
after its commit. It polls, passing back the last cursor it received, until it
has seen what it expects or a generous deadline passes. Nothing here asserts on
timings.

Roles are cluster-wide: the privilege test creates login roles with unique names
(``app_<hex>``) and drops them at the end (the pattern of tests/test_security.py).
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pyxp import schema
from conftest import settled, steady

AWARD = ("SELECT transaction_id FROM pyxp.award(wallet => %s, action => 'CAMPAIGN_APPROVED', "
         "idempotency_key => %s)")
AWARD_MANY = "SELECT transaction_id FROM pyxp.award_many(events => %s::jsonb)"
CHANGES = ("SELECT cursor, transaction_id, user_wallet, transaction_type, xp_amount, total_xp, "
           "previous_level, current_level, campaign_id, subject, created_at "
           "FROM pyxp.changes(after_cursor => %s, max_rows => %s, wallet => %s)")
HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
DEADLINE = 60.0  # seconds a reader may wait for the cluster's xmin to pass a commit
POLL = 0.01


class Change(NamedTuple):
    cursor: int
    transaction_id: int
    user_wallet: str
    transaction_type: str
    xp_amount: int
    total_xp: int
    previous_level: int
    current_level: int
    campaign_id: str | None
    subject: str | None
    created_at: Any


def key() -> str:
    return f"feed-{uuid.uuid4().hex}"


def hex_wallet(n: int) -> str:
    return f"0x{n:040x}"


def award(conn: psycopg.Connection[Any], wallet: str) -> int:
    rows = conn.execute(AWARD, (wallet, key())).fetchall()
    assert len(rows) == 1
    return int(rows[0][0])


def page(conn: psycopg.Connection[Any], after: int, max_rows: int = 100,
         wallet: str | None = None) -> list[Change]:
    return [Change(*row) for row in conn.execute(CHANGES, (after, max_rows, wallet)).fetchall()]


def read_until(conn: psycopg.Connection[Any], seen: list[Change], done: Callable[[list[Change]], bool],
               max_rows: int = 100, wallet: str | None = None) -> list[Change]:
    """Reads on from the last cursor in ``seen`` (appending) until ``done(seen)`` or the deadline."""
    deadline = time.monotonic() + DEADLINE
    while not done(seen):
        got = page(conn, seen[-1].cursor if seen else 0, max_rows, wallet)
        seen.extend(got)
        if not got:
            assert time.monotonic() < deadline, f"the feed stalled after rows {ids_of(seen)}"
            time.sleep(POLL)
    return seen


def ids_of(rows: list[Change]) -> list[int]:
    return [r.transaction_id for r in rows]


def has_ids(*wanted: int) -> Callable[[list[Change]], bool]:
    return lambda seen: set(wanted) <= set(ids_of(seen))


def assert_cursors_increase(rows: list[Change]) -> None:
    cursors = [r.cursor for r in rows]
    assert all(c > 0 for c in cursors)
    assert all(a < b for a, b in itertools.pairwise(cursors)), "cursors do not strictly increase"


def assert_chain_order(rows: list[Change], start: dict[str, int] | None = None) -> None:
    """Per wallet, rows come in balance_after chain order (each starts where the previous ended)."""
    last_total: dict[str, int] = dict(start or {})
    last_id: dict[str, int] = {}
    for r in rows:
        assert r.total_xp - r.xp_amount == last_total.get(r.user_wallet, 0), \
            f"row {r.transaction_id} of {r.user_wallet} is out of its balance_after chain"
        assert r.transaction_id > last_id.get(r.user_wallet, 0)
        last_total[r.user_wallet] = r.total_xp
        last_id[r.user_wallet] = r.transaction_id


def assert_matches_ledger(db: psycopg.Connection[Any], rows: list[Change]) -> None:
    """total_xp is the ledger's balance_after; the levels are level_for before and after."""
    ledger = {row[0]: row[1:] for row in db.execute(
        "SELECT id, user_wallet, transaction_type, xp_amount, balance_after, campaign_id, subject, created_at "
        "FROM pyxp.xp_transactions WHERE id = ANY(%s)", (ids_of(rows),))}
    totals = sorted({r.total_xp for r in rows} | {r.total_xp - r.xp_amount for r in rows})
    level = dict(db.execute("SELECT x::bigint, l.level FROM unnest(%s::numeric[]) x "
                            "CROSS JOIN LATERAL pyxp.level_for(x) l", (totals,)).fetchall())
    for r in rows:
        assert (r.user_wallet, r.transaction_type, r.xp_amount, r.total_xp, r.campaign_id, r.subject,
                r.created_at) == ledger[r.transaction_id]
        assert r.previous_level == level[r.total_xp - r.xp_amount]
        assert r.current_level == level[r.total_xp]


# --------------------------------------------------------------------------- concurrency


class Reader(threading.Thread):
    """Polls pyxp.changes with the last cursor it received; reconnects (same cursor) when killed."""

    def __init__(self, conninfo: str, max_rows: int, wallet: str | None = None) -> None:
        super().__init__(daemon=True)
        self.conninfo, self.max_rows, self.wallet = conninfo, max_rows, wallet
        self.rows: list[Change] = []
        self.pid: int | None = None
        self.reconnects = 0
        self.error: Exception | None = None
        self.stopping = threading.Event()

    @property
    def cursor(self) -> int:
        return self.rows[-1].cursor if self.rows else 0

    def run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        try:
            while not self.stopping.is_set():
                if conn is None:
                    conn = psycopg.connect(self.conninfo, autocommit=True)
                    self.pid = conn.info.backend_pid
                try:
                    got = page(conn, self.cursor, self.max_rows, self.wallet)
                except psycopg.OperationalError:  # killed: go on from the same cursor
                    conn.close()
                    conn = None
                    self.reconnects += 1
                    continue
                self.rows.extend(got)
                if len(got) < self.max_rows:
                    time.sleep(POLL)
        except Exception as exc:  # noqa: BLE001 (re-raised by the test)
            self.error = exc
        finally:
            if conn is not None:
                conn.close()

    def kill(self, db: psycopg.Connection[Any]) -> None:
        """Terminates the reader's connection, wherever it is (mid-query or between polls)."""
        assert self.pid is not None
        db.execute("SELECT pg_terminate_backend(%s)", (self.pid,))


def writer(conninfo: str, seed: int, transactions: int, wallets: list[str],
           stop_at: float) -> tuple[set[int], set[int]]:
    """Awards in many transactions, each left open 0-50 ms, 1 in 5 rolled back.

    Returns (ids of committed rows, ids of rolled-back rows). Wallets are shared
    between writers, so their balance locks contend; some transactions take an
    xid before any lock, so older transactions queue behind younger ones (the
    case where a row's feed group is the wallet's previous group, not its own xid).
    """
    rng = random.Random(seed)
    committed: set[int] = set()
    rolled_back: set[int] = set()
    with psycopg.connect(conninfo) as conn:
        for _ in range(transactions):
            if time.monotonic() > stop_at:
                break
            ids: list[int] = []
            try:
                if rng.random() < 0.3:
                    conn.execute("SELECT pg_current_xact_id()")
                if rng.random() < 0.5:  # single awards, in wallet order (no deadlock)
                    for wallet in sorted(rng.sample(wallets, rng.choice([1, 1, 2]))):
                        # some callers spell a wallet in upper case: the feed shows it normalised
                        spelled = wallet.upper().replace("0X", "0x") if rng.random() < 0.3 else wallet
                        ids.extend(row[0] for row in conn.execute(AWARD, (spelled, key())).fetchall())
                else:  # a small batch, possibly several rows of one wallet
                    events = [{"wallet": w, "action": "CAMPAIGN_APPROVED", "idempotency_key": key()}
                              for w in rng.choices(wallets, k=rng.randint(2, 4))]
                    ids.extend(row[0] for row in conn.execute(AWARD_MANY, (json.dumps(events),)).fetchall())
                time.sleep(rng.uniform(0, 0.05))
                if rng.random() < 0.2:
                    conn.rollback()
                    rolled_back.update(ids)
                else:
                    conn.commit()
                    committed.update(ids)
            except psycopg.errors.TransactionRollback:  # a deadlock would only mean: rolled back
                conn.rollback()
                rolled_back.update(ids)
    return committed, rolled_back


def run_workload(conninfo: str, db: psycopg.Connection[Any], readers: list[Reader],
                 expected: Callable[[Reader, set[int]], set[int]], killed: Reader | None,
                 writers: int = 16, transactions: int = 15,
                 wallets: int = 8) -> tuple[set[int], set[int]]:
    """Runs writers and readers together; returns when every reader has its expected set."""
    names = [hex_wallet(0xfeed00 + i) for i in range(wallets)]
    for reader in readers:
        reader.start()
    try:
        stop_at = time.monotonic() + 25.0  # a bound, not a measure: the writers normally finish first
        with ThreadPoolExecutor(writers) as pool:
            futures = [pool.submit(writer, conninfo, seed, transactions, names, stop_at)
                       for seed in range(writers)]
            kills = 0
            while not all(f.done() for f in futures):
                if killed is not None and kills == 0 and len(killed.rows) >= 20 and killed.pid is not None:
                    killed.kill(db)  # mid-way, while the writers write
                    kills += 1
                time.sleep(0.02)
            results = [f.result() for f in futures]
        committed = set().union(*(c for c, _ in results))
        rolled_back = set().union(*(r for _, r in results))
        deadline = time.monotonic() + DEADLINE
        if killed is not None:  # and once more after the writers, before it has caught up
            while killed.pid is None and killed.error is None and time.monotonic() < deadline:
                time.sleep(POLL)
            if killed.pid is not None:
                killed.kill(db)
        for reader in readers:
            want = expected(reader, committed)
            while ((len(reader.rows) < len(want) or (reader is killed and reader.reconnects == 0))
                   and reader.error is None and time.monotonic() < deadline):
                time.sleep(0.05)
    finally:
        for reader in readers:
            reader.stopping.set()
        for reader in readers:
            reader.join(30)
    for reader in readers:
        if reader.error is not None:
            raise reader.error
    assert committed and rolled_back, "the workload should both commit and roll back"
    # The bookkeeping of the writers is the ledger's truth.
    ledger_ids = {row[0] for row in db.execute("SELECT id FROM pyxp.xp_transactions")}
    assert ledger_ids == committed
    assert not committed & rolled_back
    return committed, rolled_back


def assert_fed_exactly_once(db: psycopg.Connection[Any], reader: Reader, want: set[int],
                            rolled_back: set[int]) -> None:
    ids = ids_of(reader.rows)
    assert len(ids) == len(set(ids)), f"rows fed twice: {sorted(i for i in set(ids) if ids.count(i) > 1)}"
    assert not set(ids) & rolled_back, "a rolled-back row was fed"
    assert set(ids) == want, f"missing {sorted(want - set(ids))[:10]}, extra {sorted(set(ids) - want)[:10]}"
    assert_cursors_increase(reader.rows)
    assert_chain_order(reader.rows)
    assert_matches_ledger(db, reader.rows)
    # and nothing more after the last cursor
    assert page(db, reader.cursor, 1000, reader.wallet) == []


def test_every_committed_row_is_fed_exactly_once_under_concurrent_writers(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """SPEC 11: readers passing back their last cursor see each committed row once, in chain order.

    16 writers contend on 8 wallets; three readers (1, 7 and 100 rows a call) poll
    meanwhile; the one reading 7 at a time is killed twice and goes on from its last
    cursor on a new connection.
    """
    readers = [Reader(conninfo, 1), Reader(conninfo, 7), Reader(conninfo, 100)]
    committed, rolled_back = run_workload(conninfo, db, readers, lambda _, c: c, killed=readers[1],
                                          transactions=25)
    for reader in readers:
        assert_fed_exactly_once(db, reader, committed, rolled_back)
    assert readers[1].reconnects >= 1, "the killed reader was not cut off"
    # Cursors are the rows' own: every reader got the same cursor for a row.
    cursors = [{r.transaction_id: r.cursor for r in reader.rows} for reader in readers]
    assert cursors[0] == cursors[1] == cursors[2]
    # Every wallet's chain ends at its balance.
    final = {r.user_wallet: r.total_xp for r in readers[2].rows}
    assert final == dict(db.execute("SELECT user_wallet, total_xp FROM pyxp.xp_balances").fetchall())
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_wallet_filter_feeds_that_wallets_committed_rows_once_with_the_feeds_cursors(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """SPEC 11: with wallet => X, X's committed rows once, in chain order, with the same cursors.

    The filter is spelled in upper case (wallets are normalised as usual); the
    reader of the second wallet is killed and resumes from its last cursor.
    """
    x, y = hex_wallet(0xfeed00), hex_wallet(0xfeed01)
    filtered = [Reader(conninfo, 1, x.upper().replace("0X", "0x")), Reader(conninfo, 7, y)]
    everything = Reader(conninfo, 100)
    readers = [*filtered, everything]

    def wallet_ids(wallet: str, committed: set[int]) -> set[int]:
        return {row[0] for row in db.execute(
            "SELECT id FROM pyxp.xp_transactions WHERE user_wallet = %s AND id = ANY(%s)",
            (wallet, sorted(committed)))}

    def expected(reader: Reader, committed: set[int]) -> set[int]:
        return committed if reader.wallet is None else wallet_ids(reader.wallet.lower(), committed)

    committed, rolled_back = run_workload(conninfo, db, readers, expected, killed=filtered[1],
                                          transactions=10, wallets=6)
    assert_fed_exactly_once(db, everything, committed, rolled_back)
    feed_cursor = {r.transaction_id: r.cursor for r in everything.rows}
    for reader, wallet in zip(filtered, (x, y)):
        want = wallet_ids(wallet, committed)
        assert want, f"the workload wrote nothing for {wallet}"
        assert_fed_exactly_once(db, reader, want, rolled_back)
        assert {r.user_wallet for r in reader.rows} == {wallet}
        assert {r.transaction_id: r.cursor for r in reader.rows} == \
            {i: feed_cursor[i] for i in want}, "the filtered feed's cursors differ from the feed's"
    assert filtered[1].reconnects >= 1


# --------------------------------------------------------------------------- ordering


def test_a_row_of_a_transaction_open_across_a_later_commit_is_fed_once_after_it_commits(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """SPEC 11: rows of a transaction still in progress are fed once it commits.

    T1 awards A first (the lower ledger id) and commits after B's award: a feed of
    "ids above the last one seen" would hand out B's id and then skip A's row.
    """
    c_id = award(db, "feed-c")  # committed before T1: readable while T1 is open
    with psycopg.connect(conninfo, autocommit=True) as reader, psycopg.connect(conninfo) as t1:
        a_id = award(t1, "feed-a")
        t1_xid = int(t1.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0])
        b_id = award(db, "feed-b")
        assert a_id < b_id, "T1 should hold the lower ledger id"

        def c_read_and_b_read_or_held_by_t1(seen: list[Change]) -> bool:
            if c_id not in ids_of(seen):
                return False
            return b_id in ids_of(seen) or reader.execute(HORIZON).fetchone()[0] == t1_xid

        seen = read_until(reader, [], c_read_and_b_read_or_held_by_t1)
        seen.extend(page(reader, seen[-1].cursor))  # whatever else the horizon lets through
        assert a_id not in ids_of(seen)  # not committed
        t1.commit()
        read_until(reader, seen, has_ids(a_id, b_id))
        seen.extend(page(reader, seen[-1].cursor))
    assert sorted(ids_of(seen)) == sorted({a_id, b_id, c_id}), "each row exactly once"
    assert_cursors_increase(seen)
    assert_matches_ledger(db, seen)


def test_an_older_transaction_writing_after_a_younger_one_keeps_the_wallets_chain_order(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """SPEC 11: per wallet, rows come in balance_after order, whoever's transaction id is older.

    T1 takes its transaction id first; T2 (younger) awards W and commits; then T1
    awards W (behind T2's row in W's chain) and commits.
    """
    first = award(db, "feed-w")
    with psycopg.connect(conninfo) as t1:
        t1.execute("SELECT pg_current_xact_id()")
        with psycopg.connect(conninfo) as t2:
            younger = award(t2, "feed-w")
            award(t2, "feed-v")
            t2.commit()
        older = award(t1, "feed-w")
        award(t1, "feed-v")
        t1.commit()
    everything = read_until(db, [], lambda seen: len(seen) == 5, max_rows=2)
    mine = read_until(db, [], has_ids(first, younger, older), max_rows=1, wallet="feed-w")
    assert ids_of(mine) == [first, younger, older]
    for rows in (everything, mine):
        assert_cursors_increase(rows)
        assert_chain_order(rows)
        assert_matches_ledger(db, rows)
    assert {r.transaction_id: r.cursor for r in mine} == \
        {r.transaction_id: r.cursor for r in everything if r.user_wallet == "feed-w"}
    assert page(db, everything[-1].cursor) == []


def test_reading_consumes_nothing_and_a_later_cursor_skips_what_came_before(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """SPEC 11: each consumer keeps its own cursor; reading deletes nothing."""
    ids = [award(db, f"feed-{i % 2}") for i in range(5)]
    first = read_until(db, [], has_ids(*ids))
    assert sorted(ids_of(first)) == ids
    assert_chain_order(first)
    # Read again from the start: the same rows, the same cursors. (read_until, not one page: a
    # transaction of another database that ends while a read looks at pg_locks holds the
    # feed back for that read, sql/11_changes.sql.)
    assert read_until(db, [], has_ids(*ids)) == first
    assert read_until(db, [first[1]], lambda seen: len(seen) >= 3, max_rows=2)[1:] == first[2:4]
    assert page(db, first[-1].cursor) == []


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("after_cursor", "max_rows", "wallet", "sqlstate"), [
    (0, 0, None, "PX023"),
    (0, 1001, None, "PX023"),
    (0, -1, None, "PX023"),
    (0, None, None, "PX023"),
    (-1, 100, None, "PX023"),
    (None, 100, None, "PX023"),
    (-(2 ** 63), 100, "someone", "PX023"),
    (0, 100, "", "PX001"),
    (0, 100, "   ", "PX001"),
    (0, 100, "bad\x01wallet", "PX001"),
    (0, 100, "w" * 129, "PX001"),
])
def test_bad_arguments_are_refused_and_write_nothing(db: psycopg.Connection[Any], unchanged: Any,
                                                     after_cursor: int | None, max_rows: int | None,
                                                     wallet: str | None, sqlstate: str) -> None:
    award(db, "someone")
    with unchanged(), pytest.raises(psycopg.Error) as caught:
        db.execute(CHANGES, (after_cursor, max_rows, wallet))
    assert caught.value.sqlstate == sqlstate, caught.value


@pytest.mark.parametrize("wallet", [None, "ahead"])
def test_a_cursor_ahead_of_the_feed_is_refused(db: psycopg.Connection[Any], unchanged: Any,
                                              wallet: str | None) -> None:
    """A cursor whose group no transaction has reached came from no feed: accepted, every row
    committed below it was skipped for good (0028, a hostile test)."""
    (xmax,), = db.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchall()
    with unchanged(), pytest.raises(psycopg.Error) as caught:
        db.execute(CHANGES, ((xmax + 1000) << 24, 100, wallet))
    assert caught.value.sqlstate == "PX023", caught.value
    assert "ahead of the feed" in (caught.value.diag.message_primary or "")
    awarded = award(db, "ahead")
    delivered = settled(lambda: [r[1] for r in db.execute(CHANGES, (0, 100, wallet))][-1:], [awarded])
    assert delivered == [awarded]


@pytest.mark.parametrize("epoch, low_bits", [(1, 0), (1, 1), (1, 2), (2, 0), (7, 2)])
def test_a_cursor_whose_group_no_transaction_can_have_is_refused(db: psycopg.Connection[Any], unchanged: Any,
                                                                 epoch: int, low_bits: int) -> None:
    """Transaction ids whose low 32 bits are 0, 1 or 2 are never handed out past the first epoch:
    pg_xact_status() reads them as no transaction (NULL) or as the bootstrap's (committed), and
    such a cursor ahead of the feed was taken as one whose transaction had ended: 0 rows, no
    PX023, and a consumer that stored it read an empty feed for good (a newcomer's review)."""
    (offset,), = db.execute("SELECT pyxp.xid_offset()::bigint").fetchall()
    group = offset + (epoch << 32) + low_bits
    with unchanged(), pytest.raises(psycopg.Error) as caught:
        db.execute(CHANGES, (group << 24, 100, None))
    assert caught.value.sqlstate == "PX023", caught.value
    assert "ahead of the feed" in (caught.value.diag.message_primary or "")


@pytest.mark.parametrize("younger", ["running", "committed"])
@pytest.mark.parametrize("wallet", [None, "0xolder"])
def test_a_cursor_of_a_group_an_older_running_transaction_holds_back_is_refused(
        conninfo: str, db: psycopg.Connection[Any], unchanged: Any, younger: str, wallet: str | None) -> None:
    """A group below the reader's snapshot's xmax whose transaction, or an older one of this database,
    still runs is one no feed has handed out a cursor of: every page stops below the oldest running
    transaction. Such a cursor was accepted (0 rows), and once both transactions committed, reading on
    from it skipped the older one's row for good (a hostile test, 0039); a group at or above xmax was
    already refused."""
    with psycopg.connect(conninfo) as older, psycopg.connect(conninfo) as younger_tx, \
            psycopg.connect(conninfo, autocommit=True) as reader:
        older.execute("SELECT * FROM pyxp.award('0xolder', 'CAMPAIGN_APPROVED', %s)", (key(),))
        younger_tx.execute("SELECT * FROM pyxp.award('0xyounger', 'CAMPAIGN_APPROVED', %s)", (key(),))
        (younger_id,), = younger_tx.execute("SELECT pg_current_xact_id()::text::bigint").fetchall()
        if younger == "committed":
            younger_tx.commit()
        reader.execute("SELECT pg_current_xact_id()")  # a younger transaction ends: xmax passes it
        (xmax,), = reader.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchall()
        assert younger_id < xmax
        for cursor in (younger_id << 24, (younger_id << 24) + 1):
            with unchanged(), pytest.raises(psycopg.Error) as caught:
                reader.execute(CHANGES, (cursor, 100, wallet))
            assert caught.value.sqlstate == "PX023", caught.value
            assert "ahead of the feed" in (caught.value.diag.message_primary or "")
        older.commit()
        younger_tx.commit()
    rows = settled(lambda: [r[2] for r in db.execute(CHANGES, (0, 1000, wallet))
                            if r[2] in ("0xolder", "0xyounger")], None,
                   until=lambda got: "0xolder" in got)
    assert "0xolder" in rows


def test_a_cursor_of_the_readers_own_group_is_refused_while_it_runs(conninfo: str, db: psycopg.Connection[Any],
                                                                  unchanged: Any) -> None:
    """A reader that has written holds its own group back from every page: a cursor of that group came
    from no feed, and reading on from it after the commit would skip the reader's own first row. Once a
    younger transaction has ended, the group is below the reader's snapshot's xmax, where it was
    accepted (0039). The refusal is read in the reader's transaction, rolled back after it: nothing
    is left written."""
    with unchanged():
        db.autocommit = False
        try:
            db.execute("SELECT * FROM pyxp.award('0xself', 'CAMPAIGN_APPROVED', %s)", (key(),))
            (own,), = db.execute("SELECT pg_current_xact_id()::text::bigint").fetchall()
            with psycopg.connect(conninfo, autocommit=True) as younger:
                younger.execute("SELECT pg_current_xact_id()")  # a transaction that ends, writing nothing
            (xmax,), = db.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchall()
            assert own < xmax
            with pytest.raises(psycopg.Error) as caught:
                db.execute(CHANGES, ((own << 24) + 1, 100, None))
            assert caught.value.sqlstate == "PX023", caught.value
            assert "ahead of the feed" in (caught.value.diag.message_primary or ""), caught.value
        finally:
            db.rollback()
            db.autocommit = True


def test_a_cursor_handed_out_after_a_repeatable_read_snapshot_reads_an_empty_page_there(
        conninfo: str, db: psycopg.Connection[Any], unchanged: Any) -> None:
    """A consumer in a REPEATABLE READ (or SERIALIZABLE) transaction given a cursor that another
    session's newer snapshot had read (a shared cursor store) was refused with PX023, "ahead of the
    feed", a refusal a client takes for good (0037, a hostile test). Its group's transaction has ended:
    the page is empty in that snapshot and the next transaction reads on; a group whose transaction
    runs, or that none has reached, is still refused."""
    with psycopg.connect(conninfo) as reader:
        reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        reader.execute("SELECT 1")  # the snapshot
        first = award(db, "0xrepeatable")
        cursor = settled(lambda: [r[0] for r in db.execute(CHANGES, (0, 100, None))][-1:], None,
                         until=lambda got: len(got) == 1)[0]
        assert reader.execute(CHANGES, (cursor, 100, None)).fetchall() == []
        with psycopg.connect(conninfo) as running:
            running_id = running.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]  # type: ignore[index]
            for group in (running_id, running_id + 1000):
                with unchanged(), pytest.raises(psycopg.Error) as caught:
                    reader.execute("SAVEPOINT s")
                    reader.execute(CHANGES, (group << 24, 100, None))
                assert caught.value.sqlstate == "PX023", caught.value
                reader.execute("ROLLBACK TO SAVEPOINT s")
        reader.rollback()
        second = award(db, "0xrepeatable")
        assert settled(lambda: [r[1] for r in reader.execute(CHANGES, (cursor, 100, None))], [second]) == [second]
        assert first < second


def test_a_transactions_batches_stop_below_the_feeds_bound(conninfo: str, db: psycopg.Connection[Any],
                                                          unchanged: Any) -> None:
    """A cursor ranks a row within its group below 2^24: a transaction writing more rows than that
    through batches (or a retroactive application) would have its last ones read as the next
    group's, and the rest of its group skipped (a hostile test). They count, and stop at 15,728,640."""
    events = json.dumps([{"wallet": f"bound-{i}", "action": "CAMPAIGN_APPROVED", "idempotency_key": key()}
                         for i in range(3)])
    with psycopg.connect(conninfo) as conn:
        conn.execute(AWARD_MANY, (events,)).fetchall()
        conn.execute(AWARD_MANY, (events.replace("feed-", "feed-again-"),)).fetchall()
        assert conn.execute("SELECT current_setting('pyxp.transaction_rows') = "
                            "pyxp.transaction_mark(pg_current_xact_id()) || ':6'").fetchone() == (True,)
        conn.rollback()
    with unchanged(), psycopg.connect(conninfo) as conn:
        conn.execute("SELECT set_config('pyxp.transaction_rows', "
                     "pyxp.transaction_mark(pg_current_xact_id()) || ':15728638', true)")
        with pytest.raises(psycopg.Error) as caught:  # as if written before, in this transaction
            conn.execute(AWARD_MANY, (events,))
        assert caught.value.sqlstate == "PX023" and "15728640" in str(caught.value)


def test_a_count_left_by_another_transaction_counts_nothing(conninfo: str, db: psycopg.Connection[Any]) -> None:
    """A session's SET of the count (left on a pooled server connection, every later client of that
    connection had its batches refused: a hostile test) is not this transaction's (0029)."""
    events = json.dumps([{"wallet": "leak", "action": "CAMPAIGN_APPROVED", "idempotency_key": key()}])
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for leaked in ("15728640", "1:15728640"):
            conn.execute(f"SET pyxp.transaction_rows = '{leaked}'")
            assert len(conn.execute(AWARD_MANY, (events,)).fetchall()) == 1
    # 0047 (helper-74): nor one set ahead with the next transaction's id, predictable on a quiet server
    # (the transaction's own id here, SET at session level in it, is what such a guess gives)
    with psycopg.connect(conninfo) as conn:
        conn.execute("SELECT pg_current_xact_id()")
        conn.execute("SELECT set_config('pyxp.transaction_rows', pg_current_xact_id() || ':15728640', false)")
        ahead = json.dumps([{"wallet": "leak-ahead", "action": "CAMPAIGN_APPROVED", "idempotency_key": key()}])
        assert len(conn.execute(AWARD_MANY, (ahead,)).fetchall()) == 1


def test_a_group_past_a_cursors_rank_is_refused_by_name(db: psycopg.Connection[Any]) -> None:
    """What changes() raises on a rank past 2^24 - 1 (a group that large is 16.8 million rows: the
    bound above keeps writers below it)."""
    with pytest.raises(psycopg.Error) as caught:
        db.execute("SELECT pyxp.raised_feed_overflow('12345'::xid8)")
    assert caught.value.sqlstate == "PX031"


# --------------------------------------------------------------------------- wake-ups


def wake_ups(listener: psycopg.Connection[Any], wait: float) -> list[psycopg.Notify]:
    return list(listener.notifies(timeout=wait, stop_after=1))


def test_listeners_are_woken_by_committed_awards_only_after_commit(conninfo: str,
                                                                   db: psycopg.Connection[Any]) -> None:
    """SPEC 11: NOTIFY pyxp_changes after a committed award; none for a rolled-back one."""
    with psycopg.connect(conninfo, autocommit=True) as listener:
        listener.execute("LISTEN pyxp_changes")
        # Rolled back: no wake-up, even once its 100 ms slot is long gone.
        with psycopg.connect(conninfo) as writer_conn:
            award(writer_conn, "feed-rolled-back")
            writer_conn.rollback()
        assert wake_ups(listener, 1.2) == []

        # A new slot (the rolled-back award claimed the last one). Nothing while open.
        time.sleep(0.2)
        with psycopg.connect(conninfo) as writer_conn:
            award(writer_conn, "feed-open")
            assert wake_ups(listener, 1.0) == []
            writer_conn.commit()
            woken = wake_ups(listener, 10)
        assert [n.channel for n in woken] == ["pyxp_changes"]

        # An autocommit award, in a new slot.
        time.sleep(0.2)
        award(db, "feed-committed")
        assert [n.channel for n in wake_ups(listener, 10)] == ["pyxp_changes"]

        # A batch wakes listeners too.
        time.sleep(0.2)
        db.execute(AWARD_MANY, (json.dumps([{"wallet": "feed-batch", "action": "CAMPAIGN_APPROVED",
                                             "idempotency_key": key()}]),))
        assert [n.channel for n in wake_ups(listener, 10)] == ["pyxp_changes"]


def test_wake_ups_go_on_after_the_clock_stepped_back(conninfo: str, db: psycopg.Connection[Any]) -> None:
    """A wake-up's slot claimed while the server's clock ran an hour ahead (then NTP stepped it
    back): at 0030 no award woke listeners until the clock reached that slot again (a hostile
    test). A slot more than a second behind the last one claimed is a clock that stepped back."""
    db.execute("SELECT setval('pyxp.feed_wakeup_slot', (extract(epoch FROM clock_timestamp()) * 10)::bigint + 36000)")
    with psycopg.connect(conninfo, autocommit=True) as listener:
        listener.execute("LISTEN pyxp_changes")
        with psycopg.connect(conninfo, autocommit=True) as writer_conn:  # a new session: no slot seen
            award(writer_conn, "feed-after-step")
        assert [n.channel for n in wake_ups(listener, 10)] == ["pyxp_changes"]
        time.sleep(0.2)  # the next slot: the clock goes on from there
        award(db, "feed-next-slot")
        assert [n.channel for n in wake_ups(listener, 10)] == ["pyxp_changes"]


@pytest.mark.parametrize("spelling", ["off", "OFF", "false", "0"])
def test_a_transaction_may_send_no_wake_up(conninfo: str, db: psycopg.Connection[Any], spelling: str) -> None:
    """pyxp.feed_wakeups = off (in PostgreSQL's boolean spellings): a transaction to be prepared
    (two-phase commit) may not have notified, nor wait at commit for the cluster-wide lock NOTIFY
    takes (0028)."""
    with psycopg.connect(conninfo, autocommit=True) as listener:
        listener.execute("LISTEN pyxp_changes")
        time.sleep(0.2)  # a new slot
        with psycopg.connect(conninfo) as writer_conn:
            writer_conn.execute("SELECT set_config('pyxp.feed_wakeups', %s, true)", (spelling,))
            award(writer_conn, "feed-quiet")
            writer_conn.commit()
        assert wake_ups(listener, 1.2) == []
        award(db, "feed-loud")  # the slot is still free: this one wakes listeners
        assert [n.channel for n in wake_ups(listener, 10)] == ["pyxp_changes"]


def test_an_award_can_be_prepared_without_its_wake_up(two_phase_server: str) -> None:
    """PREPARE TRANSACTION refuses a transaction that notified (0A000), and at low traffic nearly every
    award is its slot's first: a hostile test lost the caller's whole transaction. With
    pyxp.feed_wakeups = off it prepares, then commits, and the feed delivers the row."""
    with psycopg.connect(two_phase_server) as conn:
        time.sleep(0.2)
        award(conn, "tpc-loud")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("PREPARE TRANSACTION 'tpc-loud'")
    with psycopg.connect(two_phase_server, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("SET LOCAL pyxp.feed_wakeups = off")
        awarded = award(conn, "tpc-quiet")
        conn.execute("PREPARE TRANSACTION 'tpc-quiet'")
        conn.execute("COMMIT PREPARED 'tpc-quiet'")
        assert [r[1] for r in conn.execute(CHANGES, (0, 10, None))] == [awarded]
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_awards_after_a_prepare_on_the_same_backend_do_not_wait_for_it(two_phase_server: str) -> None:
    """A prepared transaction kept the rank counts' rows of its backend locked (their slot was the
    backend's pid): every later award on that backend — the same session, or behind a pooler another
    client's — waited for it until COMMIT PREPARED, and PostgreSQL reported no deadlock (a hostile test,
    0035). The slot is now leased per transaction: these awards count in another and go through."""
    with psycopg.connect(two_phase_server, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '3s'")
        conn.execute("BEGIN")
        conn.execute("SET LOCAL pyxp.feed_wakeups = off")
        award(conn, "0xprepared")
        conn.execute("PREPARE TRANSACTION 'held-slot'")
        try:
            after = [award(conn, f"0xafter{i}") for i in range(3)]  # each its own transaction
            within = conn.execute(AWARD, ("0xafter0", key())).fetchall()
        finally:
            conn.execute("COMMIT PREPARED 'held-slot'")
        assert len(after) == 3 and len(within) == 1
        pid = conn.info.backend_pid  # the prepared transaction counts in slot pid, later ones pid + 2^22
        assert conn.execute("SELECT array_agg(DISTINCT slot ORDER BY slot) FROM pyxp.xp_rank_counts WHERE slot %% %s = %s",
                            (4194304, pid)).fetchone() == ([pid, pid + 4194304],)
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        ranks = conn.execute("SELECT w, pyxp.wallet_rank(w), pyxp.wallet_rank(w, 'week') FROM unnest(%s::text[]) w",
                             (["0xafter0", "0xprepared"],)).fetchall()
        assert ranks == [("0xafter0", 1, 1), ("0xprepared", 4, 4)]  # 200; 100 after 0xafter1 and 2


def test_a_transaction_prepared_in_another_database_does_not_hold_the_feed_back(two_phase_server: str) -> None:
    """A prepared transaction has no backend: pyxp.oldest_running_here counted one left prepared in
    another database as running here, and a committed award never reached changes() until it ended."""
    other = make_conninfo(two_phase_server, dbname="other_app")
    with psycopg.connect(other, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (a int)")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (1)")  # an xid
        conn.execute("PREPARE TRANSACTION 'elsewhere'")
    try:
        with psycopg.connect(two_phase_server, autocommit=True) as conn:
            awarded = award(conn, "after-elsewhere")
            delivered = [r[1] for r in conn.execute(CHANGES, (0, 100, "after-elsewhere"))]
            assert delivered == [awarded]
    finally:
        with psycopg.connect(other, autocommit=True) as conn:
            conn.execute("ROLLBACK PREPARED 'elsewhere'")


def test_a_reader_inside_a_transaction_sees_which_database_a_later_transaction_runs_in(conninfo: str) -> None:
    """PostgreSQL keeps one copy of pg_stat_activity for a transaction's whole duration (0037, a
    reproduction of stop 39's hypothesis): a reader in a READ COMMITTED transaction that had read
    the feed once while another backend ran a transaction took a backend started later, in
    another database, for one of its own database, and its open transaction held every later
    page back until the reader's transaction ended."""
    elsewhere = make_conninfo(conninfo, dbname="postgres")
    with psycopg.connect(conninfo, autocommit=True) as writer, psycopg.connect(conninfo) as reader, \
            psycopg.connect(elsewhere) as early:
        early.execute("SELECT pg_current_xact_id()")  # running while the reader first reads the view
        award(writer, "0xbefore-late")  # a later commit: early's id is in the reader's snapshot's list
        cursor = steady(lambda: reader.execute("SELECT coalesce(max(cursor), 0) FROM pyxp.changes(0, 1000)").fetchone()[0])
        early.commit()
        with psycopg.connect(elsewhere) as late:  # a backend the reader's copy of the view lacks
            late.execute("SELECT pg_current_xact_id()")
            awarded = award(writer, "0xafter-late")
            delivered = settled(lambda: [r[1] for r in reader.execute(CHANGES, (cursor, 100, None))],
                                [awarded], seconds=15)
            assert delivered == [awarded]
            late.rollback()


# --------------------------------------------------------------------------- privileges




def test_writers_and_readers_can_follow_the_feed_others_cannot(
        db: psycopg.Connection[Any], login_role: Callable[..., str],
        connect_as: Callable[[str], psycopg.Connection[Any]]) -> None:
    """SPEC 11: pyxp.changes is callable by pyxp_writer and pyxp_reader, nobody else."""
    writer_conn = connect_as(login_role("pyxp_writer"))
    reader_conn = connect_as(login_role("pyxp_reader"))
    stranger = connect_as(login_role())
    written = award(writer_conn, "feed-privileges")
    for conn in (writer_conn, reader_conn):
        rows = read_until(conn, [], has_ids(written))
        assert ids_of(rows) == [written]
        assert ids_of(page(conn, 0, 10, "feed-privileges")) == [written]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        stranger.execute(CHANGES, (0, 100, None))


# --------------------------------------------------------------------------- rows from before 0003


def test_rows_written_before_the_feed_existed_are_fed_first_in_id_order(
        fresh_database: Callable[[], str]) -> None:
    """SPEC 11 / 0003: old rows (no feed group) come first, by id, then the new ones, once each."""
    target = fresh_database()
    schema.upgrade(target, "0002")
    with psycopg.connect(target, autocommit=True) as conn:
        old = [award(conn, f"feed-{i % 3}") for i in range(7)]
        old += [row[0] for row in conn.execute(AWARD_MANY, (json.dumps(
            [{"wallet": f"feed-{i % 2}", "action": "CAMPAIGN_APPROVED", "idempotency_key": key()}
             for i in range(4)]),))]
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        new = [award(conn, f"feed-{i % 3}") for i in range(5)]
        new += [row[0] for row in conn.execute(AWARD_MANY, (json.dumps(
            [{"wallet": f"feed-{i % 4}", "action": "CAMPAIGN_APPROVED", "idempotency_key": key()}
             for i in range(4)]),))]
        for max_rows in (1, 3, 1000):
            rows = read_until(conn, [], lambda seen: len(seen) >= len(old) + len(new), max_rows=max_rows)
            assert ids_of(rows)[:len(old)] == sorted(old)
            assert sorted(ids_of(rows)[len(old):]) == sorted(new)
            assert len(rows) == len(old) + len(new)
            assert_cursors_increase(rows)
            assert_chain_order(rows)
            assert_matches_ledger(conn, rows)
            assert page(conn, rows[-1].cursor) == []
        # one wallet's rows too: old ones first, then new ones, in its chain, with the feed's cursors
        feed_0 = [r for r in rows if r.user_wallet == "feed-0"]
        assert read_until(conn, [], lambda seen: len(seen) >= len(feed_0), max_rows=2, wallet="feed-0") == feed_0
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_pages_of_the_feed_stream_on_a_ledger_of_many_partitions(db: psycopg.Connection[Any]) -> None:
    """From the sixth call in a session PL/pgSQL plans changes()'s queries generically, and with 15
    partitions or more that plan sorted every row after the cursor on each page: a temp file the size of
    the rest of the ledger, and 53400 under a temp_file_limit (a hostile test, 0035). changes() plans each
    call for its cursor (plan_cache_mode force_custom_plan): the window streams and LIMIT stops it."""
    db.execute("SELECT * FROM pyxp.create_ledger_partitions(14)")
    assert db.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'pyxp.xp_transactions'::regclass"
                      ).fetchone()[0] >= 15  # type: ignore[index]
    for start in range(0, 12_000, 4_000):
        db.execute(AWARD_MANY, (json.dumps([{"wallet": hex_wallet(i % 500), "action": "CAMPAIGN_APPROVED",
                                             "idempotency_key": f"many-{i}"} for i in range(start, start + 4_000)]),))
    db.execute("ANALYZE pyxp.xp_transactions")  # (autovacuum's, on a deployment)
    with psycopg.connect(db.info.dsn, autocommit=True) as reader:
        reader.execute("SET work_mem = '64kB'")
        reader.execute("SET temp_file_limit = '256kB'")  # a sort of the rest of the ledger spills past it
        cursor, seen, calls = 0, 0, 0
        deadline = time.monotonic() + DEADLINE
        while (seen < 5_000 or calls < 10) and time.monotonic() < deadline:  # past the switch to a generic plan
            try:
                rows = reader.execute(CHANGES, (cursor, 500, None)).fetchall()
            except psycopg.Error as exc:
                raise AssertionError(f"call {calls}") from exc
            calls += 1
            if rows:
                cursor, seen = rows[-1][0], seen + len(rows)
            else:  # (a transaction of another test's database that ended while the read looked at pg_locks)
                time.sleep(POLL)
        assert seen >= 5_000 and calls >= 10
