"""Privileges, ownership, the append-only ledger and search_path safety (SPEC §7).

Roles are cluster-wide: each test creates its own login roles with unique
names (``app_<hex>``), grants them ``pyxp_writer`` / ``pyxp_reader`` (or
nothing), connects as them and drops them at the end. Every refused call is
checked to write nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pyxp import errors, schema

# SPEC §5: the functions applications call. Everything else in schema pyxp is internal.
PUBLIC_API = {
    "award_campaign_creation", "award_campaign_approval", "award_moderation_vote", "award_completion",
    "award_completion_moderation", "register_agency_client", "onboard_agency_client", "award",
    "reverse_transaction", "level_for", "balance", "history", "leaderboard",
    "wallet_rank", "audit",
    "award_many",  # SPEC §9: batch variant for bulk ingestion
    "changes",  # SPEC §11: the change feed
    "period_xp",  # SPEC §12: periods
    "simulate_rules", "simulation_report",  # SPEC §13: what-if
    "key_hash",  # a claim found by its key (0040)
    "audit_since_checkpoint", "record_audit_checkpoint",  # audit checkpoints (README "For DBAs")
    "schema_revision",  # the functions' revision (0036: pyxp db current compares it with alembic_version)
}
READ_FUNCTIONS = {"level_for", "balance", "history", "leaderboard", "wallet_rank", "audit", "changes", "period_xp",
                  "simulate_rules", "simulation_report", "audit_since_checkpoint", "schema_revision",
                  "key_hash"}
INTERNAL_FUNCTIONS = ["post_award", "append_rows", "claim_request", "install_ruleset",
                      "replayed_award", "planned_awards", "checked_wallet", "curve_position",
                      "active_ruleset_id", "check_ruleset_definition", "rebuild_period_columns",
                      "ledger_period_totals", "apply_rules_retroactively", "activate_ruleset",
                      "simulated_totals"]

# One call per read function, runnable by any role allowed to execute it.
READ_CALLS = {
    "level_for": "SELECT * FROM pyxp.level_for(total_xp => 2)",
    "balance": "SELECT * FROM pyxp.balance(wallet => 'someone')",
    "history": "SELECT * FROM pyxp.history(wallet => 'someone')",
    "leaderboard": "SELECT * FROM pyxp.leaderboard()",
    "wallet_rank": "SELECT pyxp.wallet_rank(wallet => 'someone')",
    "period_xp": "SELECT pyxp.period_xp(wallet => 'someone', period => 'week')",
    "simulate_rules": "SELECT * FROM pyxp.simulate_rules(ruleset_id => 1)",
    "simulation_report": "SELECT pyxp.simulation_report(ruleset_id => 1)",
    "audit": "SELECT * FROM pyxp.audit()",
    "audit_since_checkpoint": "SELECT * FROM pyxp.audit_since_checkpoint()",
    "changes": "SELECT * FROM pyxp.changes(after_cursor => 0)",
    "schema_revision": "SELECT pyxp.schema_revision()",
    "key_hash": "SELECT pyxp.key_hash('some key')",
}
AWARD_CALL = ("SELECT * FROM pyxp.award(wallet => %s, action => 'CAMPAIGN_APPROVED', "
              "idempotency_key => %s)")
WRITE_CALLS = {
    "award": "SELECT * FROM pyxp.award(wallet => 'someone', action => 'CAMPAIGN_APPROVED', "
             "idempotency_key => 'refused-award')",
    "reverse_transaction": "SELECT * FROM pyxp.reverse_transaction(transaction_id => "
                           "(SELECT min(transaction_id) FROM pyxp.history(wallet => 'seeded')), "
                           "reason => 'refused')",
    "recalculate_levels": "SELECT pyxp.recalculate_levels()",
    "record_audit_checkpoint": "SELECT * FROM pyxp.record_audit_checkpoint()",
}
TABLE_OPERATIONS = ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"]


# --------------------------------------------------------------------------- fixtures




@pytest.fixture
def seeded(db: psycopg.Connection[Any]) -> int:
    """One ledger row (wallet 'seeded', +100) so tables and reversals have something to act on."""
    row = db.execute(AWARD_CALL, ("seeded", "seed-key")).fetchone()
    assert row is not None
    return int(row[0])


def pyxp_tables(db: psycopg.Connection[Any]) -> list[str]:
    names = [name for (name,) in db.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'pyxp'::regnamespace AND relkind IN ('r', 'p') "
        "ORDER BY relname")]
    assert {"xp_transactions", "xp_balances", "xp_requests", "rulesets"} <= set(names)
    return names


def table_statement(db: psycopg.Connection[Any], operation: str, table: str) -> sql.Composable:
    """A statement doing ``operation`` on ``table`` that only a privilege check can stop."""
    target = sql.Identifier("pyxp", table)
    if operation == "SELECT":
        return sql.SQL("SELECT * FROM {} LIMIT 1").format(target)
    if operation == "INSERT":
        return sql.SQL("INSERT INTO {} DEFAULT VALUES").format(target)
    if operation == "DELETE":
        return sql.SQL("DELETE FROM {}").format(target)
    if operation == "TRUNCATE":
        return sql.SQL("TRUNCATE {}").format(target)
    # UPDATE: a plain column (identity columns cannot be SET to themselves).
    row = db.execute("""SELECT attname FROM pg_attribute
                         WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped
                           AND attidentity = '' AND attgenerated = ''
                         ORDER BY attnum LIMIT 1""", (f"pyxp.{table}",)).fetchone()
    assert row is not None
    column = sql.Identifier(row[0])
    return sql.SQL("UPDATE {} SET {} = {}").format(target, column, column)


def call_with_nulls(db: psycopg.Connection[Any], function: str) -> sql.Composable:
    """``SELECT pyxp.f(NULL::t1, NULL::t2, ...)`` for the (single) function of that name."""
    rows = db.execute("""SELECT array(SELECT format_type(t.oid, NULL)
                                        FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY t(oid, n)
                                       ORDER BY t.n)
                           FROM pg_proc p
                          WHERE p.pronamespace = 'pyxp'::regnamespace AND p.proname = %s""",
                      (function,)).fetchall()
    assert len(rows) == 1, f"expected one function pyxp.{function}, found {len(rows)}"
    args = sql.SQL(", ").join(sql.SQL("NULL::" + type_name) for type_name in rows[0][0])
    return sql.SQL("SELECT pyxp.{}({})").format(sql.Identifier(function), args)


def refused(conn: psycopg.Connection[Any], statement: Any, params: Any = None) -> None:
    """The statement fails with insufficient_privilege (42501)."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement, params)


