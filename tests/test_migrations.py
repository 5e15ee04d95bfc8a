"""Alembic migrations (SPEC §9 ``pyxp db upgrade / downgrade / current``).

Each test that needs an empty database creates its own (unique name, same
server as the ``conninfo`` fixture) and drops it at the end. The schema built
by the migrations must be the one the readable ``sql/*.sql`` files build.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import balance_updates, database_state, install_variant, naive_period_ranks
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


def test_every_revision_from_0036_names_itself_in_its_functions(fresh_database: Callable[[], str]) -> None:
    """pyxp.schema_revision() is the revision of the functions (a logical replication copies
    pyxp.alembic_version, not them): a new revision that forgets to replace it fails here, and so
    does a downgrade that forgets to put the previous number back."""
    target = fresh_database()
    later = [r for r in schema.own_revisions() if r >= schema.FIRST_MARKED_REVISION]
    for revision in later:
        schema.upgrade(target, revision)
        with psycopg.connect(target) as conn:
            assert conn.execute("SELECT pyxp.schema_revision()").fetchone() == (revision,)
    for revision in reversed(later[:-1]):
        schema.downgrade(target, revision)
        with psycopg.connect(target) as conn:
            assert conn.execute("SELECT pyxp.schema_revision()").fetchone() == (revision,)


# --------------------------------------------------------------------------- up, down, up


def test_upgrade_activates_the_default_ruleset_on_an_empty_database(
        fresh_database: Callable[[], str]) -> None:
    """SPEC §9: ``db upgrade`` migrates to head and activates the default ruleset if none is active."""
    target = fresh_database()
    installed = schema.upgrade(target).installed
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

    installed = schema.upgrade(target).installed
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

    assert schema.upgrade(conninfo).installed is None

    assert database_state(db) == before
    assert db.execute("SELECT * FROM pyxp.xp_transactions ORDER BY id").fetchall() == ledger
    assert db.execute(rulesets_query).fetchall() == rulesets
    assert schema.current_revision(conninfo) == schema.head_revision()


def test_upgrade_leaves_an_already_active_ruleset_alone(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """A database whose operator switched to winstory-flows stays on it after an upgrade."""
    schema.apply_ruleset(conninfo, "winstory-flows")
    assert schema.upgrade(conninfo).installed is None
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


def test_the_last_downgrade_gives_back_the_previous_revisions_schema(fresh_database: Callable[[], str]) -> None:
    """A downgrade restores what the revision before built, function bodies included (pg_dump):
    0021's first downgrade file restored an intermediate version of pyxp.append_rows, which ran,
    so only a comparison with a database built at the previous revision could catch it."""
    revisions = schema.own_revisions()
    previous = revisions[-2]
    assert revisions[-1] == schema.head_revision()
    downgraded = fresh_database()
    schema.upgrade(downgraded, activate_default=False)
    schema.downgrade(downgraded, previous)
    built = fresh_database()
    schema.upgrade(built, previous, activate_default=False)
    expected, got = schema_dump(built), schema_dump(downgraded)
    diff = list(difflib.unified_diff(expected, got, f"upgrade to {previous}", f"head downgraded to {previous}",
                                     lineterm="", n=1))
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
    assert schema.upgrade(target, activate_default=False).installed is None
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


# --------------------------------------------------------------------------- 0005 carries the ledger

CALLS_0003 = {
    "award": "SELECT * FROM pyxp.award(wallet => %(wallet)s, action => %(action)s, idempotency_key => %(key)s, "
             "params => %(params)s, context => %(context)s)",
    "award_many": "SELECT * FROM pyxp.award_many(events => %(events)s)",
    "creation": "SELECT * FROM pyxp.award_campaign_creation(creator_wallet => %(wallet)s, campaign_id => %(campaign)s, "
                "campaign_type => %(type)s, mint_value => %(mint)s, winstory_creates_video => %(video)s)",
    "approval": "SELECT * FROM pyxp.award_campaign_approval(campaign_id => %(campaign)s)",
    "vote": "SELECT * FROM pyxp.award_moderation_vote(moderator_wallet => %(wallet)s, campaign_id => %(campaign)s, "
            "vote_decision => %(vote)s)",
    "completion": "SELECT * FROM pyxp.award_completion(completer_wallet => %(wallet)s, campaign_id => %(campaign)s, "
                  "completion_id => %(completion)s, is_validated => %(validated)s, is_refused => %(refused)s, "
                  "is_paid => %(paid)s, price_completion => %(price)s, mint_value_winc => %(mint)s)",
    "completion_vote": "SELECT * FROM pyxp.award_completion_moderation(moderator_wallet => %(wallet)s, "
                       "campaign_id => %(campaign)s, completion_id => %(completion)s, vote_decision => %(vote)s)",
    "register": "SELECT * FROM pyxp.register_agency_client(agency_wallet => %(wallet)s, client_email => %(email)s, "
                "campaign_id => %(campaign)s)",
    "onboard": "SELECT * FROM pyxp.onboard_agency_client(client_email => %(email)s, client_wallet => %(wallet)s)",
    "reverse": "SELECT * FROM pyxp.reverse_transaction(transaction_id => %(id)s, reason => %(reason)s)",
}


def _ledger_calls() -> list[tuple[str, dict[str, Any]]]:
    """Every kind of call, enough for 10k ledger rows: generic awards with and without formula inputs
    (300.0: a number with a trailing zero) and context, batches with a repeated key, every flow, a
    creation that writes no row (INDIVIDUAL), an agency's client, reversals."""
    from psycopg.types.json import Jsonb
    calls: list[tuple[str, dict[str, Any]]] = []
    for b in range(95):
        events = [{"wallet": f"0xbatch{(b * 100 + i) % 700}", "action": "MODERATION_VALIDATED_BY_MODERATOR",
                   "idempotency_key": f"batch:{b}:{i}"} for i in range(99)]
        events.append(dict(events[0]))  # the same key twice in one batch
        calls.append(("award_many", {"events": Jsonb(events)}))
    for i in range(150):
        calls.append(("award", {"wallet": f"0xsingle{i % 40}", "action": "Completion_Submit_B2C_Paid",
                                "key": f"single:{i}", "params": Jsonb({"PRICE_COMPLETION": 300.0 if i % 2 else 250}),
                                "context": Jsonb({"campaign_id": f"ctx{i % 5}", "note": "manual"})}))
        calls.append(("award", {"wallet": f"0xsingle{i % 40}", "action": "CAMPAIGN_APPROVED",
                                "key": f"plain:{i}", "params": Jsonb({}), "context": Jsonb({})}))
    for c in range(40):
        campaign = f"camp{c}"
        calls.append(("creation", {"wallet": f"0xcreator{c % 9}", "campaign": campaign,
                                   "type": "INDIVIDUAL" if c % 10 == 0 else "B2C", "mint": None,
                                   "video": c % 3 == 0}))
        calls.append(("approval", {"campaign": campaign}))
        for m in range(4):
            calls.append(("vote", {"wallet": f"0xmod{m}", "campaign": campaign, "vote": "VALID" if m % 3 else "REFUSE"}))
        for k in range(3):
            completion = f"cpl{c}:{k}"
            individual = c % 10 == 0
            calls.append(("completion", {"wallet": f"0xcompleter{k}", "campaign": campaign, "completion": completion,
                                         "validated": False, "refused": False, "paid": not individual and k == 1,
                                         "price": 120 if not individual and k == 1 else None,
                                         "mint": 2000 if individual else None}))
            calls.append(("completion_vote", {"wallet": "0xmod1", "campaign": campaign, "completion": completion,
                                              "vote": "VALID"}))
            calls.append(("completion", {"wallet": f"0xcompleter{k}", "campaign": campaign, "completion": completion,
                                         "validated": k != 2, "refused": k == 2, "paid": False, "price": None,
                                         "mint": 2000 if individual and k == 2 else None}))
    calls.append(("creation", {"wallet": "0xagency", "campaign": "agency-camp", "type": "AGENCY_B2C", "mint": None,
                               "video": False}))
    for e in range(10):
        calls.append(("register", {"wallet": "0xagency", "email": f"client{e}@example.com", "campaign": "agency-camp"}))
        calls.append(("onboard", {"email": f"client{e}@example.com", "wallet": f"0xclient{e}"}))
    return calls


