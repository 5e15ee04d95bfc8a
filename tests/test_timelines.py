"""Histories left behind (0033, a hostile test of failovers and point-in-time recovery). A standby
promoted before it had received its primary's last transactions, or a point-in-time recovery,
starts a new timeline that hands out again the transaction ids and sequence values of the history
it left. The test found a feed consumer holding a lost row's cursor refused (PX023), then, once the
new ids passed it, skipping every row the new timeline wrote below it (a retried award included);
and ``reverse_transaction`` of a lost award's id reversing another wallet's row.

The first tests stand a rewritten ``pyxp.ledger_timeline()`` in for a timeline left behind (this
suite's server cannot be failed over); the last one fails a private primary over to a standby that
missed its last awards."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from conftest import base_backup, primary_with_pyxp, settled, steady
from pyxp import errors, schema
from pyxp.database import EmbeddedCluster
from pyxp.ruleset_config import load_ruleset
from test_copies import CHANGES, award

REVERSE = "SELECT * FROM pyxp.reverse_transaction(%s, 'refund')"


def scalar(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    return conn.execute(query, params).fetchone()[0]  # type: ignore[index]


def leave_timeline(conn: psycopg.Connection[Any], ledger: int = 1, server: int = 2) -> None:
    """The ledger names timeline ``ledger`` and this server runs on ``server``, as after failovers
    or recoveries (this server's real timeline cannot move: both functions are rewritten)."""
    conn.execute("SET ROLE pyxp_owner")
    for name, timeline in (("ledger_timeline", ledger), ("current_timeline", server)):
        conn.execute(f"CREATE OR REPLACE FUNCTION pyxp.{name}() RETURNS integer LANGUAGE sql "
                     f"{'STABLE PARALLEL SAFE' if name == 'ledger_timeline' else 'VOLATILE'} "
                     f"AS 'SELECT {timeline}'")
    conn.execute("RESET ROLE")


def test_a_cursor_of_a_history_left_behind_is_refused_and_the_first_award_adopts_the_timeline(
        db: psycopg.Connection[Any], unchanged: Any) -> None:
    """Before any write on the new timeline and after, a cursor above the ledger's last row (one the
    lost history handed out) is refused with PX033, which names the cursor to go on from; from
    there a consumer gets exactly the new rows. The first award adopts the timeline: its group and
    id start a margin past what the ledger holds, so a lost award's id is unknown, not another
    wallet's row."""
    award(db, "0xkept", "kept-1")
    second = award(db, "0xkept", "kept-2")
    highest = int(scalar(db, "SELECT pyxp.highest_ledger_xid()"))
    kept = highest << 24 | 16777215
    lost_cursor = (highest + 3) << 24 | 1  # a row the history left behind had written after the fork
    lost_id = int(scalar(db, "SELECT max(id) FROM pyxp.xp_transactions")) + 1
    leave_timeline(db, 1, 2)
    for wallet in (None, "0xkept"):
        with unchanged(), pytest.raises(errors.FeedForked, match="a history this database left") as refused, \
                errors.wrap_errors():
            db.execute("SELECT * FROM pyxp.changes(%s, 10, %s)", (lost_cursor, wallet))
        assert refused.value.kept_cursor == kept
    first_cursor = steady(lambda: db.execute(CHANGES, (0,)).fetchall())[0][0]
    assert settled(lambda: [r[1] for r in db.execute(CHANGES, (first_cursor,))], [second]) == [second]  # (reads on)

    new = award(db, "0xnew", "new-1")
    forks = db.execute("SELECT previous_timeline, this_timeline, kept_cursor, resumed_group >= %s + margin, margin "
                       "FROM pyxp.xp_ledger_forks", (highest,)).fetchall()
    assert forks == [(1, 2, kept, True, 2 ** 31)]
    assert scalar(db, "SELECT pyxp.ledger_timeline()") == 2
    assert new > lost_id + 2 ** 31 - 1
    assert scalar(db, "SELECT feed_xid::text::numeric >= %s + pyxp.fork_margin() FROM pyxp.xp_transactions "
                      "WHERE id = %s", (highest, new)) is True
    with unchanged(), pytest.raises(errors.FeedForked), errors.wrap_errors():
        db.execute(CHANGES, (lost_cursor,))
    assert settled(lambda: [r[1] for r in db.execute(CHANGES, (kept,))], [new]) == [new]
    with unchanged(), pytest.raises(errors.UnknownTransaction), errors.wrap_errors():
        db.execute(REVERSE, (lost_id,))
    assert db.execute("SELECT * FROM pyxp.adopt_cluster()").fetchall() == []
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_writers_meeting_a_new_timeline_together_adopt_it_once(db: psycopg.Connection[Any], conninfo: str) -> None:
    """Eight connections award at once on a new timeline: each award goes through, the timeline is
    adopted once (one margin), and the feed returns every row once, the new ones after the kept."""
    award(db, "0xkept", "kept-1")
    highest = int(scalar(db, "SELECT pyxp.highest_ledger_xid()"))
    leave_timeline(db)
    db.commit()
    start = threading.Barrier(8)
    results: list[Any] = []

    def one(n: int) -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            start.wait()
            try:
                results.append(award(conn, f"0xracer{n}", f"race-{n}"))
            except Exception as exc:  # noqa: BLE001 (reported below)
                results.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(isinstance(r, int) for r in results), results
    assert scalar(db, "SELECT count(*) FROM pyxp.xp_ledger_forks") == 1
    assert scalar(db, "SELECT pyxp.xid_offset() < 2 * pyxp.fork_margin()") is True
    assert scalar(db, "SELECT min(feed_xid::text::numeric) >= %s + pyxp.fork_margin() FROM pyxp.xp_transactions "
                      "WHERE id = ANY(%s)", (highest, results)) is True
    fed = settled(lambda: [r[1] for r in db.execute(CHANGES, (0,))], None, until=lambda got: len(got) >= 9)
    assert sorted(fed[1:]) == sorted(results) and len(fed) == 9


@pytest.mark.parametrize(("server", "margins"), [(3, 2), (9, 4)])
def test_one_margin_per_timeline_passed(db: psycopg.Connection[Any], server: int, margins: int) -> None:
    """A re-test of 0033: a standby cut off before its new primary's first write (the adoption of
    timeline 2) was promoted in turn, to timeline 3. Still naming timeline 1, it moved the ids by
    one margin, as timeline 2 had: a reversal of a timeline 2 award's id reversed another wallet's
    row, and a consumer skipped rows. Two timelines passed now move them by two margins; at most
    four (timeline numbers also jump without writes, and the cursors hold 256 margins: a review)."""
    award(db, "0xkept", "kept-1")
    highest = int(scalar(db, "SELECT pyxp.highest_ledger_xid()"))
    ids = int(scalar(db, "SELECT max(id) FROM pyxp.xp_transactions"))
    leave_timeline(db, 1, server)
    new = award(db, "0xnew", "new-1")
    assert db.execute("SELECT previous_timeline, this_timeline, margin, resumed_group >= %s + margin "
                      "FROM pyxp.xp_ledger_forks", (highest,)).fetchall() == [(1, server, margins * 2 ** 31, True)]
    assert new > ids + margins * 2 ** 31
    assert scalar(db, "SELECT feed_xid::text::numeric >= %s + %s * pyxp.fork_margin() FROM pyxp.xp_transactions "
                      "WHERE id = %s", (highest, margins, new)) is True


def test_a_retroactive_application_adopts_the_timeline(db: psycopg.Connection[Any]) -> None:
    """A review of 0033: pyxp.apply_rules_retroactively takes its own locks, not writing_ruleset's,
    and wrote its adjustments on a new timeline without adopting it (ids and groups the history
    left behind had used). It adopts first now, and its rows are above the fork's resumed group."""
    award(db, "0xkept", "kept-1")
    definition = load_ruleset("winstory").definition()
    definition["name"] = "retro"
    for rule in definition["rules"]:
        if rule["action"] == "CAMPAIGN_APPROVED":
            rule["formula"] = rule["constant"] = "150"
    candidate = scalar(db, "SELECT ruleset_id FROM pyxp.install_ruleset(%s, 'retro', false)", (Jsonb(definition),))
    before = int(scalar(db, "SELECT max(id) FROM pyxp.xp_transactions"))
    leave_timeline(db)
    db.execute("SELECT * FROM pyxp.apply_rules_retroactively(%s)", (candidate,))
    assert scalar(db, "SELECT count(*) FROM pyxp.xp_ledger_forks") == 1
    assert scalar(db, "SELECT bool_and(t.feed_xid::text::numeric >= f.resumed_group) AND count(*) > 0 "
                      "FROM pyxp.xp_transactions t, pyxp.xp_ledger_forks f WHERE t.id > %s", (before,)) is True
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_writers_that_took_their_id_before_the_adoption_write_above_its_resumed_group(
        db: psycopg.Connection[Any], conninfo: str) -> None:
    """A re-test of 0033: batches that had taken their transaction id (award_many counts its rows
    first) and waited for the adoption's locks wrote rows below the fork's resumed_group (the
    adoption's snapshot lists the running ids below its xmax only), and a consumer going on from
    the cursor PX033 named was sent back to it again and again. Six transactions hold an id when
    the adoption runs; every row is at or above resumed_group, and the feed from the kept cursor,
    a row per page, gives every new row once."""
    award(db, "0xkept", "kept-1")
    leave_timeline(db)
    db.commit()
    holders = [psycopg.connect(conninfo) for _ in range(6)]
    try:
        for holder in holders:
            holder.execute("SELECT pg_current_xact_id()")
        with psycopg.connect(conninfo, autocommit=True) as adopter:
            first = award(adopter, "0xadopter", "adopter-1")
        written = [first]
        for n, holder in enumerate(holders):
            written.append(award(holder, f"0xheld{n}", f"held-{n}"))
            holder.commit()
    finally:
        for holder in holders:
            holder.close()
    assert scalar(db, "SELECT count(*) FROM pyxp.xp_transactions t, pyxp.xp_ledger_forks f "
                      "WHERE t.feed_xid::text::numeric < f.resumed_group AND t.id = ANY(%s)", (written,)) == 0
    cursor = int(scalar(db, "SELECT kept_cursor FROM pyxp.xp_ledger_forks"))
    fed = []
    while page := db.execute("SELECT cursor, transaction_id FROM pyxp.changes(%s, 1)", (cursor,)).fetchall():
        cursor = page[0][0]
        fed.append(page[0][1])
    assert sorted(fed) == sorted(written)


def test_an_adoption_past_what_cursors_hold_is_refused(db: psycopg.Connection[Any], unchanged: Any) -> None:
    """A re-test of 0033 put a cluster on timeline 257: 256 margins moved the ids to 2^39, and the
    new rows' cursors (group times 2^24) wrapped negative, before the old ones. An adoption that
    would number ids within a margin of 2^39 is refused, and with it the write (PX031); nothing is
    written, the sequences included."""
    award(db, "0xkept", "kept-1")
    leave_timeline(db, 1, 2)
    db.execute("SET ROLE pyxp_owner")  # 254 margins spent already (timeline 257, there)
    db.execute("CREATE OR REPLACE FUNCTION pyxp.xid_offset() RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE "
               "AS 'SELECT 254 * 2147483648::bigint'")
    db.execute("RESET ROLE")
    sequences = "SELECT array_agg(last_value ORDER BY label) FROM pyxp.identity_sequences()"
    before = scalar(db, sequences)
    with unchanged(), pytest.raises(errors.FeedGroupOverflow, match="past what its change feed's cursors can hold"), \
            errors.wrap_errors():
        award(db, "0xnew", "new-1")
    assert scalar(db, "SELECT count(*) FROM pyxp.xp_ledger_forks") == 0
    assert scalar(db, sequences) == before  # (a rollback does not undo setval: a third check saw them move 2^39)


def test_a_checkpoint_in_repeatable_read_does_not_adopt_a_new_timeline(db: psycopg.Connection[Any],
                                                                      unchanged: Any) -> None:
    """The adoption needs READ COMMITTED, as every writer: a checkpoint in a REPEATABLE READ
    transaction, first on a new timeline, is refused (PX025); nothing is written, no fork recorded,
    and the next call in READ COMMITTED adopts it."""
    award(db, "0xkept", "kept-1")
    leave_timeline(db)
    with unchanged(), pytest.raises(errors.IsolationRefused), errors.wrap_errors():
        with db.transaction():
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            db.execute("SELECT * FROM pyxp.record_audit_checkpoint()")
    assert scalar(db, "SELECT count(*) FROM pyxp.xp_ledger_forks") == 0
    db.execute("SELECT * FROM pyxp.record_audit_checkpoint()")
    assert scalar(db, "SELECT count(*) FROM pyxp.xp_ledger_forks") == 1


def test_an_adoption_meeting_a_partition_job_is_refused(db: psycopg.Connection[Any], conninfo: str,
                                                        unchanged: Any) -> None:
    """The adoption takes the partitions' lock as moves and archives do, without waiting: a first
    write on a new timeline while create_ledger_partitions or an archive runs is refused (55P03,
    README "Failovers and point-in-time recovery"); nothing is written, and it goes through once
    that job has committed."""
    award(db, "0xkept", "kept-1")
    leave_timeline(db)
    with psycopg.connect(conninfo) as job:
        job.execute("SELECT FROM pyxp.subject_locks WHERE subject = 'ledger_partitions' FOR UPDATE")
        with unchanged(), pytest.raises(psycopg.errors.LockNotAvailable):
            award(db, "0xnew", "new-1")
        assert scalar(db, "SELECT count(*) FROM pyxp.xp_ledger_forks") == 0
    award(db, "0xnew", "new-1")
    assert scalar(db, "SELECT count(*) FROM pyxp.xp_ledger_forks") == 1


@pytest.mark.parametrize("call", [
    "SELECT * FROM pyxp.record_audit_checkpoint()",
    "SELECT * FROM pyxp.register_agency_client('0xagency', 'a@example.com', 'camp_x')",
])
def test_the_other_writers_that_name_the_cluster_adopt_the_timeline(db: psycopg.Connection[Any], call: str) -> None:
    """A checkpoint and a registration on a new timeline adopt it first (their ids and the
    checkpoint's xmin are counted past the history left behind)."""
    award(db, "0xkept", "kept-1")
    leave_timeline(db)
    db.execute(call)
    assert scalar(db, "SELECT count(*) FROM pyxp.xp_ledger_forks") == 1
    assert scalar(db, "SELECT pyxp.ledger_timeline() = pyxp.current_timeline()") is True


def test_an_upgrade_on_a_new_timeline_adopts_it_and_says_so(fresh_database: Any,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """pyxp db upgrade (migrations/env.py) adopts a timeline left behind, and says which."""
    target = fresh_database()
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        award(conn, "0xkept", "kept-1")
        leave_timeline(conn)
    capsys.readouterr()
    schema.upgrade(target)
    said = capsys.readouterr().err
    assert "was written on timeline" in said and "which it left" in said and "PX033" in said, said
    with psycopg.connect(target, autocommit=True) as conn:
        assert scalar(conn, "SELECT count(*) FROM pyxp.xp_ledger_forks") == 1


# --------------------------------------------------------------------------- a real failover


@pytest.fixture()
def failed_over() -> Iterator[dict[str, Any]]:
    """A private primary whose standby stopped receiving before 40 awards (more than the 32 values a
    sequence logs ahead: their ids are handed out again on the new timeline without 0033); the
    consumer read them on the primary; then the primary crashed and the standby was promoted.
    Yields the promoted standby's conninfo, the consumer's last cursor, and the lost awards' ids."""
    primary, primary_url = primary_with_pyxp()
    standby = EmbeddedCluster(primary.bindir)
    try:
        with psycopg.connect(primary_url, autocommit=True) as conn:
            for n in range(3):
                award(conn, "0xkept", f"kept-{n}")
        base_backup(primary, standby)
        with psycopg.connect(primary_url, autocommit=True) as conn:
            lost = {f"lost-{n}": award(conn, f"0xlost{n}", f"lost-{n}") for n in range(40)}
            cursor = conn.execute(CHANGES, (0,)).fetchall()[-1][0]
        primary.stop_server("immediate")
        standby.start_existing()
        standby._run("pg_ctl", "-D", str(standby.datadir), "-w", "promote")
        yield {"url": make_conninfo(standby.conninfo, dbname="pyxp"), "cursor": cursor, "lost": lost}
    finally:
        standby.stop()
        primary.stop()


def test_a_failover_to_a_standby_that_missed_awards(failed_over: dict[str, Any]) -> None:
    """The reproduction: after the failover the consumer's cursor is refused (PX033, not PX023,
    and never answered with a skip); from the cursor it names it gets exactly the rows written
    since, the retried lost award included; a lost award's id is unknown to a reversal; and new
    ids and groups start past the lost ones."""
    with psycopg.connect(failed_over["url"], autocommit=True) as conn:
        assert scalar(conn, "SELECT pyxp.ledger_timeline() <> pyxp.current_timeline()") is True
        assert scalar(conn, "SELECT count(*) FROM pyxp.xp_transactions") == 3  # the lost awards are not here
        with pytest.raises(errors.FeedForked) as refused, errors.wrap_errors():
            conn.execute(CHANGES, (failed_over["cursor"],))
        kept = refused.value.kept_cursor
        assert kept is not None and kept < failed_over["cursor"]
        lost_id = max(failed_over["lost"].values())
        new = [award(conn, "0xnew", f"new-{n}") for n in range(12)]
        new.append(award(conn, "0xlost0", "lost-0"))  # the client retries a lost award
        assert min(new) > max(failed_over["lost"].values())
        assert scalar(conn, "SELECT count(*) FROM pyxp.xp_ledger_forks") == 1
        with pytest.raises(errors.FeedForked), errors.wrap_errors():
            conn.execute(CHANGES, (failed_over["cursor"],))
        assert [r[1] for r in conn.execute(CHANGES, (kept,))] == new
        before = scalar(conn, "SELECT count(*) FROM pyxp.xp_transactions")
        with pytest.raises(errors.UnknownTransaction), errors.wrap_errors():
            conn.execute(REVERSE, (lost_id,))
        assert scalar(conn, "SELECT count(*) FROM pyxp.xp_transactions") == before
        assert award(conn, "0xlost0", "lost-0") == new[-1]  # a replay now
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_a_server_that_hides_its_timeline_is_told(fresh_database: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A review of 0033: where pyxp_owner may not execute pg_walfile_name (a managed service that
    hides it), the adoption records no timeline and the ledger cannot tell a failover: pyxp db
    upgrade warns, and awards go on (nothing compares a timeline it cannot read)."""
    target = fresh_database()
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("REVOKE EXECUTE ON FUNCTION pg_catalog.pg_walfile_name(pg_lsn) FROM PUBLIC")
        conn.execute("SET ROLE pyxp_owner")  # (a timeline recorded before: the next upgrade adopts again)
        conn.execute("CREATE OR REPLACE FUNCTION pyxp.ledger_timeline() RETURNS integer LANGUAGE sql STABLE "
                     "PARALLEL SAFE AS 'SELECT 99'")
        conn.execute("RESET ROLE")
    capsys.readouterr()
    schema.upgrade(target)
    assert "cannot tell a failover" in capsys.readouterr().err
    with psycopg.connect(target, autocommit=True) as conn:
        assert scalar(conn, "SELECT pyxp.ledger_timeline()") is None
        award(conn, "0xhidden", "hidden-1")  # (the real pyxp.current_timeline() would fail here: never called)