# --------------------------------------------------------------------------- ownership and roles


def test_schema_and_every_object_are_owned_by_the_nologin_owner_role(db: psycopg.Connection[Any]) -> None:
    """SPEC §7: tables are owned by a NOLOGIN owner role, which is no superuser."""
    owner = db.execute("""SELECT r.rolname, r.rolcanlogin, r.rolsuper, r.rolbypassrls
                            FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner
                           WHERE n.nspname = 'pyxp'""").fetchone()
    assert owner == ("pyxp_owner", False, False, False)
    others = db.execute("""
        SELECT 'relation ' || c.relname || ' owned by ' || pg_get_userbyid(c.relowner)
          FROM pg_class c WHERE c.relnamespace = 'pyxp'::regnamespace AND c.relowner <> 'pyxp_owner'::regrole
        UNION ALL
        SELECT 'function ' || p.oid::regprocedure || ' owned by ' || pg_get_userbyid(p.proowner)
          FROM pg_proc p WHERE p.pronamespace = 'pyxp'::regnamespace AND p.proowner <> 'pyxp_owner'::regrole
           -- The one exception: the partitions' guard, run by event triggers at a superuser's DDL
           -- too, belongs to a superuser (tests/test_partitions.py), so the owner cannot change it.
           AND p.oid <> 'pyxp.guard_ledger_partitions()'::regprocedure
        UNION ALL
        SELECT 'type ' || t.typname || ' owned by ' || pg_get_userbyid(t.typowner)
          FROM pg_type t WHERE t.typnamespace = 'pyxp'::regnamespace AND t.typowner <> 'pyxp_owner'::regrole
    """).fetchall()
    assert others == []


