"""The ledger partitioned by month (issue 15 item 3, migration 0015, sql/12_partitions.sql).

What partitioning must not change: keys unique across every partition (a generic award's
claim, a reversal once), the append-only rule on every partition (UPDATE, DELETE, TRUNCATE,
and now DETACH and DROP), and audit() proving the ledger. What it adds: rows land in their
month's partition, and the owner creates the months ahead.
"""
from __future__ import annotations

import threading
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import psycopg
import pytest
from conftest import PYXP, called_behind_holder, settled, steady

from pyxp import errors
from pyxp.bench import plan_nodes

AWARD = "SELECT * FROM pyxp.award(wallet => %s, action => 'CAMPAIGN_APPROVED', idempotency_key => %s)"
PARTITIONS = "SELECT partition_name, range_start, range_end, is_default FROM pyxp.ledger_partitions()"


def this_month() -> str:
    return datetime.now(UTC).strftime("%Y_%m")


def partition_of(db: psycopg.Connection[Any], transaction_id: int) -> str:
    row = db.execute("SELECT tableoid::regclass::text FROM pyxp.xp_transactions WHERE id = %s",
                     (transaction_id,)).fetchone()
    assert row is not None
    return str(row[0])


def past_generic_award(db: psycopg.Connection[Any], wallet: str, key: str, created_at: str) -> int:
    """A generic award of CAMPAIGN_APPROVED (+100) to a new wallet, as the writer would have written it
    at ``created_at`` (the writer only writes now()): its row, its claim and its balance; then the
    period columns and rank counts recounted as an owner does after loading rows."""
    row = db.execute("""
        INSERT INTO pyxp.xp_transactions (user_wallet, transaction_type, xp_amount, balance_after, rule_id,
                                          idempotency_key, request_digest, wallet_seq, created_at)
        SELECT %(wallet)s, 'CAMPAIGN_APPROVED', 100, 100, r.rule_id, %(key)s,
               pyxp.inputs_digest(jsonb_build_object('action', 'CAMPAIGN_APPROVED', 'wallet', %(wallet)s::text,
                                                     'params', '{}'::jsonb)), 1, %(at)s
          FROM pyxp.rules r WHERE r.ruleset_id = pyxp.active_ruleset_id() AND r.action = 'CAMPAIGN_APPROVED'
        RETURNING id, created_at""", {"wallet": wallet, "key": key, "at": created_at}).fetchone()
    assert row is not None
    db.execute("INSERT INTO pyxp.xp_award_claims VALUES (pyxp.key_hash(%s), %s, %s)", (key, row[0], row[1]))
    db.execute("""INSERT INTO pyxp.xp_balances (user_wallet, total_xp, current_level, xp_to_next_level, last_wallet_seq)
                  SELECT %s, 100, c.level, c.next_level_xp - 100, 1 FROM pyxp.curve_position(pyxp.active_ruleset_id(), 100) c""",
               (wallet,))
    db.execute("SELECT pyxp.rebuild_period_columns((SELECT timezone FROM pyxp.rulesets WHERE is_active))")
    db.execute("SELECT pyxp.rebalance_rank_buckets(16, true)")
    return int(row[0])


# --------------------------------------------------------------------------- layout


def test_a_new_ledger_has_its_months_ahead_a_partition_for_older_rows_and_a_default(
        db: psycopg.Connection[Any]) -> None:
    partitions = db.execute(PARTITIONS).fetchall()
    names = [p[0] for p in partitions]
    assert names[0].startswith("xp_transactions_before_") and partitions[0][1] is None
    assert names[-1] == "xp_transactions_default" and partitions[-1][3]
    months = [p for p in partitions if not p[3] and p[1] is not None]
    assert months[0][0] == f"xp_transactions_{this_month()}"
    assert len(months) == 3  # this month and the two after it (create_ledger_partitions' default)
    for earlier, later in pairwise(partitions[:-1]):
        assert earlier[2] == later[1]  # contiguous: no month falls to the default partition


def test_rows_go_to_their_months_partition_and_older_rows_before_it(db: psycopg.Connection[Any]) -> None:
    new = db.execute(AWARD, ("0xnow", "now-1")).fetchone()
    assert new is not None
    assert partition_of(db, new[0]) == f"pyxp.xp_transactions_{this_month()}"
    old = past_generic_award(db, "0xold", "old-1", "2020-03-04 05:06:07+00")
    assert partition_of(db, old).startswith("pyxp.xp_transactions_before_")
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


# --------------------------------------------------------------------------- keys across partitions


