"""A database that does not answer (SPEC §9): fail fast with DatabaseUnavailable, best effort
returns None just as fast, one log line per call (no flood from the pool), recovery.

Two kinds of "down": a port where nothing listens (connection refused at once) and a
server that accepts TCP connections but never answers (only the connect timeout ends
the wait). Timings are asserted only as generous upper bounds (shared CI cores).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack
from typing import Any

import psycopg
import pytest
from conftest import terminate_sessions
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

import pyxp
from pyxp import XP, AsyncXP, client, database, schema
from pyxp.database import EmbeddedCluster

# Default connect timeout is 5 s: failing "fast" means well under 15 s.
FAST = 15.0

needs_binaries = pytest.mark.skipif(database._postgres_bindir() is None,
                                    reason="no local PostgreSQL binaries (pg_ctl, initdb)")


@pytest.fixture
def refused() -> str:
    """Conninfo of a port where nothing listens."""
    return make_conninfo(host="127.0.0.1", port=str(database._free_port()), user="postgres", dbname="x")


@pytest.fixture
def silent() -> Iterator[str]:
    """Conninfo of a server that accepts TCP connections and never says a word."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])  # accept, then sleep on it
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = str(listener.getsockname()[1])
        yield make_conninfo(host="127.0.0.1", port=port, user="postgres", dbname="x")
    finally:
        stop.set()
        thread.join()
        for sock in accepted:
            sock.close()
        listener.close()


def elapsed(since: float) -> float:
    return time.monotonic() - since


# --------------------------------------------------------------------------- raising mode


@pytest.mark.parametrize("down", ["refused", "silent"])
def test_xp_on_a_database_that_does_not_answer_raises_database_unavailable(
        down: str, request: pytest.FixtureRequest) -> None:
    conninfo = request.getfixturevalue(down)
    started = time.monotonic()
    with pytest.raises(pyxp.DatabaseUnavailable) as raised:
        XP(conninfo, connect_timeout=2)
    assert elapsed(started) < FAST
    assert isinstance(raised.value, pyxp.XPError)
    message = str(raised.value)
    assert conninfo.split("port=")[1].split()[0] in message, "names where it tried"
    assert ("Connection refused" if down == "refused" else "timeout") in message
    assert isinstance(raised.value.__cause__, psycopg.OperationalError)


def test_the_default_connect_timeout_bounds_a_silent_server(silent: str) -> None:
    started = time.monotonic()
    with pytest.raises(pyxp.DatabaseUnavailable):
        XP(silent)
    assert elapsed(started) < FAST


def test_async_connect_on_a_silent_server_raises_database_unavailable(silent: str) -> None:
    started = time.monotonic()
    with pytest.raises(pyxp.DatabaseUnavailable):
        asyncio.run(AsyncXP.connect(silent, connect_timeout=2))
    assert elapsed(started) < FAST


# --------------------------------------------------------------------------- best effort


@pytest.mark.parametrize("down", ["refused", "silent"])
def test_best_effort_returns_none_fast_with_one_log_line_per_call(
        down: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> None:
    conninfo = request.getfixturevalue(down)
    with caplog.at_level(logging.DEBUG, logger="psycopg.pool"), caplog.at_level(logging.WARNING):
        started = time.monotonic()
        xp = XP(conninfo, best_effort=True, connect_timeout=2)
        assert elapsed(started) < FAST, "the constructor does not raise, nor wait long"
        try:
            for n in range(3):
                started = time.monotonic()
                assert xp.award("0x_person", "CAMPAIGN_APPROVED", f"down-{n}") is None
                assert elapsed(started) < FAST
            time.sleep(1.5)  # the pool keeps trying in the background, silently
        finally:
            xp.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in warnings] == ["pyxp"] * 3, [r.getMessage() for r in warnings]
    for record in warnings:
        message = record.getMessage()
        assert "award" in message and "DatabaseUnavailable" in message
        assert "0x_person" not in message and "down-" not in message


