"""Upgrading while the application writes (a rolling deploy; helper-69).

0034 creates the TRUNCATE guards table by table, in name order: xp_award_claims before
xp_balances. A writer's transaction that has written xp_balances and next writes xp_award_claims
(the award's own order) closes a cycle with it, and PostgreSQL ends the process whose
deadlock_timeout runs out first. Under 8 live writers the migration was that process in four runs
out of five: pyxp db upgrade failed with 40P01. Now the migration's session waits longer than a
writer's before it checks (migrations/env.py), so the writer is ended (its call is retried with its
key); and when the migration is ended all the same (a writer that waits longer still), the revision,
rolled back alone, is run again (pyxp.schema).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pyxp import schema


def _blocked_by(watcher: psycopg.Connection[Any], pid: int, process: subprocess.Popen[str]) -> None:
    for _ in range(1200):
        if watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))",
                           (pid,)).fetchone() != (0,):
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("the migration never waited for the writer")


def _upgrade_against_a_writer(conninfo: str, writer_deadlock_timeout: str) -> tuple[subprocess.Popen[str], str,
                                                                                       str, BaseException | None]:
    """0033 -> 0034 while a writer's transaction holds the balances and then asks for the claims:
    the migration, its stdout and stderr, and what the writer's request for the claims raised."""
    schema.upgrade(conninfo, "0033")
    with psycopg.connect(conninfo, autocommit=True) as setup:
        setup.execute("SELECT * FROM pyxp.award(wallet => 'w1', action => 'CAMPAIGN_APPROVED', "
                      "idempotency_key => 'before')")
    command = [str(Path(sys.executable).with_name("pyxp")), "--database-url", conninfo, "db", "upgrade",
               "--revision", "0034"]
    raised: list[BaseException] = []
    with psycopg.connect(conninfo) as writer, psycopg.connect(conninfo, autocommit=True) as watcher:
        writer.execute("SELECT set_config('deadlock_timeout', %s, false)", (writer_deadlock_timeout,))
        # A writer's transaction mid-way: it has written the balances, the claims come next.
        writer.execute("LOCK TABLE pyxp.xp_balances IN ROW EXCLUSIVE MODE")
        migration = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _blocked_by(watcher, writer.info.backend_pid, migration)

        def claims() -> None:
            try:
                writer.execute("LOCK TABLE pyxp.xp_award_claims IN ROW EXCLUSIVE MODE")
            except psycopg.Error as exc:
                raised.append(exc)

        thread = threading.Thread(target=claims)
        thread.start()
        thread.join(120)
        assert not thread.is_alive()
        writer.rollback()
        out, err = migration.communicate(timeout=300)
    return migration, out, err, raised[0] if raised else None


def _assert_migrated_and_clean(conninfo: str) -> None:
    assert schema.current_revision(conninfo) == "0034"
    with psycopg.connect(conninfo, autocommit=True) as check:
        assert check.execute("SELECT count(*) FROM pyxp.audit()").fetchone() == (0,)
        assert check.execute("SELECT replayed FROM pyxp.award(wallet => 'w1', action => 'CAMPAIGN_APPROVED', "
                             "idempotency_key => 'before')").fetchone() == (True,)


def test_a_writer_deadlocked_with_an_upgrade_is_the_one_ended(fresh_database: Callable[..., str]) -> None:
    conninfo = fresh_database()
    migration, out, err, raised = _upgrade_against_a_writer(conninfo, "1s")  # (the server's default)
    assert isinstance(raised, psycopg.errors.DeadlockDetected), raised
    assert migration.returncode == 0 and "0033 -> 0034" in out, (out, err)
    assert "40P01" not in err  # (the revision ran once)
    _assert_migrated_and_clean(conninfo)


@pytest.mark.slow
def test_an_upgrade_ended_by_a_deadlock_runs_the_revision_again(fresh_database: Callable[..., str]) -> None:
    conninfo = fresh_database()
    # A writer that waits longer than the migration's session (5 s) before it checks: the migration is ended.
    migration, out, err, raised = _upgrade_against_a_writer(conninfo, "60s")
    assert raised is None  # (the writer got its lock once the revision was rolled back)
    assert migration.returncode == 0 and "0033 -> 0034" in out, (out, err)
    assert "40P01" in err and "running again (2 of 5)" in err, err
    _assert_migrated_and_clean(conninfo)


def test_a_relative_downgrade_run_again_counts_from_where_it_began(fresh_database: Callable[..., str]) -> None:
    """downgrade -2 from 0041: 0041's step commits, 0040's waits for a reader of the table it drops
    and times out (55P03); the run again must stop at 0039, not undo 0039 too (helper-71)."""
    conninfo = fresh_database()
    schema.upgrade(conninfo, "0041")
    failure: list[BaseException] = []
    with psycopg.connect(conninfo) as reader, psycopg.connect(conninfo, autocommit=True) as watcher:
        reader.execute("LOCK TABLE pyxp.ruleset_activations IN ACCESS SHARE MODE")

        def downgrade() -> None:
            try:
                schema.downgrade(make_conninfo(conninfo, options="-c lock_timeout=500"), "-2")
            except BaseException as exc:  # noqa: BLE001 (reported below)
                failure.append(exc)

        thread = threading.Thread(target=downgrade)
        thread.start()
        blocked: set[int] = set()
        while len(blocked) < 2:  # (each run is a session of its own: a second pid is a run again)
            assert thread.is_alive(), failure
            blocked |= {row[0] for row in watcher.execute(
                "SELECT pid FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))",
                (reader.info.backend_pid,))}
            time.sleep(0.02)
        reader.rollback()
        thread.join(120)
        assert not thread.is_alive() and not failure, failure
    assert schema.current_revision(conninfo) == "0039"
