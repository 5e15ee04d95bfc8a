"""Following the change feed from Python and the CLI (SPEC 11): XP.changes, XP.watch,
AsyncXP.watch, ``pyxp watch``. The feed's exactly-once guarantee itself: tests/test_changes.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from test_other_languages import database_url

import pyxp
from pyxp import XP, AsyncXP, Change

PYXP = str(Path(sys.executable).with_name("pyxp"))
APPROVED = "CAMPAIGN_APPROVED"  # +100 in winstory


def award(conninfo: str, wallet: str, key: str, action: str = APPROVED) -> None:
    with XP(conninfo, max_connections=1) as client:
        client.award(wallet, action, key)


def collect(changes: Iterator[Change], count: int, seconds: float = 60) -> list[Change]:
    """The first ``count`` changes a watch yields, read in a thread (the watch blocks between rows)."""
    got: list[Change] = []

    def read() -> None:
        for change in changes:
            got.append(change)
            if len(got) >= count:
                break

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(seconds)
    assert not reader.is_alive(), f"watch yielded {len(got)} of {count} changes in {seconds} s"
    return got


def test_changes_returns_typed_rows_and_pages_on(xp: XP) -> None:
    for n in range(5):
        xp.award("0xa", APPROVED, f"k{n}")
    deadline = time.monotonic() + 60
    while len(rows := xp.changes(0, 100)) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)  # the feed waits for older transactions anywhere on the server
    assert [type(r) for r in rows] == [Change] * 5
    assert [(r.total_xp, r.previous_level, r.current_level, r.leveled_up) for r in rows[:2]] == [
        (100, 1, 2, True), (200, 2, 2, False)]
    # (polled as a consumer does: a transaction of another database that ends while the feed reads
    # counts as still running, and may hold its groups back until the next read)
    while not (page := xp.changes(after_cursor=rows[1].cursor, max_rows=2)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [r.transaction_id for r in page] == [r.transaction_id for r in rows[2:4]]
    assert xp.changes(0, 100, wallet="0xnobody") == []
    with pytest.raises(pyxp.InvalidArgument):
        xp.changes(0, 0)


def test_watch_yields_changes_as_they_commit_and_resumes_from_a_cursor(conninfo: str, xp: XP) -> None:
    award(conninfo, "0xa", "first")
    watch = xp.watch(poll_interval=0.2)
    first = collect(watch, 1)
    threading.Timer(0.3, award, args=(conninfo, "0xb", "second")).start()
    second = collect(watch, 1)  # arrives after it commits
    watch.close()
    assert [c.user_wallet for c in first + second] == ["0xa", "0xb"]
    award(conninfo, "0xa", "third")
    resumed = collect(xp.watch(after_cursor=second[0].cursor, poll_interval=0.2), 1)
    assert [(c.user_wallet, c.total_xp) for c in resumed] == [("0xa", 200)]
    only_b = collect(xp.watch(wallet="\u00a00xb ", poll_interval=0.2), 1)  # normalised like any wallet
    assert [c.transaction_id for c in only_b] == [second[0].transaction_id]


def test_watch_survives_a_terminated_connection_without_gap_or_duplicate(conninfo: str,
                                                                        db: psycopg.Connection[Any],
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """pg_terminate_backend of the watcher's connection: it reconnects and goes on from its last cursor,
    and says so in one short line (it logged the error's whole text: the CONTEXT of pyxp.changes, with
    its SQL, thousands of characters per reconnection; a hostile test, 0034)."""
    name = "pyxp_watch_test"
    target = make_conninfo(conninfo, application_name=name)
    total = 60
    got: list[Change] = []
    done = threading.Event()

    def read() -> None:
        with XP(target, max_connections=1) as client:
            for change in client.watch(poll_interval=0.1):
                got.append(change)
                if len(got) >= total:
                    done.set()
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    terminated = 0
    with XP(conninfo, max_connections=2) as writer:
        for n in range(total):
            writer.award(f"0xw{n % 3}", APPROVED, f"w{n}")
            if n % 15 == 7:  # several times, while rows keep coming
                terminated += len(db.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %s AND query LIKE %s AND pid <> pg_backend_pid()",
                    (name, "%pyxp.changes%")).fetchall())
            time.sleep(0.02)
    assert done.wait(90), f"watch yielded {len(got)} of {total} rows"
    assert terminated >= 2
    reconnections = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pyxp watch:")]
    assert reconnections and all(len(m) < 200 and "SELECT" not in m for m in reconnections), reconnections
    ids = [c.transaction_id for c in got]
    assert len(set(ids)) == len(ids) == total  # no duplicate, no gap
    assert [c.cursor for c in got] == sorted(c.cursor for c in got)


def test_watch_keeps_a_session_with_a_short_idle_session_timeout(conninfo: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A role's idle_session_timeout shorter than poll_interval closed the watch's session at every
    wait: a reconnection and a WARNING each time (a hostile test, 0035). The watch now waits less
    than the timeout between reads (sync and asyncio): no reconnection, every row once."""
    short = make_conninfo(conninfo, options="-c idle_session_timeout=400")
    caplog.set_level(logging.WARNING, logger="pyxp")
    got: list[Change] = []

    def read() -> None:
        with XP(short, max_connections=1) as client:
            for change in client.watch(poll_interval=5):
                got.append(change)
                if len(got) == 3:
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    for n in range(3):
        time.sleep(1.2)  # three times the timeout, idle
        award(conninfo, "0xidle", f"idle{n}")
    reader.join(60)
    assert [(c.user_wallet, c.total_xp) for c in got] == [("0xidle", 100), ("0xidle", 200), ("0xidle", 300)]

    async def scenario() -> list[Change]:
        async with await AsyncXP.connect(short) as client:
            rows: list[Change] = []

            async def read() -> None:
                async for change in client.watch(poll_interval=5):
                    rows.append(change)
                    if len(rows) == 4:
                        return

            reader = asyncio.create_task(read())
            await asyncio.sleep(1.5)  # the watch waits, idle: no reconnection either
            await client.award("0xidle", APPROVED, "idle3")
            await asyncio.wait_for(reader, 60)
            return rows

    assert [c.total_xp for c in asyncio.run(scenario())] == [100, 200, 300, 400]
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("pyxp watch:")] == []


