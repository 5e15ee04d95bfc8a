"""`pyxp demo` (SPEC sections 9 and 10): the seeds' stories on a scratch database, and their figures.

The demo runs once (a subprocess against the test server's `postgres` database);
each test reads one part of its output.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pyxp import demo
from pyxp.client import XP
from pyxp.database import DATABASE_URL_VARIABLE, _free_port, _postgres_bindir
from pyxp.tables import Column, Printer, Styled, colour_enabled

ARROW = "(?:→|->)"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run_demo(env: dict[str, str], *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyxp.cli", "demo", *options], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest) -> str:
    """The test server's `postgres` database (conftest points pytest-postgresql at the server)."""
    option = request.config.option
    return make_conninfo(host=option.postgresql_host, port=str(option.postgresql_port),
                         user=option.postgresql_user, password=option.postgresql_password, dbname="postgres")


@pytest.fixture(scope="module")
def played(server: str) -> subprocess.CompletedProcess[str]:
    return run_demo({**os.environ, DATABASE_URL_VARIABLE: server})


@pytest.fixture(scope="module")
def output(played: subprocess.CompletedProcess[str]) -> str:
    assert played.returncode == 0, played.stderr
    return played.stdout


def section(output: str, title: str) -> str:
    """The text of the section whose heading contains ``title``, up to the next heading."""
    rest = output[output.index(title):].split("\n", 1)[1]
    following = re.search(r"^(━━|==) ", rest, re.MULTILINE)
    return rest if following is None else rest[: following.start()]


def scratch_database(output: str) -> str:
    match = re.search(r"database\s+(pyxp_demo_[0-9a-f]+)", output)
    assert match, output
    return match.group(1)


def test_demo_exits_0_with_a_clean_audit(played: subprocess.CompletedProcess[str]) -> None:
    assert played.returncode == 0, played.stderr
    assert played.stderr == ""
    assert "audit: clean" in played.stdout


@pytest.mark.parametrize(("wallet", "total", "level", "to_next"), [
    ("0x_creator", 2500, 6, "1500 to lvl 7"),
    ("0x_moderator", 2, 1, "98 to lvl 2"),
    ("0x_completer", 110, 2, "140 to lvl 3"),
    ("0x_agency", 2000, 6, "2000 to lvl 7"),  # SPEC section 2 settles the seed's contradiction
    ("0x_client", 1000, 5, "1000 to lvl 6"),
])
def test_demo_prints_the_example_state_balances(output: str, wallet: str, total: int, level: int,
                                                to_next: str) -> None:
    balances = section(output, "1. Example database state")
    assert re.search(rf"^\s+{wallet}\s+{total}\s+{level}\s+{to_next}$", balances, re.MULTILINE), balances


def test_demo_shows_the_creator_level_up_from_1_to_6(output: str) -> None:
    story = section(output, "1. Example database state")
    assert re.search(rf"OPTION_NO_REWARDS\s+\+1000\s+2500\s+1 {ARROW} 6\s+level up!", story), story


def test_demo_watcher_prints_the_level_ups_as_the_story_plays(output: str) -> None:
    """Issue 12: a watcher on its own connection (pyxp.changes) saw every row; it prints the level-ups."""
    story = section(output, "1. Example database state")
    assert re.search(r"live: a watcher \(pyxp watch\) saw 9 changes as they committed", story), story
    assert re.search(rf"0x_creator\s+\+1000 XP\s+OPTION_NO_REWARDS\s+total 2500\s+level 5 {ARROW} 6\s+LEVEL UP!",
                     story), story
    assert re.search(rf"0x_client\s+\+1000 XP\s+B2C_CLIENT_ONBOARDED\s+total 1000\s+level 1 {ARROW} 5", story)
    lifecycle = section(output, "2. A campaign's life cycle")
    assert "saw 86 changes" in lifecycle


def test_demo_prints_the_seed_latest_five_ledger_rows(output: str) -> None:
    latest = section(output, "1. Example database state").split("xp_transactions (latest 5)")[1]
    rows = re.findall(r"^\s+\d+\s+(\S+)\s+(\S+)\s+(\S+)$", latest, re.MULTILINE)
    assert rows == [("0x_client", "B2C_CLIENT_ONBOARDED", "+1000"),
                    ("0x_completer", "COMPLETION_100_VALIDATED", "+100"),
                    ("0x_completer", "COMPLETION_SUBMITTED", "+10"),
                    ("0x_moderator", "MODERATION_VALIDATED_BY_MODERATOR", "+2"),
                    ("0x_creator", "OPTION_NO_REWARDS", "+1000")]