def _run(conn: psycopg.Connection[Any], kind: str, args: dict[str, Any]) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(CALLS_0003[kind], args).fetchall()


def _every_kind_of_call(conn: psycopg.Connection[Any]) -> list[tuple[str, dict[str, Any], list[Any]]]:
    """Runs every call of _ledger_calls() and a reversal of row 5: (kind, args, first result) each."""
    done = [(kind, args, _run(conn, kind, args)) for kind, args in _ledger_calls()]
    reversal = {"id": 5, "reason": "migration test"}
    return [*done, ("reverse", reversal, _run(conn, "reverse", reversal))]


def _replays_everything(conn: psycopg.Connection[Any], done: list[tuple[str, dict[str, Any], list[Any]]]) -> None:
    for kind, args, first in done:
        again = _run(conn, kind, args)
        if kind == "register":  # the same registration (granted since, by its onboarding)
            assert [r["id"] for r in again] == [r["id"] for r in first]
            continue
        assert [(r["transaction_id"], r["user_wallet"], r["xp_amount"], r["total_xp"]) for r in again] == \
            [(r["transaction_id"], r["user_wallet"], r["xp_amount"], r["total_xp"]) for r in first], (kind, args)
        assert all(r["replayed"] for r in again), (kind, args)


def test_0005_carries_a_ledger_of_every_kind_and_every_key_replays(fresh_database: Callable[[], str]) -> None:
    """Issue 11: 0005 moves the generic awards' claims into their ledger rows. On a 0004 ledger of
    10k rows of every kind, after the upgrade: audit() is clean, every call replays its rows,
    another input under a generic key is PX010, new awards go on; a downgrade to 0004 puts the
    requests back (audit clean, every call still replays) and the upgrade again too."""
    from psycopg.types.json import Jsonb
    target = fresh_database()
    schema.upgrade(target, "0004")
    done: list[tuple[str, dict[str, Any], list[Any]]] = []
    with psycopg.connect(target, autocommit=True) as conn:
        done.extend(_every_kind_of_call(conn))
        rows = conn.execute("SELECT count(*) FROM pyxp.xp_transactions").fetchone()[0]
        kinds = {r[0] for r in conn.execute("SELECT DISTINCT split_part(idempotency_key, ':', 1) FROM pyxp.xp_transactions")}
        generic = conn.execute("SELECT count(*) FROM pyxp.xp_requests WHERE inputs ? 'action'").fetchone()[0]
    assert rows >= 10_000
    assert {"batch", "single", "plain", "campaign.created", "campaign.approved", "campaign.vote",
            "completion.submitted", "completion.outcome", "completion.vote", "client.onboarded", "reverse"} <= kinds

    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        # The generic awards' requests became their rows' claims; flows and reversals keep theirs.
        assert conn.execute("SELECT count(*) FROM pyxp.xp_requests WHERE inputs ? 'action'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pyxp.xp_transactions WHERE request_digest IS NOT NULL"
                            ).fetchone() == (generic,)
        assert conn.execute("SELECT count(*) FROM pyxp.xp_transactions").fetchone() == (rows,)
        _replays_everything(conn, done)
        with pytest.raises(psycopg.Error) as refused:
            _run(conn, "award", {"wallet": "0xsingle1", "action": "Completion_Submit_B2C_Paid", "key": "single:1",
                                 "params": Jsonb({"PRICE_COMPLETION": 301}), "context": Jsonb({})})
        assert refused.value.sqlstate == "PX010"
        assert "PRICE_COMPLETION" in (refused.value.diag.message_detail or "")
        after = _run(conn, "award", {"wallet": "0xsingle1", "action": "CAMPAIGN_APPROVED", "key": "after:0005",
                                     "params": Jsonb({}), "context": Jsonb({})})
        assert [(r["xp_amount"], r["replayed"]) for r in after] == [(100, False)]
        done.append(("award", {"wallet": "0xsingle1", "action": "CAMPAIGN_APPROVED", "key": "after:0005",
                               "params": Jsonb({}), "context": Jsonb({})}, after))

    schema.downgrade(target, "0004")
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        assert conn.execute("SELECT count(*) FROM pyxp.xp_requests WHERE inputs ? 'action'").fetchone() == (generic + 1,)
        _replays_everything(conn, done)
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        _replays_everything(conn, done)