def test_a_key_claimed_in_an_older_partition_replays_and_refuses_other_inputs(
        db: psycopg.Connection[Any], unchanged: Any) -> None:
    """The claim of a generic award is unique across partitions: its row in the partition of
    2020 is found by its claim (id and created_at), replayed as it was; another wallet with
    its key is PX010 naming the first call, and nothing is written either time."""
    old = past_generic_award(db, "0xold", "shared-key", "2020-03-04 05:06:07+00")
    with unchanged():
        again = db.execute(AWARD, ("0xold", "shared-key")).fetchall()
    assert [(r[0], r[1], r[3], r[-1]) for r in again] == [(old, "0xold", 100, True)]
    with unchanged(), pytest.raises(errors.IdempotencyConflict) as refused, errors.wrap_errors():
        db.execute(AWARD, ("0xsomeone-else", "shared-key"))
    assert '"wallet": "0xold"' in (refused.value.detail or "")
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_a_row_in_an_older_partition_is_reversed_once(db: psycopg.Connection[Any], unchanged: Any) -> None:
    old = past_generic_award(db, "0xold", "old-reversed", "2021-01-01 00:00:00+00")
    first = db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'mistake')", (old,)).fetchone()
    assert first is not None and first[3] == -100
    assert partition_of(db, first[0]) == f"pyxp.xp_transactions_{this_month()}"
    with unchanged():
        replay = db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'mistake')", (old,)).fetchone()
        assert replay is not None and replay[0] == first[0] and replay[-1] is True
        with pytest.raises(errors.ReversalRefused), errors.wrap_errors():
            db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'another reason')", (old,))
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_audit_reports_what_no_key_holds_on_a_partitioned_ledger(db: psycopg.Connection[Any]) -> None:
    """No unique index or foreign key holds these any more (sql/01_schema.sql): audit() does.
    A second reversal of a row, a reversal of a row that does not exist, a generic row whose
    claim is gone, and a claim whose row does not exist."""
    first = db.execute(AWARD, ("0xa", "a-1")).fetchone()
    second = db.execute(AWARD, ("0xb", "b-1")).fetchone()
    assert first is not None and second is not None
    reversal = db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'r')", (first[0],)).fetchone()
    assert reversal is not None
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []
    db.execute("""INSERT INTO pyxp.xp_transactions (user_wallet, transaction_type, xp_amount, balance_after,
                                                    idempotency_key, reverses, wallet_seq)
                  VALUES ('0xa', 'REVERSAL', -100, -100, 'tampered:1', %s, 3),
                         ('0xa', 'REVERSAL', 0, -100, 'tampered:2', 999999, 4)""", (first[0],))
    db.execute("DELETE FROM pyxp.xp_award_claims WHERE transaction_id = %s", (second[0],))
    db.execute("INSERT INTO pyxp.xp_award_claims VALUES (pyxp.key_hash('ghost'), 888888, now())")
    found = [(r[0], r[2], r[3]) for r in db.execute("SELECT * FROM pyxp.audit()")
             if r[0] in ("reversal_mismatch", "claim_mismatch")]
    assert len(found) == 6  # the forged reversals' keys are not 'reverse:<id>' either (0029)
    assert sum(r[0] == "reversal_mismatch" and "its key is 'tampered:" in r[2] for r in found) == 2
    assert ("claim_mismatch", second[0], "no claim in xp_award_claims for key 'b-1'") in found
    assert any(r[0] == "claim_mismatch" and r[1] == 888888 and "does not exist" in r[2] for r in found)
    assert any(r[0] == "reversal_mismatch" and f"transaction {first[0]} is also reversed" in r[2] for r in found)
    assert any(r[0] == "reversal_mismatch" and "999999, which does not exist" in r[2] for r in found)


def claim_findings(db: psycopg.Connection[Any]) -> set[tuple[Any, str]]:
    return {(r[2], r[3]) for r in db.execute("SELECT * FROM pyxp.audit() WHERE check_name = 'claim_mismatch'")}


def test_audit_reports_every_claim_that_does_not_match_its_row(db: psycopg.Connection[Any]) -> None:
    """0017: the full audit joins each generic row to the claims naming it, and looks for claims
    without a row only when the claims' count or sum of transaction ids differs from the rows':
    a claim moved to another row, or to no row, or added, is reported however it hides."""
    for wallet, key in (("0xa", "a-1"), ("0xb", "b-1")):
        db.execute(AWARD, (wallet, key))
    first, second = db.execute("SELECT id, created_at FROM pyxp.xp_transactions ORDER BY id").fetchall()
    first_claim = db.execute("SELECT key_hash FROM pyxp.xp_award_claims WHERE transaction_id = %s",
                             (first[0],)).fetchone()[0]
    no_claim = (first[0], "no claim in xp_award_claims for key 'a-1'")
    assert claim_findings(db) == set()
    # Moved to the other row (same count): that row has two claims, one not its key's hash.
    db.execute("UPDATE pyxp.xp_award_claims SET transaction_id = %s, created_at = %s WHERE transaction_id = %s",
               (*second, first[0]))
    assert claim_findings(db) == {
        no_claim, (second[0], f"claim {first_claim} of transaction {second[0]} is not the hash of its key 'b-1'")}
    # Moved to a transaction that does not exist (same count, another sum of ids).
    db.execute("UPDATE pyxp.xp_award_claims SET transaction_id = 777777 WHERE key_hash = %s", (first_claim,))
    (gone,) = [d for i, d in claim_findings(db) if i == 777777]
    assert claim_findings(db) == {no_claim, (777777, gone)} and "which does not exist" in gone
    # Back to its row, and one claim more (another count).
    db.execute("UPDATE pyxp.xp_award_claims SET transaction_id = %s, created_at = %s WHERE key_hash = %s",
               (*first, first_claim))
    assert claim_findings(db) == set()
    db.execute("INSERT INTO pyxp.xp_award_claims VALUES (pyxp.key_hash('ghost'), %s, %s)", first)
    (extra,) = claim_findings(db)
    assert extra[0] == first[0] and "is not the hash of its key 'a-1'" in extra[1]
    db.execute("UPDATE pyxp.xp_award_claims SET transaction_id = 666666 WHERE key_hash = pyxp.key_hash('ghost')")
    (orphan,) = claim_findings(db)
    assert orphan[0] == 666666 and "which does not exist" in orphan[1]


