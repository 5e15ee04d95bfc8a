"""Retention: old partitions archived after an audit checkpoint (issue 15, migration 0016,
sql/13_retention.sql).

What an archive must keep: every balance provable as its opening + the rows since (audit()
clean, and able to fail), every key still used (never applied twice), the period boards and
caps that continue across the archived range. What it gives up is refused with PX029, and
nothing is written. The archive verifies what is new first (an audit checkpoint): an
inconsistent ledger is not archived (PX028).

The rows are written by the real functions, today, then moved to 2025 as an owner loading a
history would (tests/test_periods.py ``place``): PostgreSQL offers no other way to write a
row in a past month.
"""
from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from conftest import PYXP, called_behind_holder, install_variant, steady
from conftest import settled as settled_read
from psycopg.conninfo import make_conninfo
from test_partitions import GUARD
from test_periods import place
from test_readme_examples import why_each_row_query

from pyxp import XP, errors, schema

CAPS = {"MODERATION_VALIDATED_BY_MODERATOR": (5, "day", "moderation"),
        "Completion_Moderation_Validated": (5, "day", "moderation")}
GENERIC = "SELECT * FROM pyxp.award(wallet => %s, action => 'CAMPAIGN_APPROVED', idempotency_key => %s)"


def this_month() -> datetime:
    now = datetime.now(UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def ids(rows: list[tuple[Any, ...]]) -> list[int]:
    return [int(r[0]) for r in rows]


def audit(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute("SELECT check_name, user_wallet, detail FROM pyxp.audit()").fetchall()


def balances(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute("""SELECT user_wallet, total_xp, current_level, last_wallet_seq, total_moderations,
                                day_start, day_xp, week_start, week_xp, month_start, month_xp, year_start, year_xp
                           FROM pyxp.xp_balances ORDER BY 1""").fetchall()


@dataclass
class AgedLedger:
    """A ledger of every kind of row, most of them moved to 2025."""

    archived_rows: int        # rows placed before this month
    generic: int              # 0xgen's generic award, archived; its reversal stays
    approval: int             # the creator's approval, archived, never reversed
    validation: int           # the completion's validation, kept


@pytest.fixture
def aged(db: psycopg.Connection[Any]) -> AgedLedger:
    install_variant(db, "retention-test", caps=CAPS)

    def one(statement: str, *args: Any) -> list[tuple[Any, ...]]:
        return db.execute(statement, args).fetchall()

    creation = one("SELECT * FROM pyxp.award_campaign_creation('0xcreator', 'camp-old', 'B2C')")
    approval = one("SELECT * FROM pyxp.award_campaign_approval('camp-old')")
    votes = [one("SELECT * FROM pyxp.award_moderation_vote('0xmod', %s, 'VALID', 'B2C')", c)
             for c in ("camp-old", "camp-2", "camp-3")]          # +2, +2, +1: the day's cap of 5
    refuse = one("SELECT * FROM pyxp.award_moderation_vote('0xmod', 'camp-4', 'REFUSE', 'B2C')")  # -1
    submit = one("SELECT * FROM pyxp.award_completion('0xcompleter', 'camp-old', 'comp-1')")
    one("SELECT * FROM pyxp.register_agency_client('0xagency', 'client@example.com', 'camp-agency')")
    onboard = one("SELECT * FROM pyxp.onboard_agency_client('client@example.com', '0xclient')")
    generic = one(GENERIC, "0xgen", "gen-1")
    idle = [one(GENERIC, "0xidle", f"idle-{i}") for i in range(3)]
    s1 = one(GENERIC, "0xstraggler", "s-1")
    one(GENERIC, "0xstraggler", "s-2")  # stays this month, although s-3 (after it) is archived
    s3 = one(GENERIC, "0xstraggler", "s-3")
    # Kept: written this month.
    validation = one("SELECT * FROM pyxp.award_completion('0xcompleter', 'camp-old', 'comp-1', is_validated => true)")
    one("SELECT * FROM pyxp.reverse_transaction(%s, 'mistake')", generic[0][0])
    one("SELECT * FROM pyxp.reverse_transaction(%s, 'vote withdrawn')", votes[1][0][0])  # frees 2 of 2025-03-10
    one(GENERIC, "0xnew", "new-1")
    moves: dict[int, datetime] = {}
    day = datetime(2025, 3, 10, 12, tzinfo=UTC)
    for n, rows in enumerate([creation, approval, submit, onboard, generic, *idle, s1, s3]):
        for r in rows:
            moves[r[0]] = day - timedelta(days=40 - n)
    for rows in [*votes, refuse]:  # one day: the cap was counted on one day
        moves[rows[0][0]] = day
    place(db, moves)
    assert audit(db) == []
    settled(db)
    return AgedLedger(len(moves), generic[0][0], approval[0][0], validation[0][0])


def settled(db: psycopg.Connection[Any]) -> None:
    """Until no transaction running may still add to the ledger's last feed group. Transaction ids
    are the cluster's: another test worker's open transaction, in another database, made an archive
    refuse with PX030 ("… running now, may still add to"), as it must."""
    for _ in range(1200):
        if db.execute("SELECT pyxp.ledger_xid(pg_snapshot_xmin(pg_current_snapshot())) > max(feed_xid) "
                      "FROM pyxp.xp_transactions").fetchone() != (False,):
            return
        time.sleep(0.05)
    pytest.fail("a transaction older than the ledger's last rows kept running")


def checkpoint(db: psycopg.Connection[Any]) -> None:
    db.execute("SELECT * FROM pyxp.record_audit_checkpoint()")


def archive(db: psycopg.Connection[Any], before: datetime | None = None) -> list[tuple[Any, ...]]:
    return db.execute("SELECT * FROM pyxp.archive_ledger_partitions(%s)", (before or this_month(),)).fetchall()


@pytest.fixture
def archived(db: psycopg.Connection[Any], aged: AgedLedger) -> Iterator[AgedLedger]:
    archive(db)
    yield aged


# --------------------------------------------------------------------------- the archive


def test_an_archive_moves_old_rows_out_and_every_balance_is_proven_from_its_opening(
        db: psycopg.Connection[Any], aged: AgedLedger) -> None:
    before, rows_before = balances(db), db.execute("SELECT count(*) FROM pyxp.xp_transactions").fetchone()
    checkpoint(db)
    done = archive(db)
    assert len(done) == 1
    archive_id, name, start, end, moved, table = done[0]
    assert name.startswith("xp_transactions_before_") and start is None and end == this_month()
    assert moved == aged.archived_rows and table == f"pyxp_archive.{name}"
    assert db.execute(f"SELECT count(*) FROM {table}").fetchone() == (moved,)
    assert db.execute("SELECT count(*) + %s FROM pyxp.xp_transactions", (moved,)).fetchone() == rows_before
    assert name not in [p[0] for p in db.execute("SELECT partition_name FROM pyxp.ledger_partitions()")]
    assert balances(db) == before  # nothing a wallet sees moved
    assert audit(db) == []
    assert db.execute("SELECT * FROM pyxp.audit_since_checkpoint()").fetchall() == []
    # The straggler's opening is at s-3, its position 3: s-2 (kept) is inside it.
    assert db.execute("""SELECT o.wallet_seq, o.total_xp = b.total_xp FROM pyxp.xp_wallet_openings o
                          JOIN pyxp.xp_balances b USING (user_wallet) WHERE user_wallet = '0xstraggler'""").fetchone() \
        == (3, True)
    assert db.execute("SELECT archived_before, rows_archived FROM pyxp.xp_ledger_archives WHERE archive_id = %s",
                      (archive_id,)).fetchone() == (this_month(), moved)
    # Awards go on, on every kind of wallet, and the proofs with them.
    db.execute(GENERIC, ("0xidle", "idle-new"))
    db.execute(GENERIC, ("0xstraggler", "s-4"))
    db.execute("SELECT * FROM pyxp.award_moderation_vote('0xmod', 'camp-new', 'VALID', 'B2C')")
    db.execute("SELECT * FROM pyxp.award_completion('0xcompleter', 'camp-old', 'comp-2')")
    assert audit(db) == []
    checkpoint(db)
    assert db.execute("SELECT * FROM pyxp.audit_since_checkpoint()").fetchall() == []


def test_the_audit_still_fails_on_a_wrong_opening_or_a_wrong_balance(
        db: psycopg.Connection[Any], archived: AgedLedger) -> None:
    db.execute("UPDATE pyxp.xp_wallet_openings SET total_xp = total_xp + 7 WHERE user_wallet = '0xidle'")
    assert ("balance_mismatch", "0xidle") in [(f[0], f[1]) for f in audit(db)]
    db.execute("UPDATE pyxp.xp_wallet_openings SET total_xp = total_xp - 7 WHERE user_wallet = '0xidle'")
    db.execute("UPDATE pyxp.xp_balances SET total_xp = total_xp + 1 WHERE user_wallet = '0xstraggler'")
    found = [(f[0], f[1]) for f in audit(db)]
    assert ("balance_mismatch", "0xstraggler") in found
    db.execute("UPDATE pyxp.xp_balances SET total_xp = total_xp - 1 WHERE user_wallet = '0xstraggler'")
    db.execute("UPDATE pyxp.xp_wallet_openings SET year_xp = year_xp + 1 WHERE user_wallet = '0xstraggler'")
    assert ("period_mismatch", "0xstraggler") in [(f[0], f[1]) for f in audit(db)]
    db.execute("UPDATE pyxp.xp_wallet_openings SET year_xp = year_xp - 1 WHERE user_wallet = '0xstraggler'")
    db.execute("UPDATE pyxp.xp_archived_cap_usage SET used_xp = used_xp + 1 WHERE user_wallet = '0xmod'")
    assert "cap_usage_mismatch" in [f[0] for f in audit(db)]
    db.execute("UPDATE pyxp.xp_archived_cap_usage SET used_xp = used_xp - 1 WHERE user_wallet = '0xmod'")
    db.execute("UPDATE pyxp.xp_archived_originals SET xp_amount = xp_amount + 1")
    assert "reversal_mismatch" in [f[0] for f in audit(db)]
    db.execute("UPDATE pyxp.xp_archived_originals SET xp_amount = xp_amount - 1")
    assert audit(db) == []


def test_the_archive_keeps_what_the_proofs_need(db: psycopg.Connection[Any], archived: AgedLedger) -> None:
    """The two reversals still in the ledger reverse archived rows: their originals are kept;
    the moderator's archived cap usage is what the ledger said (5 - 2 freed); every archived
    flow's request keeps its key and inputs."""
    originals = db.execute("SELECT user_wallet, transaction_type, xp_amount FROM pyxp.xp_archived_originals "
                           "ORDER BY 1").fetchall()
    assert originals == [("0xgen", "CAMPAIGN_APPROVED", 100), ("0xmod", "MODERATION_VALIDATED_BY_MODERATOR", 2)]
    assert db.execute("SELECT allowance, used_xp, cap_max_xp FROM pyxp.xp_archived_cap_usage").fetchall() \
        == [("group:moderation", 5, 5)]
    assert db.execute("SELECT used_xp FROM pyxp.xp_cap_usage WHERE user_wallet = '0xmod'").fetchall() == [(3,)]
    kept = db.execute("""SELECT count(*), count(*) FILTER (WHERE idempotency_key IS NOT NULL AND inputs IS NOT NULL)
                           FROM pyxp.xp_requests WHERE archive_id IS NOT NULL""").fetchone()
    assert kept is not None and kept[0] >= 7 and kept[0] == kept[1]


# --------------------------------------------------------------------------- what it gives up: PX029


def test_a_key_whose_rows_were_archived_is_never_applied_again(
        db: psycopg.Connection[Any], archived: AgedLedger, unchanged: Any) -> None:
    calls = [
        (GENERIC, ("0xgen", "gen-1")),
        (GENERIC, ("0xsomeone-else", "gen-1")),
        ("SELECT * FROM pyxp.award_campaign_creation('0xcreator', 'camp-old', 'B2C')", ()),
        ("SELECT * FROM pyxp.award_campaign_approval('camp-old')", ()),
        ("SELECT * FROM pyxp.award_moderation_vote('0xmod', 'camp-old', 'VALID', 'B2C')", ()),
        ("SELECT * FROM pyxp.award_completion('0xcompleter', 'camp-old', 'comp-1')", ()),
        ("SELECT * FROM pyxp.award_many(%s::jsonb)",
         ('[{"wallet": "0xidle", "action": "CAMPAIGN_APPROVED", "idempotency_key": "idle-0"}]',)),
    ]
    for statement, args in calls:
        with unchanged(), pytest.raises(errors.ArchivedRows) as refused, errors.wrap_errors():
            db.execute(statement, args)
        assert "archived" in str(refused.value)


def test_other_inputs_for_an_archived_flow_key_still_show_the_first_call(
        db: psycopg.Connection[Any], archived: AgedLedger, unchanged: Any) -> None:
    with unchanged(), pytest.raises(errors.IdempotencyConflict) as refused, errors.wrap_errors():
        db.execute("SELECT * FROM pyxp.award_moderation_vote('0xmod', 'camp-old', 'REFUSE', 'B2C')")
    assert '"vote_decision": "VALID"' in (refused.value.detail or "")


def test_reversals_across_the_archive(db: psycopg.Connection[Any], archived: AgedLedger, unchanged: Any) -> None:
    """A row reversed before it was archived: the reversal (kept) replays, another reason is
    PX014. An archived row never reversed: PX029. An id nobody had: PX015."""
    with unchanged():
        replay = db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'mistake')", (archived.generic,)).fetchall()
    assert len(replay) == 1 and replay[0][3] == -100 and replay[0][-1] is True
    with unchanged(), pytest.raises(errors.ReversalRefused), errors.wrap_errors():
        db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'other')", (archived.generic,))
    with unchanged(), pytest.raises(errors.ArchivedRows), errors.wrap_errors():
        db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'late')", (archived.approval,))
    with unchanged(), pytest.raises(errors.UnknownTransaction), errors.wrap_errors():
        db.execute("SELECT * FROM pyxp.reverse_transaction(10000000, 'late')")
    kept = db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'kept row')", (archived.validation,)).fetchall()
    assert kept[0][3] == -100 and audit(db) == []