def test_0006_fills_the_period_columns_from_an_existing_ledger(fresh_database: Callable[[], str]) -> None:
    """Issue 13: 0006 derives each balance's latest periods from the ledger (rows spread over a year,
    reversals included); audit() is clean, the period boards equal the ledger's sums, every call
    replays. The downgrade is refused while the active ruleset has caps, and works without them."""
    from conftest import install_variant
    target = fresh_database()
    schema.upgrade(target, "0005")
    done: list[tuple[str, dict[str, Any], list[Any]]] = []
    with psycopg.connect(target, autocommit=True) as conn:
        calls = _ledger_calls()
        for kind, args in calls[:20] + calls[95:]:  # 20 batches, then every other kind
            done.append((kind, args, _run(conn, kind, args)))
        for reversed_id in (5, 2500, 2600):
            args = {"id": reversed_id, "reason": "0006"}
            done.append(("reverse", args, _run(conn, "reverse", args)))
        with conn.transaction():  # a year of history: row n moved back n hours (owner's operation)
            conn.execute("ALTER TABLE pyxp.xp_transactions DISABLE TRIGGER xp_transactions_append_only")
            conn.execute("UPDATE pyxp.xp_transactions SET created_at = created_at - (4000 - id) * interval '2 hours' "
                         "WHERE id < 4000")
            conn.execute("ALTER TABLE pyxp.xp_transactions ENABLE TRIGGER xp_transactions_append_only")

    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        assert conn.execute("SELECT count(*) FROM pyxp.xp_balances WHERE year_start IS NULL").fetchone() == (0,)
        for kind in ("day", "week", "month", "year"):
            for at in ("now()", "now() - interval '100 days'", "now() - interval '300 days'"):
                board = conn.execute(f"SELECT user_wallet, period_xp FROM pyxp.leaderboard(1000, 0, %s, {at})",
                                     (kind,)).fetchall()
                ledger = conn.execute(
                    f"SELECT t.user_wallet, t.period_xp FROM pyxp.period_bounds(%s, {at}, 'UTC') b "
                    "CROSS JOIN LATERAL pyxp.ledger_period_totals(b.period_start, b.period_end) t "
                    "ORDER BY t.period_xp DESC, t.user_wallet LIMIT 1000", (kind,)).fetchall()
                assert board == ledger and (kind != "year" or board), (kind, at)
        _replays_everything(conn, done)

        install_variant(conn, "capped", caps={"CAMPAIGN_APPROVED": (150, "week", None)})
    schema.downgrade(target, "0006")
    with pytest.raises(psycopg.Error) as refused:
        schema.downgrade(target, "0005")
    assert refused.value.sqlstate == "PX024" and "capped v1" in str(refused.value)
    assert schema.current_revision(target) == "0006"

    schema.apply_ruleset(target, "winstory")
    schema.downgrade(target, "0005")
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        _replays_everything(conn, done)
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        # The capped ruleset went down to 0005 and back: its rules lost their caps, its definition
        # kept them. 0029 keeps the digest of such a ruleset's tables, and the audit compares with it.
        listed = conn.execute("SELECT r.name FROM pyxp.xp_rulesets_as_installed k "
                              "JOIN pyxp.rulesets r USING (ruleset_id)").fetchall()
        assert listed == [("capped",)]
        conn.execute("UPDATE pyxp.rules SET xp_constant = 1000 WHERE action = 'CAMPAIGN_APPROVED' "
                     "AND ruleset_id = (SELECT ruleset_id FROM pyxp.rulesets WHERE name = 'capped')")
        found = conn.execute("SELECT check_name, detail FROM pyxp.audit()").fetchall()
        assert len(found) == 1 and found[0][0] == "ruleset_mismatch" and "at 0029" in found[0][1], found


def test_0008_numbers_an_existing_ledger_and_every_key_still_replays(fresh_database: Callable[[], str]) -> None:
    """Issue 15: 0008 gives every row its position in its wallet's history. On a 0007 ledger of
    10k rows of every kind: each wallet's rows are numbered 1..n in id order, each balance holds
    its last number, audit() is clean, every call replays; a checkpoint then verifies the whole
    ledger; the downgrade to 0007 and the upgrade again keep all of that."""
    target = fresh_database()
    schema.upgrade(target, "0007")
    done: list[tuple[str, dict[str, Any], list[Any]]] = []
    with psycopg.connect(target, autocommit=True) as conn:
        done.extend(_every_kind_of_call(conn))
        rows = conn.execute("SELECT count(*) FROM pyxp.xp_transactions").fetchone()[0]
    assert rows >= 10_000

    numbered = """SELECT count(*) FROM (SELECT wallet_seq, row_number() OVER (PARTITION BY user_wallet ORDER BY id) AS n
                                         FROM pyxp.xp_transactions) x WHERE wallet_seq = n"""
    last = """SELECT count(*) FROM pyxp.xp_balances b
               WHERE b.last_wallet_seq = (SELECT count(*) FROM pyxp.xp_transactions t WHERE t.user_wallet = b.user_wallet)"""
    for step in ("upgrade", "downgrade", "upgrade"):
        if step == "upgrade":
            schema.upgrade(target)
        else:
            schema.downgrade(target, "0007")
        with psycopg.connect(target, autocommit=True) as conn:
            assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
            _replays_everything(conn, done)
            if step == "upgrade":
                assert conn.execute(numbered).fetchone() == (rows,)
                assert conn.execute(last).fetchone() == conn.execute("SELECT count(*) FROM pyxp.xp_balances").fetchone()
                checkpoint = conn.execute("SELECT rows_verified FROM pyxp.record_audit_checkpoint()").fetchone()
                assert checkpoint == (rows,)
                assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_0009_cuts_the_rank_buckets_of_an_existing_board(fresh_database: Callable[[], str]) -> None:
    """Issue 11: 0009 counts the balances already present into rank buckets. On a 0008 ledger of
    10k rows of every kind: after the upgrade every rank equals a plain count (ties by wallet,
    byte by byte), the counts hold every balance, audit() is clean, every call replays, and new
    awards keep the counts; the downgrade to 0008 and the upgrade again keep all of that."""
    target = fresh_database()
    schema.upgrade(target, "0008")
    done: list[tuple[str, dict[str, Any], list[Any]]] = []
    with psycopg.connect(target, autocommit=True) as conn:
        for kind, args in _ledger_calls():
            done.append((kind, args, _run(conn, kind, args)))
    naive = """SELECT b.user_wallet, row_number() OVER (ORDER BY b.total_xp DESC, b.user_wallet COLLATE "C")
                 FROM pyxp.xp_balances b"""
    ranks = "SELECT b.user_wallet, pyxp.wallet_rank(b.user_wallet) FROM pyxp.xp_balances b"
    for step in ("upgrade", "downgrade", "upgrade"):
        if step == "upgrade":
            schema.upgrade(target)
        else:
            schema.downgrade(target, "0008")
        with psycopg.connect(target, autocommit=True) as conn:
            assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
            _replays_everything(conn, done)
            assert dict(conn.execute(ranks).fetchall()) == dict(conn.execute(naive).fetchall())
            if step == "upgrade":
                assert conn.execute("SELECT sum(wallets) FROM pyxp.xp_rank_counts").fetchone() == \
                    conn.execute("SELECT count(*) FROM pyxp.xp_balances").fetchone()
                conn.execute("SELECT pyxp.rebalance_rank_buckets(16, true)")
                conn.execute("SELECT * FROM pyxp.award('0xbatch1', 'B2C_MINT', %s)", (f"after-0009:{len(done)}",))
                assert dict(conn.execute(ranks).fetchall()) == dict(conn.execute(naive).fetchall())
                assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_0011_compacts_the_requests_and_the_downgrade_gives_them_back(fresh_database: Callable[[], str]) -> None:
    """Issue 15: 0011 keeps of a flow's or reversal's request only its key's hash and its inputs'
    digest where its ledger rows rebuild the rest. On a 0009 ledger of 10k rows of every kind:
    after the upgrade only the requests without rows keep their key and inputs, audit() is clean,
    every call replays, another input under a flow's key is PX010 whose detail shows the first
    call's inputs as 0009 stored them; the downgrade to 0009 gives back every request exactly as
    0009 stored it, and the upgrade again keeps all of that."""
    target = fresh_database()
    schema.upgrade(target, "0009")
    done: list[tuple[str, dict[str, Any], list[Any]]] = []
    stored = "SELECT idempotency_key, inputs, ruleset_id, created_at FROM pyxp.xp_requests ORDER BY 1"
    with psycopg.connect(target, autocommit=True) as conn:
        done.extend(_every_kind_of_call(conn))
        requests_0009 = conn.execute(stored).fetchall()
        without_rows = {k for (k,) in conn.execute(
            "SELECT q.idempotency_key FROM pyxp.xp_requests q WHERE NOT EXISTS "
            "(SELECT FROM pyxp.xp_transactions t WHERE t.idempotency_key = q.idempotency_key)")}
        size_0009 = conn.execute("SELECT pg_relation_size('pyxp.xp_requests') + pg_relation_size('pyxp.xp_requests_pkey')"
                                 ).fetchone()[0]
    first_inputs = dict((key, inputs) for key, inputs, _, _ in requests_0009)
    assert len(requests_0009) > 400 and 0 < len(without_rows) < 20  # INDIVIDUAL creations, their votes
    conflict = {"wallet": "0xcompleter1", "campaign": "camp1", "completion": "cpl1:1", "validated": False,
                "refused": False, "paid": True, "price": 121, "mint": None}

    for step in ("upgrade", "downgrade", "upgrade"):
        if step == "upgrade":
            schema.upgrade(target)
        else:
            schema.downgrade(target, "0009")
        with psycopg.connect(target, autocommit=True) as conn:
            assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
            _replays_everything(conn, done)
            with pytest.raises(psycopg.Error) as refused:
                _run(conn, "completion", conflict)
            assert refused.value.sqlstate == "PX010"
            detail = refused.value.diag.message_detail or ""
            first = json.loads(detail.removeprefix("first call: ").split("; this call: ")[0])
            assert first == first_inputs["completion.submitted:cpl1:1"]
            if step == "upgrade":
                kept = {k for (k,) in conn.execute(
                    "SELECT idempotency_key FROM pyxp.xp_requests WHERE idempotency_key IS NOT NULL")}
                assert kept == without_rows
                assert conn.execute("SELECT count(*) FROM pyxp.xp_requests").fetchone() == (len(requests_0009),)
                size = conn.execute("SELECT pg_relation_size('pyxp.xp_requests') + pg_relation_size('pyxp.xp_requests_pkey')"
                                    ).fetchone()[0]
                assert size * 2 < size_0009, (size, size_0009, len(requests_0009))
                # The auditors' view lists every key, with its wallet and time as 0009 stored them.
                assert sorted(conn.execute(
                    "SELECT idempotency_key, created_at FROM pyxp.idempotency_keys WHERE claimed_in = 'xp_requests'"
                ).fetchall()) == [(k, at) for k, _, _, at in requests_0009]
            else:
                assert conn.execute(stored).fetchall() == requests_0009