def test_the_full_audit_can_check_the_claims_in_parallel_workers(db: psycopg.Connection[Any]) -> None:
    """0017: the audit's helpers are PARALLEL SAFE and the rows are joined to their claims with a
    join PostgreSQL 15 runs in parallel (a FULL join it runs in one process): with parallel plans
    made cheap, the claims' join is under a Gather."""
    for _ in range(3):
        db.execute(AWARD, (f"0x{_}", f"k-{_}"))
    with db.transaction():
        for setting in ("parallel_setup_cost", "parallel_tuple_cost", "min_parallel_table_scan_size"):
            db.execute(f"SET LOCAL {setting} = 0")
        plan = db.execute("EXPLAIN (FORMAT JSON) SELECT * FROM pyxp.row_problems(false)").fetchone()[0]

    under_gather = {node.get("Relation Name") for gather in plan_nodes(plan[0]["Plan"])
                    if gather["Node Type"] in ("Gather", "Gather Merge") for node in plan_nodes(gather)}
    assert "xp_award_claims" in under_gather


def test_the_check_since_a_checkpoint_finds_a_new_row_without_its_claim(db: psycopg.Connection[Any]) -> None:
    db.execute(AWARD, ("0xa", "a-1"))
    db.execute("SELECT pyxp.record_audit_checkpoint()")
    later = db.execute(AWARD, ("0xb", "b-1")).fetchone()
    assert later is not None
    assert db.execute("SELECT * FROM pyxp.audit_since_checkpoint()").fetchall() == []
    db.execute("DELETE FROM pyxp.xp_award_claims WHERE transaction_id = %s", (later[0],))
    assert [(r[0], r[2]) for r in db.execute("SELECT * FROM pyxp.audit_since_checkpoint()")] == \
        [("claim_mismatch", later[0])]


# --------------------------------------------------------------------------- append-only on every partition


@pytest.mark.parametrize("as_role", ["superuser", "pyxp_owner"])
def test_every_partition_refuses_update_delete_and_truncate(
        conninfo: str, db: psycopg.Connection[Any], unchanged: Any, as_role: str) -> None:
    db.execute(AWARD, ("0xnow", "now-1"))
    past_generic_award(db, "0xold", "old-1", "2020-03-04 05:06:07+00")
    names = [p[0] for p in db.execute(PARTITIONS)]
    holding = {str(name).removeprefix("pyxp.") for (name,) in db.execute(
        "SELECT DISTINCT tableoid::regclass::text FROM pyxp.xp_transactions")}
    assert len(holding) == 2
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if as_role == "pyxp_owner":
            conn.execute("SET ROLE pyxp_owner")
        for name in names:
            # Row triggers fire on rows: UPDATE and DELETE of an empty partition change nothing anyway.
            for statement in ([f"UPDATE pyxp.{name} SET xp_amount = xp_amount + 1", f"DELETE FROM pyxp.{name}"]
                              if name in holding else []) + [f"TRUNCATE pyxp.{name}"]:
                with unchanged(), pytest.raises(errors.AppendOnlyLedger), errors.wrap_errors():
                    conn.execute(statement)


def test_detach_and_drop_of_a_partition_are_refused(db: psycopg.Connection[Any], unchanged: Any) -> None:
    """PX013, for a partition with rows and for an empty one (a row could land there), as the
    superuser the tests run as; the ledger keeps every partition."""
    db.execute(AWARD, ("0xnow", "now-1"))
    before = db.execute(PARTITIONS).fetchall()
    for name in (f"xp_transactions_{this_month()}", "xp_transactions_default", before[0][0], before[-2][0]):
        for statement in (f"ALTER TABLE pyxp.xp_transactions DETACH PARTITION pyxp.{name}",
                          f"DROP TABLE pyxp.{name}", f"DROP TABLE pyxp.{name} CASCADE"):
            with unchanged(), pytest.raises(errors.AppendOnlyLedger) as refused, errors.wrap_errors():
                db.execute(statement)
            assert name in str(refused.value)
    assert db.execute(PARTITIONS).fetchall() == before


def test_a_partition_attached_by_hand_gets_the_truncate_refusal(db: psycopg.Connection[Any], unchanged: Any) -> None:
    db.execute("CREATE TABLE pyxp.xp_transactions_2099_01 (LIKE pyxp.xp_transactions INCLUDING DEFAULTS)")
    db.execute("ALTER TABLE pyxp.xp_transactions ATTACH PARTITION pyxp.xp_transactions_2099_01 "
               "FOR VALUES FROM ('2099-01-01') TO ('2099-02-01')")
    db.execute("""INSERT INTO pyxp.xp_transactions (user_wallet, transaction_type, xp_amount, balance_after,
                                                    idempotency_key, wallet_seq, created_at)
                  VALUES ('0xfuture', 'X', 1, 1, 'future', 1, '2099-01-02')""")
    with unchanged(), pytest.raises(errors.AppendOnlyLedger), errors.wrap_errors():
        db.execute("TRUNCATE pyxp.xp_transactions_2099_01")
    with unchanged(), pytest.raises(errors.AppendOnlyLedger), errors.wrap_errors():
        db.execute("ALTER TABLE pyxp.xp_transactions DETACH PARTITION pyxp.xp_transactions_2099_01")


def test_the_whole_ledger_can_still_be_dropped_with_its_schema(fresh_database: Any) -> None:
    """The guard refuses taking a partition out of a ledger, not dropping the ledger itself
    (DROP SCHEMA pyxp CASCADE, a downgrade to base)."""
    from pyxp import schema
    target = fresh_database()
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(AWARD, ("0xnow", "now-1"))
        conn.execute("DROP SCHEMA pyxp CASCADE")
        assert conn.execute("SELECT to_regnamespace('pyxp')").fetchone() == (None,)


# --------------------------------------------------------------------------- creating the months ahead


