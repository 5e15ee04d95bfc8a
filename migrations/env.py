"""Alembic environment for pyxp: plain SQL revisions on a psycopg 3 connection.

The database is the one given by the caller (``pyxp db upgrade`` passes its
conninfo in ``config.attributes["conninfo"]``), else PYXP_DATABASE_URL, else
libpq's environment and defaults.

Where the history lives (SPEC §9): pyxp shares its database with the
application, which may have its own alembic history in ``public.alembic_version``.
pyxp's history is kept in ``pyxp.alembic_version`` (owned by pyxp_owner,
readable by pyxp_reader), so neither sees the other's revisions. That table
cannot be alembic's own version table: the schema ``pyxp`` does not exist
before revision 0001 creates it, and downgrading 0001 drops the schema with
everything in it. So alembic works on a session TEMPORARY ``alembic_version``
(in this session's ``pg_temp_N`` schema), seeded from ``pyxp.alembic_version``
before the migrations run; after each migration, in that migration's
transaction, :func:`_persist_heads` copies the new heads to
``pyxp.alembic_version`` while the schema exists (down to base, the schema and
its history are gone together).

An install from before this change kept its row in ``public.alembic_version``:
if the schema ``pyxp`` exists and ``public.alembic_version`` holds one of
pyxp's own revisions, that row (and only it) is moved to
``pyxp.alembic_version``, in one transaction, before anything else; the
public table is dropped only if nothing else is left in it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import psycopg
from alembic import context
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from pyxp import schema
from pyxp.database import configured_conninfo

config = context.config
conninfo: str = config.attributes.get("conninfo") or configured_conninfo()

if context.is_offline_mode():
    raise SystemExit("pyxp migrations run online only: they execute frozen SQL files on a connection")

SCRIPTS = ScriptDirectory.from_config(config)
OWN_REVISIONS = sorted(script.revision for script in SCRIPTS.walk_revisions())

_VERSION_COLUMNS = "(version_num varchar(32) NOT NULL PRIMARY KEY)"


def _scalar(connection: Connection, query: str, params: dict[str, Any] | None = None) -> Any:
    return connection.exec_driver_sql(query, params or {}).scalar()


def _create_pyxp_version_table(connection: Connection) -> None:
    """``pyxp.alembic_version`` if missing: owned by pyxp_owner, readable by pyxp_reader.

    Runs inside a transaction; the role switch ends with it (it is the last
    thing :func:`_persist_heads` and the legacy move do before committing).
    """
    connection.exec_driver_sql("SET LOCAL ROLE pyxp_owner")
    connection.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS pyxp.alembic_version {_VERSION_COLUMNS}")
    connection.exec_driver_sql("GRANT SELECT ON pyxp.alembic_version TO pyxp_reader")


def _write_pyxp_heads(connection: Connection, heads: list[str]) -> None:
    _create_pyxp_version_table(connection)
    connection.exec_driver_sql("DELETE FROM pyxp.alembic_version")
    for head in sorted(heads):
        connection.exec_driver_sql("INSERT INTO pyxp.alembic_version (version_num) VALUES (%(v)s)",
                                   {"v": head})


def _prepare_version_table(connection: Connection) -> str:
    """Create and seed the session's temporary version table; returns its schema (``pg_temp_N``)."""
    with connection.begin():
        connection.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS alembic_version {_VERSION_COLUMNS}")
        connection.exec_driver_sql("DELETE FROM pg_temp.alembic_version")
        # Only this session sees a temporary table; a migration that switches roles
        # (SET LOCAL ROLE pyxp_owner) must still let alembic write its row.
        connection.exec_driver_sql("GRANT ALL ON pg_temp.alembic_version TO PUBLIC")
        temp_schema = _scalar(connection,
                              "SELECT nspname::text FROM pg_namespace WHERE oid = pg_my_temp_schema()")
        schema_exists = _scalar(connection, "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = 'pyxp')")
        if not schema_exists:
            # Nothing installed (or dropped by hand): whatever public.alembic_version
            # holds belongs to the application, even a revision named like one of ours.
            return str(temp_schema)
        tables = {row[0] for row in connection.exec_driver_sql(
            "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = 'alembic_version' AND c.relkind IN ('r', 'p') "
            "AND n.nspname IN ('pyxp', 'public')")}
        if "pyxp" in tables:
            _copy_pyxp_heads(connection)
        elif "public" in tables:
            _move_legacy_history(connection)
    return str(temp_schema)