@pytest.mark.parametrize(("role", "wallets", "xp"), [
    ("Creator", 1, "+2600"),
    ("Moderators", 22, "+23"),
    ("Completers", 50, "+1500"),
    ("GRAND TOTAL", 73, "+4123"),
])
def test_demo_prints_the_lifecycle_totals(output: str, role: str, wallets: int, xp: str) -> None:
    totals = section(output, "2. A campaign's life cycle")
    assert re.search(rf"^\s+{role}\s+{wallets}\s+\d+\s+\{xp}$", totals, re.MULTILINE), totals


@pytest.mark.parametrize(("title", "completer", "moderators"), [
    ("3. Completer scenario 1", "+500", "+6"),
    ("4. Completer scenario 2", "+2500", "+1"),
])
def test_demo_prints_the_completer_scenario_totals(output: str, title: str, completer: str,
                                                   moderators: str) -> None:
    totals = section(output, title)
    assert re.search(rf"^\s+Completer\s+1\s+2\s+\{completer}$", totals, re.MULTILINE), totals
    assert re.search(rf"^\s+Moderators\s+\d+\s+\d+\s+\{moderators}$", totals, re.MULTILINE), totals


@pytest.mark.parametrize(("title", "ruleset"), [
    ("1. Example database state", "winstory-flows"),
    ("2. A campaign's life cycle", "winstory-flows"),
    ("3. Completer scenario 1", "winstory"),
    ("4. Completer scenario 2", "winstory"),
])
def test_demo_plays_each_story_under_the_seed_ruleset(output: str, title: str, ruleset: str) -> None:
    heading = next(line for line in output.splitlines() if title in line)
    assert re.search(rf"ruleset {ruleset} v\d+$", heading), heading


