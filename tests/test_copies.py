"""A ledger copied to another PostgreSQL cluster (0032): a hostile test's reproductions.

The change feed's groups, the audit checkpoints' xmins and the archives' floors are transaction
ids of the cluster that wrote them. A logical copy (pg_dump and restore here; logical replication
and pg_upgrade alike) carries them to a cluster whose ids run elsewhere, and logical replication
carries no sequence. Until ``pyxp db upgrade`` adopts the copy (pyxp.adopt_cluster), what would
write or read by those ids refuses (PX032); after it, the copy goes on as its source would have.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pyxp import errors, schema
from pyxp.database import EmbeddedCluster, _postgres_bindir
from conftest import edit_ledger, settled, waited_for
from test_migrations import schema_dump
from test_periods import place
from test_retention import settled as groups_closed, this_month

AWARD = "SELECT transaction_id FROM pyxp.award(%s, 'CAMPAIGN_APPROVED', %s)"
CHANGES = "SELECT cursor, transaction_id FROM pyxp.changes(%s, 1000)"


def award(conn: psycopg.Connection[Any], wallet: str, key: str) -> int:
    row = conn.execute(AWARD, (wallet, key)).fetchone()
    assert row is not None
    return int(row[0])


def settled_feed(conn: psycopg.Connection[Any], rows: int) -> list[tuple[Any, ...]]:
    """The feed from the start once it holds ``rows`` rows (a transaction of another test's database that ends
    while a read looks at pg_locks holds that read back: sql/11_changes.sql)."""
    return settled(lambda: conn.execute(CHANGES, (0,)).fetchall(), None, seconds=60, until=lambda got: len(got) >= rows)


@pytest.fixture(scope="module")
def other_cluster() -> Iterator[EmbeddedCluster]:
    """A new cluster (its transaction ids start where initdb left them, far below the test
    server's), with pyxp's roles (an install in its database postgres makes them)."""
    bindir = _postgres_bindir()
    if bindir is None or shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.skip("no PostgreSQL server binaries or pg_dump on this machine")
    cluster = EmbeddedCluster(bindir).start()
    try:
        schema.upgrade(cluster.conninfo)
        yield cluster
    finally:
        cluster.stop()


def copied(db: psycopg.Connection[Any], conninfo: str, cluster: EmbeddedCluster, name: str, tmp_path: Path) -> str:
    """pg_dump of the test database, restored as database ``name`` of the other cluster."""
    source = conninfo_to_dict(conninfo)
    dump = tmp_path / f"{name}.dump"
    command = ["pg_dump", "-Fc", "-f", str(dump), "--dbname", str(source["dbname"])]
    for option, key in (("--host", "host"), ("--port", "port"), ("--username", "user")):
        if source.get(key):
            command += [option, str(source[key])]
    subprocess.run(command, check=True, capture_output=True)
    with psycopg.connect(cluster.conninfo, autocommit=True) as admin:
        user = db.info.user
        if admin.execute("SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %s)", (user,)).fetchone()[0]:  # type: ignore[index]
            admin.execute(sql.SQL("CREATE ROLE {} SUPERUSER").format(sql.Identifier(user)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    target = make_conninfo(cluster.conninfo, dbname=name)
    subprocess.run(["pg_restore", "--exit-on-error", "--dbname", target, str(dump)],
                   check=True, capture_output=True)
    return target


def test_a_copy_refuses_until_adopted_then_goes_on_as_its_source(
        db: psycopg.Connection[Any], conninfo: str, other_cluster: EmbeddedCluster,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """At 0031 an award on the copy went into a feed group below the cursors consumers held (they
    skipped it for good), or into its wallet's old group, which the feed held back; the
    incremental audit left it out; and a copy by logical replication, whose sequences stay at 1,
    gave the next award the id of another wallet's row."""
    award(db, "0xold", "old-1")
    award(db, "0xold", "old-2")
    db.execute("SELECT * FROM pyxp.record_audit_checkpoint()")
    consumer = settled_feed(db, 2)[-1][0]  # a consumer that read everything
    old_top = db.execute("SELECT max(id), max(feed_xid::text::bigint) FROM pyxp.xp_transactions").fetchone()
    target = copied(db, conninfo, other_cluster, "copy_adopted", tmp_path)
    with psycopg.connect(target, autocommit=True) as copy:
        copy.execute("SELECT setval('pyxp.xp_transactions_id_seq', 1, false)")  # as logical replication leaves it
        before = copy.execute("SELECT count(*), sum(total_xp) FROM pyxp.xp_balances").fetchone()
        for call, params in ((AWARD, ("0xold", "copy-1")), (CHANGES, (consumer,)),
                             ("SELECT * FROM pyxp.record_audit_checkpoint()", None)):
            with pytest.raises(errors.LedgerCopied, match="another PostgreSQL cluster"), errors.wrap_errors():
                copy.execute(call, params)
        assert copy.execute("SELECT count(*), sum(total_xp) FROM pyxp.xp_balances").fetchone() == before
        assert copy.execute("SELECT count(*) FROM pyxp.xp_transactions").fetchone() == (db.execute(
            "SELECT count(*) FROM pyxp.xp_transactions").fetchone())

    capsys.readouterr()
    schema.upgrade(target)
    assert "written on another PostgreSQL cluster" in capsys.readouterr().err
    with psycopg.connect(target, autocommit=True) as copy:
        new = [award(copy, "0xold", "copy-1"), award(copy, "0xnew", "copy-2")]
        assert min(new) > old_top[0]  # type: ignore[index]
        assert copy.execute("SELECT min(feed_xid::text::bigint) FROM pyxp.xp_transactions WHERE id = ANY(%s)",
                            (new,)).fetchone()[0] > old_top[1]  # type: ignore[index]
        assert [r[1] for r in copy.execute(CHANGES, (consumer,))] == new  # the consumer goes on, once
        everything = [r[1] for r in copy.execute(CHANGES, (0,))]
        assert sorted(everything) == sorted(set(everything)) and everything[-2:] == new
        # The incremental proof covers the rows written since the copy.
        assert copy.execute("SELECT rows_verified FROM pyxp.record_audit_checkpoint()").fetchone() == (2,)
        assert copy.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        replayed = copy.execute("SELECT transaction_id, replayed FROM pyxp.award('0xold', 'CAMPAIGN_APPROVED', "
                                "'old-1')").fetchone()
        assert replayed is not None and replayed[1] is True  # the source's keys still replay
    capsys.readouterr()
    schema.upgrade(target)  # adopted: nothing to do
    assert "another PostgreSQL cluster" not in capsys.readouterr().err


def test_a_ledger_of_another_cluster_writes_nothing(db: psycopg.Connection[Any], conninfo: str,
                                                   unchanged: Any) -> None:
    """The refusals on their own (a ledger naming another cluster, as a restored copy does): each
    leaves every table as it was, and adopting the cluster again lets them through."""
    award(db, "0xkept", "kept-1")
    db.execute("SET ROLE pyxp_owner")
    db.execute("CREATE OR REPLACE FUNCTION pyxp.ledger_cluster() RETURNS bigint LANGUAGE sql STABLE "
               "PARALLEL SAFE AS 'SELECT 42::bigint'")
    db.execute("RESET ROLE")
    calls = [(AWARD, ("0xkept", "kept-2")),
             ("SELECT * FROM pyxp.award_many(%s::jsonb)",
              ('[{"wallet": "0xkept", "action": "CAMPAIGN_APPROVED", "idempotency_key": "kept-3"}]',)),
             (CHANGES, (0,)), ("SELECT * FROM pyxp.record_audit_checkpoint()", None),
             ("SELECT * FROM pyxp.register_agency_client('0xagency', 'a@example.com', 'camp_x')", None),
             ("SELECT * FROM pyxp.archive_ledger_partitions(date_trunc('month', now(), 'UTC'))", None)]
    for call, params in calls:
        with unchanged(), pytest.raises(errors.LedgerCopied, match="system identifier 42"), errors.wrap_errors():
            db.execute(call, params)
    highest = int(db.execute("SELECT pyxp.highest_ledger_xid()").fetchone()[0])  # type: ignore[index]
    adopted = db.execute("SELECT previous_cluster, this_cluster = (pg_control_system()).system_identifier, "
                         "xid_offset > 0 FROM pyxp.adopt_cluster()").fetchall()
    # The source may have gone on after the copy (0033): new ids start a margin past the ledger's.
    assert adopted == [(42, True, True)]
    assert db.execute("SELECT previous_cluster, kept_cursor, resumed_group >= %s + pyxp.fork_margin() "
                      "FROM pyxp.xp_ledger_forks", (highest,)).fetchall() == [(42, highest << 24 | 16777215, True)]
    assert db.execute("SELECT * FROM pyxp.adopt_cluster()").fetchall() == []
    kept = award(db, "0xkept", "kept-2")
    assert db.execute("SELECT feed_xid::text::numeric >= %s + pyxp.fork_margin() FROM pyxp.xp_transactions "
                      "WHERE id = %s", (highest, kept)).fetchone() == (True,)
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_the_audit_reports_two_rows_with_one_id(db: psycopg.Connection[Any]) -> None:
    """A sequence set back, as logical replication leaves a subscriber's: the next award took the id
    of another wallet's row, and audit() said nothing (the ledger's primary key is (id,
    created_at)). Since 0032 it reports both rows."""
    first = award(db, "0xfirst", "first-1")
    db.execute("SELECT setval('pyxp.xp_transactions_id_seq', %s, false)", (first,))
    assert award(db, "0xsecond", "second-1") == first
    found = db.execute("SELECT check_name, user_wallet, transaction_id FROM pyxp.audit() "
                       "WHERE check_name = 'duplicate_id' ORDER BY user_wallet").fetchall()
    assert found == [("duplicate_id", "0xfirst", first), ("duplicate_id", "0xsecond", first)]


def test_a_ledger_that_ran_ahead_of_its_cluster_is_adopted_again(db: psycopg.Connection[Any], conninfo: str,
                                                                 fresh_database: Any) -> None:
    """A ledger naming this cluster can still hold what another wrote: rows replicated back after
    a failback, a dump restored into a clone promoted from this cluster (same system identifier).
    A re-test of 0032 reused ids and fed new rows below old groups there, adoption saying nothing
    to do. It now looks at what the ledger holds: a group at or above this cluster's next
    transaction id, or a sequence behind its table, is adopted again; and the offset never goes
    down, nor can a downgrade drop it."""
    target = fresh_database()
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        first = award(conn, "0xahead", "ahead-1")
        ahead = int(conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]) + 1_000_000  # type: ignore[index]
        edit_ledger(conn, "UPDATE pyxp.xp_transactions SET feed_xid = %s::text::xid8 WHERE id = %s", ahead, first)
        conn.execute("UPDATE pyxp.xp_balances SET last_feed_xid = %s::text::xid8 WHERE user_wallet = '0xahead'",
                     (ahead,))
        conn.execute("SELECT setval('pyxp.xp_transactions_id_seq', 1, false)")
        adopted = conn.execute("SELECT previous_cluster = this_cluster, xid_offset > 0, sequences_advanced "
                               "FROM pyxp.adopt_cluster()").fetchall()
        # Every sequence moved by the margin too (0033: the ids the history left behind may have
        # handed out), the forks' own excepted.
        assert adopted == [(True, True, [r[0] for r in conn.execute(
            "SELECT label FROM pyxp.identity_sequences() WHERE label <> 'pyxp.xp_ledger_forks_fork_id_seq'")])]
        assert conn.execute("SELECT last_value > pyxp.fork_margin() FROM pyxp.xp_transactions_id_seq").fetchone() == (True,)
        offset = conn.execute("SELECT pyxp.xid_offset()").fetchone()
        assert conn.execute("SELECT * FROM pyxp.adopt_cluster()").fetchall() == []
        new = award(conn, "0xother", "other-1")
        assert new > first
        assert conn.execute("SELECT feed_xid::text::bigint > %s FROM pyxp.xp_transactions WHERE id = %s",
                            (ahead, new)).fetchone() == (True,)
        assert [r[1] for r in settled_feed(conn, 2)] == [first, new]
    with pytest.raises(psycopg.errors.RaiseException, match="downgrading 0032 would drop the offset"):
        schema.downgrade(target, "0031")
    assert schema.current_revision(target) == "0032"  # (0033's downgrade keeps the offset)
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT pyxp.xid_offset()").fetchone() == offset


