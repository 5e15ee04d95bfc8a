"""What DBAs run on a live ledger (a hostile test of table maintenance under load, 0034).

pg_repack of a ledger partition while awards ran made the change feed skip committed rows for
good, and audits report balances that did not match on a sound ledger: a read that waited for the
rewrite's lock read the new file with an older snapshot, which does not see the rows pg_repack wrote
again in its own transactions. Such a read is now refused with 40001 (run it again): what is tested
here with CLUSTER, which gives a table a new file as pg_repack's swap does, in a transaction the test
holds (CLUSTER keeps each row's xmin, so only the refusal tells; h43's pg_repack runs showed the rows
missing). A TRUNCATE by mistake of pyxp's other
tables let keys be paid again; a column an application added to the ledger stopped the feed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from conftest import called_behind_holder, settled
from test_partitions import this_month

from pyxp import XP

APPROVED = "CAMPAIGN_APPROVED"
READS = {
    "changes": "SELECT count(*) FROM pyxp.changes(0, 1000)",
    "changes of a wallet": "SELECT count(*) FROM pyxp.changes(0, 1000, '0xm1')",
    "history": "SELECT count(*) FROM pyxp.history('0xm1', 100)",
    "audit": "SELECT count(*) FROM pyxp.audit()",
}


@pytest.mark.parametrize(("rewritten", "read"), [*(("ledger partition", read) for read in READS),
                                                ("balances", "audit")])
def test_a_read_older_than_a_rewrite_of_a_table_it_reads_is_refused(xp: XP, conninfo: str,
                                                                    db: psycopg.Connection[Any],
                                                                    read: str, rewritten: str) -> None:
    for n in range(5):
        xp.award(f"0xm{n % 2}", APPROVED, f"m{n}")
    if rewritten == "balances":
        table, index = "xp_balances", "xp_balances_pkey"
    else:
        table = f"xp_transactions_{this_month()}"
        index = db.execute("SELECT i.indexrelid::regclass::text FROM pg_index i WHERE i.indrelid = %s::regclass "
                           "AND i.indisprimary", (f"pyxp.{table}",)).fetchone()[0].removeprefix("pyxp.")
    # The read starts (its snapshot taken) while CLUSTER holds the table, and reads it after the commit.
    got = called_behind_holder(conninfo, db, f"CLUSTER pyxp.{table} USING {index}",
                               lambda conn: conn.execute(READS[read]).fetchone()[0])
    assert got == {"sqlstate": "40001"}, got
    # Run again: a snapshot after the rewrite reads everything.
    expected = {"changes": 5, "changes of a wallet": 2, "history": 2, "audit": 0}[read]
    assert settled(lambda: db.execute(READS[read]).fetchone(), (expected,)) == (expected,)


def test_a_read_that_overlaps_no_rewrite_is_not_refused(xp: XP, conninfo: str, db: psycopg.Connection[Any]) -> None:
    """The same read, behind a lock that rewrites nothing (LOCK TABLE): it waits, then reads."""
    xp.award("0xm1", APPROVED, "m1")
    got = called_behind_holder(conninfo, db, f"LOCK TABLE pyxp.xp_transactions_{this_month()} IN ACCESS EXCLUSIVE MODE",
                               lambda conn: conn.execute(READS["changes"]).fetchone()[0])
    assert got == {"result": 1}


# --------------------------------------------------------------------------- TRUNCATE


def pyxp_tables(db: psycopg.Connection[Any]) -> list[str]:
    """Every table of schema pyxp but the ledger's (its own refusal: test_award, test_partitions)."""
    return [name for (name,) in db.execute("""
        SELECT c.relname FROM pg_class c
         WHERE c.relnamespace = 'pyxp'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
           AND c.relname NOT IN ('xp_transactions', 'alembic_version')
         ORDER BY 1""")]


def test_every_table_of_pyxp_refuses_truncate_even_under_replica_role(xp: XP, db: psycopg.Connection[Any],
                                                                     unchanged: Callable[[], Any]) -> None:
    """A TRUNCATE by mistake of xp_award_claims or xp_requests let the keys they held be paid again;
    of campaigns, an approval paid whichever wallet the caller named as creator, and audit() stayed
    clean; of xp_balances, every award failed with a raw 23502."""
    xp.award_campaign_creation("0x_creator", "camp_1", "B2C", mint_value=1000)
    xp.award("0xw", APPROVED, "k1")
    tables = pyxp_tables(db)
    assert {"xp_award_claims", "xp_requests", "campaigns", "xp_balances", "xp_ledger_forks"} <= set(tables)
    for name in tables:
        for statement in (f"TRUNCATE pyxp.{name}", f"TRUNCATE pyxp.{name} CASCADE"):
            with unchanged(), pytest.raises(psycopg.Error) as refused:
                db.execute(statement)
            if refused.value.sqlstate == "0A000" and not statement.endswith("CASCADE"):
                continue  # a table other tables reference: PostgreSQL refuses it first
            assert refused.value.sqlstate == "PX013", (name, str(refused.value))
            assert "TRUNCATE of pyxp." in str(refused.value) and "refused" in str(refused.value)
    with unchanged(), db.transaction(), pytest.raises(psycopg.Error, match="PX013|refused"):
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute("TRUNCATE pyxp.xp_award_claims, pyxp.xp_requests")
    assert xp.award("0xw", APPROVED, "k1").replayed  # the key still replays


def test_a_table_added_to_pyxp_gets_its_truncate_refusal(db: psycopg.Connection[Any]) -> None:
    """Every table has one, enabled ALWAYS: a table a later revision adds without one fails here."""
    missing = db.execute("""
        SELECT c.relname FROM pg_class c
         WHERE c.relnamespace = 'pyxp'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
           AND c.relname <> 'alembic_version'
           AND NOT EXISTS (SELECT FROM pg_trigger g WHERE g.tgrelid = c.oid AND (g.tgtype & 32) <> 0
                              AND g.tgenabled = 'A')""").fetchall()
    assert missing == []


# --------------------------------------------------------------------------- an application's column


def test_a_column_an_application_adds_to_the_ledger_stops_no_read(xp: XP, db: psycopg.Connection[Any]) -> None:
    """changes() read t.* in two branches of a UNION and named its columns in the third: every read
    of the feed failed (42601, each UNION query must have the same number of columns)."""
    xp.award("0xa", APPROVED, "before")
    db.execute("ALTER TABLE pyxp.xp_transactions ADD COLUMN app_note text")
    db.execute("CREATE INDEX ON pyxp.xp_transactions (app_note)")
    xp.award("0xa", APPROVED, "after")
    # (settled: a transaction of the other test worker can hold a page of the feed back a moment)
    assert settled(lambda: [c.xp_amount for c in xp.changes()], [100, 100]) == [100, 100]
    assert settled(lambda: [c.xp_amount for c in xp.changes(wallet="0xa")], [100, 100]) == [100, 100]
    assert len(xp.history("0xa")) == 2
    assert xp.audit() == []
    assert xp.record_audit_checkpoint().wallets_verified == 1