def test_awards_go_on_while_another_partition_is_locked_and_replays_wait(conninfo: str,
                                                                         db: psycopg.Connection[Any]) -> None:
    """Attaching a month takes ACCESS EXCLUSIVE on the default partition while it checks it. A new
    award locks only the partition it writes (0021: its plans name no other), so it goes on; a
    replay reads its row through pyxp.claimed_row, whose plan locks every partition, so it waits,
    here until lock_timeout. At 0020 the new award waited too."""
    db.execute(AWARD, ("0xattach", "a1"))
    with psycopg.connect(conninfo) as holder, psycopg.connect(conninfo, autocommit=True) as caller:
        holder.execute("LOCK TABLE pyxp.xp_transactions_default IN ACCESS EXCLUSIVE MODE")
        caller.execute("SET lock_timeout = '2s'")
        new = caller.execute(AWARD, ("0xattach", "a2")).fetchone()
        assert new is not None and new[-1] is False  # replayed: false
        with pytest.raises(psycopg.errors.LockNotAvailable):
            caller.execute(AWARD, ("0xattach", "a1"))
        holder.rollback()
    replayed = db.execute(AWARD, ("0xattach", "a1")).fetchone()
    assert replayed is not None and replayed[-1] is True
    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions WHERE user_wallet = '0xattach'").fetchone() == (2,)


def test_create_ledger_partitions_adds_the_months_asked_once(db: psycopg.Connection[Any]) -> None:
    created = db.execute("SELECT partition_name, created FROM pyxp.create_ledger_partitions(5)").fetchall()
    assert len(created) == 3 and all(c[1] for c in created)  # months 3, 4 and 5 after this one
    assert db.execute("SELECT * FROM pyxp.create_ledger_partitions(5)").fetchall() == []
    months = [p for p in db.execute(PARTITIONS).fetchall() if p[1] is not None]
    assert len(months) == 6
    db.execute("INSERT INTO pyxp.xp_transactions (user_wallet, transaction_type, xp_amount, balance_after, "
               "idempotency_key, wallet_seq, created_at) VALUES ('0xlater', 'X', 1, 1, 'later', 1, %s)",
               (months[-1][1],))
    row = db.execute("SELECT tableoid::regclass::text FROM pyxp.xp_transactions WHERE idempotency_key = 'later'"
                     ).fetchone()
    assert row == (f"pyxp.{months[-1][0]}",)


GUARD = ("pyxp_ledger_partitions_start", "pyxp_ledger_partitions_end", "pyxp_ledger_partitions_drop")
LEDGER = "SELECT t.*, t.tableoid::regclass::text FROM pyxp.xp_transactions t ORDER BY t.id"


def drop_empty_partition(db: psycopg.Connection[Any], name: str) -> None:
    """Takes an empty partition out, as a superuser could: a month nobody created in time (tests
    cannot wait for one)."""
    assert db.execute(f"SELECT count(*) FROM pyxp.{name}").fetchone() == (0,)
    with db.transaction():
        for trigger in GUARD:
            db.execute(f"ALTER EVENT TRIGGER {trigger} DISABLE")
        db.execute(f"ALTER TABLE pyxp.xp_transactions DETACH PARTITION pyxp.{name}")
        db.execute(f"DROP TABLE pyxp.{name}")
        for trigger in GUARD:
            db.execute(f"ALTER EVENT TRIGGER {trigger} ENABLE ALWAYS")


def test_a_month_whose_rows_went_to_the_default_partition_gets_its_partition(db: psycopg.Connection[Any]) -> None:
    """Nobody created month +7 in time and a row of it went to the default partition: creating
    the months ahead creates that month too and moves the row into it (0029; before, the month was
    left in the default partition, which no archive takes)."""
    last = db.execute(PARTITIONS).fetchall()[-2][2]
    month_7 = db.execute("SELECT (date_trunc('month', now(), 'UTC') AT TIME ZONE 'UTC' + interval '7 months') "
                         "AT TIME ZONE 'UTC' + interval '2 days'").fetchone()
    assert month_7 is not None and month_7[0] > last
    db.execute("INSERT INTO pyxp.xp_transactions (user_wallet, transaction_type, xp_amount, balance_after, "
               "idempotency_key, wallet_seq, created_at) VALUES ('0xlate', 'X', 1, 1, 'late', 1, %s)", month_7)
    report = db.execute("SELECT partition_name, created, note FROM pyxp.create_ledger_partitions(2)").fetchall()
    name = f"xp_transactions_{month_7[0]:%Y_%m}"
    assert report == [(name, True, "1 rows moved from xp_transactions_default")]
    assert db.execute("SELECT tableoid::regclass::text FROM pyxp.xp_transactions WHERE idempotency_key = 'late'"
                      ).fetchone() == (f"pyxp.{name}",)
    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions_default").fetchone() == (0,)
    # The months between were not asked for: they are created when asked.
    report = db.execute("SELECT partition_name, created, note FROM pyxp.create_ledger_partitions(8)").fetchall()
    assert len(report) == 5 and all(r[1] and r[2] is None for r in report)