@pytest.fixture(scope="module")
def publisher() -> Iterator[str]:
    """A private cluster with wal_level logical, pyxp installed, publishing pyxp.xp_balances (publication
    pyxp_rows) and an application's table (publication app_rows)."""
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries on this machine")
    cluster = EmbeddedCluster(bindir).start()
    try:
        with psycopg.connect(cluster.conninfo, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET wal_level = logical")
        cluster.stop_server()
        cluster.start_existing()
        schema.upgrade(cluster.conninfo)
        with psycopg.connect(cluster.conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.countries (code text PRIMARY KEY)")
            conn.execute("CREATE PUBLICATION pyxp_rows FOR TABLE pyxp.xp_balances")
            conn.execute("CREATE PUBLICATION app_rows FOR TABLE public.countries")
        yield cluster.conninfo
    finally:
        cluster.stop()


def subscribed(db: psycopg.Connection[Any], publisher: str, publication: str) -> None:
    db.execute(sql.SQL("CREATE SUBSCRIPTION pyxp_test_subscription CONNECTION {} PUBLICATION {} "
                       "WITH (copy_data = false)").format(sql.Literal(publisher), sql.Identifier(publication)))


def test_a_copy_not_adopted_cannot_be_downgraded(fresh_database: Any) -> None:
    """0031's writer would write a ledger of another cluster (a copy not adopted yet, or a subscriber)
    with this cluster's ids, below the groups its consumers read: the downgrade refuses, and nothing
    of the schema or the history changes."""
    target = fresh_database()
    schema.upgrade(target, "0032")  # (0033's downgrade, which keeps the cluster, would go through first)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("SET ROLE pyxp_owner")
        conn.execute("CREATE OR REPLACE FUNCTION pyxp.ledger_cluster() RETURNS bigint LANGUAGE sql STABLE "
                     "PARALLEL SAFE AS 'SELECT 42::bigint'")
    before = schema_dump(target)
    with pytest.raises(psycopg.errors.RaiseException, match="where the ledger is another cluster's \\(42"):
        schema.downgrade(target, "0031")
    assert schema.current_revision(target) == "0032"
    assert schema_dump(target) == before


def test_a_subscriber_is_not_adopted_before_its_switchover(db: psycopg.Connection[Any], conninfo: str,
                                                           publisher: str, unchanged: Any) -> None:
    """A logical replication subscriber of pyxp's tables that installs 0032 (or runs pyxp db upgrade)
    before the switchover: adopted then, it went on receiving the publisher's rows, and its first
    awards after the switchover took ids those rows had (a re-test of 0032). Its ledger is the
    publisher's until the subscription is dropped: writes refuse, and pyxp db upgrade adopts it
    after the switchover."""
    subscribed(db, publisher, "pyxp_rows")
    try:
        assert schema.pending_deployment(conninfo)[0].endswith("run pyxp db upgrade now to refuse writes here until then")
        assert db.execute("SELECT this_cluster FROM pyxp.adopt_cluster()").fetchall() == [(0,)]
        assert schema.pending_deployment(conninfo) == [
            "this database subscribes to pyxp's tables (logical replication): its ledger is its publisher's until "
            "the switchover (drop the subscription, then run pyxp db upgrade)"]
        with unchanged(), pytest.raises(errors.LedgerCopied, match="logical replication subscriber"), \
                errors.wrap_errors():
            db.execute(AWARD, ("0xsub", "sub-1"))
    finally:
        db.execute("DROP SUBSCRIPTION pyxp_test_subscription")
    assert schema.pending_deployment(conninfo) == [
        "the subscription is gone: run pyxp db upgrade before writing (it adopts the ledger)"]
    schema.upgrade(conninfo)
    award(db, "0xsub", "sub-1")
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_a_subscription_of_other_tables_leaves_the_ledger_alone(db: psycopg.Connection[Any], conninfo: str,
                                                               publisher: str) -> None:
    """A subscription to an application's reference table made the ledger a subscriber's at the next
    pyxp db upgrade, and every award refused (a re-test of 0032)."""
    db.execute("CREATE TABLE public.countries (code text PRIMARY KEY)")
    subscribed(db, publisher, "app_rows")
    try:
        assert db.execute("SELECT * FROM pyxp.adopt_cluster()").fetchall() == []
        assert schema.pending_deployment(conninfo) == []
        award(db, "0xapp", "app-1")
    finally:
        db.execute("DROP SUBSCRIPTION pyxp_test_subscription")


@pytest.mark.parametrize("operation", ["adopt_cluster", "follow_replicated_archives"])
def test_adopting_is_the_owners(connect_as: Any, login_role: Any, unchanged: Any, operation: str) -> None:
    writer = connect_as(login_role("pyxp_writer"))
    with unchanged(), pytest.raises(psycopg.errors.InsufficientPrivilege):
        writer.execute(f"SELECT * FROM pyxp.{operation}()")


# --------------------------------------------------------------------------- archives on a publisher

PUBLISHED_TABLES = """
SELECT string_agg(format('%I.%I', n.nspname, c.relname), ', ' ORDER BY c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'pyxp' AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relname <> 'alembic_version'
"""


def archive_layout(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """The archive tables and their row counts, and the ledger's partitions."""
    archived = [(name, conn.execute(sql.SQL("SELECT count(*) FROM pyxp_archive.{}").format(sql.Identifier(name)))
                 .fetchone()[0])  # type: ignore[index]
                for (name,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'pyxp_archive' "
                                            "ORDER BY 1").fetchall()]
    return [*archived, *conn.execute("SELECT partition_name FROM pyxp.ledger_partitions()").fetchall()]


@contextmanager
def replica(source: str, target: str) -> Iterator[psycopg.Connection[Any]]:
    """A subscriber built as README says ("Setting up a logical replica"): pyxp's tables published by
    ``source`` with publish_via_partition_root, ``target``'s schema a dump of the source's and its version
    row, subscription ledger_follower (dropped at the end if still there). Yields a connection to target."""
    with psycopg.connect(source, autocommit=True) as pub:
        tables = pub.execute(PUBLISHED_TABLES).fetchone()[0]  # type: ignore[index]
        pub.execute(f"CREATE PUBLICATION ledger FOR TABLE {tables} WITH (publish_via_partition_root = true)")
    with psycopg.connect(target, autocommit=True) as sub:
        for options in (["--schema-only", "--no-publications"], ["--data-only", "--inserts", "--table", "pyxp.alembic_version"]):
            dump = subprocess.run(["pg_dump", *options, "--dbname", source], check=True, capture_output=True,
                                  text=True).stdout
            sub.execute("\n".join(line for line in dump.splitlines() if not line.startswith("\\")))  # type: ignore[arg-type]
        sub.execute(sql.SQL("CREATE SUBSCRIPTION ledger_follower CONNECTION {} PUBLICATION ledger")
                    .format(sql.Literal(source)))
        try:
            yield sub
        finally:
            sub.execute("DROP SUBSCRIPTION IF EXISTS ledger_follower")


def publishing_database(publisher: str, name: str) -> str:
    """A new database ``name`` of the publisher's cluster with pyxp installed; its conninfo."""
    with psycopg.connect(publisher, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    source = make_conninfo(publisher, dbname=name)
    schema.upgrade(source)
    return source


def test_a_subscriber_makes_the_archives_of_its_publisher(publisher: str, fresh_database: Any,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    """An archive on a publisher reached its subscriber as rows (the archive, the openings, the archived usage),
    while its partitions stayed in the subscriber's ledger (a DETACH is not replicated): the subscriber's
    audit() reported opening_mismatch for every archived wallet, it could not archive itself (PX032),
    and after the switchover its archive took the same months again (23505; a hostile test, 0036).
    pyxp db upgrade on the subscriber now moves those partitions there too (0037), their rows checked."""
    source = publishing_database(publisher, "archiving")
    target = fresh_database()
    with psycopg.connect(source, autocommit=True) as pub:
        old = [award(pub, f"0xold{i % 3}", f"old-{i}") for i in range(9)]
        place(pub, {tid: this_month() - timedelta(days=200 - i) for i, tid in enumerate(old)})
        kept = award(pub, "0xold0", "kept-1")
        pub.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'mistake')", (old[0],))
    with replica(source, target) as sub:
        try:
            def caught_up(archives: int) -> bool:
                # (every table synchronised: until then the apply leaves a table's changes to its sync
                # worker, and the openings could arrive after the archive's row)
                return sub.execute("SELECT (SELECT count(*) FROM pyxp.xp_ledger_archives) = %s AND "
                                   "(SELECT count(*) FROM pyxp.xp_transactions) = %s AND "
                                   "NOT EXISTS (SELECT FROM pg_subscription_rel WHERE srsubstate <> 'r')",
                                   (archives, 11)).fetchone() == (True,)
            assert waited_for(lambda: caught_up(0))
            with psycopg.connect(source, autocommit=True) as pub:
                groups_closed(pub)
                archived = pub.execute("SELECT partition_name, rows_archived FROM pyxp.archive_ledger_partitions(%s)",
                                       (this_month(),)).fetchall()
                assert sum(rows for _, rows in archived) == 9
                published = archive_layout(pub)
            assert waited_for(lambda: caught_up(1))
            assert {row[0] for row in sub.execute("SELECT check_name FROM pyxp.audit()")} == {"opening_mismatch"}
            capfd.readouterr()
            schema.upgrade(target)  # pyxp db upgrade: adopts nothing (a subscriber), makes the archive
            said = capfd.readouterr().err
            for name, rows in archived:
                assert f"pyxp: archive 1 of this database's publisher made here: {name} ({rows} rows) moved" in said
            assert archive_layout(sub) == published
            assert sub.execute("SELECT * FROM pyxp.audit()").fetchall() == []
            assert sub.execute("SELECT * FROM pyxp.follow_replicated_archives()").fetchall() == []  # (done)
        finally:
            sub.execute("DROP SUBSCRIPTION IF EXISTS ledger_follower")
        schema.upgrade(target)  # the switchover: adopted
        assert sub.execute("SELECT * FROM pyxp.archive_ledger_partitions(%s)", (this_month(),)).fetchall() == []
        assert award(sub, "0xold0", "after-switchover") > kept
        assert sub.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def ledger_layout(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """Each ledger row's id, balance_after and partition."""
    return conn.execute("SELECT id, balance_after, tableoid::regclass::text FROM pyxp.xp_transactions "
                        "ORDER BY id").fetchall()


def test_a_subscriber_skips_the_delete_of_its_publishers_move_out_of_the_default_partition(
        publisher: str, fresh_database: Any) -> None:
    """create_ledger_partitions moves a month's rows out of the default partition: it copies them into the
    new partition before attaching it (published nowhere) and deletes them from the default partition,
    which publish_via_partition_root publishes. The subscriber's append-only trigger refused that DELETE,
    its apply retried it forever, and no later award reached it (a hostile test, 0038). It now skips it:
    the rows stay where its own partitions put them, until its own create_ledger_partitions moves them."""
    source = publishing_database(publisher, "moving")
    target = fresh_database()
    with psycopg.connect(source, autocommit=True) as pub:
        rows = [award(pub, f"0xmove{i % 2}", f"move-{i}") for i in range(4)]
        later = (this_month() + timedelta(days=130)).replace(day=1)  # past the partitions made ahead
        place(pub, {rows[1]: later, rows[2]: later + timedelta(days=3)})
        assert {r[2] for r in ledger_layout(pub)} >= {"pyxp.xp_transactions_default"}
    with replica(source, target) as sub, psycopg.connect(source, autocommit=True) as pub:
        def caught_up(count: int) -> bool:
            return sub.execute("SELECT (SELECT count(*) FROM pyxp.xp_transactions) = %s AND "
                               "NOT EXISTS (SELECT FROM pg_subscription_rel WHERE srsubstate <> 'r')",
                               (count,)).fetchone() == (True,)
        assert waited_for(lambda: caught_up(4))
        moved = pub.execute("SELECT partition_name, note FROM pyxp.create_ledger_partitions(5) "
                            "WHERE note IS NOT NULL").fetchall()
        assert moved == [(f"xp_transactions_{later:%Y_%m}", "2 rows moved from xp_transactions_default")]
        after = award(pub, "0xmove0", "after-the-move")
        assert waited_for(lambda: caught_up(5), seconds=30)
        # (this database's subscription: the view lists the server's, and another test's may be running)
        assert sub.execute("SELECT s.apply_error_count FROM pg_stat_subscription_stats s"
                           " JOIN pg_subscription p ON p.oid = s.subid"
                           " WHERE p.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                           ).fetchall() == [(0,)]
        balances = "SELECT user_wallet, total_xp, current_level FROM pyxp.xp_balances ORDER BY 1"
        assert sub.execute(balances).fetchall() == pub.execute(balances).fetchall()
        published = ledger_layout(pub)
        assert [r[:2] for r in ledger_layout(sub)] == [r[:2] for r in published]
        assert {r[2] for r in ledger_layout(sub) if r[0] in rows[1:3]} == {"pyxp.xp_transactions_default"}
        assert sub.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        # The subscriber's own move (local: nothing of it is published) gives the publisher's layout.
        assert sub.execute("SELECT partition_name, note FROM pyxp.create_ledger_partitions(5) "
                           "WHERE note IS NOT NULL").fetchall() == moved
        assert ledger_layout(sub) == published
        assert max(r[0] for r in published) == after
        # Still append-only for every other session.
        with pytest.raises(psycopg.Error, match="append-only") as refused:
            sub.execute("DELETE FROM pyxp.xp_transactions WHERE id = %s", (after,))
        assert refused.value.sqlstate == "PX013"
        assert ledger_layout(sub) == published


def replicated_archive(db: psycopg.Connection[Any], partition: str, rows: int, last_id: int,
                       archived_before: datetime | None = None) -> None:
    """An archive row as a publisher's archive reaches its subscriber: it names ``partition`` (attached
    here, or not) as holding ``rows`` rows up to transaction ``last_id`` (with its audit checkpoint)."""
    db.execute("INSERT INTO pyxp.xp_audit_checkpoints (snapshot_xmin, wallets_verified, rows_verified) "
               "VALUES (pyxp.ledger_xid(pg_snapshot_xmin(pg_current_snapshot())), 0, 0)")
    db.execute("INSERT INTO pyxp.xp_ledger_archives (archived_before, partitions, partition_oids, rows_archived, "
               "wallets_opened, last_transaction_id, timezone, checkpoint_id) "
               "SELECT coalesce(%s, now()), ARRAY[%s], '{0}', %s, 1, %s, 'UTC', max(checkpoint_id) "
               "FROM pyxp.xp_audit_checkpoints", (archived_before, partition, rows, last_id))


def test_an_archive_whose_rows_differ_is_not_followed(db: psycopg.Connection[Any], conninfo: str, unchanged: Any,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    """An archive row naming a partition of this ledger that does not hold the rows it says it took (a
    subscriber behind its publisher, rows of the month left in the default partition, or rows dated in
    its months written after it): refused with PX030, nothing moved. pyxp db upgrade then warns and
    succeeds (it failed after adopting a switched-over subscriber, a hostile test, 0037), and this
    database's own archive refuses while that archive is not made here (it took the same months again,
    and the openings counted their rows twice)."""
    award(db, "0xfollow", "follow-1")
    partition, top = db.execute("SELECT tableoid::regclass::text, id FROM pyxp.xp_transactions").fetchone()  # type: ignore[misc]
    name = partition.removeprefix("pyxp.")
    replicated_archive(db, name, 2, top)
    layout = archive_layout(db)
    with unchanged(), pytest.raises(psycopg.Error, match=f"archive 1 took 2 rows up to transaction "
                                    f"{top}, its partitions here \\({name}\\) hold 1 up to transaction {top}") as raised:
        db.execute("SELECT * FROM pyxp.follow_replicated_archives()")
    assert raised.value.sqlstate == "PX030"
    assert archive_layout(db) == layout
    capfd.readouterr()
    schema.upgrade(conninfo)
    assert "pyxp: WARNING: the publisher's archive could not be made here: archive 1 took 2 rows" in capfd.readouterr().err
    with unchanged(), pytest.raises(psycopg.Error, match=f"archive 1 took partition {name}, which is still attached "
                                                         "here") as refused:
        db.execute("SELECT * FROM pyxp.archive_ledger_partitions(%s)", (this_month(),))
    assert refused.value.sqlstate == "PX030"
    assert archive_layout(db) == layout


def test_an_archive_that_cannot_be_followed_leaves_the_ones_before_it_made(
        db: psycopg.Connection[Any], conninfo: str, unchanged: Any, capfd: pytest.CaptureFixture[str]) -> None:
    """Two archives reached a subscriber; the second cannot be made there (its partition holds other rows).
    pyxp db upgrade made neither: one call moved every archive or none, so the first, whose rows matched,
    stayed attached (a hostile test, 0038). It now follows each archive in turn, in a savepoint: the first is
    made, the second reported. A call of follow_replicated_archives() is still all or nothing."""
    first = award(db, "0xfirst", "first-1")
    old = this_month() - timedelta(days=40)
    place(db, {first: old})
    second = award(db, "0xsecond", "second-1")
    first_partition, second_partition = (db.execute(
        "SELECT tableoid::regclass::text FROM pyxp.xp_transactions WHERE id = %s", (tid,)).fetchone()[0]  # type: ignore[index]
        .removeprefix("pyxp.") for tid in (first, second))
    assert first_partition != second_partition
    replicated_archive(db, first_partition, 1, first, this_month() - timedelta(days=20))
    replicated_archive(db, second_partition, 2, second)  # (it holds one row)
    layout = archive_layout(db)
    with unchanged(), pytest.raises(psycopg.Error, match="archive 2 took 2 rows") as refused:
        db.execute("SELECT * FROM pyxp.follow_replicated_archives()")
    assert refused.value.sqlstate == "PX030"
    assert archive_layout(db) == layout
    capfd.readouterr()
    schema.upgrade(conninfo)
    said = capfd.readouterr().err
    assert f"pyxp: archive 1 of this database's publisher made here: {first_partition} (1 rows) moved" in said
    assert "pyxp: WARNING: the publisher's archive could not be made here: archive 2 took 2 rows" in said
    assert (first_partition, 1) in archive_layout(db)
    assert (second_partition,) in archive_layout(db)  # (still attached)
    assert db.execute("SELECT * FROM pyxp.follow_replicated_archives(1)").fetchall() == []  # (made)


def test_an_archive_whose_rows_are_in_the_default_partition_is_refused_by_name(
        db: psycopg.Connection[Any], unchanged: Any) -> None:
    """A subscriber that had no partition for a month received its rows in its default partition; the
    publisher's archive of that month names a partition this database never had. It was skipped without a
    word, audit() reported opening_mismatch for good, and after a switchover the months were archived
    again (a hostile test, 0038). Following it now refuses (PX030) and says where the rows are, and so
    does an archive here; nothing moved."""
    row = award(db, "0xdefault", "default-1")
    later = (this_month() + timedelta(days=130)).replace(day=1)  # past the partitions made ahead
    place(db, {row: later})
    assert db.execute("SELECT tableoid::regclass::text FROM pyxp.xp_transactions").fetchall() == [
        ("pyxp.xp_transactions_default",)]
    replicated_archive(db, f"xp_transactions_{later:%Y_%m}", 1, row, later + timedelta(days=40))
    layout = archive_layout(db)
    with unchanged(), pytest.raises(psycopg.Error, match="archive 1 took partitions xp_transactions_"
                                    f"{later:%Y_%m}, none of which is attached here, and rows it took are in "
                                    "this ledger's default partition") as refused:
        db.execute("SELECT * FROM pyxp.follow_replicated_archives()")
    assert refused.value.sqlstate == "PX030"
    assert "create_ledger_partitions" in (refused.value.diag.message_hint or "")
    with unchanged(), pytest.raises(psycopg.Error, match="archive 1 took rows that are in this ledger's default "
                                                         "partition") as archived:
        db.execute("SELECT * FROM pyxp.archive_ledger_partitions(%s)", (this_month(),))
    assert archived.value.sqlstate == "PX030"
    assert archive_layout(db) == layout


def test_rows_written_after_an_archive_go_to_the_default_partition_as_on_the_publisher(
        db: psycopg.Connection[Any]) -> None:
    """A row dated in an archived month that its publisher wrote after the archive (its transaction began
    in that month): the publisher keeps it in its default partition, and its subscriber received it in the
    month still attached there. The archive could never be followed (PX030 for good; after a switchover
    the months were archived twice: a re-test, 0037). Following now moves such rows (ids above the
    archive's last) to the default partition, unchanged, and the archived rows to pyxp_archive."""
    archived = [award(db, "0xbefore", f"before-{n}") for n in range(3)]
    later = [award(db, "0xlater", "later-1"), award(db, "0xbefore", "before-later")]
    name, = db.execute("SELECT DISTINCT tableoid::regclass::text FROM pyxp.xp_transactions").fetchone()  # type: ignore[misc]
    name = name.removeprefix("pyxp.")
    rows = db.execute("SELECT * FROM pyxp.xp_transactions ORDER BY id").fetchall()
    replicated_archive(db, name, 3, max(archived))
    assert db.execute("SELECT archive_id, partition_name, rows_archived FROM pyxp.follow_replicated_archives()"
                      ).fetchall() == [(1, name, 3)]
    assert [r[0] for r in db.execute(sql.SQL("SELECT id FROM pyxp_archive.{} ORDER BY id").format(
        sql.Identifier(name)))] == archived
    assert [r[0] for r in db.execute("SELECT id FROM pyxp.xp_transactions_default ORDER BY id")] == sorted(later)
    assert db.execute("SELECT * FROM pyxp.xp_transactions ORDER BY id").fetchall() == [r for r in rows if r[0] in later]
    with pytest.raises(psycopg.Error) as refused:  # (still append-only there)
        db.execute("DELETE FROM pyxp.xp_transactions_default")
    assert refused.value.sqlstate == "PX013"