def test_writer_and_reader_roles_exist_and_cannot_log_in(db: psycopg.Connection[Any]) -> None:
    """SPEC §7: applications grant pyxp_writer / pyxp_reader to their own login roles."""
    rows = db.execute("""SELECT rolname, rolcanlogin, rolsuper FROM pg_roles
                          WHERE rolname IN ('pyxp_writer', 'pyxp_reader') ORDER BY rolname""").fetchall()
    assert rows == [("pyxp_reader", False, False), ("pyxp_writer", False, False)]


def test_writer_executes_exactly_the_public_functions(db: psycopg.Connection[Any]) -> None:
    """No internal function is granted to pyxp_writer; every public one is, and runs as the owner."""
    executable = {name for (name,) in db.execute(
        """SELECT DISTINCT p.proname FROM pg_proc p
            WHERE p.pronamespace = 'pyxp'::regnamespace
              AND has_function_privilege('pyxp_writer', p.oid, 'EXECUTE')""")}
    existing_public = {name for (name,) in db.execute(
        "SELECT proname FROM pg_proc WHERE pronamespace = 'pyxp'::regnamespace AND proname = ANY(%s)",
        (sorted(PUBLIC_API),))}
    assert {"award", "reverse_transaction", "balance", "audit"} <= existing_public
    assert executable - PUBLIC_API == set()
    assert existing_public - executable == set()


def test_reader_executes_only_read_functions(db: psycopg.Connection[Any]) -> None:
    executable = {name for (name,) in db.execute(
        """SELECT DISTINCT p.proname FROM pg_proc p
            WHERE p.pronamespace = 'pyxp'::regnamespace
              AND has_function_privilege('pyxp_reader', p.oid, 'EXECUTE')""")}
    assert executable == READ_FUNCTIONS


def test_every_security_definer_function_pins_its_search_path(db: psycopg.Connection[Any]) -> None:
    """SPEC §5/§7: SECURITY DEFINER functions carry SET search_path = pyxp, pg_temp (pg_temp last);
    the partitions' guard, a superuser's, reads the catalogs only: pg_catalog, pg_temp (nothing the
    owner of schema pyxp creates can stand in for what it calls)."""
    unpinned = db.execute("""
        SELECT p.oid::regprocedure::text, p.proconfig FROM pg_proc p
         WHERE p.pronamespace = 'pyxp'::regnamespace AND p.prosecdef
           AND NOT coalesce(CASE WHEN p.oid = 'pyxp.guard_ledger_partitions()'::regprocedure
                                 THEN 'search_path=pg_catalog, pg_temp' ELSE 'search_path=pyxp, pg_temp' END
                            = ANY (p.proconfig), false)""").fetchall()
    assert unpinned == []
    public_not_definer = db.execute("""
        SELECT p.oid::regprocedure::text FROM pg_proc p
         WHERE p.pronamespace = 'pyxp'::regnamespace AND p.proname = ANY(%s) AND NOT p.prosecdef""",
                                    (sorted(PUBLIC_API - {"key_hash"}),)).fetchall()
    # key_hash reads no table: it runs as its caller, who can only mislead itself. As a definer with
    # a pinned search_path it would switch settings at each of the writer's calls and index entries.
    assert public_not_definer == []


# --------------------------------------------------------------------------- pyxp_writer


@pytest.mark.parametrize("function", sorted(READ_CALLS))
def test_writer_can_call_read_functions(
        login_role: Callable[..., str], connect_as: Callable[[str], psycopg.Connection[Any]],
        seeded: int, function: str) -> None:
    conn = connect_as(login_role("pyxp_writer"))
    conn.execute(READ_CALLS[function]).fetchall()