def test_periods_across_the_archive(db: psycopg.Connection[Any], archived: AgedLedger, unchanged: Any) -> None:
    """A board of a period that began before the archived range ended is refused; the latest
    periods, kept on the balances, still answer, also for a wallet whose rows are all archived."""
    march = datetime(2025, 3, 10, 12, tzinfo=UTC)
    for statement, args in [
            ("SELECT * FROM pyxp.leaderboard(period => 'month', at => %s)", (march,)),
            ("SELECT pyxp.wallet_rank('0xgen', 'week', %s)", (march,)),
            ("SELECT pyxp.period_xp('0xstraggler', 'day', %s)", (march - timedelta(days=30),))]:
        with unchanged(), pytest.raises(errors.ArchivedRows), errors.wrap_errors():
            db.execute(statement, args)
    assert db.execute("SELECT pyxp.period_xp('0xmod', 'day', %s)", (march,)).fetchone() == (2,)  # 5 - 2 freed - 1
    assert db.execute("SELECT pyxp.period_xp('0xnew', 'month')").fetchone() == (100,)
    board = db.execute("SELECT user_wallet, period_xp FROM pyxp.leaderboard(period => 'year')").fetchall()
    assert ("0xnew", 100) in board and ("0xstraggler", 100) in board  # s-2 is this year's; s-1, s-3 are 2025's