def _move_legacy_history(connection: Connection) -> None:
    """A pre-``pyxp.alembic_version`` install: move pyxp's row(s) out of ``public.alembic_version``."""
    query = "SELECT version_num FROM public.alembic_version WHERE version_num = ANY(%(own)s)"
    if not connection.exec_driver_sql(query, {"own": OWN_REVISIONS}).first():
        return  # the application's history only: not ours to touch
    # No application migration may add a row between our emptiness check and the DROP.
    connection.exec_driver_sql("LOCK TABLE public.alembic_version IN EXCLUSIVE MODE")
    legacy = [row[0] for row in connection.exec_driver_sql(query, {"own": OWN_REVISIONS})]
    if not legacy:
        return
    _write_pyxp_heads(connection, legacy)
    connection.exec_driver_sql("RESET ROLE")
    connection.exec_driver_sql("DELETE FROM public.alembic_version WHERE version_num = ANY(%(own)s)",
                               {"own": legacy})
    if not _scalar(connection, "SELECT EXISTS (SELECT FROM public.alembic_version)"):
        connection.exec_driver_sql("DROP TABLE public.alembic_version")
    _copy_pyxp_heads(connection)


def _copy_pyxp_heads(connection: Connection) -> None:
    """``pyxp.alembic_version`` into the session's table. (The table is the owner's: a column of a
    type of its own, with its own assignment cast, ran that cast as the migrating role here, a
    hostile test, 0030; :func:`_refuse_owner_objects` refuses such a column first.)"""
    connection.exec_driver_sql(
        "INSERT INTO pg_temp.alembic_version SELECT version_num FROM pyxp.alembic_version")


def _persist_heads(*, ctx: Any, step: Any, heads: set[str], run_args: Any) -> None:
    """on_version_apply: in the migration's transaction, record the new heads in pyxp.alembic_version."""
    connection = ctx.connection
    if _scalar(connection, "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = 'pyxp')"):
        _write_pyxp_heads(connection, list(heads))
        connection.exec_driver_sql("RESET ROLE")
        _placeholder_for_0015_downgrade(connection, heads)


# The migrating session's settings, pinned whatever the role, database or PGOPTIONS say (0029, a
# hostile test). The revisions' SQL names built-ins unqualified (format, convert_to, lower, ...):
# with public (or any schema a role may create in) first on the search_path, a function of that
# name and a better-matching signature ran instead, as the migrating superuser: it made its role
# a superuser on a first install, and rewrote 0015's claims so that every old key paid again.
# A backslash in a plain literal reads otherwise under standard_conforming_strings = off (0015's
# partition bounds did). psycopg parses dates in ISO only.
# 0030 (a hostile test of managed deployments): a database or role whose default isolation is
# SERIALIZABLE or REPEATABLE READ stopped the install at 0008 (PX025: the ruleset's install
# refuses them); and a row-security policy the owner of pyxp puts on one of its tables would run
# as the migrating role when the migration reads it: with row_security off the read fails instead.
SESSION_SETTINGS = (("search_path", "pg_catalog"), ("standard_conforming_strings", "on"),
                    ("DateStyle", "ISO, YMD"), ("IntervalStyle", "postgres"),
                    ("default_transaction_isolation", "read committed"), ("row_security", "off"))