def test_writer_can_award_and_reverse(
        login_role: Callable[..., str], connect_as: Callable[[str], psycopg.Connection[Any]],
        db: psycopg.Connection[Any]) -> None:
    conn = connect_as(login_role("pyxp_writer"))
    awarded = conn.execute(AWARD_CALL, ("0xWriterWallet", "writer-key")).fetchone()
    assert awarded is not None and awarded[3] == 100
    reversal = conn.execute("SELECT * FROM pyxp.reverse_transaction(transaction_id => %s, reason => 'test')",
                            (awarded[0],)).fetchone()
    assert reversal is not None and reversal[2:4] == ("REVERSAL", -100)
    assert db.execute("SELECT count(*), sum(xp_amount) FROM pyxp.xp_transactions WHERE user_wallet = "
                      "'0xWriterWallet'").fetchone() == (2, 0)
    assert conn.execute("SELECT count(*) FROM pyxp.audit()").fetchone() == (0,)


def test_a_writer_cannot_stall_every_award_with_recalculate_levels(
        login_role: Callable[..., str], connect_as: Callable[[str], psycopg.Connection[Any]],
        conninfo: str) -> None:
    """SPEC 7 / issue 9 item 7: `BEGIN; SELECT pyxp.recalculate_levels();` left open by a writer used
    to hold every award. It is the owner's now: a writer is refused, and awards go on."""
    conn = connect_as(login_role("pyxp_writer"))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT pyxp.recalculate_levels()")
    conn.rollback()
    conn.execute("BEGIN")
    conn.execute(AWARD_CALL, ("0xHolder", "holder-key")).fetchall()  # a writer's transaction left open
    with psycopg.connect(conninfo, autocommit=True) as other:
        other.execute("SET statement_timeout = '5s'")
        assert other.execute(AWARD_CALL, ("0xOther", "other-key")).fetchone() is not None


def test_every_function_says_whether_it_is_public(db: psycopg.Connection[Any]) -> None:
    """The naming rule (sql/10_comments.sql): granted to pyxp_writer/pyxp_reader <=> description
    starting with 'API:'; every other function's starts with 'internal:'."""
    rows = db.execute("""
        SELECT p.oid::regprocedure::text, coalesce(obj_description(p.oid, 'pg_proc'), ''),
               has_function_privilege('pyxp_writer', p.oid, 'EXECUTE')
               OR has_function_privilege('pyxp_reader', p.oid, 'EXECUTE')
          FROM pg_proc p WHERE p.pronamespace = 'pyxp'::regnamespace""").fetchall()
    assert len(rows) > 40
    wrong = [(name, text) for name, text, granted in rows
             if not text.startswith("API: " if granted else "internal: ")]
    assert wrong == []


@pytest.mark.parametrize("operation", TABLE_OPERATIONS)
def test_writer_cannot_touch_any_table_directly(
        login_role: Callable[..., str], connect_as: Callable[[str], psycopg.Connection[Any]],
        db: psycopg.Connection[Any], unchanged: Any, seeded: int, operation: str) -> None:
    """SPEC §7: pyxp_writer only executes functions; every direct table access is 42501."""
    conn = connect_as(login_role("pyxp_writer"))
    with unchanged():
        for table in pyxp_tables(db):
            refused(conn, table_statement(db, operation, table))


@pytest.mark.parametrize("function", INTERNAL_FUNCTIONS)
def test_writer_cannot_execute_internal_functions(
        login_role: Callable[..., str], connect_as: Callable[[str], psycopg.Connection[Any]],
        db: psycopg.Connection[Any], unchanged: Any, function: str) -> None:
    """A writer cannot skip validation (post_award, append_rows...) nor switch rulesets."""
    conn = connect_as(login_role("pyxp_writer"))
    with unchanged():
        refused(conn, call_with_nulls(db, function))


# --------------------------------------------------------------------------- pyxp_reader


def test_reader_can_select_every_table(
        login_role: Callable[..., str], connect_as: Callable[[str], psycopg.Connection[Any]],
        db: psycopg.Connection[Any], seeded: int) -> None:
    """SPEC §7 / §5: auditors read the ledger with plain SQL."""
    conn = connect_as(login_role("pyxp_reader"))
    for table in pyxp_tables(db):
        conn.execute(table_statement(db, "SELECT", table)).fetchall()
    assert conn.execute("SELECT user_wallet, xp_amount FROM pyxp.xp_transactions"
                        ).fetchall() == [("seeded", 100)]
    # A key's claim, found by its hash (0040: pyxp.key_hash was the owner's, and a DBA wrote its formula out).
    assert conn.execute("SELECT transaction_id FROM pyxp.xp_award_claims WHERE key_hash = pyxp.key_hash('seed-key')"
                        ).fetchall() == [(seeded,)]


