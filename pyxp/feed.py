"""Following the change feed (SPEC 11): ``pyxp.changes`` in a loop, woken by ``NOTIFY pyxp_changes``.

:func:`watch_changes` / :func:`watch_changes_async` yield every committed ledger row
once, in feed order, forever: they read a page after the last cursor, and when the
feed is drained wait for a wake-up on channel ``pyxp_changes`` or ``poll_interval``
seconds, whichever comes first (awards notify at most once per 100 ms slot, so a
listener also reads on a timer; sql/11_changes.sql says why). A dropped connection
(server restart, ``pg_terminate_backend``, network) is reopened with a growing delay
and the loop goes on from the last cursor it yielded: no row twice, none skipped; so
is a read that overlapped an archive's commit (40001, migration 0026).
Closing the generator (``break``, ``.close()``, Ctrl-C) closes its connection; so does
setting the ``stop`` event (from another thread or task): the loop ends after its
current wait, within ``poll_interval``.

Behind a transaction-mode pooler LISTEN does not reach the server session that
NOTIFY wakes: the loop still works, on its timer. Pass ``listen=False`` there: a LISTEN
stays on the pooled server connection it ran on, after the loop has ended (a hostile test,
0037: PgBouncer then logged a warning per wake-up, and handed the notifications to whichever
client got that connection next).

A session's ``idle_session_timeout`` (a role's or database's setting) ends a session idle
that long: the loop then waits at most half of it between reads, so that the server does
not close its connection at every wait (a hostile test, 0035: a reconnection and a WARNING
per wait when the timeout was shorter than ``poll_interval``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import psycopg
from psycopg.rows import class_row

from pyxp import queries
from pyxp.errors import wrap_errors
from pyxp.results import Change

log = logging.getLogger("pyxp")

POLL_INTERVAL = 1.0  # seconds between reads when no wake-up comes
PAGE_SIZE = 500  # rows per read (pyxp.changes takes at most 1000)
MAX_RECONNECT_DELAY = 5.0


def _reconnect_delay(failures: int) -> float:
    return min(MAX_RECONNECT_DELAY, 0.05 * 2 ** failures)


def _wait(poll_interval: float, idle_timeout: float | None) -> float:
    """Seconds to wait for a wake-up between reads: poll_interval, less than the session's
    idle_session_timeout (seconds, 0: none) when that is shorter."""
    return min(poll_interval, idle_timeout / 2) if idle_timeout else poll_interval


def page_params(cursor: int, wallet: str | None, page_size: int = PAGE_SIZE) -> dict[str, Any]:
    """The parameters of queries.CHANGES for one page."""
    return {"after_cursor": cursor, "max_rows": page_size, "wallet": wallet}


def _reason(exc: psycopg.Error) -> str:
    """An error's primary message on one line: its full text carries the CONTEXT of pyxp.changes,
    the whole SQL of its statement (thousands of characters in every reconnection's WARNING)."""
    text = exc.diag.message_primary or str(exc).strip().split("\n", 1)[0]
    return " ".join(text.split())


def watch_changes(connect: Callable[[], psycopg.Connection[Any]], after_cursor: int = 0,
                  wallet: str | None = None, *, poll_interval: float = POLL_INTERVAL,
                  page_size: int = PAGE_SIZE, stop: threading.Event | None = None,
                  listen: bool = True) -> Iterator[Change]:
    """Yields changes after ``after_cursor`` as they commit, forever (see the module docstring).

    ``connect()`` opens a new autocommit connection (the loop owns it). A refusal (a bad
    wallet, PX0nn) raises :class:`pyxp.XPError`; a lost connection is reopened. ``listen=False``:
    no LISTEN, the timer alone (behind a transaction-mode pooler).
    """
    cursor, failures = after_cursor, 0
    while not (stop and stop.is_set()):
        try:
            with connect() as conn:
                if listen:
                    conn.execute(queries.LISTEN_CHANGES, prepare=False)
                row = conn.execute(queries.IDLE_SESSION_TIMEOUT, prepare=False).fetchone()
                wait = _wait(poll_interval, row[0] if row else None)
                while not (stop and stop.is_set()):
                    with wrap_errors(), psycopg.Cursor(conn, row_factory=class_row(Change)) as cur:  # (see XP._run)
                        rows = cur.execute(queries.CHANGES, page_params(cursor, wallet, page_size),
                                           prepare=False, binary=True).fetchall()  # (any DateStyle)
                    failures = 0
                    for change in rows:
                        cursor = change.cursor
                        yield change
                    if len(rows) < page_size:
                        for _ in conn.notifies(timeout=wait, stop_after=1):
                            pass
        except psycopg.OperationalError as exc:
            failures += 1
            # A lost connection, or a read that overlapped an archive (40001, 0026): read again.
            log.warning("pyxp watch: %s: %s; reading again from cursor %s", type(exc).__name__, _reason(exc), cursor)
            time.sleep(_reconnect_delay(failures))


async def watch_changes_async(connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]],
                              after_cursor: int = 0, wallet: str | None = None, *,
                              poll_interval: float = POLL_INTERVAL, page_size: int = PAGE_SIZE,
                              stop: asyncio.Event | None = None, listen: bool = True) -> AsyncIterator[Change]:
    """The asyncio twin of :func:`watch_changes`."""
    cursor, failures = after_cursor, 0
    while not (stop and stop.is_set()):
        try:
            async with await connect() as conn:
                if listen:
                    await conn.execute(queries.LISTEN_CHANGES, prepare=False)
                row = await (await conn.execute(queries.IDLE_SESSION_TIMEOUT, prepare=False)).fetchone()
                wait = _wait(poll_interval, row[0] if row else None)
                while not (stop and stop.is_set()):
                    with wrap_errors():
                        async with psycopg.AsyncCursor(conn, row_factory=class_row(Change)) as cur:  # (see XP._run)
                            await cur.execute(queries.CHANGES, page_params(cursor, wallet, page_size),
                                              prepare=False, binary=True)  # (any DateStyle)
                            rows = await cur.fetchall()
                    failures = 0
                    for change in rows:
                        cursor = change.cursor
                        yield change
                    if len(rows) < page_size:
                        async for _ in conn.notifies(timeout=wait, stop_after=1):
                            pass
        except psycopg.OperationalError as exc:
            failures += 1
            # A lost connection, or a read that overlapped an archive (40001, 0026): read again.
            log.warning("pyxp watch: %s: %s; reading again from cursor %s", type(exc).__name__, _reason(exc), cursor)
            await asyncio.sleep(_reconnect_delay(failures))