# One migration at a time per database: a session-level advisory lock, taken before the history is
# read (two deploy pods upgrading at once: the second re-ran what the first had committed, failed
# with errors that depend on timing, and wrote an older revision back for a while). The key is
# pyxp's ('pyxp' as an integer, 1); the lock ends with the session.
MIGRATION_LOCK = (1887007856, 1)
# A revision that locks several of the tables the writers use, one after another, can meet a live
# writer that holds one of them and waits for another (a rolling deploy, helper-69: 0034's TRUNCATE
# guards, created table by table, against an award's balances-then-claims). PostgreSQL ends the
# process whose deadlock_timeout runs out first in the cycle: the migration's is set above the
# writers' (1 s by default), so that the writer is the one ended (40P01: its call is retried with the
# same key, nothing was written) and the revision goes on. Where the migrating role may not set it
# (a superuser's setting, or GRANT SET ON PARAMETER), or a writer's is higher, pyxp.schema runs a
# revision the deadlock ended again.
MIGRATION_DEADLOCK_TIMEOUT = "5s"


def _show_warning(diagnostic: psycopg.errors.Diagnostic) -> None:
    """The server's WARNINGs during a migration, and pyxp's own NOTICEs, on stderr (a migration run
    by a non-superuser warns that the partitions' guard is not installed: it went nowhere)."""
    if diagnostic.severity_nonlocalized == "WARNING" or (
            diagnostic.severity_nonlocalized == "NOTICE" and (diagnostic.message_primary or "").startswith("pyxp: ")):
        hint = f" ({diagnostic.message_hint})" if diagnostic.message_hint else ""
        label = "WARNING: " if diagnostic.severity_nonlocalized == "WARNING" else ""
        sys.stderr.write(f"{label}{diagnostic.message_primary}{hint}\n")


def _connect() -> psycopg.Connection[Any]:
    # UTF8 whatever PGCLIENTENCODING says: the revisions hold text outside Latin-1 (0034).
    conn = psycopg.connect(conninfo, autocommit=True, client_encoding="UTF8")
    conn.add_notice_handler(_show_warning)
    for name, value in SESSION_SETTINGS:
        conn.execute("SELECT pg_catalog.set_config(%s, %s, false)", (name, value))
    try:
        conn.execute("SELECT pg_catalog.set_config('deadlock_timeout', %s, false)", (MIGRATION_DEADLOCK_TIMEOUT,))
    except psycopg.errors.InsufficientPrivilege:
        pass  # (a deployer that is no superuser: the server's setting, and pyxp.schema's runs again)
    if not conn.execute("SELECT pg_catalog.pg_try_advisory_lock(%s, %s)", MIGRATION_LOCK).fetchone()[0]:
        sys.stderr.write("pyxp: another pyxp db upgrade or downgrade is running on this database: waiting for it\n")
        conn.execute("SELECT pg_catalog.pg_advisory_lock(%s, %s)", MIGRATION_LOCK)
    conn.autocommit = False
    return conn


# What the revisions read as the migrating role itself, outside their SET LOCAL ROLE pyxp_owner
# (0002's and 0016's downgrades look into xp_requests, campaigns and xp_ledger_archives before they
# drop or change them), must run nothing the owner of schema pyxp put there (0030, a hostile test:
# whatever reading an owner's table runs, runs as the reader). A view, a table with children or
# rules in such a table's place, a column of a type that is not PostgreSQL's own, or a cast from
# or to a type of schema pyxp could; pyxp makes none of them, so a migration refuses to start.
OWNER_OBJECTS_READ_AS_MIGRATING_ROLE = """
SELECT pg_catalog.format('%s is a %s, not the table pyxp made', c.oid::regclass,
                         CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                                        WHEN 'f' THEN 'foreign table' ELSE 'table with children or rules' END)
  FROM pg_catalog.pg_class c
 WHERE c.relnamespace = 'pyxp'::regnamespace
   AND c.relname IN ('xp_requests', 'campaigns', 'xp_ledger_archives')
   AND (c.relkind <> 'r' OR c.relhassubclass OR c.relhasrules)
UNION ALL
SELECT pg_catalog.format('column %s of %s has type %s', a.attname, c.oid::regclass, a.atttypid::regtype)
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
 WHERE c.relnamespace IN ('pyxp'::regnamespace) AND c.relkind IN ('r', 'p')
   AND t.typnamespace <> 'pg_catalog'::regnamespace
UNION ALL
SELECT pg_catalog.format('a cast from %s to %s', k.castsource::regtype, k.casttarget::regtype)
  FROM pg_catalog.pg_cast k
  JOIN pg_catalog.pg_type s ON s.oid = k.castsource
  JOIN pg_catalog.pg_type t ON t.oid = k.casttarget
 WHERE s.typnamespace = 'pyxp'::regnamespace OR t.typnamespace = 'pyxp'::regnamespace
"""


