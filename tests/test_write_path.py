"""One write path (issue 11): every ledger row is written by pyxp.append_rows, and a generic award's
idempotency record is its own ledger row.

Checked on the installed schema (pg_proc), not on the files: what runs is what counts.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from conftest import called_behind_holder
from pyxp import XP


def function_bodies(db: psycopg.Connection[Any]) -> dict[str, str]:
    """Each function's source by name (overloads joined)."""
    bodies: dict[str, str] = {}
    for name, body in db.execute("SELECT p.proname, p.prosrc FROM pg_proc p "
                                 "WHERE p.pronamespace = 'pyxp'::regnamespace ORDER BY p.oid"):
        bodies[name] = bodies.get(name, "") + body
    return bodies


def test_one_function_inserts_ledger_rows_and_sets_balances(db: psycopg.Connection[Any]) -> None:
    bodies = function_bodies(db)
    inserts = {name for name, body in bodies.items()
               if re.search(r"INSERT\s+INTO\s+pyxp\.xp_transactions\b", body, re.IGNORECASE)}
    assert inserts == {"append_rows"}
    # Rows moved from one partition to another, unchanged: out of the default partition into their
    # month's (create_ledger_partitions, 0029), into it on a subscriber following its publisher's
    # archive (follow_replicated_archives, 0037). Neither writes a row the writer did not.
    moves = {name for name, body in bodies.items()
             if re.search(r"INSERT\s+INTO\s+pyxp\.(%I|xp_transactions_)", body, re.IGNORECASE)}
    assert moves == {"create_ledger_partitions", "follow_replicated_archives"}
    sets_total = {name for name, body in bodies.items()
                  if re.search(r"UPDATE\s+pyxp\.xp_balances[^;]*SET[^;]*total_xp\s*=", body, re.IGNORECASE | re.DOTALL)}
    assert sets_total == {"append_rows"}
    # recalculate_levels re-derives levels only, rebuild_period_columns the period columns (when
    # the timezone changes), rebalance_rank_buckets marks counted the balances it counts; no
    # other function updates a balance.
    updates = {name for name, body in bodies.items()
               if re.search(r"UPDATE\s+pyxp\.xp_balances", body, re.IGNORECASE)}
    assert updates == {"append_rows", "recalculate_levels", "rebuild_period_columns", "rebalance_rank_buckets"}
    # The rank buckets' counts: moved by the writer, folded and re-cut by the rebalance only.
    counts = {name for name, body in bodies.items()
              if re.search(r"(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+pyxp\.xp_rank_counts", body, re.IGNORECASE)}
    assert counts == {"append_rows", "rebalance_rank_buckets"}
    # Caps' usage (SPEC 12) is written by the writer, and by the activation that moves an
    # allowance's periods (another zone or per: it counts what the new period already used, 0025).
    usage = {name for name, body in bodies.items()
             if re.search(r"(INSERT\s+INTO|UPDATE)\s+pyxp\.xp_cap_usage", body, re.IGNORECASE)}
    assert usage == {"append_rows", "seed_cap_usage"}
    # Every writer goes through it.
    for writer in ("award", "award_many", "post_award", "reverse_transaction"):
        assert "append_rows" in bodies[writer], writer


def test_a_generic_award_is_its_own_idempotency_record(xp: XP, db: psycopg.Connection[Any]) -> None:
    first = xp.award("0xabc", "CAMPAIGN_APPROVED", "own-record")
    row = db.execute("SELECT request_digest, idempotency_key FROM pyxp.xp_transactions WHERE id = %s",
                     (first.rows[0].transaction_id,)).fetchone()
    assert row is not None and row[0] is not None and row[1] == "own-record"
    assert db.execute("SELECT count(*) FROM pyxp.xp_requests").fetchone() == (0,)
    assert db.execute("SELECT claimed_in, user_wallet, transaction_id FROM pyxp.idempotency_keys "
                      "WHERE idempotency_key = 'own-record'").fetchall() == [("ledger", "0xabc", first.rows[0].transaction_id)]
    again = xp.award("0xabc", "CAMPAIGN_APPROVED", "own-record")
    assert (again.rows[0].transaction_id, again.replayed) == (first.rows[0].transaction_id, True)


def test_a_flow_keeps_its_request(xp: XP, db: psycopg.Connection[Any]) -> None:
    xp.award_campaign_creation("0xcreator", "camp-1", "B2C")
    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions WHERE request_digest IS NOT NULL").fetchone() == (0,)
    assert db.execute("SELECT claimed_in FROM pyxp.idempotency_keys").fetchall() == [("xp_requests",)]