@pytest.mark.parametrize("function", sorted(READ_CALLS))
def test_reader_can_call_read_functions(
        login_role: Callable[..., str], connect_as: Callable[[str], psycopg.Connection[Any]],
        seeded: int, function: str) -> None:
    conn = connect_as(login_role("pyxp_reader"))
    conn.execute(READ_CALLS[function]).fetchall()


@pytest.mark.parametrize("function", sorted(WRITE_CALLS))
def test_reader_cannot_call_write_functions(
        login_role: Callable[..., str], connect_as: Callable[[str], psycopg.Connection[Any]],
        unchanged: Any, seeded: int, function: str) -> None:
    conn = connect_as(login_role("pyxp_reader"))
    with unchanged():
        refused(conn, WRITE_CALLS[function])


@pytest.mark.parametrize("operation", ["INSERT", "UPDATE", "DELETE", "TRUNCATE"])
def test_reader_cannot_write_any_table(
        login_role: Callable[..., str], connect_as: Callable[[str], psycopg.Connection[Any]],
        db: psycopg.Connection[Any], unchanged: Any, seeded: int, operation: str) -> None:
    conn = connect_as(login_role("pyxp_reader"))
    with unchanged():
        for table in pyxp_tables(db):
            refused(conn, table_statement(db, operation, table))


@pytest.mark.parametrize("function", INTERNAL_FUNCTIONS)
def test_reader_cannot_execute_internal_functions(
        login_role: Callable[..., str], connect_as: Callable[[str], psycopg.Connection[Any]],
        db: psycopg.Connection[Any], unchanged: Any, function: str) -> None:
    conn = connect_as(login_role("pyxp_reader"))
    with unchanged():
        refused(conn, call_with_nulls(db, function))


# --------------------------------------------------------------------------- PUBLIC


@pytest.mark.parametrize("operation", TABLE_OPERATIONS)
def test_role_without_pyxp_roles_cannot_touch_tables(
        login_role: Callable[..., str], connect_as: Callable[[str], psycopg.Connection[Any]],
        db: psycopg.Connection[Any], unchanged: Any, seeded: int, operation: str) -> None:
    conn = connect_as(login_role())
    with unchanged():
        for table in pyxp_tables(db):
            refused(conn, table_statement(db, operation, table))


@pytest.mark.parametrize("call", [*READ_CALLS.values(), *WRITE_CALLS.values()],
                         ids=[*READ_CALLS, *WRITE_CALLS])
def test_role_without_pyxp_roles_cannot_call_functions(
        login_role: Callable[..., str], connect_as: Callable[[str], psycopg.Connection[Any]],
        unchanged: Any, seeded: int, call: str) -> None:
    conn = connect_as(login_role())
    with unchanged():
        refused(conn, call)


def test_public_has_no_privilege_in_schema_pyxp(db: psycopg.Connection[Any]) -> None:
    """Catalog view of the same rule: no ACL entry of schema pyxp or its objects names PUBLIC."""
    # A NULL ACL means the defaults: nothing for PUBLIC on schemas and relations,
    # but EXECUTE for PUBLIC on functions.
    leaks = db.execute("""
        SELECT 'schema' FROM pg_namespace n
         WHERE n.nspname = 'pyxp' AND EXISTS (SELECT FROM aclexplode(n.nspacl) a WHERE a.grantee = 0)
        UNION ALL
        SELECT 'relation ' || c.relname FROM pg_class c
         WHERE c.relnamespace = 'pyxp'::regnamespace
           AND EXISTS (SELECT FROM aclexplode(c.relacl) a WHERE a.grantee = 0)
        UNION ALL
        SELECT 'function ' || p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'pyxp'::regnamespace
           AND (p.proacl IS NULL OR EXISTS (SELECT FROM aclexplode(p.proacl) a WHERE a.grantee = 0))
    """).fetchall()
    assert leaks == []