def _upgrading() -> bool:
    """Whether this run migrates up (alembic passes its step function to the environment)."""
    step = getattr(getattr(context, "_proxy", None), "context_opts", {}).get("fn")
    return getattr(step, "__name__", "upgrade") != "downgrade"


def _refuse_other_encodings(connection: Connection) -> None:
    """pyxp's texts are Unicode (wallets in NFKC, emails folded by code point, keys as given), and
    its revisions hold such literals: on a LATIN1, WIN1252, SQL_ASCII or EUC_JP database an upgrade
    stopped at 0028, half installed, with a misleading error (a hostile test, 0034). Refused before
    any revision runs; a downgrade is let through (to remove what such a run left)."""
    with connection.begin():
        encoding = _scalar(connection, "SELECT pg_catalog.pg_encoding_to_char(d.encoding) FROM pg_catalog.pg_database d "
                                       "WHERE d.datname = pg_catalog.current_database()")
    if encoding != "UTF8" and _upgrading():
        raise CommandError(f"pyxp needs a UTF8 database: this one's encoding is {encoding} (create it with "
                           "ENCODING 'UTF8', or dump this one and restore it into a UTF8 database)")


def _refuse_owner_objects(connection: Connection) -> None:
    with connection.begin():
        if not _scalar(connection, "SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'pyxp')"):
            return
        found = [row[0] for row in connection.connection.driver_connection.execute(
            OWNER_OBJECTS_READ_AS_MIGRATING_ROLE).fetchall()]
    if found:
        raise CommandError("schema pyxp holds what a migration would run as the migrating role: "
                         + "; ".join(found) + " (made by a member of pyxp_owner, not by pyxp: undo it first)")


def _placeholder_for_0015_downgrade(connection: Connection, heads: set[str]) -> None:
    """0015's downgrade names the guard's function (``'pyxp.guard_ledger_partitions()'::regprocedure``),
    which a role that is no superuser never got: the downgrade failed with 42883, and pyxp could not be
    uninstalled from a managed service (a hostile test, 0030). Once a downgrade below 0015 has reached
    0015, where the function is missing, a function of that name (the owner's, which no event trigger
    runs) stands in for it, in that step's transaction; 0015's downgrade drops it."""
    destination = context.get_revision_argument()  # (None: base)
    if heads != {"0015"} or not (destination is None or (
            isinstance(destination, str) and destination.isdigit() and destination < "0015")):
        return
    if _scalar(connection, "SELECT pg_catalog.to_regprocedure('pyxp.guard_ledger_partitions()') IS NULL"):
        connection.exec_driver_sql("SET LOCAL ROLE pyxp_owner")
        connection.exec_driver_sql("CREATE FUNCTION pyxp.guard_ledger_partitions() RETURNS event_trigger "
                                   "LANGUAGE plpgsql AS 'BEGIN END'")
        connection.exec_driver_sql("RESET ROLE")


# The latest revision that installs the ledger partitions' guard, and its file. Run again at the end
# of every migration run that leaves the database at that revision or later: a superuser's run
# installs the guard, or replaces an older one, where a role that is no superuser migrated (it
# cannot: event triggers are a superuser's), even when no revision is left to run; another role's
# run is warned while a guard from before 0030 is there. The file changes nothing when the guard is
# current. (The revision names its file: GUARD_FILE of its module.)
GUARD_REVISION = "0030"