def test_0010_carries_the_first_form_of_0009_to_the_reviewed_one(fresh_database: Callable[[], str]) -> None:
    """0009 landed first with writers counting in slot pg_backend_pid() % 8, and its file was
    edited afterwards. 0010 carries a database of the first form to the reviewed one: awards made
    at 0009 from several connections keep every rank exact and audit() clean after the upgrade;
    awards at head count in their backends' slots; the downgrade to 0009 folds those slots
    (0009's check allows 0..7) and keeps every rank exact."""
    target = fresh_database()
    schema.upgrade(target, "0009")
    naive = """SELECT b.user_wallet, row_number() OVER (ORDER BY b.total_xp DESC, b.user_wallet COLLATE "C")
                 FROM pyxp.xp_balances b"""
    ranks = "SELECT b.user_wallet, pyxp.wallet_rank(b.user_wallet) FROM pyxp.xp_balances b"

    def award_from_connections(prefix: str) -> None:
        for c in range(3):  # other backends, other slots
            with psycopg.connect(target, autocommit=True) as conn:
                for i in range(40):
                    conn.execute("SELECT * FROM pyxp.award(%s, 'CAMPAIGN_APPROVED', %s)",
                                 (f"0x{prefix}{(i * 7 + c) % 25}", f"{prefix}:{c}:{i}"))  # new wallets: counted

    award_from_connections("first")
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT max(slot) FROM pyxp.xp_rank_counts").fetchone()[0] <= 7
    for step in ("upgrade", "downgrade"):
        if step == "upgrade":
            schema.upgrade(target)
            award_from_connections("head")
        else:
            schema.downgrade(target, "0009")
        with psycopg.connect(target, autocommit=True) as conn:
            if step == "upgrade":
                assert conn.execute("SELECT max(slot) FROM pyxp.xp_rank_counts").fetchone()[0] > 7
            assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
            assert dict(conn.execute(ranks).fetchall()) == dict(conn.execute(naive).fetchall())