# --------------------------------------------------------------------------- append-only ledger


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "TRUNCATE"])
@pytest.mark.parametrize("as_role", ["superuser", "pyxp_owner"])
def test_append_only_trigger_refuses_changes_even_for_owner_and_superuser(
        conninfo: str, unchanged: Any, seeded: int, operation: str, as_role: str) -> None:
    """SPEC §4/§7: the ledger is append-only; the trigger's refusal is a PX error (PX013)."""
    statement = {
        "UPDATE": "UPDATE pyxp.xp_transactions SET xp_amount = xp_amount + 1",
        "DELETE": "DELETE FROM pyxp.xp_transactions",
        "TRUNCATE": "TRUNCATE pyxp.xp_transactions",
    }[operation]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if as_role == "pyxp_owner":
            conn.execute("SET ROLE pyxp_owner")
        with unchanged(), pytest.raises(errors.AppendOnlyLedger) as raised, errors.wrap_errors():
            conn.execute(statement)
    assert raised.value.hint


@pytest.mark.parametrize("statement", [
    "UPDATE pyxp.xp_transactions SET xp_amount = xp_amount + 1",
    "DELETE FROM pyxp.xp_transactions",
    "TRUNCATE pyxp.xp_transactions",
    "TRUNCATE pyxp.xp_transactions_default",
    "ALTER TABLE pyxp.xp_transactions DETACH PARTITION pyxp.xp_transactions_default",
])
def test_append_only_holds_under_session_replication_role_replica(
        conninfo: str, db: psycopg.Connection[Any], login_role: Callable[..., str],
        connect_as: Callable[[str], psycopg.Connection[Any]], unchanged: Any, seeded: int, statement: str) -> None:
    """A role granted SET on session_replication_role (PostgreSQL 15) skips ordinary triggers with
    'replica': a member of pyxp_owner deleted and updated ledger rows (0028, a hostile test). The
    ledger's triggers and the guard's event triggers are ENABLE ALWAYS."""
    role = login_role("pyxp_owner")
    grant = sql.SQL("{} SET ON PARAMETER session_replication_role {} {}")
    db.execute(grant.format(sql.SQL("GRANT"), sql.SQL("TO"), sql.Identifier(role)))
    try:  # a parameter's grant is the cluster's: DROP OWNED in the test database leaves it
        conn = connect_as(role)
        conn.execute("SET session_replication_role = replica")
        conn.execute("SET ROLE pyxp_owner")
        with unchanged(), pytest.raises(errors.AppendOnlyLedger), errors.wrap_errors():
            conn.execute(statement)
    finally:
        db.execute(grant.format(sql.SQL("REVOKE"), sql.SQL("FROM"), sql.Identifier(role)))


# --------------------------------------------------------------------------- search_path hijack