def test_a_month_moved_out_of_the_default_partition_keeps_every_row_as_it_was(
        db: psycopg.Connection[Any], unchanged: Any) -> None:
    """This month had no partition: its awards, a flow's rows and a reversal went to the default
    partition. Creating it moves them, unchanged: the same rows (ids, positions, feed cursors),
    the same feed, keys that replay, a clean audit; and the ledger stays append-only there."""
    name = f"xp_transactions_{this_month()}"
    drop_empty_partition(db, name)
    first = db.execute(AWARD, ("0xmoved", "m1")).fetchone()
    assert first is not None
    db.execute(AWARD, ("0xmoved", "m2"))
    db.execute("SELECT * FROM pyxp.award_campaign_creation('0xcreator', 'camp-moved', 'B2C')")
    db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'mistake')", (first[0],))
    before = db.execute(LEDGER).fetchall()
    assert {r[-1] for r in before} == {"pyxp.xp_transactions_default"}
    feed = steady(lambda: db.execute("SELECT * FROM pyxp.changes(0, 1000)").fetchall())
    report = db.execute("SELECT partition_name, created, note FROM pyxp.create_ledger_partitions(0)").fetchall()
    assert report == [(name, True, f"{len(before)} rows moved from xp_transactions_default")]
    after = db.execute(LEDGER).fetchall()
    assert [r[:-1] for r in after] == [r[:-1] for r in before]
    assert {r[-1] for r in after} == {f"pyxp.{name}"}
    assert settled(lambda: db.execute("SELECT * FROM pyxp.changes(0, 1000)").fetchall(), feed) == feed
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []
    replayed = db.execute(AWARD, ("0xmoved", "m1")).fetchone()
    assert replayed is not None and replayed[0] == first[0] and replayed[-1] is True
    # The default partition's append-only trigger is back, as the ledger's others (ENABLE ALWAYS).
    assert db.execute("SELECT tgenabled FROM pg_trigger WHERE tgname = 'xp_transactions_append_only' "
                      "AND tgrelid = 'pyxp.xp_transactions_default'::regclass").fetchone() == ("A",)
    for statement in (f"DELETE FROM pyxp.{name}", "DELETE FROM pyxp.xp_transactions",
                      f"UPDATE pyxp.{name} SET xp_amount = 1"):
        with unchanged(), pytest.raises(errors.AppendOnlyLedger), errors.wrap_errors():
            db.execute(statement)


def test_an_award_waits_for_the_move_and_lands_in_the_new_partition(conninfo: str,
                                                                    db: psycopg.Connection[Any]) -> None:
    """The move holds EXCLUSIVE on the ledger: an award of the month being moved waits for it, then
    goes to the new partition. (Routed to the default partition before the ATTACH, it would fail
    there: PostgreSQL checks the default partition's bound again, 23514.)"""
    name = f"xp_transactions_{this_month()}"
    drop_empty_partition(db, name)
    db.execute(AWARD, ("0xwait", "w1"))
    outcome = called_behind_holder(conninfo, db, "SELECT * FROM pyxp.create_ledger_partitions(0)",
                                   lambda conn: conn.execute(AWARD, ("0xwait", "w2")).fetchone())
    assert "result" in outcome, outcome
    assert partition_of(db, outcome["result"][0]) == f"pyxp.{name}"
    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions_default").fetchone() == (0,)
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_a_call_holding_the_default_partition_does_not_deadlock_with_the_move(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """A transaction that read the default partition (a replay's or a reversal's plan opens every
    partition) then awards: at 0029 the move held EXCLUSIVE on the ledger while it waited for the
    default partition, the award queued behind it, and one of the two was cancelled (40P01, a
    hostile test, 0030). The move now never waits for the default partition while it holds the
    ledger: it lets go, the award goes through, and the move follows."""
    name = f"xp_transactions_{this_month()}"
    drop_empty_partition(db, name)
    db.execute(AWARD, ("0xheld", "h1"))
    outcome: dict[str, Any] = {}
    with psycopg.connect(conninfo) as holder:
        holder.execute("SELECT count(*) FROM pyxp.xp_transactions_default")  # ACCESS SHARE, kept
        holder_pid = holder.info.backend_pid

        def move() -> None:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                try:
                    outcome["moved"] = conn.execute(
                        "SELECT partition_name, note FROM pyxp.create_ledger_partitions(0)").fetchall()
                except psycopg.Error as exc:
                    outcome["move"] = exc.sqlstate

        thread = threading.Thread(target=move)
        thread.start()
        for _ in range(400):  # the move is held up by the holder: waiting for its lock (0029), or retrying
            if db.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%%create_ledger_partitions(0)%%' "
                          "AND (%s = ANY (pg_blocking_pids(pid)) OR wait_event = 'PgSleep')",
                          (holder_pid,)).fetchone() == (1,):
                break
            thread.join(0.05)
        else:
            raise AssertionError("the move never waited for the holder")
        try:
            award = holder.execute(AWARD, ("0xheld", "h2")).fetchone()
            holder.commit()
        except psycopg.Error as exc:
            award = exc.sqlstate
            holder.rollback()
        thread.join(60)
    assert award is not None and award != "40P01" and isinstance(award, tuple), award
    assert outcome == {"moved": [(name, "2 rows moved from xp_transactions_default")]}, outcome
    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions_default").fetchone() == (0,)
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_the_move_is_not_starved_by_overlapping_readers(conninfo: str, db: psycopg.Connection[Any]) -> None:
    """Three readers of the default partition whose 30 ms transactions overlap: a move that asked
    for its lock NOWAIT never found a moment without one, and gave up after 5 s with 55P03 (a
    re-test of 0030's first form). It queues for the lock (for less than the deadlock check's
    delay), and the readers let it through."""
    name = f"xp_transactions_{this_month()}"
    drop_empty_partition(db, name)
    db.execute(AWARD, ("0xread", "r1"))
    stop = threading.Event()

    def read(delay: float) -> None:
        with psycopg.connect(conninfo) as conn:
            stop.wait(delay)
            while not stop.is_set():
                conn.execute("SELECT count(*) FROM pyxp.xp_transactions_default")
                conn.execute("SELECT pg_sleep(0.03)")
                conn.commit()

    readers = [threading.Thread(target=read, args=(delay,)) for delay in (0, 0.01, 0.02)]
    for reader in readers:
        reader.start()
    try:
        db.execute("SELECT pg_sleep(0.2)")
        moved = db.execute("SELECT partition_name, note FROM pyxp.create_ledger_partitions(0)").fetchall()
    finally:
        stop.set()
        for reader in readers:
            reader.join(30)
    assert moved == [(name, "1 rows moved from xp_transactions_default")]