def test_0014_counts_the_period_boards_of_an_existing_ledger(fresh_database: Callable[[], str]) -> None:
    """0014 counts every balance on its latest periods' boards (one bucket per value); ranks read
    from the counts equal a plain count of each current board, audit() is clean, and awards after
    the upgrade keep it so. The downgrade drops the counts; the ranks, counted again, are the same."""
    target = fresh_database()
    schema.upgrade(target, "0013")
    with psycopg.connect(target, autocommit=True) as conn:
        for i in range(400):
            conn.execute("SELECT * FROM pyxp.award(%s, %s, %s)",
                         (f"0x{(i * 7) % 150}", ("CAMPAIGN_APPROVED", "MODERATION_REFUSED_BY_MODERATOR")[i % 3 == 0],
                          f"m14:{i}"))

    def board_ranks(conn: psycopg.Connection[Any], period: str) -> tuple[dict[str, int], dict[str, int]]:
        read = conn.execute("SELECT b.user_wallet, pyxp.wallet_rank(b.user_wallet, %s) FROM pyxp.xp_balances b",
                            (period,)).fetchall()
        return naive_period_ranks(conn, period), dict(read)

    with psycopg.connect(target, autocommit=True) as conn:
        before = {period: board_ranks(conn, period)[0] for period in ("day", "week", "month", "year")}
    for step in ("upgrade", "downgrade"):
        if step == "upgrade":
            schema.upgrade(target)
        else:
            schema.downgrade(target, "0013")
        with psycopg.connect(target, autocommit=True) as conn:
            counted = conn.execute("SELECT to_regclass('pyxp.xp_period_rank_counts') IS NOT NULL").fetchone()[0]
            assert counted == (step == "upgrade")
            if counted:
                assert conn.execute("SELECT sum(wallets) FROM pyxp.xp_period_rank_counts WHERE period = 'week'"
                                    ).fetchone() == (150,)
            for period, naive in before.items():
                assert board_ranks(conn, period) == (naive, naive)
            assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        for i in range(60):
            conn.execute("SELECT * FROM pyxp.award(%s, 'CAMPAIGN_APPROVED', %s)", (f"0x{i % 170}", f"after:{i}"))
        for period in ("day", "week", "month", "year"):
            naive, read = board_ranks(conn, period)
            assert read == naive
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_0015_partitions_a_ledger_of_every_kind_and_every_key_still_replays(fresh_database: Callable[[], str]) -> None:
    """Issue 15: 0015 makes a 0014 ledger of 10k rows of every kind (old rows among them) the
    partition of its months, copies its generic awards' claims, and creates the months ahead:
    audit() is clean, every call replays, another input under a generic key is PX010, a reversal
    is refused twice, new awards go to this month's partition, the identity goes on. The
    downgrade puts the rows back into one table (audit clean, every call replays) and the
    upgrade again too."""
    from psycopg.types.json import Jsonb
    target = fresh_database()
    schema.upgrade(target, "0014")
    done: list[tuple[str, dict[str, Any], list[Any]]] = []
    with psycopg.connect(target, autocommit=True) as conn:
        done.extend(_every_kind_of_call(conn))
        ledger = conn.execute("SELECT * FROM pyxp.xp_transactions ORDER BY id").fetchall()
        generic = conn.execute("SELECT count(*) FROM pyxp.xp_transactions WHERE request_digest IS NOT NULL").fetchone()[0]
        last_id = ledger[-1][0]
    assert len(ledger) >= 10_000 and generic >= 9_000

    def partitioned_and_sound(conn: psycopg.Connection[Any]) -> None:
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'pyxp.xp_transactions'::regclass").fetchone() == ("p",)
        assert conn.execute("SELECT * FROM pyxp.xp_transactions WHERE id <= %s ORDER BY id", (last_id,)).fetchall() == ledger
        assert conn.execute("SELECT count(*) FROM pyxp.xp_award_claims").fetchone()[0] >= generic
        _replays_everything(conn, done)

    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        partitions = conn.execute("SELECT partition_name FROM pyxp.ledger_partitions()").fetchall()
        assert partitions[0][0].startswith("xp_transactions_before_") and partitions[-1] == ("xp_transactions_default",)
        held = conn.execute("SELECT DISTINCT tableoid::regclass::text FROM pyxp.xp_transactions").fetchall()
        assert held == [(f"pyxp.{partitions[0][0]}",)]  # the old table: every row, unmoved
        assert conn.execute("SELECT count(*) FROM pyxp.xp_award_claims").fetchone() == (generic,)
        partitioned_and_sound(conn)
        with pytest.raises(psycopg.Error) as refused:
            _run(conn, "award", {"wallet": "0xsingle1", "action": "Completion_Submit_B2C_Paid", "key": "single:1",
                                 "params": Jsonb({"PRICE_COMPLETION": 301}), "context": Jsonb({})})
        assert refused.value.sqlstate == "PX010"
        with pytest.raises(psycopg.Error) as twice:
            _run(conn, "reverse", {"id": 5, "reason": "another reason"})
        assert twice.value.sqlstate == "PX014"
        after = _run(conn, "award", {"wallet": "0xsingle1", "action": "CAMPAIGN_APPROVED", "key": "after:0015",
                                     "params": Jsonb({}), "context": Jsonb({})})
        assert [(r["xp_amount"], r["replayed"]) for r in after] == [(100, False)]
        assert after[0]["transaction_id"] > last_id
        assert conn.execute("SELECT tableoid::regclass::text FROM pyxp.xp_transactions WHERE id = %s",
                            (after[0]["transaction_id"],)).fetchone()[0].startswith("pyxp.xp_transactions_")
        done.append(("award", {"wallet": "0xsingle1", "action": "CAMPAIGN_APPROVED", "key": "after:0015",
                               "params": Jsonb({}), "context": Jsonb({})}, after))
        with pytest.raises(psycopg.Error) as detach:
            conn.execute(f"ALTER TABLE pyxp.xp_transactions DETACH PARTITION pyxp.{partitions[0][0]}")
        assert detach.value.sqlstate == "PX013"

    schema.downgrade(target, "0014")
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'pyxp.xp_transactions'::regclass").fetchone() == ("r",)
        assert conn.execute("SELECT to_regclass('pyxp.xp_award_claims')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'pyxp%'").fetchone() == (0,)
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        _replays_everything(conn, done)
        again = _run(conn, "award", {"wallet": "0xsingle2", "action": "CAMPAIGN_APPROVED", "key": "after:downgrade",
                                     "params": Jsonb({}), "context": Jsonb({})})
        assert again[0]["transaction_id"] > after[0]["transaction_id"]
        done.append(("award", {"wallet": "0xsingle2", "action": "CAMPAIGN_APPROVED", "key": "after:downgrade",
                               "params": Jsonb({}), "context": Jsonb({})}, again))
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        partitioned_and_sound(conn)