SHADOW_OBJECTS = """
CREATE TABLE {schema}.xp_transactions (
    id bigint GENERATED BY DEFAULT AS IDENTITY, user_wallet text, transaction_type text,
    xp_amount bigint, xp_requested bigint, balance_after bigint, rule_id bigint, campaign_id text,
    subject text, idempotency_key text, metadata jsonb, reverses bigint,
    created_at timestamptz DEFAULT now());
CREATE TABLE {schema}.xp_balances (
    user_wallet text PRIMARY KEY, total_xp bigint DEFAULT 0, current_level bigint DEFAULT 1,
    xp_to_next_level bigint DEFAULT 0, total_moderations bigint DEFAULT 0,
    created_at timestamptz DEFAULT now(), updated_at timestamptz DEFAULT now());
CREATE TABLE {schema}.xp_requests (
    idempotency_key text PRIMARY KEY, inputs jsonb, ruleset_id bigint, created_at timestamptz DEFAULT now());
CREATE FUNCTION {schema}.checked_wallet(p_wallet text, p_what text DEFAULT 'wallet') RETURNS text
    LANGUAGE sql AS $$ SELECT 'hijacked' $$;
CREATE FUNCTION {schema}.checked_identifier(p_what text, p_value text, p_max integer DEFAULT 128)
    RETURNS text LANGUAGE sql AS $$ SELECT 'hijacked' $$;
CREATE FUNCTION {schema}.active_ruleset_id() RETURNS bigint LANGUAGE sql AS $$ SELECT -1::bigint $$;
CREATE FUNCTION {schema}.curve_position(p_ruleset_id bigint, p_total_xp bigint)
    RETURNS TABLE (level bigint, level_start_xp bigint, next_level_xp numeric)
    LANGUAGE sql AS $$ SELECT 999::bigint, 0::bigint, 1::numeric $$;
CREATE FUNCTION {schema}.evil_plus(bigint, bigint) RETURNS bigint
    LANGUAGE sql AS $$ SELECT $1 OPERATOR(pg_catalog.+) $2 OPERATOR(pg_catalog.+) 1000000 $$;
CREATE OPERATOR {schema}.+ (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = {schema}.evil_plus);
CREATE FUNCTION {schema}.evil_eq(text, text) RETURNS boolean
    LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR {schema}.= (LEFTARG = text, RIGHTARG = text, FUNCTION = {schema}.evil_eq);
CREATE TEMP TABLE xp_transactions (LIKE {schema}.xp_transactions);
CREATE TEMP TABLE xp_balances (LIKE {schema}.xp_balances);
"""


def test_callers_search_path_cannot_redirect_an_award(
        login_role: Callable[..., str], connect_as: Callable[[str], psycopg.Connection[Any]],
        db: psycopg.Connection[Any], seeded: int) -> None:
    """SPEC §7: shadow tables, functions and operators placed first in the caller's path are ignored."""
    role = login_role("pyxp_writer")
    shadow = f"shadow_{role}"
    db.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(sql.Identifier(shadow),
                                                                  sql.Identifier(role)))
    conn = connect_as(role)
    conn.execute(SHADOW_OBJECTS.format(schema=shadow))
    # pg_catalog listed after the shadow schema, so that the shadow operators win in this session.
    conn.execute(sql.SQL("SET search_path = {}, pg_catalog, pyxp, public").format(sql.Identifier(shadow)))
    assert conn.execute("SELECT checked_wallet('x'), 1::bigint + 1::bigint"
                        ).fetchone() == ("hijacked", 1000002)

    award = conn.execute(AWARD_CALL, ("0xAbCdEf0123456789aBcDeF0123456789AbCdEf01", "hijack-key")).fetchone()
    balance = conn.execute("SELECT total_xp, current_level FROM pyxp.balance(wallet => 'seeded')").fetchone()
    level = conn.execute("SELECT level, xp_to_next_level FROM pyxp.level_for(total_xp => 2)").fetchone()

    wallet = "0xabcdef0123456789abcdef0123456789abcdef01"  # the real checked_wallet lower-cases it
    assert award is not None
    assert award[1:9] == (wallet, "CAMPAIGN_APPROVED", 100, None, 100, 2, 150, 1)
    assert balance == (100, 2)
    assert level == (1, 98)
    assert db.execute("SELECT user_wallet, xp_amount, balance_after, idempotency_key "
                      "FROM pyxp.xp_transactions WHERE id = %s", (award[0],)).fetchone() == (wallet, 100, 100, "hijack-key")
    assert db.execute("SELECT total_xp, current_level, xp_to_next_level FROM pyxp.xp_balances "
                      "WHERE user_wallet = %s", (wallet,)).fetchone() == (100, 2, 150)
    for table in ("xp_transactions", "xp_balances", "xp_requests"):
        assert db.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(shadow, table))
                          ).fetchone() == (0,)
    for table in ("xp_transactions", "xp_balances"):
        assert conn.execute(sql.SQL("SELECT count(*) FROM pg_temp.{}").format(sql.Identifier(table))
                            ).fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM pyxp.audit()").fetchone() == (0,)


# --------------------------------------------------------------------------- roles on re-install