def test_the_conflict_detail_says_what_the_first_call_wrote(xp: XP) -> None:
    xp.award("0xabc", "Completion_Submit_B2C_Paid", "detail-key", params={"PRICE_COMPLETION": 300})
    with pytest.raises(Exception) as refused:
        xp.award("0xabc", "Completion_Submit_B2C_Paid", "detail-key", params={"PRICE_COMPLETION": 301})
    text = str(refused.value)
    assert "PX010" in text or "already used" in text
    assert '"PRICE_COMPLETION": 300' in text and '"PRICE_COMPLETION": 301' in text


@pytest.mark.parametrize("number", [300, 300.0, 300.00])
def test_a_number_with_trailing_zeros_is_the_same_input(xp: XP, number: float) -> None:
    first = xp.award("0xabc", "Completion_Submit_B2C_Paid", "zeros", params={"PRICE_COMPLETION": 300})
    again = xp.award("0xabc", "Completion_Submit_B2C_Paid", "zeros", params={"PRICE_COMPLETION": number})
    assert (again.rows[0].transaction_id, again.replayed) == (first.rows[0].transaction_id, True)


def test_audit_reports_a_row_whose_rule_or_request_is_gone(xp: XP, db: psycopg.Connection[Any]) -> None:
    """The foreign keys from xp_transactions to rules and xp_requests are audit checks now."""
    generic = xp.award("0xabc", "CAMPAIGN_APPROVED", "audit-rule")
    flow = xp.award_campaign_creation("0xcreator", "camp-audit", "B2C")
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []
    with db.transaction():
        db.execute("DELETE FROM pyxp.xp_requests WHERE key_hash = pyxp.key_hash('campaign.created:camp-audit')")
        db.execute("INSERT INTO pyxp.rules (ruleset_id, position, action, formula, xp_constant) "
                   "SELECT ruleset_id, 999, 'GONE_SOON', '1', 1 FROM pyxp.rulesets WHERE is_active")
    gone = xp.award("0xabc", "GONE_SOON", "audit-gone")
    db.execute("DELETE FROM pyxp.rules WHERE action = 'GONE_SOON'")
    found = {(r[0], r[2]) for r in db.execute("SELECT * FROM pyxp.audit()")}
    assert ("request_missing", flow.rows[0].transaction_id) in found
    assert ("rule_missing", gone.rows[0].transaction_id) in found
    assert ("rule_missing", generic.rows[0].transaction_id) not in found


