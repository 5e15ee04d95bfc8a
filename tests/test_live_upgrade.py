"""Upgrading while the application writes (a rolling deploy; helper-69).

0034 creates the TRUNCATE guards table by table, in name order: xp_award_claims before
xp_balances. A writer's transaction that has written xp_balances and next writes xp_award_claims
(the award's own order) closes a cycle with it; PostgreSQL ends the one that began waiting first.
When that is the migration, pyxp db upgrade failed with 40P01 (four runs out of five under 8 live
writers). The revision is rolled back alone, so the run is made again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from pyxp import schema


def _blocked_by(watcher: psycopg.Connection[Any], pid: int, process: subprocess.Popen[str]) -> None:
    for _ in range(1200):
        if watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))",
                           (pid,)).fetchone() != (0,):
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("the migration never waited for the writer")


def test_an_upgrade_deadlocked_with_a_live_writer_runs_the_revision_again(
        fresh_database: Callable[..., str]) -> None:
    conninfo = fresh_database()
    schema.upgrade(conninfo, "0033")
    with psycopg.connect(conninfo, autocommit=True) as setup:
        setup.execute("SELECT * FROM pyxp.award(wallet => 'w1', action => 'CAMPAIGN_APPROVED', "
                      "idempotency_key => 'before')")
    # The migration checks for deadlocks first (it began waiting first): it is the one ended.
    environment = {**os.environ, "PYXP_DATABASE_URL": conninfo, "PGOPTIONS": "-c deadlock_timeout=100ms"}
    command = [str(Path(sys.executable).with_name("pyxp")), "db", "upgrade", "--revision", "0034"]
    with psycopg.connect(conninfo) as writer, psycopg.connect(conninfo, autocommit=True) as watcher:
        writer.execute("SET deadlock_timeout = '30s'")
        # A writer's transaction mid-way: it has written the balances, the claims come next.
        writer.execute("LOCK TABLE pyxp.xp_balances IN ROW EXCLUSIVE MODE")
        migration = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        _blocked_by(watcher, writer.info.backend_pid, migration)
        done = threading.Event()

        def claims() -> None:
            writer.execute("LOCK TABLE pyxp.xp_award_claims IN ROW EXCLUSIVE MODE")
            done.set()

        thread = threading.Thread(target=claims)
        thread.start()
        thread.join(60)
        assert done.is_set()
        writer.commit()
        out, err = migration.communicate(timeout=300)
    assert migration.returncode == 0 and "0033 -> 0034" in out, (out, err)
    assert "40P01" in err  # (it was met, and said so)
    assert schema.current_revision(conninfo) == "0034"
    with psycopg.connect(conninfo, autocommit=True) as check:
        assert check.execute("SELECT count(*) FROM pyxp.audit()").fetchone() == (0,)
        assert check.execute("SELECT replayed FROM pyxp.award(wallet => 'w1', action => 'CAMPAIGN_APPROVED', "
                             "idempotency_key => 'before')").fetchone() == (True,)