def _install_partitions_guard(connection: Connection) -> None:
    started = config.attributes.get("revision_at_start")
    if started is None or started < GUARD_REVISION:
        return  # (the revision itself ran the file, or the run went down to where it does not apply)
    if connection.in_transaction():
        connection.commit()  # (what alembic left open after the last revision: nothing to keep)
    with connection.begin():
        reached = _scalar(connection, "SELECT max(version_num) FROM pg_temp.alembic_version")
        if reached is None or reached < GUARD_REVISION:
            return
        revision = SCRIPTS.get_revision(GUARD_REVISION)
        sql = (Path(revision.path).parent / revision.module.GUARD_FILE).read_text(encoding="utf-8")
        connection.exec_driver_sql("SELECT pg_catalog.set_config('pyxp.repairing_guard', 'on', true)")
        connection.connection.driver_connection.execute(sql)


# The revision from which the ledger knows its cluster (pyxp.adopt_cluster): at the end of every
# migration run that leaves the database there or later, a ledger copied from another cluster (pg_dump
# and restore, logical replication, pg_upgrade) is made this cluster's, and the run says so on stderr;
# until then its writers, its feed and its checkpoints refuse (PX032). Nothing when it is this one's.
# From 0033 the ledger also names its timeline: one left behind (a failover, a point-in-time
# recovery) is adopted by the first write on the new one, or here.
ADOPTION_REVISION = "0032"
TIMELINE_REVISION = "0033"


def _adopt_cluster(connection: Connection) -> None:
    if connection.in_transaction():
        connection.commit()
    with connection.begin():
        reached = _scalar(connection, "SELECT max(version_num) FROM pg_temp.alembic_version")
        if reached is None or reached < ADOPTION_REVISION:
            return
        timelines = ("previous_timeline, this_timeline" if reached >= TIMELINE_REVISION
                     else "NULL::integer, NULL::integer")  # (0032's adoption has no timeline)
        adopted = connection.connection.driver_connection.execute(
            "SELECT previous_cluster, this_cluster, xid_offset, sequences_advanced, "
            f"{timelines} FROM pyxp.adopt_cluster()").fetchone()
        unfollowed = reached >= TIMELINE_REVISION and _scalar(
            connection, "SELECT pyxp.ledger_timeline() IS NULL AND NOT pg_is_in_recovery()")
    if unfollowed:
        sys.stderr.write("pyxp: WARNING: this server hides its WAL timeline (pg_walfile_name, pg_current_wal_insert_lsn "
                         "are not executable by pyxp_owner): the ledger cannot tell a failover or a point-in-time "
                         "recovery (README \"Failovers and point-in-time recovery\")\n")
    if adopted is None:
        return
    previous, this, offset, sequences, previous_timeline, this_timeline = adopted
    if this == 0:
        sys.stderr.write("pyxp: this database subscribes to pyxp's tables (logical replication): its ledger stays its "
                         "publisher's, and writes here refuse (PX032), until the switchover: drop the subscription, "
                         "then run pyxp db upgrade\n")
        return
    if previous == this and None not in (previous_timeline, this_timeline) and previous_timeline != this_timeline:
        origin = (f"was written on timeline {previous_timeline} of this cluster, which it left (a failover or a "
                  "point-in-time recovery; cursors of that history refuse with PX033)")
    elif previous == this:
        origin = "holds transaction ids or ids that ran ahead of this cluster's (rows replicated back, or a copy)"
    elif previous == 0:
        origin = "was its publisher's (a subscriber, now switched over)"
    elif previous is None:
        origin = "was written where its cluster could not be told (pg_control_system() hidden)"
    else:
        origin = f"was written on another PostgreSQL cluster (system identifier {previous})"
    sys.stderr.write(f"pyxp: this database's ledger {origin}; it now continues on this one: transaction ids counted "
                     f"+{offset}, sequences advanced: {', '.join(sequences) or 'none'}\n")