def test_async_watch(conninfo: str) -> None:
    async def scenario() -> list[Change]:
        client = await AsyncXP.connect(conninfo)
        try:
            assert len((await client.award("0xa", APPROVED, "a1")).rows) == 1
            got: list[Change] = []

            async def read() -> None:
                async for change in client.watch(poll_interval=0.1):
                    got.append(change)
                    if len(got) == 2:
                        return

            reader = asyncio.create_task(read())
            await asyncio.sleep(0.2)
            await client.award("0xb", APPROVED, "a2")
            await asyncio.wait_for(reader, 60)
            # (polled: a transaction of the other test worker can hold a page of the feed back a moment)
            deadline = time.monotonic() + 60
            while (seen := [c.user_wallet for c in await client.changes()]) != ["0xa", "0xb"] \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert seen == ["0xa", "0xb"]
            return got
        finally:
            await client.close()

    got = asyncio.run(scenario())
    assert [(c.user_wallet, c.total_xp) for c in got] == [("0xa", 100), ("0xb", 100)]


# --------------------------------------------------------------------------- pyxp watch


def _watch_process(conninfo: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYXP_DATABASE_URL": conninfo, "NO_COLOR": ""}
    return subprocess.Popen([PYXP, "watch", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _lines(process: subprocess.Popen[str], count: int, seconds: float = 60) -> list[str]:
    lines: list[str] = []
    assert process.stdout is not None

    def read() -> None:
        for _, line in zip(range(count), process.stdout):  # range first: no line read past count
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(seconds)
    return lines


def test_cli_watch_json_lines_resume_and_ctrl_c(conninfo: str) -> None:
    award(conninfo, "0xa", "c1")
    award(conninfo, "0xa", "c2", action="B2C_MINT")  # 100 -> 1100: level 2 -> 5
    process = _watch_process(conninfo, "--json")
    try:
        lines = _lines(process, 2)
        award(conninfo, "0xb", "c3")
        lines += _lines(process, 1)
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    changes = [json.loads(line) for line in lines]
    assert [(c["user_wallet"], c["xp_amount"], c["current_level"]) for c in changes] == [
        ("0xa", 100, 2), ("0xa", 1000, 5), ("0xb", 100, 2)]
    resumed = _watch_process(conninfo, "--json", "--after", str(changes[1]["cursor"]), "--wallet", "0xb")
    try:
        again = _lines(resumed, 1)
    finally:
        resumed.send_signal(signal.SIGINT)
        resumed.communicate(timeout=30)
    assert [json.loads(line)["transaction_id"] for line in again] == [changes[2]["transaction_id"]]


def test_cli_watch_text_marks_level_ups_without_colour_off_a_terminal(conninfo: str) -> None:
    award(conninfo, "0xa", "t1", action="B2C_MINT")
    process = _watch_process(conninfo)
    try:
        lines = _lines(process, 1)
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    assert process.returncode == 0
    assert len(lines) == 1 and "LEVEL UP!" in lines[0] and "1 -> 5" in lines[0].replace("→", "->")
    assert "+1000 XP" in lines[0] and "\x1b[" not in lines[0]


# --------------------------------------------------------------------------- README "Live XP"

README = Path(__file__).resolve().parents[1] / "README.md"


def live_xp_block(language: str) -> str:
    text = README.read_text()
    start = text.index("\n## Live XP\n")
    section = text[start:text.index("\n## ", start + 1)]
    found = re.findall(rf"^```{language}\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    assert len(found) == 1, f"one ```{language} block in Live XP"
    return found[0]


def test_readme_live_xp_sql_runs(db: psycopg.Connection[Any], xp: XP) -> None:
    xp.award("0xabc", APPROVED, "sql-1")
    for statement in re.sub(r"--.*$", "", live_xp_block("sql"), flags=re.MULTILINE).split(";"):
        if statement.strip():
            db.execute(statement).fetchall()


def _follow(command: list[str], conninfo: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYXP_DATABASE_URL": conninfo}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def _prints_changes_as_they_commit(process: subprocess.Popen[str], conninfo: str) -> list[str]:
    try:
        award(conninfo, "0x_creator", "live-1", action="B2C_MINT")
        first = _lines(process, 1)
        award(conninfo, "0x_moderator", "live-2")
        return first + _lines(process, 1)
    finally:
        process.terminate()
        process.communicate(timeout=30)


EXPECTED_LIVE_LINES = ["0x_creator +1000 XP (B2C_MINT), total 1000, level 1 -> 5!",
                       "0x_moderator +100 XP (CAMPAIGN_APPROVED), total 100, level 1 -> 2!"]


def test_readme_live_xp_python_example_prints_changes_as_they_commit(conninfo: str, tmp_path: Path) -> None:
    script = tmp_path / "follow.py"
    script.write_text(live_xp_block("python"))
    lines = _prints_changes_as_they_commit(_follow([sys.executable, str(script)], conninfo), conninfo)
    assert [line.rstrip() for line in lines] == EXPECTED_LIVE_LINES


def test_readme_live_xp_node_example_prints_changes_as_they_commit(node_project: Path, conninfo: str) -> None:
    script = node_project / "follow.js"
    script.write_text(live_xp_block("js"))
    lines = _prints_changes_as_they_commit(
        _follow(["node", str(script)], database_url(conninfo), cwd=node_project), conninfo)
    assert [line.rstrip() for line in lines] == EXPECTED_LIVE_LINES


def test_a_reader_never_sees_its_own_uncommitted_rows(conninfo: str, xp: XP) -> None:
    """Review: a transaction that awarded, then read the feed after another award committed, got its
    own (later rolled back) row: its id is in no snapshot's list of running transactions."""
    with psycopg.connect(conninfo) as conn:
        reader = XP(conn)
        reader.award("0xown", APPROVED, "own-1")
        xp.award("0xother", APPROVED, "other-1")  # committed while the reader's transaction is open
        time.sleep(0.2)
        assert "0xown" not in {c.user_wallet for c in reader.changes()}
        conn.rollback()
    deadline = time.monotonic() + 60
    while not (seen := {c.user_wallet for c in xp.changes()}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert seen == {"0xother"}


def test_watch_on_a_callers_pool_that_sets_autocommit(conninfo: str) -> None:
    """Review: XP(pool).watch() passed autocommit twice when the pool's kwargs had it."""
    from psycopg_pool import ConnectionPool

    award(conninfo, "0xa", "pool-1")
    with ConnectionPool(conninfo, kwargs={"autocommit": True}, min_size=1, max_size=1) as pool:
        got = collect(XP(pool).watch(poll_interval=0.1), 1)
    assert [c.user_wallet for c in got] == ["0xa"]