def test_a_move_whose_default_partition_stays_busy_gives_up_and_moves_nothing(
        conninfo: str, db: psycopg.Connection[Any], unchanged: Any) -> None:
    """A transaction left open on the default partition: the move lets go and retries for 5 seconds,
    then refuses (55P03) with nothing created or moved; once that transaction ends, it goes through."""
    name = f"xp_transactions_{this_month()}"
    drop_empty_partition(db, name)
    db.execute(AWARD, ("0xbusy", "b1"))
    with psycopg.connect(conninfo) as holder:
        holder.execute("SELECT count(*) FROM pyxp.xp_transactions_default")  # ACCESS SHARE, kept
        with unchanged(), pytest.raises(psycopg.errors.LockNotAvailable, match="busy for 5 seconds"):
            db.execute("SELECT * FROM pyxp.create_ledger_partitions(0)")
        holder.rollback()
    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions_default").fetchone() == (1,)
    assert db.execute("SELECT partition_name, note FROM pyxp.create_ledger_partitions(0)").fetchall() == \
        [(name, "1 rows moved from xp_transactions_default")]


def test_no_partition_is_made_for_a_month_an_archive_took(db: psycopg.Connection[Any], unchanged: Any) -> None:
    """A month archived just after it ended, then the clock stepped back into it (NTP): at 0030 the
    months ahead started at the clock's month, so the move made that month again inside the
    archived range (and every later archive failed with a raw 42P07), or, with a row dated there
    in the default partition, retried its ATTACH until 53200 "out of shared memory" (a hostile
    test). Months before the archive's horizon are left alone, and such a row stays in the
    default partition. (An archive of the month the test runs in stands for it: the clock of the
    test server cannot step back.)"""
    name = f"xp_transactions_{this_month()}"
    drop_empty_partition(db, name)
    (checkpoint,) = db.execute("SELECT checkpoint_id FROM pyxp.record_audit_checkpoint()").fetchone()  # type: ignore[misc]
    db.execute("INSERT INTO pyxp.xp_ledger_archives (archived_before, partitions, partition_oids, rows_archived, "
               "wallets_opened, timezone, checkpoint_id) VALUES (date_trunc('month', now(), 'UTC') + interval "
               "'1 month', ARRAY[%s], '{}', 1, 0, 'UTC', %s)", (name, checkpoint))
    with unchanged():
        assert db.execute("SELECT * FROM pyxp.create_ledger_partitions(2)").fetchall() == []
        assert db.execute("SELECT * FROM pyxp.create_ledger_partitions(0)").fetchall() == []  # no month at all
    db.execute(AWARD, ("0xback", "back-1"))  # dated in the archived month: the default partition
    with unchanged():
        assert db.execute("SELECT * FROM pyxp.create_ledger_partitions(2)").fetchall() == []
        assert db.execute("SELECT * FROM pyxp.create_ledger_partitions(0)").fetchall() == []
    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions_default").fetchone() == (1,)