def test_async_best_effort_returns_none_on_a_database_that_is_down(
        refused: str, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> list[Any]:
        xp = await AsyncXP.connect(refused, best_effort=True, connect_timeout=2)
        try:
            return [await xp.balance("0x_person") for _ in range(2)]
        finally:
            await xp.close()

    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert asyncio.run(scenario()) == [None, None]
    assert elapsed(started) < 2 * FAST
    assert [r.name for r in caplog.records if r.levelno >= logging.WARNING] == ["pyxp", "pyxp"]


def test_a_call_on_a_database_that_is_down_raises_database_unavailable(refused: str) -> None:
    """A client that was built (best effort) while the database was down, then asked to raise."""
    xp = XP(refused, best_effort=True, connect_timeout=2)
    xp.best_effort = False
    try:
        started = time.monotonic()
        with pytest.raises(pyxp.DatabaseUnavailable, match="Connection refused"):
            xp.balance("0x_person")
        assert elapsed(started) < FAST
    finally:
        xp.close()


# --------------------------------------------------------------------------- what is not ours


def test_a_callers_pool_keeps_its_settings_errors_and_logs(
        refused: str, caplog: pytest.LogCaptureFixture) -> None:
    """XP(pool) neither shortens the caller's timeouts nor silences the caller's pool."""
    pool = ConnectionPool(refused, min_size=1, open=False, timeout=1.0, name="the-callers-pool")
    with caplog.at_level(logging.WARNING):
        pool.open(wait=False)
        try:
            xp = XP(pool)
            with pytest.raises(PoolTimeout):
                xp.balance("0x_person")
            assert pool.timeout == 1.0 and not pool.kwargs
        finally:
            pool.close()
    assert any(r.name == "psycopg.pool" and "the-callers-pool" in r.getMessage() for r in caplog.records)


def test_a_callers_connection_is_used_as_given(conninfo: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        xp = XP(conn, connect_timeout=2)
        assert xp.level_for(0).level == 1
        assert xp._pool is None and xp._owned is None


# --------------------------------------------------------------------------- settings


def test_connect_timeout_comes_from_the_keyword_else_the_conninfo_else_five_seconds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    assert client._connect_timeout("host=h connect_timeout=7", 3) == 3.0
    assert client._connect_timeout("host=h connect_timeout=7", None) == 7.0
    assert client._connect_timeout("postgresql://h/db?connect_timeout=9", None) == 9.0
    assert client._connect_timeout("host=h", None) == client.DEFAULT_CONNECT_TIMEOUT == 5.0
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "4")
    assert client._connect_timeout("host=h", None) == 4.0
    with pytest.raises(ValueError):
        client._connect_timeout("host=h", 0)


def test_a_malformed_conninfo_is_a_mistake_even_in_best_effort_mode() -> None:
    with pytest.raises(psycopg.ProgrammingError):
        XP("not a conninfo", best_effort=True)


def test_the_client_passes_its_timeout_to_libpq_and_its_pool(conninfo: str) -> None:
    with XP(conninfo, connect_timeout=3) as xp:
        assert xp._pool is not None
        assert xp._pool.timeout == 3.0
        assert xp._pool.kwargs["connect_timeout"] == 3
        assert xp.level_for(0).level == 1


def test_the_clients_own_connections_use_tcp_keepalives_unless_the_conninfo_sets_them(conninfo: str) -> None:
    """A network path that goes silent (a NAT or firewall drop, a moved address) ends a call in about a
    minute instead of the kernel's 15 minutes of retransmissions (a hostile test, 0034)."""
    with XP(make_conninfo(conninfo, keepalives_idle="5"), max_connections=1) as xp:
        assert xp._pool is not None
        assert xp._pool.kwargs == {"connect_timeout": 5, "client_encoding": "UTF8", "keepalives": 1,
                                   "keepalives_interval": 10, "keepalives_count": 3, "tcp_user_timeout": 60_000}
        assert xp._watch_conninfo()[1] == xp._pool.kwargs  # watch() opens its connections alike
        with xp._pool.connection() as conn:
            used = {option.keyword.decode(): (option.val or b"").decode() for option in conn.pgconn.info}
    assert (used["keepalives_idle"], used["keepalives_interval"], used["keepalives_count"],
            used["tcp_user_timeout"]) == ("5", "10", "3", "60000")


# --------------------------------------------------------------------------- recovery


@needs_binaries
def test_a_best_effort_client_built_while_the_database_is_down_works_once_it_is_up(
        caplog: pytest.LogCaptureFixture) -> None:
    """A private cluster: migrated, stopped; the client starts; the server comes back; calls work.
    Then the server restarts under the client's feet: after at most a failed call or two, it works."""
    bindir = database._postgres_bindir()
    assert bindir is not None
    cluster = EmbeddedCluster(bindir).start()
    try:
        schema.upgrade(cluster.conninfo)
        cluster.stop_server()
        with XP(cluster.conninfo, best_effort=True, connect_timeout=2) as xp:
            assert xp.level_for(0) is None  # down: nothing, quickly
            cluster.start_existing()
            assert eventually(lambda: xp.level_for(0)) is not None

            cluster.stop_server()
            cluster.start_existing()
            assert eventually(lambda: xp.level_for(2500)).level == 6
    finally:
        cluster.stop()
    assert not any(r.name == "psycopg.pool" and r.levelno >= logging.WARNING for r in caplog.records)


@pytest.mark.parametrize("best_effort", [False, True])
def test_connections_the_server_closed_in_the_pool_fail_no_call(conninfo: str, db: psycopg.Connection[Any],
                                                                 best_effort: bool) -> None:
    """A restart, pg_terminate_backend or a pooler's KILL closes the pool's idle connections: each
    failed the next call that took it (AdminShutdown; a best-effort award lost, None), although the
    database answered (a hostile test, 0034). The call now takes another connection."""
    name = f"pyxp_stale_{uuid.uuid4().hex[:8]}"
    with XP(make_conninfo(conninfo, application_name=name), max_connections=3, best_effort=best_effort) as xp:
        assert xp._pool is not None
        with ExitStack() as held:  # three connections opened, then idle in the pool
            for _ in range(3):
                held.enter_context(xp._pool.connection())
        assert terminate_sessions(db, name) == 3
        awards = [xp.award(f"0xstale{n}", "CAMPAIGN_APPROVED", f"{name}-{n}") for n in range(4)]
    assert [award.xp for award in awards] == [100] * 4
    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions WHERE idempotency_key LIKE %s",
                      (f"{name}-%",)).fetchone() == (4,)


def test_async_connections_the_server_closed_in_the_pool_fail_no_call(conninfo: str,
                                                                       db: psycopg.Connection[Any]) -> None:
    name = f"pyxp_stale_{uuid.uuid4().hex[:8]}"

    async def scenario() -> list[Any]:
        xp = await AsyncXP.connect(make_conninfo(conninfo, application_name=name), max_connections=3)
        try:
            assert isinstance(xp._pool, client.AsyncConnectionPool)
            async with AsyncExitStack() as held:
                for _ in range(3):
                    await held.enter_async_context(xp._pool.connection())
            assert terminate_sessions(db, name) == 3
            return [await xp.award(f"0xstale{n}", "CAMPAIGN_APPROVED", f"{name}-{n}") for n in range(4)]
        finally:
            await xp.close()

    assert [award.xp for award in asyncio.run(scenario())] == [100] * 4


def eventually(call: Any, within: float = 60.0) -> Any:
    """The first non-None result of ``call()``, retried for up to ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = call()
        if result is not None:
            return result
        time.sleep(0.2)
    pytest.fail(f"still None after {within} s")