def test_0016_archives_half_of_a_ledger_of_every_kind_and_every_key_stays_used(
        fresh_database: Callable[[], str]) -> None:
    """Issue 15 (retention): on a 0015 ledger of 10k rows of every kind, 0016 changes nothing a
    call sees (audit clean, every call replays; its downgrade too). Then the first half of each
    wallet's rows is moved to January 2025 and archived: audit() stays
    clean, every call whose rows stayed replays them, every call with an archived row is refused
    with PX029 (its key stays used), nothing written; the downgrade is then refused."""
    target = fresh_database()
    schema.upgrade(target, "0015")
    done: list[tuple[str, dict[str, Any], list[Any]]] = []
    with psycopg.connect(target, autocommit=True) as conn:
        done.extend(_every_kind_of_call(conn))
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        _replays_everything(conn, done)
    schema.downgrade(target, "0015")
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        rows = conn.execute("SELECT count(*) FROM pyxp.xp_transactions").fetchone()[0]
        old = {r[0] for r in conn.execute("""SELECT t.id FROM pyxp.xp_transactions t JOIN pyxp.xp_balances b USING (user_wallet)
                                              WHERE t.wallet_seq <= (b.last_wallet_seq + 1) / 2""")}
        half = len(old)
        with conn.transaction():
            conn.execute("ALTER TABLE pyxp.xp_transactions DISABLE TRIGGER xp_transactions_append_only")
            conn.execute("UPDATE pyxp.xp_transactions SET created_at = '2025-01-01'::timestamptz + id * interval '1 minute' "
                         "WHERE id = ANY (%s)", (list(old),))
            conn.execute("ALTER TABLE pyxp.xp_transactions ENABLE ALWAYS TRIGGER xp_transactions_append_only")
            conn.execute("UPDATE pyxp.xp_award_claims c SET created_at = t.created_at FROM pyxp.xp_transactions t "
                         "WHERE t.id = c.transaction_id")
            conn.execute("SELECT pyxp.rebuild_period_columns('UTC')")
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        moved = conn.execute("SELECT * FROM pyxp.archive_ledger_partitions(date_trunc('month', now(), 'UTC'))").fetchall()
        assert [m[4] for m in moved] == [half]
        assert conn.execute("SELECT count(*) FROM pyxp.xp_transactions").fetchone() == (rows - half,)
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        state = conn.execute("SELECT sum(total_xp), sum(last_wallet_seq), count(*) FROM pyxp.xp_balances").fetchone()
        archived_kinds: set[str] = set()
        kept_kinds: set[str] = set()
        for kind, args, first in done:
            if kind != "register" and any(r["transaction_id"] in old for r in first):
                with pytest.raises(psycopg.Error) as refused:
                    _run(conn, kind, args)
                assert refused.value.sqlstate == "PX029", (kind, args, str(refused.value))
                archived_kinds.add(kind)
            else:
                _replays_everything(conn, [(kind, args, first)])
                kept_kinds.add(kind)
        every = {"award_many", "award", "creation", "approval", "vote", "completion", "completion_vote", "onboard"}
        assert every <= archived_kinds and every - {"onboard"} <= kept_kinds, (archived_kinds, kept_kinds)
        assert conn.execute("SELECT sum(total_xp), sum(last_wallet_seq), count(*) FROM pyxp.xp_balances").fetchone() == state
        assert conn.execute("SELECT count(*) FROM pyxp.xp_transactions").fetchone() == (rows - half,)
    with pytest.raises(Exception, match="0016 cannot be downgraded"):
        schema.downgrade(target, "0015")
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pyxp.xp_ledger_archives").fetchone() == (1,)
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_0022_rewrites_existing_balances_with_room_for_a_recalculation(fresh_database: Callable[[], str]) -> None:
    """0022 gives xp_balances fillfactor 50 and rewrites it: the balances a 0021 ledger has keep
    their values, the table keeps no clustering mark, and the pages they are on have room for a
    HOT update of every row (a new curve's recalculation writes no index entry; at 0021, 3 % of
    these updates were HOT). The downgrade gives the table back its default fillfactor."""
    target = fresh_database()
    schema.upgrade(target, "0021")
    balances = "SELECT * FROM pyxp.xp_balances ORDER BY user_wallet"
    with psycopg.connect(target, autocommit=True) as conn:
        for start in range(0, 3000, 1000):
            events = [{"wallet": f"0x{n:040x}", "action": "CAMPAIGN_APPROVED", "idempotency_key": f"m22:{n}"}
                      for n in range(start, start + 1000)]
            conn.execute("SELECT count(*) FROM pyxp.award_many(%s::jsonb)", (json.dumps(events),))
        conn.execute("VACUUM pyxp.xp_balances")
        before = conn.execute(balances).fetchall()
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute(balances).fetchall() == before
        assert conn.execute("SELECT c.reloptions, i.indisclustered FROM pg_class c JOIN pg_index i "
                            "ON i.indrelid = c.oid AND i.indisprimary WHERE c.oid = 'pyxp.xp_balances'::regclass"
                            ).fetchone() == (["fillfactor=50"], False)
        with conn.transaction():
            updated_before, hot_before = balance_updates(conn)
            conn.execute("UPDATE pyxp.xp_balances SET xp_to_next_level = xp_to_next_level + 1")
            updated, hot = balance_updates(conn)
            assert (updated - updated_before, hot - hot_before) == (3000, 3000)
            raise psycopg.Rollback
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
    schema.downgrade(target, "0021")
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT reloptions FROM pg_class WHERE oid = 'pyxp.xp_balances'::regclass"
                            ).fetchone() == (None,)
        assert conn.execute(balances).fetchall() == before