def test_what_needs_the_whole_ledger_is_refused(db: psycopg.Connection[Any], archived: AgedLedger,
                                                unchanged: Any) -> None:
    with unchanged(), pytest.raises(errors.ArchivedRows), errors.wrap_errors():
        db.execute("SELECT * FROM pyxp.simulate_rules(pyxp.active_ruleset_id())")
    install_variant(db, "retention-candidate", caps={})  # same zone: allowed, and active now
    with unchanged(), pytest.raises(errors.ArchivedRows), errors.wrap_errors():
        db.execute("SELECT * FROM pyxp.apply_rules_retroactively((SELECT max(ruleset_id) FROM pyxp.rulesets "
                   "WHERE name = 'retention-test'))")
    with unchanged(), pytest.raises(errors.ArchivedRows) as refused, errors.wrap_errors():
        install_variant(db, "retention-paris", timezone="Europe/Paris")
    assert "timezone Europe/Paris" in str(refused.value)
    assert audit(db) == []


# --------------------------------------------------------------------------- the archive's own refusals


def test_an_archive_verifies_what_is_new_first(db: psycopg.Connection[Any], aged: AgedLedger,
                                              unchanged: Any) -> None:
    """Its checkpoint verifies the rows written since the last one: a balance that is not its
    rows' sum refuses the archive (PX028), and nothing is archived or recorded."""
    checkpoint(db)
    late = db.execute(GENERIC, ("0xidle", "late-1")).fetchone()
    assert late is not None
    place(db, {late[0]: datetime(2025, 5, 5, tzinfo=UTC)})  # an old row written after the checkpoint
    db.execute("UPDATE pyxp.xp_balances SET total_xp = total_xp + 1 WHERE user_wallet = '0xidle'")
    with unchanged(), pytest.raises(errors.LedgerInconsistent) as refused, errors.wrap_errors():
        archive(db)
    assert "balance_mismatch 0xidle" in (refused.value.detail or "")
    db.execute("UPDATE pyxp.xp_balances SET total_xp = total_xp - 1 WHERE user_wallet = '0xidle'")
    done = archive(db)
    assert len(done) == 1 and done[0][4] == aged.archived_rows + 1 and audit(db) == []
    assert db.execute("SELECT a.checkpoint_id = max(k.checkpoint_id) FROM pyxp.xp_ledger_archives a, "
                      "pyxp.xp_audit_checkpoints k GROUP BY a.checkpoint_id").fetchone() == (True,)


@pytest.mark.parametrize("before", [None, "infinity", "-infinity", "next month"])
def test_archived_before_must_be_a_past_time(db: psycopg.Connection[Any], unchanged: Any, before: str | None) -> None:
    value: Any = (this_month() + timedelta(days=40)) if before == "next month" else before
    with unchanged(), pytest.raises(errors.InvalidArgument), errors.wrap_errors():
        db.execute("SELECT * FROM pyxp.archive_ledger_partitions(%s::timestamptz)", (value,))


def test_nothing_to_archive_is_no_error(db: psycopg.Connection[Any], unchanged: Any) -> None:
    with unchanged():
        assert archive(db, datetime(2001, 1, 1, tzinfo=UTC)) == []