def test_installing_into_another_database_with_existing_roles_is_safe(
        db: psycopg.Connection[Any], fresh_database: Callable[[], str],
        login_role: Callable[..., str], connect_as: Callable[..., psycopg.Connection[Any]]) -> None:
    """Roles are cluster-wide: a second database's upgrade finds them and reuses them."""
    before = db.execute("SELECT rolname, oid, rolcanlogin FROM pg_roles WHERE rolname LIKE 'pyxp\\_%' "
                        "ORDER BY rolname").fetchall()
    assert [name for name, _, _ in before] == ["pyxp_owner", "pyxp_reader", "pyxp_writer"]

    other = fresh_database()
    schema.upgrade(other)

    after = db.execute("SELECT rolname, oid, rolcanlogin FROM pg_roles WHERE rolname LIKE 'pyxp\\_%' "
                       "ORDER BY rolname").fetchall()
    assert after == before
    # The grants of the second database work for an application role too.
    role = login_role("pyxp_writer")
    conn = connect_as(role, psycopg.conninfo.conninfo_to_dict(other)["dbname"])
    row = conn.execute(AWARD_CALL, ("second-db-wallet", "second-db-key")).fetchone()
    assert row is not None and row[3] == 100
    refused(conn, "SELECT * FROM pyxp.xp_transactions")
    conn.close()


def test_upgrading_again_keeps_roles_and_privileges(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """Re-running the migration at head (roles present) is a no-op, not an error."""
    def privileges() -> list[Any]:
        return db.execute("""SELECT c.relname, c.relacl::text FROM pg_class c
                              WHERE c.relnamespace = 'pyxp'::regnamespace ORDER BY 1""").fetchall()

    before = privileges()
    assert schema.upgrade(conninfo).installed is None
    assert privileges() == before


# --------------------------------------------------------------------------- temp-table hijack (award_many)

BATCH_TABLE_TRAP = """
CREATE TEMP TABLE pyxp_batch (
    event_index integer, wallet text, action text, key text, rule_id bigint, amount numeric,
    campaign_id text, subject text, metadata jsonb, inputs jsonb, claimed boolean,
    first_index integer, applied numeric, balance_after numeric);
GRANT ALL ON pg_temp.pyxp_batch TO PUBLIC;
CREATE FUNCTION pg_temp.trap() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    BEGIN  -- succeeds only when the trigger runs with the owner's rights
        INSERT INTO pyxp.campaigns (campaign_id, campaign_type, creator_wallet)
        VALUES ('pwned-by-' || current_user, 'B2C', 'attacker') ON CONFLICT DO NOTHING;
    EXCEPTION WHEN insufficient_privilege THEN
        NULL;
    END;
    RETURN NEW;
END $$;
CREATE TRIGGER trap BEFORE INSERT OR UPDATE ON pg_temp.pyxp_batch
    FOR EACH ROW EXECUTE FUNCTION pg_temp.trap();
"""


def test_writer_cannot_plant_a_temp_table_that_a_definer_function_then_uses(
        login_role: Callable[..., str], connect_as: Callable[[str], psycopg.Connection[Any]],
        db: psycopg.Connection[Any]) -> None:
    """SPEC §7: what a function touches cannot be redirected by the caller — pg_temp included.

    A writer creates, in its own session, a temp table with the name of
    award_many's working table and a trigger on it. If the SECURITY DEFINER
    function reuses that table, the caller's trigger runs with pyxp_owner's
    rights and can write any pyxp table (here: a marker campaign).
    """
    conn = connect_as(login_role("pyxp_writer"))
    conn.execute(BATCH_TABLE_TRAP)
    try:
        conn.execute("SELECT * FROM pyxp.award_many(events => %s::jsonb)",
                     ('[{"wallet": "0x_batch", "action": "MODERATION_VALIDATED_BY_MODERATOR", '
                      '"idempotency_key": "trap-key"}]',)).fetchall()
    except psycopg.Error:
        pass  # refusing the call is fine too; running the caller's trigger as the owner is not
    assert db.execute("SELECT campaign_id FROM pyxp.campaigns").fetchall() == []
    assert db.execute("SELECT count(*) FROM pyxp.audit()").fetchone() == (0,)