def test_a_row_committed_in_the_default_partition_during_the_attach_is_moved(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """This month's partition is missing and an award to it is not committed yet: the first look at
    the default partition sees nothing, and the ATTACH's scan of it waits for the award, then finds
    its row (a raw 23514 at 0029, a hostile test, 0030). The month is read again under the move's
    locks, and the row moved."""
    name = f"xp_transactions_{this_month()}"
    drop_empty_partition(db, name)
    outcome = called_behind_holder(conninfo, db, AWARD.replace("%s", "'0xlate'", 1).replace("%s", "'late-1'"),
                                   lambda conn: conn.execute("SELECT partition_name, note "
                                                             "FROM pyxp.create_ledger_partitions(0)").fetchall())
    assert outcome == {"result": [(name, "1 rows moved from xp_transactions_default")]}, outcome
    assert partition_of(db, db.execute("SELECT id FROM pyxp.xp_transactions WHERE idempotency_key = 'late-1'"
                                       ).fetchone()[0]) == f"pyxp.{name}"
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_moves_and_archives_run_one_at_a_time(conninfo: str, db: psycopg.Connection[Any], unchanged: Any) -> None:
    """Two moves (two schedulers) held what the other waited for, with awards between them; a move
    that read the archive's horizon before an archive committed made an archived month again (a
    hostile test, 0030). A move or an archive while another runs is refused at once (55P03),
    nothing done; and neither runs in REPEATABLE READ (the move's looks and its ATTACH's scan saw
    different rows: a raw 23514)."""
    with psycopg.connect(conninfo) as first:
        # (every month it asks for exists: it holds the move's lock, and no lock on the ledger)
        assert first.execute("SELECT * FROM pyxp.create_ledger_partitions(2)").fetchall() == []
        for other in ("SELECT * FROM pyxp.create_ledger_partitions(4)",
                      "SELECT * FROM pyxp.archive_ledger_partitions(date_trunc('month', now(), 'UTC'))"):
            with unchanged(), pytest.raises(psycopg.errors.LockNotAvailable, match="another pyxp"):
                db.execute(other)
        first.rollback()
    with psycopg.connect(conninfo) as reader:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        with unchanged(), pytest.raises(errors.IsolationRefused), errors.wrap_errors():
            reader.execute("SELECT * FROM pyxp.create_ledger_partitions(4)")


@pytest.mark.parametrize("months", [-1, 121, None])
def test_create_ledger_partitions_refuses_a_bad_horizon(db: psycopg.Connection[Any], unchanged: Any,
                                                       months: int | None) -> None:
    with unchanged(), pytest.raises(errors.InvalidArgument), errors.wrap_errors():
        db.execute("SELECT * FROM pyxp.create_ledger_partitions(%s)", (months,))


def test_creating_partitions_is_the_owners(connect_as: Any, login_role: Any, unchanged: Any) -> None:
    writer = connect_as(login_role("pyxp_writer"))
    with unchanged(), pytest.raises(psycopg.errors.InsufficientPrivilege):
        writer.execute("SELECT * FROM pyxp.create_ledger_partitions(24)")


def test_python_and_cli_create_the_months_ahead(conninfo: str, db: psycopg.Connection[Any], unchanged: Any) -> None:
    import json
    import subprocess

    from pyxp import XP, LedgerPartition
    with XP(conninfo) as xp:
        made = xp.create_ledger_partitions(months_ahead=3)
        assert [type(p) for p in made] == [LedgerPartition] and made[0].created and made[0].note is None
        assert xp.create_ledger_partitions(months_ahead=3) == []
    shown = subprocess.run([PYXP, "--database-url", conninfo, "db", "create-partitions", "--months-ahead", "5",
                            "--json"], capture_output=True, text=True, check=True)
    assert [(p["partition_name"], p["created"]) for p in json.loads(shown.stdout)] == \
        [(name, True) for (name,) in db.execute("SELECT partition_name FROM pyxp.ledger_partitions() "
                                                "WHERE range_start IS NOT NULL ORDER BY range_start DESC LIMIT 2")][::-1]
    again = subprocess.run([PYXP, "--database-url", conninfo, "db", "create-partitions", "--months-ahead", "5"],
                           capture_output=True, text=True, check=True)
    assert again.stdout.strip() == "every month up to 5 months ahead has its partition"
    with unchanged():
        refused = subprocess.run([PYXP, "--database-url", conninfo, "db", "create-partitions",
                                  "--months-ahead", "121"], capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "120" in refused.stderr


# --------------------------------------------------------------------------- the guard itself (a review's findings)


def test_the_guard_is_a_superusers_and_the_owner_cannot_change_it(conninfo: str, db: psycopg.Connection[Any]) -> None:
    """The event triggers run the guard at every DDL command, a superuser's too: a function the owner
    could replace would run the owner's code as that superuser. It belongs to a superuser."""
    owner = db.execute("""SELECT r.rolsuper, p.prosecdef FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
                          WHERE p.oid = 'pyxp.guard_ledger_partitions()'::regprocedure""").fetchone()
    assert owner == (True, True)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SET ROLE pyxp_owner")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE OR REPLACE FUNCTION pyxp.guard_ledger_partitions() RETURNS event_trigger "
                         "LANGUAGE plpgsql AS $$ BEGIN END $$")


@pytest.mark.parametrize("statement", [
    "ALTER TABLE pyxp.xp_transactions RENAME TO xp_elsewhere",
    "ALTER TABLE pyxp.xp_transactions SET SCHEMA public",
    "ALTER SCHEMA pyxp RENAME TO pyxp_elsewhere",
])
def test_the_ledger_cannot_be_renamed_away_from_the_guard(db: psycopg.Connection[Any], unchanged: Any,
                                                         statement: str) -> None:
    """Renamed, the ledger's partitions could be detached and dropped unseen: refused."""
    db.execute(AWARD, ("0xnow", "now-1"))
    with unchanged(), pytest.raises(errors.AppendOnlyLedger), errors.wrap_errors():
        db.execute(statement)
    assert db.execute("SELECT to_regclass('pyxp.xp_transactions') IS NOT NULL").fetchone() == (True,)


def test_a_partition_created_as_partition_of_and_its_sub_partitions_are_guarded(
        db: psycopg.Connection[Any], unchanged: Any) -> None:
    db.execute("CREATE TABLE pyxp.xp_transactions_2099_01 PARTITION OF pyxp.xp_transactions "
               "FOR VALUES FROM ('2099-01-01 00:00+00') TO ('2099-02-01 00:00+00')")
    db.execute("CREATE TABLE pyxp.xp_transactions_2099_02 PARTITION OF pyxp.xp_transactions "
               "FOR VALUES FROM ('2099-02-01 00:00+00') TO ('2099-03-01 00:00+00') PARTITION BY RANGE (created_at)")
    db.execute("CREATE TABLE pyxp.xp_sub_2099_02 PARTITION OF pyxp.xp_transactions_2099_02 "
               "FOR VALUES FROM ('2099-02-01 00:00+00') TO ('2099-03-01 00:00+00')")
    db.execute("""INSERT INTO pyxp.xp_transactions (user_wallet, transaction_type, xp_amount, balance_after,
                                                    idempotency_key, wallet_seq, created_at)
                  VALUES ('0xf', 'X', 1, 1, 'f1', 1, '2099-01-05'), ('0xf', 'X', 1, 2, 'f2', 2, '2099-02-05')""")
    for statement in ("TRUNCATE pyxp.xp_transactions_2099_01", "TRUNCATE pyxp.xp_sub_2099_02",
                      "ALTER TABLE pyxp.xp_transactions_2099_02 DETACH PARTITION pyxp.xp_sub_2099_02",
                      "DROP TABLE pyxp.xp_sub_2099_02"):
        with unchanged(), pytest.raises(errors.AppendOnlyLedger), errors.wrap_errors():
            db.execute(statement)


def test_dropping_a_partitions_truncate_trigger_gives_it_back(db: psycopg.Connection[Any], unchanged: Any) -> None:
    db.execute(AWARD, ("0xnow", "now-1"))
    name = f"xp_transactions_{this_month()}"
    db.execute(f"DROP TRIGGER xp_transactions_no_truncate ON pyxp.{name}")
    with unchanged(), pytest.raises(errors.AppendOnlyLedger), errors.wrap_errors():
        db.execute(f"TRUNCATE pyxp.{name}")


def test_dropping_an_extension_a_partition_was_added_to_is_refused(db: psycopg.Connection[Any], unchanged: Any) -> None:
    if db.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'citext'").fetchone() == (0,):
        pytest.skip("the citext extension is not installed on this server")
    db.execute(AWARD, ("0xnow", "now-1"))
    name = f"xp_transactions_{this_month()}"
    db.execute("CREATE EXTENSION IF NOT EXISTS citext")
    db.execute(f"ALTER EXTENSION citext ADD TABLE pyxp.{name}")
    with unchanged(), pytest.raises(errors.AppendOnlyLedger), errors.wrap_errors():
        db.execute("DROP EXTENSION citext")
    db.execute(f"ALTER EXTENSION citext DROP TABLE pyxp.{name}")
    db.execute("DROP EXTENSION citext")


def test_another_roles_ddl_is_not_disturbed_by_the_guard(connect_as: Any, login_role: Any) -> None:
    writer = connect_as(login_role("pyxp_writer"))
    writer.execute("CREATE TEMP TABLE scratch (x int)")
    writer.execute("ALTER TABLE scratch ADD COLUMN y int")
    writer.execute("DROP TABLE scratch")


@pytest.mark.parametrize("zone, datestyle", [("Asia/Kolkata", "SQL, MDY"), ("Asia/Shanghai", "Postgres, DMY"),
                                             ("America/Los_Angeles", "German")])
def test_months_are_contiguous_whatever_the_sessions_zone_and_datestyle(
        db: psycopg.Connection[Any], zone: str, datestyle: str) -> None:
    """The bounds are read back from their text: under a zone whose abbreviation reads back as
    another zone (IST, CST), months were skipped."""
    db.execute(f"SET TimeZone = '{zone}'")
    db.execute(f"SET DateStyle = '{datestyle}'")
    created = db.execute("SELECT created FROM pyxp.create_ledger_partitions(6)").fetchall()
    assert created == [(True,)] * 4
    db.execute("RESET TimeZone")
    db.execute("RESET DateStyle")
    ranges = [p[1:3] for p in db.execute(PARTITIONS).fetchall() if not p[3]]
    assert all(a[1] == b[0] for a, b in pairwise(ranges))
    assert all(r[1].day == 1 and r[1].hour == 0 and str(r[1].utcoffset()) == "0:00:00" for r in ranges)


def test_a_claim_whose_row_is_gone_is_refused_clearly(db: psycopg.Connection[Any], unchanged: Any) -> None:
    db.execute("INSERT INTO pyxp.xp_award_claims VALUES (pyxp.key_hash('orphan-1'), 999999, now())")
    with unchanged(), pytest.raises(errors.LedgerInconsistent) as refused, errors.wrap_errors():
        db.execute(AWARD, ("0xq", "orphan-1"))
    assert "999999" in str(refused.value)


def migrating_role(login_role: Any, target: str) -> str:
    """A migrating role that is no superuser (README "Install into a database"): a member of
    pyxp_owner with CREATE on the target database."""
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    name = login_role("pyxp_owner")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(conninfo_to_dict(target)["dbname"]), sql.Identifier(name)))
    return make_conninfo(target, user=name)