def test_demo_drops_its_scratch_database(output: str, server: str) -> None:
    name = scratch_database(output)
    assert f"scratch database {name} dropped" in output
    with psycopg.connect(server, autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None


def test_demo_output_has_no_colour_when_piped(output: str) -> None:
    assert "\x1b[" not in output


def test_demo_drops_its_scratch_database_when_a_story_fails(server: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_story(stage: demo.Stage) -> None:
        raise RuntimeError("story failed")

    monkeypatch.setattr(demo, "STORIES", (demo.example_state, failing_story))
    printed = io.StringIO()
    with pytest.raises(RuntimeError, match="story failed"):
        demo.run_demo(server, Printer(printed))
    name = scratch_database(printed.getvalue())
    with psycopg.connect(server, autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None


@pytest.mark.skipif(_postgres_bindir() is None, reason="no local PostgreSQL binaries")
def test_demo_without_a_server_runs_on_a_throwaway_cluster() -> None:
    """SPEC section 9: no URL, libpq defaults answer nowhere, binaries present."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != DATABASE_URL_VARIABLE}
    env.update(PGHOST="127.0.0.1", PGPORT=str(_free_port()), PGCONNECT_TIMEOUT="3")
    result = run_demo(env)
    assert result.returncode == 0, result.stderr
    assert "throwaway cluster" in result.stdout
    assert "GRAND TOTAL" in result.stdout and "+4123" in result.stdout
    assert "audit: clean" in result.stdout


def kept_url(output: str) -> str:
    match = re.search(r"^scratch database (pyxp_demo_[0-9a-f]+) kept: (postgresql://\S+)$", output,
                      re.MULTILINE)
    assert match, output
    return match.group(2)


@pytest.fixture(scope="module")
def kept(server: str) -> Iterator[subprocess.CompletedProcess[str]]:
    """`pyxp demo --keep` on the test server; its scratch database is dropped after the module."""
    played = run_demo({**os.environ, DATABASE_URL_VARIABLE: server}, "--keep")
    name = scratch_database(played.stdout)
    try:
        yield played
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_demo_keep_leaves_the_database_to_explore(kept: subprocess.CompletedProcess[str]) -> None:
    """`pyxp demo --keep`: the scratch database stays, its URL is printed and works with the CLI."""
    name = scratch_database(kept.stdout)
    assert kept.returncode == 0, kept.stderr
    assert "kept at the end (--keep)" in kept.stdout and f"{name} dropped" not in kept.stdout
    url = kept_url(kept.stdout)
    assert url.startswith("postgresql://") and name in url and "password" not in url
    assert f"DROP DATABASE {name}" in kept.stdout
    explored = subprocess.run([sys.executable, "-m", "pyxp.cli", "balance", "0x_creator", "--json"],
                              check=False, capture_output=True, text=True, timeout=120,
                              env={**os.environ, DATABASE_URL_VARIABLE: url})
    assert explored.returncode == 0, explored.stderr
    assert json.loads(explored.stdout)["total_xp"] == 2500  # the example state's creator


def test_demo_prints_this_week_leaderboard(kept: subprocess.CompletedProcess[str]) -> None:
    """SPEC section 12: after the stories, the top of this week's board, as the kept database reads it."""
    assert kept.returncode == 0, kept.stderr
    heading = next(line for line in kept.stdout.splitlines() if "This week's leaderboard" in line)
    week = re.search(r"week of Monday (\d{4}-\d\d-\d\d) \((\S+)\), ruleset (\S+) v\d+$", heading)
    assert week, heading
    monday, zone = date.fromisoformat(week[1]), week[2]
    start = datetime.combine(monday, time(), ZoneInfo(zone))
    end = datetime.combine(monday + timedelta(days=7), time(), ZoneInfo(zone))
    board = section(kept.stdout, "This week's leaderboard")
    rows = re.findall(r"^\s+(\d+)\s+(\S+)\s+(-?\d+)\s+(-?\d+)\s+(\d+)$", board, re.MULTILINE)
    printed = [(int(rank), wallet, int(week_xp), int(total), int(level))
               for rank, wallet, week_xp, total, level in rows]

    url = kept_url(kept.stdout)
    with psycopg.connect(url, autocommit=True) as conn:
        active = conn.execute("SELECT name, timezone FROM pyxp.rulesets WHERE is_active").fetchone()
        written = conn.execute("SELECT min(created_at), max(created_at) FROM pyxp.xp_transactions").fetchone()
        ledger_week_xp = dict(conn.execute(
            "SELECT user_wallet, sum(xp_amount) FROM pyxp.xp_transactions"
            " WHERE created_at >= %s AND created_at < %s GROUP BY user_wallet", [start, end]).fetchall())
    with XP(url) as xp:
        expected = xp.leaderboard(max_rows=1000, period="week", at=start)

    assert active == (week[3], zone)  # the ruleset the stories ended on, and its timezone
    assert monday.weekday() == 0 and start <= written[1] < end  # the week the stories were played in
    assert len(printed) == 5, board
    assert printed == [(r.rank, r.user_wallet, r.period_xp, r.total_xp, r.current_level)
                       for r in expected[:5]]
    assert all(ledger_week_xp[wallet] == week_xp for _, wallet, week_xp, _, _ in printed)
    assert f"top 5 of the {len(expected)} wallets with XP this week" in board


@pytest.mark.skipif(_postgres_bindir() is None, reason="no local PostgreSQL binaries")
def test_demo_keep_without_a_server_keeps_the_throwaway_cluster_and_says_how_to_stop_it() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != DATABASE_URL_VARIABLE}
    env.update(PGHOST="127.0.0.1", PGPORT=str(_free_port()), PGCONNECT_TIMEOUT="3")
    played = run_demo(env, "--keep")
    stop = re.search(r"^    (.*pg_ctl.* stop && rm -rf (\S+))$", played.stdout, re.MULTILINE)
    assert stop, (played.stdout, played.stderr)
    command, directory = stop.groups()
    try:
        assert played.returncode == 0, played.stderr
        assert "throwaway cluster" in played.stdout and "kept running" in played.stdout
        with psycopg.connect(kept_url(played.stdout), connect_timeout=5) as conn:
            row = conn.execute("SELECT total_xp FROM pyxp.xp_balances "
                               "WHERE user_wallet = '0x_client'").fetchone()
        assert row == (1000,)
    finally:
        stopped = subprocess.run(command, shell=True, check=False, capture_output=True, text=True,
                                 timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert not Path(directory).exists()


# --------------------------------------------------------------------------- the table printer


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert colour_enabled(FakeTerminal())
    assert not colour_enabled(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not colour_enabled(FakeTerminal())


def test_coloured_table_is_aligned_like_the_plain_one() -> None:
    rows: list[list[Any]] = [["0x_creator", Styled("+2500", fg="green"), Styled("1 -> 6", fg="yellow")],
                             ["0x_moderator", Styled("-1", fg="red"), "1"]]
    columns = [Column("wallet"), Column("XP", ">"), Column("level")]
    plain, coloured = io.StringIO(), FakeTerminal()
    Printer(plain, colour=False).table(columns, rows)
    Printer(coloured, colour=True).table(columns, rows)
    assert "\x1b[" in coloured.getvalue()
    assert ANSI.sub("", coloured.getvalue()) == plain.getvalue()
    assert plain.getvalue().splitlines()[2] == "  0x_creator    +2500  1 -> 6"