def test_only_the_archive_detaches_a_partition(db: psycopg.Connection[Any], unchanged: Any) -> None:
    """The guard lets a DETACH through only for the partitions of an archive row written by the
    same transaction: the setting alone is not enough."""
    name, oid = db.execute("SELECT c.relname, c.oid FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                           "WHERE i.inhparent = 'pyxp.xp_transactions'::regclass ORDER BY c.relname LIMIT 1").fetchone()
    with unchanged(), pytest.raises(errors.AppendOnlyLedger), errors.wrap_errors(), db.transaction():
        db.execute("SELECT set_config('pyxp.archiving', %s, true)", (str(oid),))
        db.execute(f"ALTER TABLE pyxp.xp_transactions DETACH PARTITION pyxp.{name}")


def test_the_archive_is_the_owners(db: psycopg.Connection[Any], login_role: Any, connect_as: Any,
                                   unchanged: Any) -> None:
    writer = login_role("pyxp_writer")
    with unchanged(), connect_as(writer) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM pyxp.archive_ledger_partitions(%s)", (this_month(),))


# --------------------------------------------------------------------------- a second archive


def test_a_second_archive_folds_into_the_openings(db: psycopg.Connection[Any], archived: AgedLedger) -> None:
    """After the first archive, last month gets a partition of its own (made by hand, as an owner
    loading history would); rows moved there are archived by a second archive, folded into the
    openings of the first."""
    last_month = (this_month() - timedelta(days=1)).replace(day=1)
    with db.transaction():
        db.execute("SET LOCAL ROLE pyxp_owner")
        db.execute(f"CREATE TABLE pyxp.xp_transactions_{last_month:%Y_%m} PARTITION OF pyxp.xp_transactions "
                   f"FOR VALUES FROM ('{last_month.isoformat()}') TO ('{this_month().isoformat()}')")
    rows = [db.execute(GENERIC, ("0xidle", f"idle-late-{i}")).fetchone() for i in range(2)]
    later = db.execute(GENERIC, ("0xidle", "idle-kept")).fetchone()
    assert later is not None
    place(db, {r[0]: last_month + timedelta(days=3 + i) for i, r in enumerate(rows) if r is not None})
    assert audit(db) == []
    done = archive(db)
    assert [(d[1], d[4]) for d in done] == [(f"xp_transactions_{last_month:%Y_%m}", 2)]
    opening = db.execute("SELECT wallet_seq, total_xp, month_start, month_xp FROM pyxp.xp_wallet_openings "
                         "WHERE user_wallet = '0xidle'").fetchone()
    assert opening is not None and opening[:2] == (5, 500) and opening[2] == last_month and opening[3] == 200
    assert db.execute("SELECT count(*) FROM pyxp.xp_ledger_archives").fetchone() == (2,)
    assert audit(db) == []
    checkpoint(db)


# --------------------------------------------------------------------------- Python and CLI


def test_python_and_cli_archive(xp: XP, db: psycopg.Connection[Any], aged: AgedLedger, conninfo: str) -> None:
    moved = xp.archive_ledger_partitions(this_month())
    assert len(moved) == 1 and moved[0].rows_archived == aged.archived_rows
    assert moved[0].archive_table.startswith("pyxp_archive.")
    out = subprocess.run([PYXP, "--database-url", conninfo, "db", "archive", "--before",
                          f"{this_month():%Y-%m-%d}", "--json"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
    with pytest.raises(errors.ArchivedRows):
        xp.award("0xgen", "CAMPAIGN_APPROVED", "gen-1")


def history(conninfo: str, *args: str) -> str:
    """`pyxp history ARGS`: its output (exit 0, nothing on stderr)."""
    done = subprocess.run([PYXP, "--database-url", conninfo, "history", *args],
                          capture_output=True, text=True, check=False)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    return done.stdout


def test_cli_history_says_which_rows_were_archived(db: psycopg.Connection[Any], archived: AgedLedger,
                                                   conninfo: str, login_role: Any) -> None:
    """`pyxp history` of a wallet whose rows were all archived says so, with its balance and
    where they are; one with some rows left says it at the listing's end; a wallet never archived,
    an unknown one, --json and a writer (who may read no table) list as before."""
    before = f"{this_month():%Y-%m-%d}"
    total, level = db.execute("SELECT total_xp, current_level FROM pyxp.xp_balances "
                              "WHERE user_wallet = '0xidle'").fetchone() or (None, None)
    assert history(conninfo, "0xidle") == (
        f"no ledger rows left: the 3 rows of 0xidle before {before} were archived to schema pyxp_archive "
        f"(pyxp.xp_ledger_archives lists each archive's tables); its balance counts them: {total} XP, "
        f"level {level}\n")
    listed = history(conninfo, "0xgen").splitlines()
    assert "REVERSAL" in listed[-2]
    assert listed[-1] == (f"older: the 1 row of 0xgen before {before} was archived to schema pyxp_archive "
                          "(pyxp.xp_ledger_archives lists each archive's tables)")
    # A page past the rows left (the last page was full): 0xgen still has its reversal in the ledger.
    assert history(conninfo, "0xgen", "--before-id", "1") == (
        f"no ledger rows before id 1; older: the 1 row of 0xgen before {before} was archived to schema "
        "pyxp_archive (pyxp.xp_ledger_archives lists each archive's tables)\n")
    assert "archived" not in history(conninfo, "0xnew")
    assert history(conninfo, "0xnobody") == "no ledger rows\n"
    assert history(conninfo, "0xidle", "--json") == "[]\n"
    writer = make_conninfo(conninfo, user=login_role("pyxp_writer"))
    assert history(writer, "0xidle") == "no ledger rows\n"


def test_why_each_row_names_the_rule_of_an_archived_original(db: psycopg.Connection[Any],
                                                             archived: AgedLedger) -> None:
    """README's "why each row" query: a reversal whose original was archived shows the original's
    rule and ruleset (kept in xp_archived_originals)."""
    rows = db.execute(why_each_row_query(), {"wallet": "0xgen"}).fetchall()
    assert [(r[1], r[4], r[5]) for r in rows] == [("REVERSAL", "retention-test", 1)]
    assert rows[0][3] is not None  # the original's formula


# --------------------------------------------------------------------------- found by review


def test_a_reversal_is_dated_no_earlier_than_its_original(db: psycopg.Connection[Any]) -> None:
    """A transaction may begin before the one it reverses: its row takes the original's
    created_at then, so that it never lands in an older partition than its original."""
    first = db.execute(GENERIC, ("0xlate", "late-1")).fetchone()
    assert first is not None
    later = datetime.now(UTC) + timedelta(minutes=5)  # as if the original began after the reversal
    place(db, {first[0]: later})
    reversal = db.execute("SELECT transaction_id FROM pyxp.reverse_transaction(%s, 'r')", (first[0],)).fetchone()
    assert reversal is not None
    assert db.execute("SELECT created_at FROM pyxp.xp_transactions WHERE id = %s", (reversal[0],)).fetchone() == (later,)
    assert audit(db) == []


def test_an_archive_never_takes_a_reversal_and_keeps_its_original(
        db: psycopg.Connection[Any], aged: AgedLedger, unchanged: Any) -> None:
    """A ledger from before 0016 may hold a reversal dated before its original (its transaction
    began first): archiving it alone would lose it from the original's boards. Refused (PX030)."""
    kept = db.execute(GENERIC, ("0xaaa", "a-1")).fetchone()
    assert kept is not None
    reversal = db.execute("SELECT transaction_id FROM pyxp.reverse_transaction(%s, 'r')", (kept[0],)).fetchone()
    assert reversal is not None
    place(db, {reversal[0]: this_month() - timedelta(hours=1)})
    with unchanged(), pytest.raises(errors.ArchiveRefused) as refused, errors.wrap_errors():
        archive(db)
    assert f"reversal {reversal[0]}" in str(refused.value)


def test_a_ruleset_waits_for_an_archive_and_then_keeps_its_zone(conninfo: str, db: psycopg.Connection[Any],
                                                                 aged: AgedLedger) -> None:
    """The archive reads the zone of its openings' periods under a lock that activating a ruleset
    waits for: a ruleset in another zone, installed while an archive runs, is refused once the
    archive committed (PX029), instead of leaving openings in the old zone."""
    with psycopg.connect(conninfo, autocommit=True) as reader, psycopg.connect(conninfo, autocommit=True) as admin:
        reader.execute("BEGIN")
        reader.execute("SELECT 1 FROM pyxp.xp_transactions LIMIT 1")  # the archive's DETACH waits for this reader
        done: list[Any] = []

        def run_archive() -> None:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute("SET lock_timeout = '20s'")  # the function's own 1 s applies inside it
                done.append(conn.execute("SELECT count(*) FROM pyxp.archive_ledger_partitions(%s)",
                                         (this_month(),)).fetchone())

        thread = threading.Thread(target=run_archive)
        thread.start()
        for _ in range(200):  # until the archive holds the rulesets' lock
            if admin.execute("SELECT count(*) FROM pg_locks WHERE relation = 'pyxp.rulesets'::regclass "
                             "AND mode = 'ShareLock' AND granted").fetchone() == (1,):
                break
            threading.Event().wait(0.005)
        installing = threading.Thread(target=lambda: done.append(_install_paris(conninfo)))
        installing.start()
        threading.Event().wait(0.2)
        reader.execute("COMMIT")
        thread.join(30)
        installing.join(30)
    assert (1,) in done and "PX029" in done
    assert db.execute("SELECT timezone FROM pyxp.rulesets WHERE is_active").fetchone() == ("UTC",)
    assert audit(db) == []


def _install_paris(conninfo: str) -> str:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        try:
            install_variant(conn, "retention-paris", timezone="Europe/Paris")
        except psycopg.Error as error:
            return str(error.sqlstate)
    return "installed"


def test_a_past_archive_row_opens_no_detach(db: psycopg.Connection[Any], archived: AgedLedger,
                                            unchanged: Any) -> None:
    """The guard lets through the partitions of an archive row written by the same transaction
    only: a committed row naming a live partition does not open it."""
    name, oid = db.execute(f"SELECT 'xp_transactions_{this_month():%Y_%m}', "
                           f"'pyxp.xp_transactions_{this_month():%Y_%m}'::regclass::oid").fetchone()
    db.execute("""INSERT INTO pyxp.xp_ledger_archives (archived_before, partitions, partition_oids, rows_archived,
                                                       wallets_opened, timezone, checkpoint_id)
                  SELECT now(), ARRAY[%s], ARRAY[%s::oid], 0, 0, 'UTC', max(checkpoint_id)
                    FROM pyxp.xp_audit_checkpoints""", (name, oid))
    with unchanged(), pytest.raises(errors.AppendOnlyLedger), errors.wrap_errors(), db.transaction():
        db.execute("SELECT set_config('pyxp.archiving', %s, true)", (str(oid),))
        db.execute(f"ALTER TABLE pyxp.xp_transactions DETACH PARTITION pyxp.{name}")


def test_a_row_added_before_an_opening_is_reported(db: psycopg.Connection[Any], archived: AgedLedger) -> None:
    """Rows at positions up to an opening are not walked: the opening counts its archived rows, so
    a row added there (or an archived partition attached back) is an opening_mismatch."""
    db.execute("""INSERT INTO pyxp.xp_transactions (user_wallet, transaction_type, xp_amount, balance_after,
                                                    idempotency_key, wallet_seq, created_at)
                  VALUES ('0xidle', 'FORGED', 5000, 5000, 'forged', 2, now())""")
    found = [(f[0], f[1]) for f in audit(db)]
    assert ("opening_mismatch", "0xidle") in found


def test_an_archive_of_empty_partitions_takes_nothing_away(db: psycopg.Connection[Any]) -> None:
    """Nothing archived, nothing refused: no horizon, simulations and other zones go on."""
    done = archive(db)
    assert [d[4] for d in done] == [0]
    assert db.execute("SELECT pyxp.archive_horizon()").fetchone() == (None,)
    db.execute("SELECT * FROM pyxp.simulate_rules(pyxp.active_ruleset_id())").fetchall()
    install_variant(db, "retention-paris", timezone="Europe/Paris")
    assert audit(db) == []


def test_a_row_left_below_an_archive_made_here_does_not_make_it_pending(
        db: psycopg.Connection[Any], archived: AgedLedger, conninfo: str, capfd: pytest.CaptureFixture[str]) -> None:
    """A row with an id below the archive's last, dated in its range, in the default partition: an archive
    made here leaves one behind when its transaction commits while the archive waits for the ledger's
    lock (a re-test of 0038). 0038 first took such an archive for a publisher's not made here, and every
    later archive was refused (PX030) and pyxp db upgrade warned. Its tables in pyxp_archive say it was
    made here. (0xstraggler's s-2: written before s-3, which was archived; dated back here.)"""
    (left,), = db.execute("SELECT id FROM pyxp.xp_transactions WHERE user_wallet = '0xstraggler'").fetchall()
    assert left < db.execute("SELECT last_transaction_id FROM pyxp.xp_ledger_archives").fetchone()[0]  # type: ignore[index]
    place(db, {left: datetime(2025, 3, 20, tzinfo=UTC)})
    assert db.execute("SELECT tableoid::regclass::text FROM pyxp.xp_transactions WHERE id = %s", (left,)).fetchone() == (
        "pyxp.xp_transactions_default",)
    assert db.execute("SELECT pyxp.archive_pending_here(1)").fetchone() == (False,)
    capfd.readouterr()
    schema.upgrade(conninfo)
    assert "WARNING" not in capfd.readouterr().err
    assert archive(db) == []  # (nothing more to archive; not refused)


def test_a_row_dated_in_an_empty_archived_month_stays_in_the_default_partition(
        db: psycopg.Connection[Any], unchanged: Any) -> None:
    """An archive that took its partitions empty moves no horizon. A row dated in its range written after it
    (a transaction begun then) went to the default partition, and the next create_ledger_partitions made
    that month: under the name the archive had taken when it had taken the month (every later archive
    refused, PX030 "still attached here", or failed, 42P07: a re-test of 0038). A month an archive covered
    is no longer made: the row stays in the default partition, as a row dated in a month an archive took
    rows of does, and archives go on."""
    taken = archive(db)
    assert taken and sum(d[4] for d in taken) == 0
    row = db.execute(GENERIC, ("0xempty", "empty-1")).fetchone()[0]  # type: ignore[index]
    place(db, {row: this_month() - timedelta(days=10)})  # a row of a month the archive covered
    assert db.execute("SELECT tableoid::regclass::text FROM pyxp.xp_transactions WHERE id = %s", (row,)).fetchone() == (
        "pyxp.xp_transactions_default",)
    with unchanged():
        assert db.execute("SELECT partition_name FROM pyxp.create_ledger_partitions(0) WHERE created").fetchall() == []
    assert db.execute("SELECT tableoid::regclass::text FROM pyxp.xp_transactions WHERE id = %s", (row,)).fetchone() == (
        "pyxp.xp_transactions_default",)
    assert archive(db) == []  # (not refused)
    assert audit(db) == []


def test_the_feed_refuses_a_cursor_the_archive_passed(db: psycopg.Connection[Any], archived: AgedLedger,
                                                      unchanged: Any) -> None:
    """A consumer behind the archived rows is told so (PX029), never silently moved past them;
    one past them reads on."""
    floor = db.execute("SELECT feed_floor FROM pyxp.xp_ledger_archives").fetchone()
    assert floor is not None and floor[0] > 0
    with unchanged(), pytest.raises(errors.ArchivedRows), errors.wrap_errors():
        db.execute("SELECT * FROM pyxp.changes(0)")
    rows = steady(lambda: db.execute("SELECT transaction_id FROM pyxp.changes(%s, 1000)", (floor[0],)).fetchall())
    kept = db.execute("SELECT count(*) FROM pyxp.xp_transactions t, pyxp.xp_ledger_archives a "
                      "WHERE (t.feed_xid::text::bigint << 24) > a.feed_floor").fetchone()
    assert kept is not None and len(rows) == kept[0] > 0


def test_an_allowance_moved_to_a_period_holding_archived_gains_is_refused(
        db: psycopg.Connection[Any], unchanged: Any) -> None:
    """0025: an activation that moves an allowance's period counts what the new period used; the
    year holds gains that were archived, which it cannot count: PX029, nothing written. A month
    (after the archived range) is accepted."""
    start = this_month() - timedelta(days=20)
    if start.year != this_month().year:
        pytest.skip("no archived month in this year yet (January)")
    install_variant(db, "retention-daily", caps=CAPS)
    votes = [db.execute("SELECT transaction_id FROM pyxp.award_moderation_vote('0xmod', %s, 'VALID', 'B2C')", (c,)).fetchone()
             for c in ("camp-1", "camp-2")]
    place(db, {v[0]: start for v in votes if v is not None})
    archive(db)
    yearly = {action: (5, "year", "moderation") for action in CAPS}
    with unchanged(), pytest.raises(errors.ArchivedRows) as refused, errors.wrap_errors():
        install_variant(db, "retention-yearly", caps=yearly)
    assert "allowance group:moderation" in str(refused.value)
    install_variant(db, "retention-monthly", caps={action: (5, "month", "moderation") for action in CAPS})
    assert db.execute("SELECT xp_amount FROM pyxp.award_moderation_vote('0xmod', 'camp-3', 'VALID', 'B2C')"
                      ).fetchall() == [(2,)]
    assert audit(db) == []


# --------------------------------------------------------------------------- reads overlapping an archive
# A hostile test (2026-11-27, 0026): a read whose snapshot predates an archive's commit (it waited
# for the archive's lock, or reads in an older REPEATABLE READ snapshot) was planned on the
# partitions left and saw no archive: the archived rows were missing, with no PX029.

ARCHIVE_HELD = "SELECT * FROM pyxp.archive_ledger_partitions('{:%Y-%m-%d} UTC')"


@pytest.mark.parametrize("read", [
    "SELECT transaction_id FROM pyxp.changes(0, 1000)",                         # skipped the archived rows
    "SELECT * FROM pyxp.audit()",                                               # 12 findings on a sound ledger
    "SELECT * FROM pyxp.leaderboard(10, 0, 'month', '2025-03-15')",             # an empty board
    "SELECT * FROM pyxp.audit_since_checkpoint()",
    "SELECT pyxp.period_xp('0xstraggler', 'month', '2025-02-15 12:00+00')",
    "SELECT * FROM pyxp.history('0xidle')",
    "SELECT * FROM pyxp.simulate_rules(pyxp.active_ruleset_id())",
])
def test_a_read_that_waited_for_an_archive_is_refused_for_a_retry(
        conninfo: str, db: psycopg.Connection[Any], aged: AgedLedger, read: str) -> None:
    """Run again, it sees the archive: PX029 where it needs the archived rows, else the rest."""
    outcome = called_behind_holder(conninfo, db, ARCHIVE_HELD.format(this_month()),
                                   lambda conn: conn.execute(read).fetchall())
    assert outcome == {"sqlstate": "40001"}, outcome
    assert db.execute("SELECT count(*) FROM pyxp.xp_ledger_archives WHERE rows_archived > 0").fetchone() == (1,)
    if "audit" in read:
        assert db.execute(read).fetchall() == []


@pytest.mark.parametrize("read", ["SELECT transaction_id FROM pyxp.history('0xnow')",
                                  "SELECT check_name FROM pyxp.audit()"])  # (a parallel query: no subtransaction)
def test_a_read_that_waited_for_an_archive_of_empty_partitions_answers(
        conninfo: str, db: psycopg.Connection[Any], read: str) -> None:
    """It took nothing the read could see (a hostile test: 40001 for changes, history, audit)."""
    row = db.execute(GENERIC, ("0xnow", "now-1")).fetchone()
    assert row is not None
    outcome = called_behind_holder(conninfo, db, ARCHIVE_HELD.format(this_month()),
                                   lambda conn: conn.execute(read).fetchall())
    assert outcome == {"result": [(row[0],)] if "history" in read else []}, outcome
    assert db.execute("SELECT rows_archived FROM pyxp.xp_ledger_archives").fetchall() == [(0,)]


@pytest.mark.parametrize(("history", "call"), [
    # a completion's outcome naming another completer: PX011 before and after the archive
    (["SELECT * FROM pyxp.award_campaign_creation('0xcreator', 'camp-old', 'B2C')",
      "SELECT * FROM pyxp.award_completion('0xcompleter', 'camp-old', 'comp-1')"],
     "SELECT * FROM pyxp.award_completion('0xintruder', 'camp-old', 'comp-1', is_validated => true)"),
    # a registration of a client onboarded: stored granted before and after the archive
    (["SELECT * FROM pyxp.register_agency_client('0xagency', 'client@example.com', 'camp-a')",
      "SELECT * FROM pyxp.onboard_agency_client('client@example.com', '0xclient')"],
     "SELECT * FROM pyxp.register_agency_client('0xagency', 'client@example.com', 'camp-b')"),
])
def test_a_flow_that_waited_for_an_archive_is_refused_for_a_retry(
        conninfo: str, db: psycopg.Connection[Any], history: list[str], call: str) -> None:
    """Its checks read what pyxp recorded of an earlier call from the ledger: rows archived after
    its snapshot read as nothing (a hostile test: +100 XP to the intruder; a registration stored
    pending, then reported by the audit). 40001; run again, the archive's records answer."""
    for statement in history:
        db.execute(statement)
    place(db, {i: this_month() - timedelta(days=5) for (i,) in db.execute("SELECT id FROM pyxp.xp_transactions")})
    outcome = called_behind_holder(conninfo, db, ARCHIVE_HELD.format(this_month()),
                                   lambda conn: conn.execute(call).fetchall())
    assert outcome == {"sqlstate": "40001"}, outcome
    # Nothing written by the refused call (the archive committed meanwhile).
    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions WHERE user_wallet = '0xintruder'").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM pyxp.agency_b2c_clients WHERE campaign_id = 'camp-b'").fetchone() == (0,)
    if "intruder" in call:
        with pytest.raises(errors.CampaignMismatch), errors.wrap_errors():
            db.execute(call)
    else:
        db.execute(call)
        assert db.execute("SELECT xp_granted FROM pyxp.agency_b2c_clients WHERE campaign_id = 'camp-b'"
                          ).fetchone() == (True,)
    assert audit(db) == []


def test_a_repeatable_read_begun_before_an_archive_is_refused_for_a_retry(
        conninfo: str, db: psycopg.Connection[Any], aged: AgedLedger) -> None:
    with psycopg.connect(conninfo) as consumer:
        consumer.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        consumer.execute("SELECT 1")  # the snapshot
        archive(db)
        with pytest.raises(psycopg.errors.SerializationFailure):
            consumer.execute("SELECT * FROM pyxp.changes(0, 1000)")
        consumer.rollback()
    with pytest.raises(errors.ArchivedRows), errors.wrap_errors():
        db.execute("SELECT * FROM pyxp.changes(0, 1000)")


def test_a_partition_created_during_a_read_is_no_concern(conninfo: str, db: psycopg.Connection[Any]) -> None:
    """Only a partition the snapshot holds and the catalog no longer does refuses a read."""
    db.execute("SELECT * FROM pyxp.award('0xp', 'CAMPAIGN_APPROVED', 'p1')")
    with psycopg.connect(conninfo) as reader:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT 1")  # the snapshot (no lock on the ledger: the ATTACH would wait for it)
        created = db.execute("SELECT count(*) FROM pyxp.create_ledger_partitions(24) WHERE created").fetchone()
        assert created is not None and created[0] > 0
        # No 40001: the feed reads (what it hands out depends on the other databases' transactions
        # its snapshot saw running), the history and the audit answer.
        reader.execute("SELECT * FROM pyxp.changes(0, 1000)").fetchall()
        assert len(reader.execute("SELECT * FROM pyxp.history('0xp')").fetchall()) == 1
        assert reader.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        reader.rollback()


# --------------------------------------------------------------------------- the feed's floor (0026)

def test_a_consumer_that_read_every_archived_row_reads_on(db: psycopg.Connection[Any], aged: AgedLedger) -> None:
    """The floor is the cursor of the last row of the highest archived group (before 0026 that
    group's cursor + 2^24 - 1, which no row has: this consumer was refused for good)."""
    feed = steady(lambda: db.execute("SELECT cursor, transaction_id, created_at FROM pyxp.changes(0, 1000)").fetchall())
    read = [f for f in feed if f[2] < this_month()]
    archive(db)
    floor = db.execute("SELECT feed_floor FROM pyxp.xp_ledger_archives").fetchone()
    assert floor == (read[-1][0],)
    kept = [f[1] for f in feed if f[0] > read[-1][0]]
    assert settled_read(lambda: [r[0] for r in db.execute("SELECT transaction_id FROM pyxp.changes(%s, 1000)", (floor[0],))],
                        kept) == kept
    with pytest.raises(errors.ArchivedRows), errors.wrap_errors():
        db.execute("SELECT * FROM pyxp.changes(%s, 1000)", (read[-2][0],))


def test_a_wallet_consumer_past_its_archived_rows_reads_on(db: psycopg.Connection[Any], aged: AgedLedger) -> None:
    """A consumer of one wallet (0xidle: three rows, all archived) at its last row's cursor, below
    the feed's floor: the wallet's new rows come (before 0026: PX029 for good). At its first row's
    cursor it would miss two: PX029."""
    mine = steady(lambda: db.execute("SELECT cursor FROM pyxp.changes(0, 1000, '0xidle')").fetchall())
    assert len(mine) == 3
    archive(db)
    floor = db.execute("SELECT feed_floor FROM pyxp.xp_ledger_archives").fetchone()
    assert floor is not None and mine[-1][0] < floor[0]
    assert db.execute("SELECT last_cursor FROM pyxp.xp_wallet_openings WHERE user_wallet = '0xidle'"
                      ).fetchone() == (mine[-1][0],)
    new = db.execute("SELECT transaction_id FROM pyxp.award('0xidle', 'CAMPAIGN_APPROVED', 'idle-new')").fetchone()
    # Polled, as a consumer does: the feed holds back a group while a transaction its snapshot saw
    # running may still be running here (one of another database that ended meanwhile counts; the
    # other test worker's transactions made this read come back empty, now and then).
    for _ in range(100):
        read = db.execute("SELECT transaction_id FROM pyxp.changes(%s, 1000, '0xidle')", (mine[-1][0],)).fetchall()
        if read:
            break
        time.sleep(0.02)
    assert read == [new]
    with pytest.raises(errors.ArchivedRows), errors.wrap_errors():
        db.execute("SELECT * FROM pyxp.changes(%s, 1000, '0xidle')", (mine[0][0],))


def test_the_audit_compares_a_checkpoint_at_the_opening_with_it(db: psycopg.Connection[Any],
                                                                archived: AgedLedger) -> None:
    """An opening and a balance raised together, no row since: the archive's checkpoint at that
    position still holds the true balance (0026; before, audit() was clean)."""
    db.execute("UPDATE pyxp.xp_wallet_openings SET total_xp = total_xp + 5000 WHERE user_wallet = '0xidle'")
    db.execute("UPDATE pyxp.xp_balances SET total_xp = total_xp + 5000 WHERE user_wallet = '0xidle'")
    found = [(f[0], f[1]) for f in audit(db) if f[1] == "0xidle"]
    assert ("checkpoint_mismatch", "0xidle") in found, found


def month(back: int) -> datetime:
    """The first instant (UTC) of the month ``back`` months before this one."""
    at = this_month()
    for _ in range(back):
        at = (at - timedelta(days=1)).replace(day=1)
    return at


def split_the_past(db: psycopg.Connection[Any], before: datetime, months_from: datetime) -> None:
    """Reshapes the partitions of the past as a superuser could (tests cannot wait months): one
    for everything before ``before``, then one per month from ``months_from`` to this one (a month
    between the two has none: its rows go to the default partition)."""
    bounds: list[tuple[str, datetime | None, datetime]] = [(f"xp_transactions_before_{before:%Y_%m}", None, before)]
    at = months_from
    while at < this_month():
        following = (at + timedelta(days=32)).replace(day=1)
        bounds.append((f"xp_transactions_{at:%Y_%m}", at, following))
        at = following
    with db.transaction():
        for trigger in GUARD:
            db.execute(f"ALTER EVENT TRIGGER {trigger} DISABLE")
        old = f"xp_transactions_before_{this_month():%Y_%m}"
        db.execute(f"ALTER TABLE pyxp.xp_transactions DETACH PARTITION pyxp.{old}")
        db.execute(f"DROP TABLE pyxp.{old}")
        db.execute("SET LOCAL ROLE pyxp_owner")
        for name, low, high in bounds:
            db.execute("SELECT pyxp.new_ledger_partition(%s)", (name,))
            start = "MINVALUE" if low is None else f"'{low.isoformat()}'"
            db.execute(f"ALTER TABLE pyxp.xp_transactions ATTACH PARTITION pyxp.{name} "
                       f"FOR VALUES FROM ({start}) TO ('{high.isoformat()}')")
        db.execute("RESET ROLE")
        for trigger in GUARD:
            db.execute(f"ALTER EVENT TRIGGER {trigger} ENABLE ALWAYS")

def test_a_month_in_the_default_partition_is_moved_before_it_is_archived(db: psycopg.Connection[Any],
                                                                         unchanged: Any) -> None:
    """A month written without its partition (a missed create-partitions: its rows went to the
    default partition, which no archive takes) and a reversal of one of its rows a month later.
    Before 0029 the archive left that month behind for good, and refused every later month (the
    reversal's: PX030). Now the archive is refused while such rows lie in its range, with nothing
    archived, and names the way out: creating the partitions moves the month into its own, and
    the archive then takes everything, the reversal with its original."""
    split_the_past(db, month(2), month(1))  # month -2 without its partition
    old = db.execute(GENERIC, ("0xdef", "def-1")).fetchone()
    missed = db.execute(GENERIC, ("0xdef", "def-2")).fetchone()
    assert old is not None and missed is not None
    reversal = db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'mistake')", (missed[0],)).fetchone()
    assert reversal is not None
    place(db, {old[0]: month(3) + timedelta(days=9), missed[0]: month(2) + timedelta(days=9),
               reversal[0]: month(1) + timedelta(days=9)})
    assert db.execute("SELECT tableoid::regclass::text FROM pyxp.xp_transactions WHERE id = %s",
                      (missed[0],)).fetchone() == ("pyxp.xp_transactions_default",)
    assert audit(db) == []
    assert [d[4] for d in archive(db, month(2))] == [1]  # before month -2: the old row
    # The range asked for holds month -2 (0030: an archive to month -1 took month -3 and said
    # nothing, a hostile test), as does an archive to this month.
    for before in (month(1), this_month()):
        with unchanged(), pytest.raises(errors.ArchiveRefused) as refused, errors.wrap_errors():
            archive(db, before)
        assert f"transaction {missed[0]} " in str(refused.value)
    hint = refused.value.__cause__.diag.message_hint  # type: ignore[union-attr]
    assert hint is not None and "create_ledger_partitions" in hint, hint
    made = db.execute("SELECT partition_name, created, note FROM pyxp.create_ledger_partitions()").fetchall()
    assert (f"xp_transactions_{month(2):%Y_%m}", True, "1 rows moved from xp_transactions_default") in made
    assert audit(db) == []
    assert [d[4] for d in archive(db)] == [1, 1]  # month -2 (moved), month -1 (the reversal)
    assert audit(db) == []
    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions").fetchone() == (0,)


@pytest.mark.parametrize("read", [
    "SELECT pyxp.period_xp('0xread', 'month', %(at)s)",               # 0: its month read nothing
    "SELECT * FROM pyxp.leaderboard(10, 0, 'month', %(at)s)",          # an empty board
    "SELECT transaction_id FROM pyxp.history('0xread')",
])
def test_a_read_whose_snapshot_is_older_than_a_move_is_refused_for_a_retry(
        conninfo: str, db: psycopg.Connection[Any], read: str) -> None:
    """Month -2 had no partition, and its rows are moved into one (0029). A read whose snapshot is
    older than the move, planned after it, prunes the default partition for that month and reads
    the new one, where its snapshot sees none of the moved rows: 40001; run again, it sees them."""
    split_the_past(db, month(3), month(1))  # month -2 without its partition
    row = db.execute(GENERIC, ("0xread", "r1")).fetchone()
    assert row is not None
    at = month(2) + timedelta(days=9)
    place(db, {row[0]: at})
    db.execute(GENERIC, ("0xread", "r2"))  # this month: the wallet's kept period
    expected = db.execute(read, {"at": at}).fetchall()
    assert expected not in ([], [(0,)])
    with psycopg.connect(conninfo) as reader:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT 1")  # the snapshot (no lock on the ledger: the move would wait for it)
        made = db.execute("SELECT note FROM pyxp.create_ledger_partitions()").fetchall()
        assert ("1 rows moved from xp_transactions_default",) in made
        with pytest.raises(psycopg.errors.SerializationFailure):
            reader.execute(read, {"at": at})
        reader.rollback()
        assert reader.execute(read, {"at": at}).fetchall() == expected


def test_an_archive_of_a_group_a_running_transaction_may_add_to_is_refused(
        conninfo: str, db: psycopg.Connection[Any], unchanged: Any) -> None:
    """A transaction with an older id, open across the archive, would chain the wallet's next row
    into the archived row's group, at a cursor at or below the floor: delivered to nobody (a
    hostile test, 0027). The archive is refused (PX030) while it runs, and goes once it ended."""
    with psycopg.connect(conninfo) as older:
        older.execute("SELECT pg_current_xact_id()")  # a transaction id, nothing written yet
        row = db.execute(GENERIC, ("0xw", "w1")).fetchone()
        assert row is not None
        place(db, {row[0]: this_month() - timedelta(milliseconds=100)})
        with unchanged(), pytest.raises(errors.ArchiveRefused) as refused, errors.wrap_errors():
            archive(db)
        assert "running now" in str(refused.value)
        older.rollback()
    assert [d[4] for d in archive(db)] == [1]
    assert audit(db) == []


def test_a_wallet_consumer_is_not_moved_past_a_row_across_two_archives(conninfo: str, db: psycopg.Connection[Any]) -> None:
    """One feed group across two months (a transaction with a lower id chained two rows into the
    group of two rows written just before midnight): after the first archive took the first two,
    the rest were ranked anew, and the second archive recorded the wallet's last row at a rank
    below a cursor the consumer had been handed; it read on without the last row (a hostile
    test, 0027). Now the group's rank is unknown after the first archive: PX029."""
    split_the_past(db, month(1), month(1))
    award = "SELECT transaction_id FROM pyxp.award('0xw', 'CAMPAIGN_APPROVED', %s)"
    with psycopg.connect(conninfo) as chained, psycopg.connect(conninfo) as first:
        chained.execute("SELECT pg_current_xact_id()")  # the lower transaction id
        early = [first.execute(award, (k,)).fetchone()[0] for k in ("w1", "w2")]  # type: ignore[index]
        first.commit()
        late = [chained.execute(award, (k,)).fetchone()[0] for k in ("a", "b")]  # type: ignore[index]
        chained.commit()
    assert db.execute("SELECT count(DISTINCT feed_xid) FROM pyxp.xp_transactions").fetchone() == (1,)
    place(db, {**{i: month(1) - timedelta(milliseconds=100) for i in early},
               **{i: month(1) + timedelta(seconds=1) for i in late}})
    read = steady(lambda: db.execute("SELECT cursor FROM pyxp.changes(0, 3, '0xw')").fetchall())  # w1, w2, a
    archive(db, month(1))
    with pytest.raises(errors.ArchivedRows), errors.wrap_errors():
        db.execute("SELECT * FROM pyxp.changes(%s, 100, '0xw')", (read[-1][0],))
    archive(db)
    with pytest.raises(errors.ArchivedRows), errors.wrap_errors():
        db.execute("SELECT * FROM pyxp.changes(%s, 100, '0xw')", (read[-1][0],))
    assert audit(db) == []
