"""Deployments where the roles differ in trust: a hostile test of a managed PostgreSQL (0030).

A member of pyxp_owner owns schema pyxp: what reading its tables runs, and what its functions
run, is its to decide. The partitions' guard, a superuser's event trigger that runs at every DDL
command of the database, the owner's own included, must run none of it: at 0029 the owner alone,
with no stronger role doing anything, became superuser through it. The migrations and owner
operations run the owner's objects in the caller's session (README "Whom pyxp trusts": SET ROLE
is no boundary, the owner's code can RESET ROLE); what they refuse below is what they can tell,
before they start. Each test is a hostile tester's reproduction.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pyxp import errors, schema
from test_migrations import schema_dump
from conftest import STATE_QUERY
from test_partitions import AWARD, migrating_role, this_month


def _is_superuser(db: psycopg.Connection[Any], role: str) -> bool:
    return bool(db.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)).fetchone()[0])


def test_the_guard_reads_no_table_of_the_owner(db: psycopg.Connection[Any], conninfo: str, login_role: Any,
                                               unchanged: Any) -> None:
    """At 0029 the guard read xp_ledger_archives as its superuser: a view put there by the owner,
    calling the owner's function, ran that function as the superuser, and the member of
    pyxp_owner who ran the DETACH was made superuser (and the DETACH went through)."""
    member = login_role("pyxp_owner")
    partition = f"xp_transactions_{this_month()}"
    oid = db.execute(f"SELECT 'pyxp.{partition}'::regclass::oid").fetchone()[0]
    with psycopg.connect(make_conninfo(conninfo, user=member), autocommit=True) as conn:
        conn.execute("SET ROLE pyxp_owner")
        conn.execute("ALTER TABLE pyxp.xp_ledger_archives RENAME TO xp_ledger_archives_kept")
        conn.execute("""CREATE FUNCTION pyxp.made_superuser() RETURNS boolean LANGUAGE plpgsql AS
                        $$ BEGIN EXECUTE format('ALTER ROLE %I SUPERUSER', session_user); RETURN true; END $$""")
        conn.execute(f"""CREATE VIEW pyxp.xp_ledger_archives AS
                         SELECT ARRAY[{oid}]::oid[] AS partition_oids, pg_current_xact_id() AS archived_by_xid
                          WHERE pyxp.made_superuser()""")
        conn.execute("SELECT set_config('pyxp.archiving', %s, false)", (str(oid),))
        with unchanged(), pytest.raises(errors.AppendOnlyLedger), errors.wrap_errors():
            conn.execute(f"ALTER TABLE pyxp.xp_transactions DETACH PARTITION pyxp.{partition}")
    assert not _is_superuser(db, member)
    assert db.execute("SELECT count(*) FROM pg_inherits WHERE inhrelid = %s", (oid,)).fetchone() == (1,)


def test_a_superusers_upgrade_casts_nothing_of_the_owner(db: psycopg.Connection[Any], conninfo: str,
                                                        login_role: Any) -> None:
    """At 0029 env.py copied pyxp.alembic_version as the migrating superuser: a member of pyxp_owner
    gave its column a type of its own with an assignment cast to varchar, and the next pyxp db
    upgrade ran the cast's function as the superuser. The migration now refuses to start, and
    names what it found."""
    member = login_role("pyxp_owner")
    with psycopg.connect(make_conninfo(conninfo, user=member), autocommit=True) as conn:
        conn.execute("SET ROLE pyxp_owner")
        conn.execute(sql.SQL("""
            CREATE FUNCTION pyxp.version_cast(v text) RETURNS varchar LANGUAGE plpgsql AS
            $$ BEGIN IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
                 EXECUTE 'ALTER ROLE {} SUPERUSER'; END IF; RETURN v; END $$""").format(sql.Identifier(member)))
        conn.execute("CREATE TYPE pyxp.version_text AS (v text)")
        conn.execute("CREATE FUNCTION pyxp.version_out(x pyxp.version_text) RETURNS varchar LANGUAGE sql "
                     "AS $$ SELECT pyxp.version_cast(x.v) $$")
        conn.execute("CREATE CAST (pyxp.version_text AS varchar) WITH FUNCTION pyxp.version_out(pyxp.version_text) "
                     "AS ASSIGNMENT")
        conn.execute("ALTER TABLE pyxp.alembic_version DROP CONSTRAINT alembic_version_pkey")
        conn.execute("ALTER TABLE pyxp.alembic_version ALTER COLUMN version_num TYPE pyxp.version_text "
                     "USING ROW(version_num)::pyxp.version_text")
    from alembic.util import CommandError
    with pytest.raises(CommandError, match="version_num of pyxp.alembic_version has type pyxp.version_text"):
        schema.upgrade(conninfo)
    assert not _is_superuser(db, member)


def test_a_migration_refused_for_an_owners_object_changes_nothing(db: psycopg.Connection[Any], conninfo: str,
                                                                   unchanged: Any) -> None:
    """0016's downgrade reads pyxp.xp_requests as the migrating role: a view the owner put in its
    place is named, and the downgrade refused before any step ran (schema, history and data as
    they were)."""
    db.execute("SET ROLE pyxp_owner")
    db.execute("ALTER TABLE pyxp.xp_requests RENAME TO xp_requests_kept")
    db.execute("CREATE VIEW pyxp.xp_requests AS SELECT * FROM pyxp.xp_requests_kept")
    db.execute("RESET ROLE")
    before = schema_dump(conninfo)
    from alembic.util import CommandError
    with unchanged(), pytest.raises(CommandError, match="pyxp.xp_requests is a view, not the table pyxp made"):
        schema.downgrade(conninfo, "0015")
    assert schema.current_revision(conninfo) == schema.head_revision()
    assert schema_dump(conninfo) == before


def test_a_readers_db_current_runs_no_policy_of_the_owner(db: psycopg.Connection[Any], conninfo: str,
                                                         login_role: Any) -> None:
    """A row-security policy the owner puts on pyxp.alembic_version ran as whoever read it (a
    deployer's pyxp db current made the owner's member a member of the deployer): the read now
    fails instead, and the policy's function never runs as the reader."""
    reader = login_role("pyxp_reader")
    db.execute("CREATE TABLE public.policy_ran_as (role name)")
    db.execute("GRANT INSERT ON public.policy_ran_as TO PUBLIC")
    db.execute("SET ROLE pyxp_owner")
    db.execute("""CREATE FUNCTION pyxp.policy_check() RETURNS boolean LANGUAGE sql VOLATILE AS
                  $$ INSERT INTO public.policy_ran_as VALUES (current_user) RETURNING true $$""")
    db.execute("GRANT EXECUTE ON FUNCTION pyxp.policy_check() TO PUBLIC")
    db.execute("CREATE POLICY owner_code ON pyxp.alembic_version USING (pyxp.policy_check())")
    db.execute("ALTER TABLE pyxp.alembic_version ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY")
    db.execute("RESET ROLE")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        schema.current_revision(make_conninfo(conninfo, user=reader))
    assert db.execute("SELECT role FROM public.policy_ran_as").fetchall() == []