def test_a_migration_by_another_role_installs_all_but_the_guard(login_role: Any, fresh_database: Any,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Event triggers are a superuser's: a migrating role that is none gets the partitioned ledger,
    its partitions and their TRUNCATE refusal, and neither the guard's function nor its triggers;
    and the migration's warning says so on stderr (0029: it went nowhere, a hostile test)."""
    from pyxp import schema
    target = fresh_database()
    schema.upgrade(migrating_role(login_role, target))
    warned = capsys.readouterr().err
    assert "WARNING: pyxp:" in warned and "DETACH and DROP of a ledger partition are not refused" in warned, warned
    with psycopg.connect(target, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_event_trigger").fetchone() == (0,)
        assert conn.execute("SELECT to_regprocedure('pyxp.guard_ledger_partitions()')").fetchone() == (None,)
        assert len(conn.execute(PARTITIONS).fetchall()) == 5
        conn.execute(AWARD, ("0xnow", "now-1"))
        with pytest.raises(errors.AppendOnlyLedger), errors.wrap_errors():
            conn.execute(f"TRUNCATE pyxp.xp_transactions_{this_month()}")
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_downgrading_the_guard_needs_a_superuser(login_role: Any, fresh_database: Any) -> None:
    """A superuser installed the guard: another migrating role is refused the 0015 downgrade with a
    message saying why, and nothing changes."""
    from conftest import database_state

    from pyxp import schema
    target = fresh_database()
    # (from 0016, the last revision that touches the guard: each revision migrates in its own
    # transaction, so from a later head the revisions above 0016 would be downgraded first)
    schema.upgrade(target, "0016")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(AWARD, ("0xnow", "now-1"))
        before = database_state(conn)
    with pytest.raises(Exception, match="needs a superuser"):
        schema.downgrade(migrating_role(login_role, target), "0014")
    assert schema.current_revision(target) == "0016"
    with psycopg.connect(target, autocommit=True) as conn:
        assert database_state(conn) == before
        assert conn.execute("SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'pyxp%'").fetchone() == (3,)