def test_0025_counts_what_a_switch_made_before_it_left_uncounted(fresh_database: Callable[[], str]) -> None:
    """At 0024 a wallet used its 250-per-day allowance under UTC, then the rules moved to New York
    (whose day overlaps UTC's): the New York day's allowance started from nothing. 0025 counts the
    UTC gains in it: the next award is cut to 0, the audit is clean. The downgrade drops the seed."""
    target = fresh_database()
    schema.upgrade(target, "0024")
    with psycopg.connect(target, autocommit=True) as conn:
        install_variant(conn, "daily-utc", timezone="UTC", caps={"CAMPAIGN_APPROVED": (250, "day", None)})
        for i in range(3):
            conn.execute("SELECT * FROM pyxp.award('0xm25', 'CAMPAIGN_APPROVED', %s)", (f"m25:{i}",))
        install_variant(conn, "daily-ny", timezone="America/New_York",
                        caps={"CAMPAIGN_APPROVED": (250, "day", None)})
        usage = "SELECT sum(used_xp) FROM pyxp.xp_cap_usage"
        assert conn.execute(usage).fetchone() == (250,)  # the New York day has no row
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT used_xp, seeded_xp, seeded_per, seeded_zone FROM pyxp.xp_cap_usage "
                            "WHERE seeded_at IS NOT NULL").fetchall() == [(250, 250, "day", "America/New_York")]
        assert conn.execute("SELECT xp_amount, xp_requested FROM pyxp.award('0xm25', 'CAMPAIGN_APPROVED', 'm25:3')"
                            ).fetchone() == (0, 100)
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
    schema.downgrade(target, "0024")
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute(usage).fetchone() == (250,)  # 250 (UTC) + 0 (New York's own rows)
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_0031_numbers_the_gains_a_seed_made_before_it_counted(fresh_database: Callable[[], str]) -> None:
    """A seed made at 0030 counted the gains dated before its switch; 0031 counts gains by position
    (seeded_seq): the upgrade gives each seed the positions before the wallet's first row dated at
    or after its switch. The audit stays clean, a reversal frees the seed, and the downgrade drops
    the column."""
    target = fresh_database()
    schema.upgrade(target, "0030")
    with psycopg.connect(target, autocommit=True) as conn:
        install_variant(conn, "daily-utc", timezone="UTC", caps={"CAMPAIGN_APPROVED": (250, "day", None)})
        gains = [conn.execute("SELECT transaction_id FROM pyxp.award('0xm31', 'CAMPAIGN_APPROVED', %s)",
                              (f"m31:{i}",)).fetchone()[0] for i in range(2)]  # type: ignore[index]
        install_variant(conn, "daily-ny", timezone="America/New_York",
                        caps={"CAMPAIGN_APPROVED": (250, "day", None)})
        conn.execute("SELECT * FROM pyxp.award('0xm31', 'CAMPAIGN_APPROVED', 'm31:2')")  # 50, after the switch
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT used_xp, seeded_xp, seeded_seq FROM pyxp.xp_cap_usage "
                            "WHERE seeded_at IS NOT NULL").fetchall() == [(250, 200, 2)]
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        conn.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'mistake')", (gains[0],))
        assert conn.execute("SELECT used_xp, seeded_xp FROM pyxp.xp_cap_usage "
                            "WHERE seeded_at IS NOT NULL").fetchall() == [(150, 100)]
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
    schema.downgrade(target, "0030")
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'pyxp.xp_cap_usage'::regclass "
                            "AND attname = 'seeded_seq'").fetchone() == (0,)
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_0040_rebuilds_the_activation_history_from_the_rulesets(fresh_database: Callable[[], str]) -> None:
    """Before 0040 a ruleset kept its latest activation only. The upgrade writes one reconstructed
    activation per activated ruleset, in time order, the active one last, each naming the one before
    it; the audit is clean, the next activation follows the history, and the downgrade drops it."""
    target = fresh_database()
    schema.upgrade(target, "0039")
    with psycopg.connect(target, autocommit=True) as conn:
        for name in ("daily-a", "daily-b", "daily-c"):
            install_variant(conn, name, caps={"CAMPAIGN_APPROVED": (250, "day", None)})
        install_variant(conn, "daily-a", caps={"CAMPAIGN_APPROVED": (250, "day", None)})  # activated again
        install_variant(conn, "daily-d", caps={"CAMPAIGN_APPROVED": (100, "day", None)})
        conn.execute("SELECT * FROM pyxp.install_ruleset("
                     "(SELECT definition || '{\"name\": \"inactive\"}' FROM pyxp.rulesets WHERE is_active),"
                     " 'x', false)")
        # Before 0025 an activation was dated at its transaction's start: the active ruleset's time may
        # be older than another's (a hostile test); and one with no time at all (an edit).
        conn.execute("UPDATE pyxp.rulesets SET activated_at = activated_at - interval '1 day' WHERE is_active")
        conn.execute("UPDATE pyxp.rulesets SET activated_at = NULL WHERE name = 'daily-b'")
        expected = conn.execute("SELECT ruleset_id, activated_at FROM pyxp.rulesets WHERE activated_at IS NOT NULL"
                                " ORDER BY is_active, activated_at").fetchall()
        assert conn.execute("SELECT name FROM pyxp.rulesets WHERE is_active").fetchone() == ("daily-d",)
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        history = conn.execute("SELECT ruleset_id, activated_at, previous_ruleset_id, reconstructed"
                               " FROM pyxp.ruleset_activations ORDER BY activation_id").fetchall()
        assert history == [(ruleset, at, expected[i - 1][0] if i else None, True)
                           for i, (ruleset, at) in enumerate(expected)]
        assert len(history) == 4  # the default, a (its last activation only), c, d; not b (no time), "inactive"
        names = [conn.execute("SELECT name FROM pyxp.rulesets WHERE ruleset_id = %s", (ruleset,)).fetchone()
                 for ruleset, *_ in history]
        assert names == [("winstory",), ("daily-c",), ("daily-a",), ("daily-d",)]  # the active one last
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        # README's query: the active ruleset is the one in force now, though its time is older.
        assert conn.execute("SELECT r.name FROM pyxp.ruleset_activations a JOIN pyxp.rulesets r USING (ruleset_id)"
                            " WHERE a.activated_at <= now() ORDER BY a.activation_id DESC LIMIT 1"
                            ).fetchone() == ("daily-d",)
        install_variant(conn, "daily-b", caps={"CAMPAIGN_APPROVED": (250, "day", None)})
        assert conn.execute("SELECT previous_ruleset_id, reconstructed FROM pyxp.ruleset_activations"
                            " ORDER BY activation_id DESC LIMIT 1").fetchone() == (expected[-1][0], False)
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
    schema.downgrade(target, "0039")
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('pyxp.ruleset_activations')").fetchone() == (None,)
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        # 0039's activate_ruleset is back: one still writing the dropped table would fail only when
        # called (42P01), and the dump comparison checks the last downgrade only (helper-67).
        install_variant(conn, "daily-c", caps={"CAMPAIGN_APPROVED": (250, "day", None)})
        assert conn.execute("SELECT name FROM pyxp.rulesets WHERE is_active").fetchone() == ("daily-c",)
        conn.execute("UPDATE pyxp.rulesets SET activated_at = NULL WHERE is_active")  # (an edit)
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT ruleset_id, activated_at FROM pyxp.ruleset_activations"
                            " ORDER BY activation_id DESC LIMIT 1").fetchone() == conn.execute(
            "SELECT ruleset_id, created_at FROM pyxp.rulesets WHERE is_active").fetchone()
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_0028_finds_emails_a_c_locale_database_stored_before_it(fresh_database: Callable[..., str]) -> None:
    """In a database created with LOCALE 'C', lower() left ÉLODIE@… as Élodie@…; 0028 reads it
    élodie@…. A hostile test upgraded such a ledger: the registered client's sign-in found nothing,
    and an onboarded client signing in again was paid +1000 again. The flows now find what was
    stored before 0028 by the input's old reading, and by the stored forms that read as it now
    (listed by the migration), however the client spells it; audit() accepts either form."""
    target = fresh_database("TEMPLATE template0 LOCALE 'C'")
    onboard = "SELECT xp_amount, replayed FROM pyxp.onboard_agency_client(%s, %s)"
    schema.upgrade(target, "0027")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("SELECT * FROM pyxp.award_campaign_creation('0x_agency', 'camp_a', 'AGENCY_B2C')")
        for email in ("ÉLODIE@Exemple.FR", "Émile@Exemple.FR"):
            conn.execute("SELECT * FROM pyxp.register_agency_client('0x_agency', %s, 'camp_a')", (email,))
        assert conn.execute(onboard, ("Émile@Exemple.FR", "0x_emile")).fetchall() == [(1000, False)]
        stored = conn.execute("SELECT client_email FROM pyxp.agency_b2c_clients ORDER BY 1").fetchall()
        assert stored == [("Élodie@exemple.fr",), ("Émile@exemple.fr",)]  # 0027's reading here
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        # 0034 keeps the input's old reading for the registrations made before it, here (test_locales:
        # a database installed since has none).
        assert conn.execute("SELECT pyxp.emails_lowered_until() > max(created_at) FROM pyxp.agency_b2c_clients"
                            ).fetchone() == (True,)
        forms = conn.execute("SELECT client_email, stored_form FROM pyxp.xp_email_forms_before_0028 ORDER BY 1")
        assert forms.fetchall() == [("élodie@exemple.fr", "Élodie@exemple.fr"), ("émile@exemple.fr", "Émile@exemple.fr")]
        # Spelt otherwise than at the registration: found by the forms 0028 listed.
        assert conn.execute(onboard, ("élodie@exemple.fr", "0x_elodie")).fetchall() == [(1000, False)]
        assert conn.execute(onboard, ("ÉLODIE@Exemple.FR", "0x_elodie")).fetchall() == [(1000, True)]
        assert conn.execute(onboard, ("Émile@Exemple.FR", "0x_emile")).fetchall() == [(1000, True)]
        assert conn.execute(onboard, ("émile@exemple.fr", "0x_emile")).fetchall() == [(1000, True)]
        conn.execute("SELECT * FROM pyxp.award_campaign_creation('0x_agency', 'camp_b', 'AGENCY_B2C')")
        again = conn.execute("SELECT client_email, xp_granted FROM pyxp.register_agency_client("
                             "'0x_agency', 'Émile@Exemple.FR', 'camp_b')").fetchall()
        assert again == [("Émile@exemple.fr", True)]  # as its onboarding spelt it
        assert conn.execute("SELECT count(*) FROM pyxp.agency_b2c_clients WHERE NOT xp_granted").fetchone() == (0,)
        balances = conn.execute("SELECT user_wallet, total_xp FROM pyxp.xp_balances "
                                "WHERE user_wallet IN ('0x_elodie', '0x_emile') ORDER BY 1").fetchall()
        assert balances == [("0x_elodie", 1000), ("0x_emile", 1000)]
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []


# --------------------------------------------------------------------------- the migrating session (0029)

HIJACKS = ("CREATE FUNCTION public.convert_to(text, text) RETURNS bytea LANGUAGE plpgsql "
           "AS $$ BEGIN RAISE EXCEPTION 'public.convert_to ran'; END $$",
           "CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE plpgsql "
           "AS $$ BEGIN RAISE EXCEPTION 'public.format ran'; END $$")


def test_a_migration_runs_no_function_another_role_put_in_public(fresh_database: Callable[..., str]) -> None:
    """Functions in public whose signatures match the revisions' unqualified calls better than the
    built-ins (format's variadic, convert_to's name) ran as the migrating role (a hostile test:
    a role with CREATE on public became a superuser, and 0015's claims were rewritten so every
    old key paid again). The migrating session's search_path is pinned to pg_catalog; so is
    standard_conforming_strings (0015's bounds under off overlapped a partition)."""
    conninfo = fresh_database()
    schema.upgrade(conninfo, "0014")
    first = award(conninfo, "0x_w1", "k1")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for statement in HIJACKS:
            conn.execute(statement)
    schema.upgrade(psycopg.conninfo.make_conninfo(conninfo, options="-c standard_conforming_strings=off"))
    assert schema.current_revision(conninfo) == schema.head_revision()
    replay = award(conninfo, "0x_w1", "k1")
    assert replay[0] == first[0] and replay[-1] is True
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SELECT count(*) FROM pyxp.audit()").fetchone() == (0,)


def test_0045_finds_the_emails_stored_in_a_form_it_reads_otherwise(fresh_database: Callable[..., str]) -> None:
    """Up to 0044, J\u030cAN@… was stored lower-cased as j + U+030C and οδος@… kept its final sigma;
    0045 reads them ǰan@… (composed) and οδοσ@…. A registration pending at 0044 is found by a sign-in
    in either spelling after the upgrade, and paid once; a client onboarded at 0044 replays."""
    target = fresh_database()
    onboard = "SELECT xp_amount, replayed FROM pyxp.onboard_agency_client(%s, %s)"
    schema.upgrade(target, "0044")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("SELECT * FROM pyxp.award_campaign_creation('0x_agency', 'camp_a', 'AGENCY_B2C')")
        for email in ("J\u030cAN@EXAMPLE.COM", "οδος@χαρτης.gr", "plain@example.com", "ej\u030c@example.com"):
            conn.execute("SELECT * FROM pyxp.register_agency_client('0x_agency', %s, 'camp_a')", (email,))
        assert conn.execute(onboard, ("οδος@χαρτης.gr", "0x_odos")).fetchall() == [(1000, False)]
        # A registration a C-locale database stored before 0028 (É left upper-cased), with the form
        # 0028 recorded for it: 0045 records it again under the form it reads that email as.
        conn.execute("UPDATE pyxp.agency_b2c_clients SET client_email = 'Éj\u030c@example.com' "
                     "WHERE client_email = pyxp.checked_email('ej\u030c@example.com')")
        conn.execute("INSERT INTO pyxp.xp_email_forms_before_0028 VALUES ('éj\u030c@example.com', 'Éj\u030c@example.com')")
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        forms = conn.execute("SELECT client_email, stored_form FROM pyxp.xp_email_forms_before_0028 "
                             "ORDER BY client_email COLLATE \"C\"")
        assert forms.fetchall() == [("éj\u030c@example.com", "Éj\u030c@example.com"),
                                    ("é\u01f0@example.com", "Éj\u030c@example.com"),
                                    ("\u01f0an@example.com", "j\u030can@example.com"), ("οδοσ@χαρτησ.gr", "οδος@χαρτης.gr")]
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        assert conn.execute(onboard, ("\u01f0an@example.com", "0x_jan")).fetchall() == [(1000, False)]
        assert conn.execute(onboard, ("J\u030cAN@EXAMPLE.COM", "0x_jan")).fetchall() == [(1000, True)]
        assert conn.execute(onboard, ("ΟΔΟΣ@ΧΑΡΤΗΣ.GR", "0x_odos")).fetchall() == [(1000, True)]
        assert conn.execute(onboard, ("É\u01f0@EXAMPLE.COM", "0x_ej")).fetchall() == [(1000, False)]
        assert conn.execute("SELECT user_wallet, total_xp FROM pyxp.xp_balances WHERE user_wallet IN ('0x_jan', '0x_odos') "
                            "ORDER BY 1").fetchall() == [("0x_jan", 1000), ("0x_odos", 1000)]
        assert conn.execute("SELECT count(*) FROM pyxp.agency_b2c_clients WHERE NOT xp_granted").fetchone() == (1,)
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []

def _waiting(conn: psycopg.Connection[Any], locktype: str, process: subprocess.Popen[str]) -> None:
    """Until a lock of ``locktype`` is awaited in the database (or the process ended: a failure)."""
    for _ in range(1200):
        if conn.execute("SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                        "WHERE d.datname = current_database() AND l.locktype = %s AND NOT l.granted",
                        (locktype,)).fetchone() != (0,):
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no {locktype} lock awaited")


def test_two_upgrades_at_once_run_one_after_the_other(fresh_database: Callable[..., str]) -> None:
    """Two deploy pods upgrading one database at once: the second waits for the first (an advisory
    lock), then finds it at head (a hostile test: the second re-ran what the first had committed
    and failed with errors that depended on timing). The first is held in 0022 by a session
    holding the balances."""
    conninfo = fresh_database()
    schema.upgrade(conninfo, "0020")
    environment = {**os.environ, "PYXP_DATABASE_URL": conninfo}
    command = [str(Path(sys.executable).with_name("pyxp")), "db", "upgrade"]
    with psycopg.connect(conninfo) as holder:
        holder.execute("LOCK TABLE pyxp.xp_balances IN ACCESS EXCLUSIVE MODE")
        first = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with psycopg.connect(conninfo, autocommit=True) as watcher:
            _waiting(watcher, "relation", first)
            second = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
            _waiting(watcher, "advisory", second)
        holder.rollback()
        first_out, first_err = first.communicate(timeout=300)
        second_out, second_err = second.communicate(timeout=300)
    head = schema.head_revision()
    assert first.returncode == 0 and f"0020 -> {head}" in first_out, (first_out, first_err)
    assert second.returncode == 0 and f"already at revision {head}" in second_out, (second_out, second_err)
    assert "waiting for it" in second_err