@pytest.mark.parametrize("isolation", ["serializable", "repeatable read"])
def test_an_install_where_the_default_isolation_is_not_read_committed(fresh_database: Any, isolation: str) -> None:
    """A database whose default isolation is SERIALIZABLE (a managed service's choice) stopped the
    install at 0008 with PX025, no ruleset active: the migrating session pins READ COMMITTED."""
    target = fresh_database()
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_isolation = {}").format(
            sql.Identifier(conn.info.dbname), sql.Literal(isolation)))
    done = schema.upgrade(target)
    assert done.after == schema.head_revision() and done.installed is not None
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SHOW default_transaction_isolation").fetchone() == (isolation,)
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []


GUARD_STATE = """
SELECT (SELECT r.rolsuper FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
         WHERE p.oid = to_regprocedure('pyxp.guard_ledger_partitions()')),
       (SELECT p.prosrc LIKE '%%pyxp.archiving_xact%%' FROM pg_proc p
         WHERE p.oid = to_regprocedure('pyxp.guard_ledger_partitions()')),
       (SELECT array_agg(evtenabled::text ORDER BY evtname) FROM pg_event_trigger WHERE evtname LIKE 'pyxp%%')
"""


def test_a_superusers_upgrade_installs_the_guard_a_deployer_could_not(
        login_role: Any, fresh_database: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A database a role that is no superuser installed has no guard; a superuser's pyxp db upgrade,
    with no revision left to run, installs it (the README said it would; at 0029 nothing did)."""
    target = fresh_database()
    schema.upgrade(migrating_role(login_role, target))
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute(GUARD_STATE).fetchone() == (None, None, None)
    capsys.readouterr()
    done = schema.upgrade(target)
    assert done.before == done.after == schema.head_revision()
    assert "the ledger partitions' guard of revision 0030 is installed" in capsys.readouterr().err
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute(GUARD_STATE).fetchone() == (True, True, ["A", "A", "A"])
        with pytest.raises(errors.AppendOnlyLedger), errors.wrap_errors():
            conn.execute(f"ALTER TABLE pyxp.xp_transactions DETACH PARTITION pyxp.xp_transactions_{this_month()}")


def test_a_guard_from_before_0030_is_warned_of_then_replaced(login_role: Any, fresh_database: Any,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A superuser installed 0029's guard; a deployer that is no superuser cannot replace it, and is
    warned at every migration run; the next superuser's run replaces it."""
    target = fresh_database()
    schema.upgrade(target, "0029")
    deployer = migrating_role(login_role, target)
    capsys.readouterr()
    schema.upgrade(deployer)
    schema.upgrade(deployer)
    warned = capsys.readouterr().err
    assert warned.count("WARNING: pyxp: the ledger partitions' guard is not the one of revision 0030") == 2, warned
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute(GUARD_STATE).fetchone() == (True, False, ["A", "A", "A"])
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute(GUARD_STATE).fetchone() == (True, True, ["A", "A", "A"])


def test_a_deployer_cannot_downgrade_0030_over_a_superusers_guard(login_role: Any, fresh_database: Any) -> None:
    """0030's downgrade puts 0029's guard back in place of 0030's, which a superuser owns: a deployer
    that is no superuser is refused ("needs a superuser"), and nothing is undone: the history, the
    guard, the move's lock and its function stay 0030's."""
    target = fresh_database()
    schema.upgrade(target, "0030")
    deployer = migrating_role(login_role, target)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(AWARD, ("0xkept", "kept-1"))
        before = schema_dump(target), conn.execute(STATE_QUERY).fetchone()
    with pytest.raises(psycopg.errors.RaiseException, match="downgrading 0030 where the partitions' guard is installed needs a superuser"):
        schema.downgrade(deployer, "0029")
    assert schema.current_revision(target) == "0030"
    with psycopg.connect(target, autocommit=True) as conn:
        assert (schema_dump(target), conn.execute(STATE_QUERY).fetchone()) == before
        assert conn.execute(GUARD_STATE).fetchone() == (True, True, ["A", "A", "A"])


def test_a_deployer_that_is_no_superuser_can_uninstall(login_role: Any, fresh_database: Any) -> None:
    """0015's downgrade names the guard's function, which such a deployer never got: pyxp db
    downgrade failed there with 42883 (and the CLI said the schema was not installed)."""
    target = fresh_database()
    deployer = migrating_role(login_role, target)
    schema.upgrade(deployer)
    schema.downgrade(deployer, "base")
    assert schema.current_revision(target) is None
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT to_regnamespace('pyxp')").fetchone() == (None,)


def test_the_clis_awards_where_the_default_isolation_is_serializable(conninfo: str, db: psycopg.Connection[Any]) -> None:
    """The CLI's calls ran at the session's default isolation: on a role defaulting to SERIALIZABLE
    every `pyxp award` was refused with PX025, whose hint (BEGIN ISOLATION LEVEL READ COMMITTED)
    a CLI user cannot follow. They now open READ COMMITTED transactions there."""
    from test_cli import CREATE_CAMPAIGN, ok_json
    db.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_isolation = 'serializable'").format(
        sql.Identifier(db.info.dbname)))
    assert ok_json(conninfo, *CREATE_CAMPAIGN)["total_xp"] > 0
    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions WHERE user_wallet = '0x_creator'").fetchone()[0] > 0
