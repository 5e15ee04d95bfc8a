"""Alembic migrations (SPEC §9 ``pyxp db upgrade / downgrade / current``).

Each test that needs an empty database creates its own (unique name, same
server as the ``conninfo`` fixture) and drops it at the end. The schema built
by the migrations must be the one the readable ``sql/*.sql`` files build.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import database_state
from psycopg.conninfo import conninfo_to_dict

import pyxp
from pyxp import XP, schema

SQL_DIRECTORY = Path(__file__).resolve().parent.parent / "sql"
AWARD = ("SELECT * FROM pyxp.award(wallet => %s, action => 'CAMPAIGN_APPROVED', "
         "idempotency_key => %s)")


def schema_exists(conninfo: str) -> bool:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'pyxp'").fetchone()
    return row == (1,)


def award(conninfo: str, wallet: str, key: str) -> tuple[Any, ...]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(AWARD, (wallet, key)).fetchone()
    assert row is not None
    return tuple(row)


def schema_dump(conninfo: str) -> list[str]:
    """``pg_dump --schema-only`` of schema pyxp, without what varies between two databases."""
    params = conninfo_to_dict(conninfo)
    # pyxp.alembic_version (the migration history) exists only where migrations ran.
    command = ["pg_dump", "--schema-only", "--no-owner", "--no-privileges", "-n", "pyxp",
               "--exclude-table", "pyxp.alembic_version", "--dbname", str(params["dbname"])]
    for option, key in (("--host", "host"), ("--port", "port"), ("--username", "user")):
        if params.get(key):
            command += [option, str(params[key])]
    env = dict(os.environ)
    if params.get("password"):
        env["PGPASSWORD"] = str(params["password"])
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    lines = []
    for line in result.stdout.splitlines():
        if (not line.strip() or line.startswith("--") or line.startswith("SET ")
                or line.startswith("\\")  # \restrict / \unrestrict carry a random key
                or re.match(r"SELECT pg_catalog\.set_config\('search_path'", line)):
            continue
        lines.append(line)
    assert any("CREATE TABLE pyxp.xp_transactions" in line for line in lines)
    return lines


# --------------------------------------------------------------------------- revisions


def test_current_revision_is_none_on_an_empty_database(fresh_database: Callable[[], str]) -> None:
    assert schema.current_revision(fresh_database()) is None


def test_current_revision_is_head_after_upgrade(fresh_database: Callable[[], str]) -> None:
    target = fresh_database()
    schema.upgrade(target)
    head = schema.head_revision()
    assert head is not None
    assert schema.current_revision(target) == head


def test_test_databases_are_at_head(conninfo: str) -> None:
    assert schema.current_revision(conninfo) == schema.head_revision()


# --------------------------------------------------------------------------- up, down, up


def test_upgrade_activates_the_default_ruleset_on_an_empty_database(
        fresh_database: Callable[[], str]) -> None:
    """SPEC §9: ``db upgrade`` migrates to head and activates the default ruleset if none is active."""
    target = fresh_database()
    installed = schema.upgrade(target)
    assert installed is not None
    assert (installed.name, installed.version, installed.created, installed.activated) == (
        "winstory", 1, True, True)
    active = schema.active_ruleset(target)
    assert active is not None and (active["name"], active["version"]) == ("winstory", 1)


def test_upgrade_downgrade_upgrade_from_empty(fresh_database: Callable[[], str]) -> None:
    """Downgrade to base drops schema pyxp (roles stay); upgrading again gives a working ledger."""
    target = fresh_database()
    schema.upgrade(target)
    assert award(target, "first-life", "k1")[3] == 100

    schema.downgrade(target)
    assert not schema_exists(target)
    assert schema.current_revision(target) is None
    with psycopg.connect(target) as conn:
        roles = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname IN "
                             "('pyxp_owner', 'pyxp_writer', 'pyxp_reader')").fetchone()
    assert roles == (3,)

    installed = schema.upgrade(target)
    assert installed is not None and installed.activated
    assert schema.current_revision(target) == schema.head_revision()
    row = award(target, "second-life", "k1")  # same key: the old ledger is gone
    assert row[1:4] == ("second-life", "CAMPAIGN_APPROVED", 100)
    assert row[-1] is False
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT user_wallet FROM pyxp.xp_transactions").fetchall() == [("second-life",)]
        assert conn.execute("SELECT count(*) FROM pyxp.audit()").fetchone() == (0,)


def test_upgrade_at_head_with_data_keeps_the_data(conninfo: str, db: psycopg.Connection[Any]) -> None:
    """Running upgrade again on a used database is a no-op: no data lost, no second activation."""
    award(conninfo, "0x_creator", "kept-1")
    award(conninfo, "0x_other", "kept-2")
    before = database_state(db)
    ledger = db.execute("SELECT * FROM pyxp.xp_transactions ORDER BY id").fetchall()
    rulesets_query = "SELECT ruleset_id, version, is_active, activated_at FROM pyxp.rulesets ORDER BY 1"
    rulesets = db.execute(rulesets_query).fetchall()

    assert schema.upgrade(conninfo) is None

    assert database_state(db) == before
    assert db.execute("SELECT * FROM pyxp.xp_transactions ORDER BY id").fetchall() == ledger
    assert db.execute(rulesets_query).fetchall() == rulesets
    assert schema.current_revision(conninfo) == schema.head_revision()


def test_upgrade_leaves_an_already_active_ruleset_alone(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """A database whose operator switched to winstory-flows stays on it after an upgrade."""
    schema.apply_ruleset(conninfo, "winstory-flows")
    assert schema.upgrade(conninfo) is None
    assert db.execute("SELECT name FROM pyxp.rulesets WHERE is_active").fetchall() == [("winstory-flows",)]


# --------------------------------------------------------------------------- migrations == sql/


def test_migrations_build_the_same_schema_as_the_sql_files(fresh_database: Callable[[], str]) -> None:
    """0001_initial.sql is a frozen copy of sql/*.sql: both must build the same schema pyxp."""
    migrated = fresh_database()
    schema.upgrade(migrated, activate_default=False)

    from_files = fresh_database()
    files = sorted(SQL_DIRECTORY.glob("*.sql"))
    assert [path.name for path in files][:2] == ["01_schema.sql", "02_checks.sql"]
    with psycopg.connect(from_files) as conn, conn.transaction():  # one transaction, files in order
        for path in files:
            conn.execute(path.read_text(encoding="utf-8"))

    expected, got = schema_dump(from_files), schema_dump(migrated)
    diff = list(difflib.unified_diff(expected, got, "sql/*.sql", "migrations", lineterm="", n=1))
    assert diff == [], "\n".join(diff[:200])


def test_migrations_grant_the_same_privileges_as_the_sql_files(fresh_database: Callable[[], str]) -> None:
    """The dump above ignores privileges; compare every ACL and owner of schema pyxp directly."""
    migrated = fresh_database()
    schema.upgrade(migrated, activate_default=False)
    from_files = fresh_database()
    with psycopg.connect(from_files) as conn, conn.transaction():
        for path in sorted(SQL_DIRECTORY.glob("*.sql")):
            conn.execute(path.read_text(encoding="utf-8"))

    query = """
        SELECT 'schema', n.nspname, pg_get_userbyid(n.nspowner), n.nspacl::text
          FROM pg_namespace n WHERE n.nspname = 'pyxp'
        UNION ALL
        SELECT 'relation', c.relname, pg_get_userbyid(c.relowner), c.relacl::text
          FROM pg_class c WHERE c.relnamespace = 'pyxp'::regnamespace
           AND c.relname NOT IN ('alembic_version', 'alembic_version_pkey')  -- migrated side only
        UNION ALL
        SELECT 'function', p.oid::regprocedure::text, pg_get_userbyid(p.proowner), p.proacl::text
          FROM pg_proc p WHERE p.pronamespace = 'pyxp'::regnamespace
        ORDER BY 1, 2"""
    with psycopg.connect(migrated) as a, psycopg.connect(from_files) as b:
        assert a.execute(query).fetchall() == b.execute(query).fetchall()


def test_without_an_active_ruleset_awards_and_levels_are_refused(fresh_database: Any) -> None:
    """PX020: a schema migrated without activating a ruleset refuses to award (nothing written)
    and to compute levels, and says how to activate one."""
    target = fresh_database()
    assert schema.upgrade(target, activate_default=False) is None
    with psycopg.connect(target, autocommit=True) as conn:
        before = database_state(conn)
        for call in ("SELECT * FROM pyxp.award(wallet => 'w', action => 'B2C_MINT', idempotency_key => 'k')",
                     "SELECT * FROM pyxp.award_campaign_creation(creator_wallet => 'w', campaign_id => 'c', "
                     "campaign_type => 'B2C')",
                     "SELECT * FROM pyxp.level_for(total_xp => 100)"):
            with pytest.raises(psycopg.Error) as refused:
                conn.execute(call)
            assert refused.value.sqlstate == "PX020"
            assert "pyxp rules apply" in (refused.value.diag.message_hint or "")
        assert database_state(conn) == before
    with pytest.raises(pyxp.NoActiveRuleset), XP(target) as client:
        client.award("w", "B2C_MINT", "k")