# The revision from which a logical replication subscriber makes the archives its publisher made
# (pyxp.follow_replicated_archives: their rows reach it, their partitions' DETACH does not): at the
# end of every run that leaves the database there or later; nothing, and no lock, when none is pending.
FOLLOWED_ARCHIVES_REVISION = "0037"
# From 0038 each archive is made in a savepoint of its own, in archive order, up to the first that cannot
# be: one that cannot no longer undoes those before it (a hostile test).
ONE_ARCHIVE_AT_A_TIME_REVISION = "0038"


def _follow_archives(connection: Connection) -> None:
    if connection.in_transaction():
        connection.commit()
    moved: list[tuple[int, str, int]] = []
    refused: psycopg.Error | None = None
    with connection.begin():
        reached = _scalar(connection, "SELECT max(version_num) FROM pg_temp.alembic_version")
        if reached is None or reached < FOLLOWED_ARCHIVES_REVISION:
            return
        driver = connection.connection.driver_connection
        follow = "SELECT archive_id, partition_name, rows_archived FROM pyxp.follow_replicated_archives()"
        try:
            archives: list[int | None] = [None]
            if reached >= ONE_ARCHIVE_AT_A_TIME_REVISION:
                follow = "SELECT archive_id, partition_name, rows_archived FROM pyxp.follow_replicated_archives(%s)"
                with driver.transaction():
                    archives = [row[0] for row in driver.execute(  # (none, mostly: no call, no lock)
                        "SELECT archive_id FROM pyxp.xp_ledger_archives WHERE pyxp.archive_pending_here(archive_id) "
                        "ORDER BY 1")]
            for archive in archives:
                with driver.transaction():  # (a savepoint: a refusal leaves the run's work committed)
                    moved += driver.execute(follow, (archive,) if archive is not None else None).fetchall()
        except psycopg.Error as exc:
            refused = exc
    for archive_id, partition, rows in moved:
        sys.stderr.write(f"pyxp: archive {archive_id} of this database's publisher made here: {partition} "
                         f"({rows} rows) moved to pyxp_archive\n")
    if refused is not None:
        # The migrations and the adoption are done; only the archive is not (a hostile test, 0037: the
        # run failed after adopting, and the operator could not tell the switchover had happened).
        hint = f" ({refused.diag.message_hint})" if refused.diag.message_hint else ""
        sys.stderr.write(f"pyxp: WARNING: the publisher's archive could not be made here: "
                         f"{refused.diag.message_primary or refused}{hint}; audit() reports its wallets "
                         "(opening_mismatch), and archive_ledger_partitions() refuses, until it is\n")


engine = create_engine("postgresql+psycopg://", creator=_connect, poolclass=NullPool)
with engine.connect() as connection:
    _refuse_other_encodings(connection)
    _refuse_owner_objects(connection)
    version_schema = _prepare_version_table(connection)
    # What this run found, under the lock (pyxp db upgrade reports it: read before the lock, it was
    # what another migration had reached while this one waited).
    with connection.begin():  # (ended here: alembic must find no transaction open)
        config.attributes["revision_at_start"] = _scalar(connection,
                                                         "SELECT max(version_num) FROM pg_temp.alembic_version")
        # For the revisions (0034 reads it: whether this run began below 0028); '' when none.
        _scalar(connection, "SELECT pg_catalog.set_config('pyxp.revision_at_start', %(at)s, false)",
                {"at": config.attributes["revision_at_start"] or ""})
        # A version row copied from another database (a logical replication): no revision runs (0036).
        mismatch = schema.revision_mismatch(connection.connection.driver_connection,
                                            config.attributes["revision_at_start"])
        if mismatch is not None:
            raise CommandError(mismatch)
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True,
                      version_table_schema=version_schema, on_version_apply=_persist_heads)
    with context.begin_transaction():
        context.run_migrations()
    _install_partitions_guard(connection)
    _adopt_cluster(connection)
    _follow_archives(connection)