def test_a_batch_meeting_a_concurrent_claim_of_another_wallet_is_px010(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """Model-test finding: a batch that replays one key and meets, on another event, a key that a
    concurrent call claims for another wallet (other inputs) while the batch's insert waits for it,
    is refused with PX010 — it once reported the replayed event instead, as 40001."""
    db.execute("SELECT * FROM pyxp.award('0xreplayed', 'CAMPAIGN_APPROVED', 'batch-replays-this')")
    events = Jsonb([
        {"wallet": "0xreplayed", "action": "CAMPAIGN_APPROVED", "idempotency_key": "batch-replays-this"},
        {"wallet": "0xbatch", "action": "CAMPAIGN_APPROVED", "idempotency_key": "raced-by-batch"}])
    outcome = called_behind_holder(
        conninfo, db, "SELECT * FROM pyxp.award('0xholder', 'CAMPAIGN_APPROVED', 'raced-by-batch')",
        lambda conn: conn.execute("SELECT * FROM pyxp.award_many(%s)", (events,)).fetchall())
    assert outcome == {"sqlstate": "PX010"}
    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions WHERE user_wallet = '0xbatch'").fetchone() == (0,)
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


# ---------------------------------------------------------------- locks (0020)

AWARD = "SELECT transaction_id, xp_amount, total_xp, replayed FROM pyxp.award(%s, 'CAMPAIGN_APPROVED', %s)"


def balance_version(db: psycopg.Connection[Any], wallet: str) -> tuple[Any, ...]:
    row = db.execute("SELECT ctid, xmin FROM pyxp.xp_balances WHERE user_wallet = %s", (wallet,)).fetchone()
    assert row is not None
    return tuple(row)


def test_a_single_award_waiting_for_the_same_award_replays_it(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """A single award takes its wallet's lock in the statement that reads the claims (0020): one
    waiting for a transaction making the same award cannot see that claim, so its own claim's
    INSERT waits, skips the row, and the call replays — one row, the same id for both."""
    outcome = called_behind_holder(
        conninfo, db, "SELECT * FROM pyxp.award('0xsame', 'CAMPAIGN_APPROVED', 'same-award')",
        lambda conn: conn.execute(AWARD, ("0xsame", "same-award")).fetchall())
    first = db.execute("SELECT id FROM pyxp.xp_transactions WHERE idempotency_key = 'same-award'").fetchall()
    assert len(first) == 1
    assert outcome == {"result": [(first[0][0], 100, 100, True)]}
    assert db.execute("SELECT total_xp, last_wallet_seq FROM pyxp.xp_balances WHERE user_wallet = '0xsame'"
                      ).fetchone() == (100, 1)
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


@pytest.mark.parametrize("existing", [True, False], ids=["balance-row", "new-wallet"])
def test_a_single_award_waiting_for_its_wallet_chains_after_the_holder(
        conninfo: str, db: psycopg.Connection[Any], existing: bool) -> None:
    """The waiter's balance is the one the holder committed (FOR UPDATE returns the latest
    version), whether the wallet had a balance row or the holder created it (the waiter's insert
    of it waits, then its read locks the holder's row)."""
    if existing:
        db.execute("SELECT * FROM pyxp.award('0xchain', 'CAMPAIGN_APPROVED', 'before')")
    outcome = called_behind_holder(
        conninfo, db, "SELECT * FROM pyxp.award('0xchain', 'CAMPAIGN_APPROVED', 'held')",
        lambda conn: conn.execute(AWARD, ("0xchain", "waiting")).fetchall())
    earlier = 200 if existing else 100
    assert [row[1:] for row in outcome["result"]] == [(100, earlier + 100, False)]
    assert db.execute("SELECT idempotency_key, wallet_seq, balance_after FROM pyxp.xp_transactions "
                      "WHERE user_wallet = '0xchain' ORDER BY wallet_seq").fetchall()[-2:] == [
        ("held", 2 if existing else 1, earlier), ("waiting", 3 if existing else 2, earlier + 100)]
    assert db.execute("SELECT count(*), sum(total_xp) FROM pyxp.xp_balances WHERE user_wallet = '0xchain'"
                      ).fetchone() == (1, earlier + 100)
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_a_batch_locks_its_wallets_without_writing_a_version(db: psycopg.Connection[Any]) -> None:
    """A batch locks the balances it needs with ON CONFLICT DO UPDATE ... WHERE false (0020): a
    balance whose events all replay keeps its row version (0019 wrote a new one to lock it)."""
    events = Jsonb([{"wallet": "0xkept", "action": "CAMPAIGN_APPROVED", "idempotency_key": "kept-1"}])
    db.execute("SELECT * FROM pyxp.award_many(%s)", (events,)).fetchall()
    before = balance_version(db, "0xkept")
    replayed = db.execute("SELECT replayed FROM pyxp.award_many(%s)", (events,)).fetchall()
    assert replayed == [(True,)]
    assert balance_version(db, "0xkept") == before


LEDGER_RELATIONS_LOCKED = """
    WITH ledger AS (SELECT p.relid FROM pg_partition_tree('pyxp.xp_transactions') p)
    SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
     WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation'
       AND (c.oid IN (SELECT relid FROM ledger)
            OR c.oid IN (SELECT i.indexrelid FROM pg_index i
                          WHERE i.indrelid IN (SELECT relid FROM ledger)))"""


@pytest.mark.parametrize("call", [
    "SELECT * FROM pyxp.award('0xparts', 'CAMPAIGN_APPROVED', 'p1')",
    "SELECT * FROM pyxp.award_moderation_vote('0xparts', 'camp-p', 'VALID', 'B2C')",
    "SELECT * FROM pyxp.award_many('[{\"wallet\": \"0xparts\", \"action\": \"CAMPAIGN_APPROVED\", "
    "\"idempotency_key\": \"p2\"}]'::jsonb)"])
def test_an_award_opens_no_ledger_partition_but_the_one_it_writes(
        conninfo: str, db: psycopg.Connection[Any], call: str) -> None:
    """A statement naming the partitioned ledger locks every partition and index at each
    execution of its generic plan, and initialises their scans where the pruning depends on a
    join (PostgreSQL 15): an award's cost grew with the ledger's partitions (0021 measured 11 % more CPU at 17 partitions than without those
    scans). Its statements name the ledger only to insert into it (rows routed to the partition
    of now()); a claim's row is read through pyxp.claimed_row, which a new key never calls."""
    db.execute("SELECT * FROM pyxp.create_ledger_partitions(4)")
    partitions = db.execute("SELECT count(*) FROM pyxp.ledger_partitions()").fetchone()
    assert partitions is not None and partitions[0] >= 5
    current = db.execute("SELECT partition_name FROM pyxp.ledger_partitions() "
                         "WHERE now() >= range_start AND now() < range_end").fetchone()
    assert current is not None
    written = {"xp_transactions", current[0]} | {
        name for (name,) in db.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid IN ('pyxp.xp_transactions'::regclass, %s::regclass)", (f"pyxp.{current[0]}",))}
    with psycopg.connect(conninfo) as conn:  # a transaction: its locks stay until the rollback
        for _ in range(2):  # the second call runs the plans the first one cached
            conn.execute(call)
            locked = {name for (name,) in conn.execute(LEDGER_RELATIONS_LOCKED)}
            conn.rollback()
            assert locked and locked <= written, sorted(locked - written)
