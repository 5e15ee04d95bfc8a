"""Reads on a hot standby (issue 15, item 5): a private primary and a streaming standby, started
by the test from the local server binaries (as the ``postgres`` OS user when root), stopped at
the end. Every read function and read CLI command answers on the standby, the change feed
included (its horizon there is the snapshot's xmin), and ``XP(primary, read_url=standby)``
routes the reads to the standby and the writes to the primary."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from conftest import base_backup, primary_with_pyxp
from pyxp import XP
from pyxp.database import EmbeddedCluster

PYXP = str(Path(sys.executable).with_name("pyxp"))


@pytest.fixture(scope="module")
def replicated() -> Iterator[tuple[str, str]]:
    """(primary, standby) conninfos of database ``pyxp`` on a fresh primary and its streaming standby."""
    primary, primary_url = primary_with_pyxp()
    standby = EmbeddedCluster(primary.bindir)
    try:
        base_backup(primary, standby)
        standby.start_existing()
        yield primary_url, make_conninfo(standby.conninfo, dbname="pyxp")
    finally:
        standby.stop()
        primary.stop()


def _caught_up(primary: str, standby: str) -> None:
    """Waits until the standby has replayed everything the primary had written."""
    with psycopg.connect(primary, autocommit=True) as conn:
        lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
    deadline = time.monotonic() + 60
    with psycopg.connect(standby, autocommit=True) as conn:
        while not conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "the standby did not catch up"
            time.sleep(0.05)


READS = {
    "balance": "SELECT total_xp FROM pyxp.balance(wallet => '0x_creator')",
    "history": "SELECT count(*) FROM pyxp.history(wallet => '0x_creator')",
    "leaderboard": "SELECT count(*) FROM pyxp.leaderboard()",
    "wallet_rank": "SELECT pyxp.wallet_rank(wallet => '0x_creator')",
    "level_for": "SELECT level FROM pyxp.level_for(total_xp => 2500)",
    "audit": "SELECT count(*) FROM pyxp.audit()",
    "audit_since_checkpoint": "SELECT count(*) FROM pyxp.audit_since_checkpoint()",
    "changes": "SELECT count(*) FROM pyxp.changes(after_cursor => 0, max_rows => 1000)",
}


def test_every_read_function_answers_on_the_standby(replicated: tuple[str, str]) -> None:
    primary, standby = replicated
    with XP(primary) as xp:
        xp.award_campaign_creation("0x_creator", "camp_standby", "B2C", no_rewards=True)
        checkpoint = xp.record_audit_checkpoint()  # the standby then verifies what came after it
        xp.award_moderation_vote("0x_mod", "camp_standby", "VALID")
    assert checkpoint.rows_verified >= 1
    _caught_up(primary, standby)
    with psycopg.connect(primary, autocommit=True) as on_primary, \
            psycopg.connect(standby, autocommit=True) as on_standby:
        assert on_standby.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        for name, query in READS.items():
            assert on_standby.execute(query).fetchall() == on_primary.execute(query).fetchall(), name
        assert on_standby.execute(READS["changes"]).fetchone() == (3,)  # the feed, on the standby too
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            on_standby.execute("SELECT * FROM pyxp.award(wallet => 'x', action => 'CAMPAIGN_APPROVED', "
                               "idempotency_key => 'on-standby')")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            on_standby.execute("SELECT * FROM pyxp.record_audit_checkpoint()")


def test_reads_go_to_read_url_and_writes_to_the_primary(replicated: tuple[str, str]) -> None:
    primary, standby = replicated
    with XP(primary, read_url=standby) as xp:
        award = xp.award("0x_routed", "CAMPAIGN_APPROVED", "routed-1")  # on the primary
        assert award.xp == 100
        _caught_up(primary, standby)
        assert xp.balance("0x_routed").total_xp == 100
        assert [row.transaction_type for row in xp.history("0x_routed")] == ["CAMPAIGN_APPROVED"]
        assert xp.rank("0x_routed") is not None and xp.level_for(100).level == 2 and xp.audit() == []
        assert any(change.user_wallet == "0x_routed" for change in xp.changes(0, 1000))
    with psycopg.connect(primary, autocommit=True) as conn:  # the write happened once, on the primary
        assert conn.execute("SELECT count(*) FROM pyxp.xp_transactions WHERE user_wallet = '0x_routed'"
                            ).fetchone() == (1,)


@pytest.mark.parametrize("command", [["balance", "0x_creator"], ["history", "0x_creator"], ["leaderboard"],
                                     ["audit"], ["audit", "--since-checkpoint"], ["levels"], ["rules", "show"], ["rules", "list"],
                                     ["db", "current"]])
def test_read_cli_commands_answer_on_the_standby(replicated: tuple[str, str], command: list[str]) -> None:
    _, standby = replicated
    result = subprocess.run([PYXP, "--database-url", standby, *command, "--json"], capture_output=True,
                            text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)


def test_the_standby_refuses_writes_with_a_clear_error(replicated: tuple[str, str]) -> None:
    _, standby = replicated
    result = subprocess.run([PYXP, "--database-url", standby, "award", "generic", "0xw", "CAMPAIGN_APPROVED",
                             "k"], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 2 and "read-only" in result.stderr



def test_a_standby_does_not_compare_timelines(replicated: tuple[str, str]) -> None:
    """0033: a standby's control file names the timeline it replays only from its next restartpoint,
    minutes after a switchover, and a re-test had a standby that had replayed the new primary's
    adoption refuse valid cursors with PX033 meanwhile. A standby compares no timeline (it receives
    a new timeline's rows only with or after the adoption that records it). Here the ledger names a
    timeline neither server is on: the primary refuses a cursor above its last row (a fork not
    adopted yet), the standby answers it."""
    primary, standby = replicated
    with psycopg.connect(primary, autocommit=True) as conn:
        conn.execute("SELECT * FROM pyxp.award('0xtimeline', 'CAMPAIGN_APPROVED', 'timeline-1')")
        real = conn.execute("SELECT pyxp.ledger_timeline()").fetchone()[0]  # type: ignore[index]
        above = (int(conn.execute("SELECT pyxp.highest_ledger_xid()").fetchone()[0]) + 1) << 24  # type: ignore[index]
        conn.execute("SET ROLE pyxp_owner")
        conn.execute("CREATE OR REPLACE FUNCTION pyxp.ledger_timeline() RETURNS integer LANGUAGE sql STABLE "
                     "PARALLEL SAFE AS 'SELECT 99'")
        try:
            _caught_up(primary, standby)
            with psycopg.connect(standby, autocommit=True) as reader:
                assert reader.execute("SELECT * FROM pyxp.changes(%s, 10)", (above,)).fetchall() == []
            with pytest.raises(psycopg.Error) as refused:
                conn.execute("SELECT * FROM pyxp.changes(%s, 10)", (above,))
            assert refused.value.sqlstate == "PX033"
        finally:
            conn.execute(f"CREATE OR REPLACE FUNCTION pyxp.ledger_timeline() RETURNS integer LANGUAGE sql STABLE "
                         f"PARALLEL SAFE AS 'SELECT {int(real)}'")
