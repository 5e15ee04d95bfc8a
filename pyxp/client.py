"""The Python client: one method per pyxp SQL function, sync (:class:`XP`) and async (:class:`AsyncXP`).

Each method only builds a :class:`Call` (a named query from :mod:`pyxp.queries`
and its parameters); the two clients differ only in how they execute it. The
client validates nothing the database validates: refusals come back as
:class:`pyxp.XPError` subclasses.

Where the calls run:

* ``XP("postgresql://...")`` or ``XP()`` (PYXP_DATABASE_URL, else libpq
  defaults): a private connection pool; each call is its own transaction.
* ``XP(pool)``: your ``psycopg_pool.ConnectionPool``; each call is its own transaction.
* ``XP(connection)``: your ``psycopg.Connection``; each call runs in a
  savepoint of your transaction (opened if none is, as psycopg does for any
  statement), so the award commits or rolls back with your main action. On an
  autocommit connection each call is its own transaction.

``best_effort=True`` follows the seeds' resilience rule ("if XP fails, the
main action goes on"): a failing call is logged (PX code and call) and
returns ``None`` instead of raising. The WARNING line names the call and the
error's code only: messages and parameters name wallets and emails, so they
are logged only when asked (``log_params=True``, or the ``pyxp`` logger at
DEBUG).

A database that does not answer (SPEC §9): a client on its own pool fails
within ``connect_timeout`` seconds (default 5; else the conninfo's or
PGCONNECT_TIMEOUT's) with :class:`pyxp.DatabaseUnavailable` — ``XP(url)``
itself when not best-effort, and every call that gets no connection in that
time; a best-effort client returns ``None`` in that time. Its pool keeps
reconnecting in the background and serves again once the database is back;
psycopg_pool's own warnings about that pool are silenced (the client reports
the failure once per call instead). A connection the server closed while it
sat in that pool (a restart, ``pg_terminate_backend``, a pooler's ``KILL``)
is dropped when a call takes it, before anything is sent, and the call takes
another (a hostile test, 0034: each such connection failed one call, or lost
a best-effort award, after the database was back). The pool's connections
use TCP keepalives (30 s idle, 3 probes 10 s apart) and a 60 s
``tcp_user_timeout`` unless the conninfo sets them: a call on a connection
whose network path went silent fails in about a minute instead of waiting
for the kernel's retransmissions (15 minutes). Pools and connections you give
the client keep their own settings and logging.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import re
import select
import threading
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum
from time import monotonic
from typing import Any, ClassVar, Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.rows import class_row, tuple_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from pyxp import queries
from pyxp.database import configured_conninfo, shown_conninfo, utf8_unless_set
from pyxp.errors import DatabaseUnavailable, XPError, wrap_errors
from pyxp.feed import POLL_INTERVAL, page_params, watch_changes, watch_changes_async
from pyxp.results import (
    ArchivedPartition,
    AuditCheckpoint,
    AuditFinding,
    Award,
    AwardRequest,
    AwardRow,
    Balance,
    BatchAwardRow,
    Change,
    ClientRegistration,
    LeaderboardRow,
    LedgerPartition,
    LedgerRow,
    Level,
    RankBuckets,
)

log = logging.getLogger("pyxp")

Number = int | Decimal | float | None
Shape = Literal["award", "batch", "rows", "one", "scalar"]


# What a parameter may be in Python, by its query's cast (pyxp.queries casts every one). psycopg
# would send other types as something else: bytes as bytea (its hex text became a new wallet), a
# plain Enum member as its name, a float as a rounded bigint (reverse(1.9) reversed transaction 2),
# a bool as an integer (a hostile test, 0029).
_CASTS = re.compile(r"%\((\w+)\)s::(\w+)")
_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "text": (str,), "jsonb": (str,), "bigint": (int,), "integer": (int,), "boolean": (bool,),
    "numeric": (int, Decimal, float, str), "timestamptz": (datetime,)}
# The range of each integer cast: a Python int beyond it failed in the cast with psycopg's 22003, not
# one of pyxp's errors (a hostile test, 0039).
_INTEGER_RANGES = {"bigint": (-(2 ** 63), 2 ** 63 - 1), "integer": (-(2 ** 31), 2 ** 31 - 1)}


# A numeric as PostgreSQL reads one (ASCII digits only: Python's Decimal also reads "１２", "١٢" and
# "1_000", which PostgreSQL refuses), and its non-finite spellings, which the functions refuse (PX004).
_NUMERIC_TEXT = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*", re.ASCII)
_NON_FINITE_TEXT = re.compile(r"\s*([+-]?inf(inity)?|nan)\s*", re.ASCII | re.IGNORECASE)


def in_numeric_range(number: Decimal) -> bool:
    """Whether PostgreSQL's numeric holds a finite Decimal (131,072 digits before the point, 16,383
    after; zeros included: 0E-20000 overflows too)."""
    exponent = number.as_tuple().exponent
    return isinstance(exponent, int) and number.adjusted() <= 131071 and exponent >= -16383


def _numeric(call: str, param: str, value: float | str | Decimal) -> float | str | Decimal:
    """A value for a ``numeric`` parameter as pyxp sends it: a finite float as the Decimal of its
    shortest repr (psycopg sends a float as float8, which ``::numeric`` rounds to 15 digits), a
    numeric string as its Decimal. ValueError for a string that is no number as PostgreSQL reads
    numbers, or a number beyond its numeric, which failed with psycopg's 22P02 or 22003 (a hostile
    test, helper-76). Non-finite values go as they are: the functions refuse them (PX004)."""
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else value
    if isinstance(value, str):
        if _NON_FINITE_TEXT.fullmatch(value):
            return value
        if not _NUMERIC_TEXT.fullmatch(value):
            raise ValueError(f"{call}: {param} must be a number, not {value!r:.60}")
        value = Decimal(value)
    if value.is_finite() and not in_numeric_range(value):
        raise ValueError(f"{call}: {param} is beyond PostgreSQL's numeric (131,072 digits before the point, "
                         f"16,383 after): {value!s:.40}")
    return value


@dataclass(frozen=True)
class Call:
    """One SQL function call: its name (for logs), query, parameters and result shape."""

    name: str
    query: str
    params: Mapping[str, Any]
    row_type: type | None = None  # None: plain tuples
    shape: Shape = "award"

    def __post_init__(self) -> None:
        """TypeError, before anything is sent, for a parameter psycopg would send as another value;
        ValueError for an int beyond its SQL type's range. A number for a numeric is sent as
        ``_numeric`` says: a float with the digits ``json_text`` writes into an award's params (a
        hostile test, helper-76: a completion's price 1.4999999999999998 was stored 1.5 and paid
        102, the same price as a generic award's param 101)."""
        casts = _CASTS.findall(self.query)
        numbers = {param: _numeric(self.name, param, self.params[param]) for param, cast in casts
                   if cast == "numeric" and isinstance(self.params.get(param), (float, str, Decimal))}
        if numbers:
            object.__setattr__(self, "params", {**self.params, **numbers})
        for param, cast in casts:
            value = self.params.get(param)
            expected = _PYTHON_TYPES.get(cast)
            if value is None or expected is None:
                continue
            if (not isinstance(value, expected) or isinstance(value, Enum)
                    or (isinstance(value, bool) and cast != "boolean")):
                names = " or ".join(t.__name__ for t in expected)
                raise TypeError(f"{self.name}: {param} must be {names}, not {type(value).__name__} ({value!r})")
            low, high = _INTEGER_RANGES.get(cast, (None, None))
            if low is not None and not low <= value <= high:
                raise ValueError(f"{self.name}: {param} must be between {low} and {high} (a PostgreSQL {cast}), "
                                 f"not {value}")
            if cast == "timestamptz" and value.tzinfo is None:
                raise TypeError(f"{self.name}: {param} must be an aware datetime (tzinfo set), not {value!r}: "
                                "a naive one would be read in the session's TimeZone")

    @property
    def reads_only(self) -> bool:
        """A read (``read_url`` may serve it from a standby); everything else writes."""
        return self.name in READ_FUNCTIONS


# The read functions: pure reads, served by a hot standby too (README "Scaling reads").
READ_FUNCTIONS = frozenset({"balance", "history", "leaderboard", "wallet_rank", "period_xp", "level_for", "audit",
                            "audit_since_checkpoint", "changes"})


def json_text(value: Any) -> str:
    """JSON for a jsonb parameter. Decimals keep their exact digits; a non-finite
    number becomes a string, which the database refuses as "not a number" (PX004)."""
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{json.dumps(str(k))}:{json_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(json_text(v) for v in value) + "]"
    if isinstance(value, Decimal):  # is_finite: math.isfinite reads 1e1000 as a float's inf
        # Beyond PostgreSQL's numeric (1E+999999999 written out is a gigabyte: the CLI's --param
        # reads it so since 0045's review) it goes as a string too, refused as "not a number".
        return format(value, "f") if value.is_finite() and in_numeric_range(value) else json.dumps(str(value))
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else json.dumps(str(value))
    return json.dumps(value)


def _idle(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    return conn.info.transaction_status == TransactionStatus.IDLE


def _statement_alone(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    return conn.autocommit and _idle(conn) and conn.isolation_level is None


def _join_callers_transaction(conn: psycopg.Connection[Any]) -> None:
    """On a caller's non-autocommit connection, open its transaction as psycopg would for
    any statement, so the call's savepoint commits or rolls back with the caller's work."""
    if not conn.autocommit and _idle(conn):
        conn.execute("BEGIN", prepare=False)  # never prepared: see XP._run


def _shape_result(call: Call, rows: list[Any]) -> Any:
    if call.shape == "award":
        return Award(tuple(rows))
    if call.shape == "batch":  # rows of pyxp.award_many, ordered by event_index
        grouped: dict[int, list[Any]] = {}
        for row in rows:
            grouped.setdefault(row.event_index, []).append(row)
        return [Award(tuple(group)) for _, group in sorted(grouped.items())]
    if call.shape == "one":
        return rows[0] if rows else None
    if call.shape == "scalar":
        return rows[0][0] if rows else None
    return rows


def _log_failure(call: Call, exc: Exception, log_params: bool = False) -> None:
    """One WARNING line for a best-effort failure: the call and the error's code (PX code or
    SQLSTATE) and class. Not the message, the detail or the parameters, which name wallets,
    emails and amounts: those only with ``log_params=True``, or at DEBUG (a second line).
    A :class:`DatabaseUnavailable` says why (server, port, libpq's reason): no user data."""
    code = getattr(exc, "code", None) or getattr(exc, "sqlstate", None)
    what = " ".join(part for part in (code, type(exc).__name__) if part)
    if isinstance(exc, DatabaseUnavailable):
        what += f": {exc.message}"
    if log_params:
        log.warning("pyxp %s failed (best effort, ignored): %s: %s params=%r",
                    call.name, what, exc, dict(call.params))
        return
    log.warning("pyxp %s failed (best effort, ignored): %s", call.name, what)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("pyxp %s failure details: %s params=%r", call.name, exc, dict(call.params))


# --------------------------------------------------------------------------- the client's own pools

DEFAULT_CONNECT_TIMEOUT = 5.0
_pool_numbers = itertools.count(1)


class _PoolHealth:
    """What a client knows of its own pool: has it ever connected, is it failing to, and why."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ever_connected = False
        self.failing = False
        self.last_error: str | None = None

    def _connected(self) -> None:
        self.ever_connected, self.failing, self.last_error = True, False, None

    def connection_made(self, conn: psycopg.Connection[Any]) -> None:  # the pool's ``configure`` hook
        self._connected()
        # BEGIN ISOLATION LEVEL READ COMMITTED: behind a transaction pooler, another client's
        # session-level default_transaction_isolation = serializable refused every award (PX025).
        conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED

    async def async_connection_made(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._connected()
        await conn.set_isolation_level(psycopg.IsolationLevel.READ_COMMITTED)  # see connection_made

    def connection_failed(self, reason: str) -> None:
        self.failing, self.last_error = True, " ".join(reason.split())


class _OwnedConnection(psycopg.Connection[Any]):
    """The connections of a client's own pool: only their type tells them apart in the pool's logs."""


class _AsyncOwnedConnection(psycopg.AsyncConnection[Any]):
    """The async twin of :class:`_OwnedConnection`."""


class _OwnedPoolsLog(logging.Filter):
    """On the ``psycopg.pool`` logger: drops the records about pools pyxp clients own (a database
    that is down makes them warn on every reconnection attempt, threads and broken connections
    included), noting the connection error they carry. Records about any other pool pass."""

    def __init__(self) -> None:
        super().__init__()
        self.pools: weakref.WeakValueDictionary[str, _PoolHealth] = weakref.WeakValueDictionary()

    def _pool(self, name: str) -> _PoolHealth | None:
        # Messages name the pool ("error connecting in 'pyxp-3'") or one of its threads
        # ("couldn't stop thread 'pyxp-3-worker-0'", "pyxp-3-scheduler").
        for candidate in (name, name.rsplit("-worker-", 1)[0], name.removesuffix("-scheduler")):
            health = self.pools.get(candidate)
            if health is not None:
                return health
        return None

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or not args:
            return True
        if isinstance(args[0], (_OwnedConnection, _AsyncOwnedConnection)):
            return False  # "discarding closed connection: ..." after a restart
        if not isinstance(args[0], str):
            return True
        health = self._pool(args[0])
        if health is None:
            return True
        if str(record.msg).startswith("error connecting") and len(args) > 1:
            health.connection_failed(str(args[1]))
        return False


_OWNED_POOLS = _OwnedPoolsLog()
logging.getLogger("psycopg.pool").addFilter(_OWNED_POOLS)


def _connect_timeout(conninfo: str, given: float | None) -> float:
    """The keyword if given, else the conninfo's connect_timeout, else PGCONNECT_TIMEOUT, else 5 s."""
    if given is not None:
        if not given > 0:
            raise ValueError(f"connect_timeout must be a positive number of seconds, not {given!r}")
        return float(given)
    for value in (conninfo_to_dict(conninfo).get("connect_timeout"), os.environ.get("PGCONNECT_TIMEOUT")):
        try:
            seconds = float(value) if value is not None else 0.0
        except (TypeError, ValueError):
            continue
        if seconds > 0:
            return seconds
    return DEFAULT_CONNECT_TIMEOUT


# libpq's TCP settings for the connections a client opens itself, unless its conninfo sets them.
KEEPALIVES: dict[str, int] = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                              "keepalives_count": 3, "tcp_user_timeout": 60_000}


def _closed_by_the_server(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle pooled connection has something waiting on its socket: a server that
    closed it (a restart, pg_terminate_backend, a pooler's KILL) sent its FATAL error and the
    end of the stream there. Nothing waiting is the common case, told without a round trip."""
    try:
        return bool(select.select([conn.fileno()], [], [], 0)[0])
    except (OSError, ValueError, psycopg.Error):  # no socket: closed already
        return True


def _connection_errors(pool: ConnectionPool | AsyncConnectionPool) -> int:
    return pool.get_stats().get("connections_errors", 0)


@asynccontextmanager
async def _pooled(pool: AsyncConnectionPool, timeout: float | None = None
                  ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """``pool.connection(timeout)``, but the connection goes back to the pool in a task of its
    own (``asyncio.shield``), which the caller's cancellation cannot interrupt: psycopg_pool
    (3.3.3) loses the connection of a task cancelled while its ``putconn`` hands that connection
    to a waiting client. Under web requests that time out, the pool ran dry and every later call
    raised DatabaseUnavailable ("every connection of the client's pool is busy") (helper-70)."""
    conn = await pool.getconn(timeout=timeout)
    try:
        async with conn:  # as pool.connection(): commit, or roll back on an error
            yield conn
    finally:
        await asyncio.shield(pool.putconn(conn))


@dataclass
class _OwnedPool:
    """How a client makes, watches and takes connections from its own pool."""

    conninfo: str
    timeout: float
    health: _PoolHealth

    POLL: ClassVar[float] = 0.1  # while no connection is known to work: how often to look again
    FAILING_WAIT: ClassVar[float] = 0.25  # when the last attempt failed: the chance a call gives a new one

    @classmethod
    def make(cls, conninfo: str, connect_timeout: float | None) -> _OwnedPool:
        conninfo_to_dict(conninfo)  # a malformed conninfo is a mistake, not an outage: raise now
        health = _PoolHealth(f"pyxp-{next(_pool_numbers)}")
        _OWNED_POOLS.pools[health.name] = health
        return cls(conninfo, _connect_timeout(conninfo, connect_timeout), health)

    @property
    def libpq_timeout(self) -> int:
        return max(2, math.ceil(self.timeout))  # libpq counts whole seconds, at least 2

    @property
    def connect_kwargs(self) -> dict[str, Any]:
        """libpq settings of the connections the client opens: its connect timeout, and the
        client_encoding (UTF8) and keepalives (KEEPALIVES) the conninfo does not set itself."""
        given = conninfo_to_dict(self.conninfo)
        return {"connect_timeout": self.libpq_timeout, **utf8_unless_set(self.conninfo),
                **{name: value for name, value in KEEPALIVES.items() if name not in given}}

    def pool_options(self, max_connections: int, asynchronous: bool = False) -> dict[str, Any]:
        """Options of the pool: libpq's connect_timeout, and background reconnection attempts
        that give up after the same time — a call then starts a new one, so the pool serves
        again as soon as the database is back."""
        return {
            "min_size": 1, "max_size": max_connections, "open": False, "name": self.health.name,
            "timeout": self.timeout, "reconnect_timeout": self.timeout,
            "kwargs": self.connect_kwargs,
            "connection_class": _AsyncOwnedConnection if asynchronous else _OwnedConnection,
            "configure": self.health.async_connection_made if asynchronous else self.health.connection_made,
        }

    def unavailable(self, problem: str | None = None) -> DatabaseUnavailable:
        where = shown_conninfo(self.conninfo) or "libpq defaults"
        reason = problem or (self.health.last_error if self.health.failing else None)
        if reason is None and self.health.ever_connected and not self.health.failing:
            reason = (f"no free connection within {self.timeout:g} s: every connection of the client's "
                      "pool is busy (raise max_connections or connect_timeout)")
        elif reason is None:
            reason = f"no answer within {self.timeout:g} s"
        return DatabaseUnavailable(f"cannot connect to PostgreSQL ({where}): {reason}",
                                   hint="start the server or check the database URL; "
                                        "best_effort=True lets the main action go on without XP")

    # -- taking a connection ------------------------------------------------------------
    # A pool that works: one wait, up to the timeout, in the pool's queue (fair when busy).
    # A pool with no connection known to work: short waits, giving up as soon as a
    # connection attempt fails (refused: at once, not after the whole timeout), or after
    # FAILING_WAIT when attempts were already failing before the call (a hanging server).

    def _plan(self, pool: ConnectionPool | AsyncConnectionPool) -> tuple[float, float, bool, int]:
        start = monotonic()
        failing = self.health.failing
        polling = failing or not self.health.ever_connected  # else one wait: no need to count errors
        return start, start + self.timeout, failing, _connection_errors(pool) if polling else -1

    def _wait(self, plan: tuple[float, float, bool, int]) -> float:
        start, deadline, failing, _ = plan
        remaining = deadline - monotonic()
        if self.health.ever_connected and not failing:
            return max(remaining, 0.001)
        step = self.FAILING_WAIT if failing else self.POLL
        return max(min(step, remaining), 0.001)

    def _give_up(self, pool: ConnectionPool | AsyncConnectionPool,
                 plan: tuple[float, float, bool, int]) -> bool:
        start, deadline, failing, errors_before = plan
        now = monotonic()
        return (now >= deadline or (errors_before >= 0 and _connection_errors(pool) > errors_before)
                or (failing and now >= start + self.FAILING_WAIT))

    # A connection the server closed while it sat in the pool (_closed_by_the_server, then
    # the pool's own check to be sure) goes back, where the pool drops it, and the call takes
    # another: nothing was sent on it. (psycopg_pool's ``check`` option would cost every call
    # a round trip, and waits a backoff of a second or more between two failed checks.)

    @contextmanager
    def connection(self, pool: ConnectionPool) -> Iterator[psycopg.Connection[Any]]:
        plan = self._plan(pool)
        while True:
            with ExitStack() as stack:
                try:
                    conn = stack.enter_context(pool.connection(timeout=self._wait(plan)))
                except PoolTimeout as exc:
                    if self._give_up(pool, plan):
                        raise self.unavailable() from exc
                    continue
                if _closed_by_the_server(conn):
                    try:
                        ConnectionPool.check_connection(conn)
                    except psycopg.Error:
                        continue  # leaving the stack returns it; closed, the pool drops it
                yield conn
                return

    @asynccontextmanager
    async def async_connection(self, pool: AsyncConnectionPool
                               ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        plan = self._plan(pool)
        while True:
            async with AsyncExitStack() as stack:
                try:
                    conn = await stack.enter_async_context(_pooled(pool, self._wait(plan)))
                except PoolTimeout as exc:
                    if self._give_up(pool, plan):
                        raise self.unavailable() from exc
                    continue
                if _closed_by_the_server(conn):
                    try:
                        await AsyncConnectionPool.check_connection(conn)
                    except psycopg.Error:
                        continue  # see connection()
                yield conn
                return

    # -- the constructor's check --------------------------------------------------------
    def probe(self) -> None:
        """Connect once (not through the pool): DatabaseUnavailable, saying why, if that fails."""
        try:
            psycopg.connect(self.conninfo, connect_timeout=self.libpq_timeout).close()
        except psycopg.OperationalError as exc:
            raise self.unavailable(" ".join(str(exc).split())) from exc

    async def async_probe(self) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(self.conninfo, connect_timeout=self.libpq_timeout)
        except psycopg.OperationalError as exc:
            raise self.unavailable(" ".join(str(exc).split())) from exc
        await conn.close()


class _Api:
    """The pyxp functions as methods. Subclasses define :meth:`_execute`."""

    best_effort: bool

    def _execute(self, call: Call) -> Any:
        raise NotImplementedError

    # -- generic award and ledger corrections ---------------------------------
    def award(self, wallet: str, action: str, idempotency_key: str,
              params: Mapping[str, Number] | None = None,
              context: Mapping[str, Any] | None = None) -> Award:
        """Award the active rule ``action`` to ``wallet`` once per ``idempotency_key``."""
        return self._execute(Call("award", queries.AWARD, {
            "wallet": wallet, "action": action, "idempotency_key": idempotency_key,
            "params": json_text(params or {}), "context": json_text(context or {})}, AwardRow))

    def award_many(self, events: Iterable[AwardRequest | Mapping[str, Any]]) -> list[Award]:
        """Many generic awards in one transaction (pyxp.award_many): one Award per event, in order.

        All apply or none: a refused event raises, naming its index ("event 3: ...").
        """
        payload = [asdict(event) if isinstance(event, AwardRequest) else dict(event) for event in events]
        return self._execute(Call("award_many", queries.AWARD_MANY, {"events": json_text(payload)},
                                  BatchAwardRow, "batch"))

    def reverse(self, transaction_id: int, reason: str) -> Award:
        """Append the compensating row of ``transaction_id`` (once)."""
        return self._execute(Call("reverse_transaction", queries.REVERSE_TRANSACTION, {
            "transaction_id": transaction_id, "reason": reason}, AwardRow))

    # -- the Winstory flows ------------------------------------------------------
    def award_campaign_creation(self, creator_wallet: str, campaign_id: str, campaign_type: str,
                                mint_value: Number = None, winstory_creates_video: bool = False,
                                no_rewards: bool = False) -> Award:
        return self._execute(Call("award_campaign_creation", queries.AWARD_CAMPAIGN_CREATION, {
            "creator_wallet": creator_wallet, "campaign_id": campaign_id, "campaign_type": campaign_type,
            "mint_value": mint_value, "winstory_creates_video": winstory_creates_video,
            "no_rewards": no_rewards}, AwardRow))

    def award_campaign_approval(self, campaign_id: str, creator_wallet: str | None = None) -> Award:
        return self._execute(Call("award_campaign_approval", queries.AWARD_CAMPAIGN_APPROVAL, {
            "campaign_id": campaign_id, "creator_wallet": creator_wallet}, AwardRow))

    def award_moderation_vote(self, moderator_wallet: str, campaign_id: str, vote_decision: str,
                              campaign_type: str | None = None) -> Award:
        return self._execute(Call("award_moderation_vote", queries.AWARD_MODERATION_VOTE, {
            "moderator_wallet": moderator_wallet, "campaign_id": campaign_id,
            "vote_decision": vote_decision, "campaign_type": campaign_type}, AwardRow))

    def award_completion(self, completer_wallet: str, campaign_id: str, completion_id: str,
                         campaign_type: str | None = None, is_validated: bool = False,
                         is_refused: bool = False, is_paid: bool = False,
                         price_completion: Number = None, mint_value_winc: Number = None) -> Award:
        return self._execute(Call("award_completion", queries.AWARD_COMPLETION, {
            "completer_wallet": completer_wallet, "campaign_id": campaign_id,
            "completion_id": completion_id, "campaign_type": campaign_type,
            "is_validated": is_validated, "is_refused": is_refused, "is_paid": is_paid,
            "price_completion": price_completion, "mint_value_winc": mint_value_winc}, AwardRow))

    def award_completion_moderation(self, moderator_wallet: str, campaign_id: str, completion_id: str,
                                    vote_decision: str, campaign_type: str | None = None) -> Award:
        return self._execute(Call("award_completion_moderation", queries.AWARD_COMPLETION_MODERATION, {
            "moderator_wallet": moderator_wallet, "campaign_id": campaign_id,
            "completion_id": completion_id, "vote_decision": vote_decision,
            "campaign_type": campaign_type}, AwardRow))

    def register_agency_client(self, agency_wallet: str, client_email: str, campaign_id: str,
                               company_name: str | None = None) -> ClientRegistration:
        return self._execute(Call("register_agency_client", queries.REGISTER_AGENCY_CLIENT, {
            "agency_wallet": agency_wallet, "client_email": client_email,
            "campaign_id": campaign_id, "company_name": company_name}, ClientRegistration, "one"))

    def onboard_agency_client(self, client_email: str, client_wallet: str) -> Award:
        return self._execute(Call("onboard_agency_client", queries.ONBOARD_AGENCY_CLIENT, {
            "client_email": client_email, "client_wallet": client_wallet}, AwardRow))

    # -- reads ---------------------------------------------------------------------
    def balance(self, wallet: str) -> Balance:
        return self._execute(Call("balance", queries.BALANCE, {"wallet": wallet}, Balance, "one"))

    def history(self, wallet: str, max_rows: int = 50, before_id: int | None = None) -> list[LedgerRow]:
        return self._execute(Call("history", queries.HISTORY, {
            "wallet": wallet, "max_rows": max_rows, "before_id": before_id}, LedgerRow, "rows"))

    def leaderboard(self, max_rows: int = 100, offset_rows: int = 0, period: str = "all",
                    at: datetime | None = None) -> list[LeaderboardRow]:
        """All time (``period="all"``) or the day, week, month or year containing ``at``
        (default: now), in the active ruleset's timezone (SPEC 12). Pass an aware ``at``: a
        naive one is read in the database session's TimeZone."""
        return self._execute(Call("leaderboard", queries.LEADERBOARD, {
            "max_rows": max_rows, "offset_rows": offset_rows, "period": period, "at": at},
            LeaderboardRow, "rows"))

    def rank(self, wallet: str, period: str = "all", at: datetime | None = None) -> int | None:
        """The wallet's rank on ``leaderboard(period=period, at=at)``; None when it is not on it."""
        return self._execute(Call("wallet_rank", queries.WALLET_RANK, {
            "wallet": wallet, "period": period, "at": at}, None, "scalar"))

    def period_xp(self, wallet: str, period: str, at: datetime | None = None) -> int:
        """XP the wallet earned in the day, week, month or year containing ``at`` (default: now)."""
        return self._execute(Call("period_xp", queries.PERIOD_XP, {
            "wallet": wallet, "period": period, "at": at}, None, "scalar"))

    def level_for(self, total_xp: int) -> Level:
        return self._execute(Call("level_for", queries.LEVEL_FOR, {"total_xp": total_xp}, Level, "one"))

    def recalculate_levels(self) -> int:
        return self._execute(Call("recalculate_levels", queries.RECALCULATE_LEVELS, {}, None, "scalar"))

    def rebalance_rank_buckets(self, bucket_size: int = 1024, full_rebuild: bool = False) -> RankBuckets:
        """Re-cuts the rank buckets that grew past 2 x ``bucket_size`` (all of them with
        ``full_rebuild``), folds the writers' counts, and cuts the period boards' values many
        wallets share. The owner's: it holds every award while it runs (README "Ranks")."""
        return self._execute(Call("rebalance_rank_buckets", queries.REBALANCE_RANK_BUCKETS, {
            "bucket_size": bucket_size, "full_rebuild": full_rebuild}, RankBuckets, "one"))

    def create_ledger_partitions(self, months_ahead: int = 2) -> list[LedgerPartition]:
        """Creates the ledger's partitions of this month and the ``months_ahead`` months after it
        that no partition holds yet (run it monthly). The owner's (README "The ledger's partitions")."""
        return self._execute(Call("create_ledger_partitions", queries.CREATE_LEDGER_PARTITIONS, {
            "months_ahead": months_ahead}, LedgerPartition, "rows"))

    def archive_ledger_partitions(self, archived_before: datetime) -> list[ArchivedPartition]:
        """Moves the ledger's partitions ending at or before ``archived_before`` (at most the start
        of this month, UTC) into schema pyxp_archive, after recording an audit checkpoint that
        verifies them (:class:`~pyxp.errors.LedgerInconsistent`, nothing archived, when anything
        is inconsistent). The owner's (README "Retention")."""
        return self._execute(Call("archive_ledger_partitions", queries.ARCHIVE_LEDGER_PARTITIONS, {
            "archived_before": archived_before}, ArchivedPartition, "rows"))

    def audit(self) -> list[AuditFinding]:
        return self._execute(Call("audit", queries.AUDIT, {}, AuditFinding, "rows"))

    def audit_since_checkpoint(self) -> list[AuditFinding]:
        """audit() of what was written since the last checkpoint, in time proportional to it."""
        return self._execute(Call("audit_since_checkpoint", queries.AUDIT_SINCE_CHECKPOINT, {}, AuditFinding, "rows"))

    def record_audit_checkpoint(self) -> AuditCheckpoint:
        """Verifies what was written since the last checkpoint and records a new one
        (:class:`~pyxp.errors.LedgerInconsistent` when it is not clean: nothing recorded)."""
        return self._execute(Call("record_audit_checkpoint", queries.RECORD_AUDIT_CHECKPOINT, {}, AuditCheckpoint,
                                  "one"))

    # -- the change feed (SPEC 11) ---------------------------------------------------
    def changes(self, after_cursor: int = 0, max_rows: int = 100, wallet: str | None = None) -> list[Change]:
        """Committed ledger rows after ``after_cursor`` (pass back the last ``cursor`` to read on)."""
        return self._execute(Call("changes", queries.CHANGES, {
            "after_cursor": after_cursor, "max_rows": max_rows, "wallet": wallet}, Change, "rows"))

    def _watch_connection(self, after_cursor: int, wallet: str | None) -> tuple[str, dict[str, Any]]:
        """Where watch() opens its own connection (the client's database, same settings, in
        autocommit: a caller's pool may set it already), once its arguments are checked as every
        call's are (TypeError, ValueError: now, not at the first read)."""
        Call("watch", queries.CHANGES, page_params(after_cursor, wallet), Change, "rows")
        conninfo, kwargs = self._watch_conninfo()
        return conninfo, {**kwargs, "autocommit": True}

    def _watch_conninfo(self) -> tuple[str, dict[str, Any]]:
        """The client's database and connection settings."""
        owned: _OwnedPool | None = getattr(self, "_owned", None)
        pool = getattr(self, "_pool", None)
        connection = getattr(self, "_connection", None)
        if owned is not None:
            return owned.conninfo, owned.connect_kwargs
        if pool is not None:
            return pool.conninfo, dict(pool.kwargs)
        assert connection is not None
        return make_conninfo(connection.info.dsn, password=connection.info.password or None), {}


class XP(_Api):
    """Synchronous client. See the module docstring for what ``target`` may be."""

    # The cursor every call runs on (see _run; pyxp.bench's (i) measures a preparing one).
    _cursor_class: type[psycopg.Cursor[Any]] = psycopg.Cursor

    def __init__(self, target: str | ConnectionPool | psycopg.Connection[Any] | None = None, *,
                 best_effort: bool = False, max_connections: int = 10,
                 connect_timeout: float | None = None, log_params: bool = False,
                 read_url: str | None = None) -> None:
        """``connect_timeout`` (seconds; default: the conninfo's, else PGCONNECT_TIMEOUT, else 5)
        bounds how long a client on its own pool waits for the database: for ``XP(url)`` itself
        (raises :class:`pyxp.DatabaseUnavailable`, unless best-effort) and for each call. It does
        not apply to a pool or connection you give. ``log_params``: best-effort failures are
        logged with their message and parameters (personal data), not just the code.
        ``read_url``: a hot standby (or any replica) that serves the read methods (balance,
        history, leaderboard, rank, level_for, audit, changes) on a pool of its own; writes,
        and ``watch`` (LISTEN needs the primary), stay on ``target``."""
        self.best_effort = best_effort
        self.log_params = log_params
        self._reader: XP | None = None
        if read_url is not None:
            self._reader = XP(read_url, best_effort=best_effort, max_connections=max_connections,
                              connect_timeout=connect_timeout, log_params=log_params)
        self._connection: psycopg.Connection[Any] | None = None
        # One call at a time on a given connection: two threads' transaction blocks on one
        # connection interleave (a hostile test: awards reported done that never committed, an
        # autocommit connection left inside a transaction).
        self._connection_lock = threading.Lock()
        self._owned_pool = False
        self._owned: _OwnedPool | None = None
        if isinstance(target, psycopg.Connection):
            self._connection = target
            self._pool: ConnectionPool | None = None
        elif isinstance(target, ConnectionPool):
            self._pool = target
        else:
            owned = _OwnedPool.make(configured_conninfo() if target is None else target, connect_timeout)
            if not best_effort:
                # Best effort: a database that is down fails the calls (logged), not the constructor.
                owned.probe()
            self._pool = ConnectionPool(owned.conninfo, **owned.pool_options(max_connections))
            self._pool.open(wait=False)
            self._owned_pool = True
            self._owned = owned

    def close(self) -> None:
        """Close the pools this client opened (not a pool or connection it was given)."""
        if self._owned_pool and self._pool is not None:
            self._pool.close()
        if self._reader is not None:
            self._reader.close()

    def watch(self, after_cursor: int = 0, wallet: str | None = None, *,
              poll_interval: float = POLL_INTERVAL, stop: threading.Event | None = None,
              listen: bool = True) -> Iterator[Change]:
        """Yields changes after ``after_cursor`` as they commit, forever (or until ``stop`` is
        set), on a connection of its own (LISTEN pyxp_changes, unless ``listen=False``: behind a
        transaction-mode pooler; reconnects from the last cursor). See :mod:`pyxp.feed`."""
        conninfo, kwargs = self._watch_connection(after_cursor, wallet)
        return watch_changes(lambda: psycopg.connect(conninfo, **kwargs),
                             after_cursor, wallet, poll_interval=poll_interval, stop=stop, listen=listen)

    def __enter__(self) -> XP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, conn: psycopg.Connection[Any], call: Call) -> list[Any]:
        factory = class_row(call.row_type) if call.row_type else tuple_row
        # An autocommit connection outside a transaction runs the call's one statement as its
        # own transaction, with no BEGIN (which a statement-mode pooler refuses), unless its
        # isolation_level is set (then BEGIN with that level, as psycopg's transaction() does);
        # else in a transaction block (a savepoint of the caller's transaction).
        # psycopg.Cursor, not conn.cursor(): a caller's connection or pool may make
        # ClientCursor its cursor_factory (Django's default), which refuses binary results:
        # every call failed, and best effort dropped every award (a hostile test, 0035).
        with (nullcontext() if _statement_alone(conn) else conn.transaction()), \
                self._cursor_class(conn, row_factory=factory) as cur:  # type: ignore[arg-type]
            # Never a named prepared statement (psycopg prepares after 5 uses by default):
            # behind a transaction pooler (PgBouncer, Supavisor) the next call may run on a
            # server session where that name is another client's statement. README
            # "Deploying behind a pooler".
            # Results in binary: psycopg parses text dates in ISO DateStyle only, and a role's or
            # database's DateStyle (SQL, German) failed every read of a date (a hostile test, 0029).
            cur.execute(call.query, call.params, prepare=False, binary=True)
            return cur.fetchall()

    def _execute(self, call: Call) -> Any:
        if self._reader is not None and call.reads_only:
            return self._reader._execute(call)
        try:
            with wrap_errors():
                if self._connection is not None:
                    with self._connection_lock:
                        _join_callers_transaction(self._connection)
                        rows = self._run(self._connection, call)
                else:
                    assert self._pool is not None
                    # A caller's pool: its own settings, its own errors (PoolTimeout).
                    taken = self._owned.connection(self._pool) if self._owned else self._pool.connection()
                    with taken as conn:
                        rows = self._run(conn, call)
        except (XPError, psycopg.Error) as exc:
            if not self.best_effort:
                raise
            _log_failure(call, exc, self.log_params)
            return None
        return _shape_result(call, rows)


class AsyncXP(_Api):
    """Asynchronous twin of :class:`XP`: the same methods, each to be awaited.

    Build it with ``await AsyncXP.connect(target)`` (or give it an open
    ``AsyncConnectionPool`` / ``psycopg.AsyncConnection``) and ``await close()``.
    """

    def __init__(self, target: AsyncConnectionPool | psycopg.AsyncConnection[Any], *,
                 best_effort: bool = False, log_params: bool = False) -> None:
        if not isinstance(target, (AsyncConnectionPool, psycopg.AsyncConnection)):
            raise TypeError("AsyncXP takes an AsyncConnectionPool or an AsyncConnection; "
                            "for a conninfo use: await AsyncXP.connect(conninfo)")
        self.best_effort = best_effort
        self.log_params = log_params
        self._connection = target if isinstance(target, psycopg.AsyncConnection) else None
        self._connection_lock = asyncio.Lock()  # one call at a time on a given connection (see XP)
        self._pool = target if isinstance(target, AsyncConnectionPool) else None
        self._owned_pool = False
        self._owned: _OwnedPool | None = None

    @classmethod
    async def connect(cls, target: str | None = None, *, best_effort: bool = False,
                      max_connections: int = 10, connect_timeout: float | None = None,
                      log_params: bool = False) -> AsyncXP:
        """A client over its own pool (PYXP_DATABASE_URL / libpq defaults when target is None).

        ``connect_timeout`` and ``log_params``: as for :class:`XP`. Unless best-effort, raises
        :class:`pyxp.DatabaseUnavailable` when the database does not answer within the timeout.
        """
        owned = _OwnedPool.make(configured_conninfo() if target is None else target, connect_timeout)
        if not best_effort:
            await owned.async_probe()
        pool = AsyncConnectionPool(owned.conninfo, **owned.pool_options(max_connections, asynchronous=True))
        await pool.open(wait=False)
        client = cls(pool, best_effort=best_effort, log_params=log_params)
        client._owned_pool = True
        client._owned = owned
        return client

    async def close(self) -> None:
        if self._owned_pool and self._pool is not None:
            await self._pool.close()

    def watch(self, after_cursor: int = 0, wallet: str | None = None, *,
              poll_interval: float = POLL_INTERVAL, stop: asyncio.Event | None = None,
              listen: bool = True) -> AsyncIterator[Change]:
        """``async for change in xp.watch(...)``: the asyncio twin of :meth:`XP.watch`."""
        conninfo, kwargs = self._watch_connection(after_cursor, wallet)
        return watch_changes_async(lambda: psycopg.AsyncConnection.connect(conninfo, **kwargs),
                                   after_cursor, wallet, poll_interval=poll_interval, stop=stop, listen=listen)

    async def __aenter__(self) -> AsyncXP:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, conn: psycopg.AsyncConnection[Any], call: Call) -> list[Any]:
        factory = class_row(call.row_type) if call.row_type else tuple_row
        async with (nullcontext() if _statement_alone(conn) else conn.transaction()), \
                psycopg.AsyncCursor(conn, row_factory=factory) as cur:  # type: ignore[arg-type]
            await cur.execute(call.query, call.params, prepare=False, binary=True)  # see XP._run
            return await cur.fetchall()

    async def _execute_async(self, call: Call) -> Any:
        try:
            with wrap_errors():
                if self._connection is not None:
                    async with self._connection_lock:
                        if not self._connection.autocommit and _idle(self._connection):
                            await self._connection.execute("BEGIN", prepare=False)  # see _join_callers_transaction
                        rows = await self._run(self._connection, call)
                else:
                    assert self._pool is not None
                    # A caller's pool: its own settings, its own errors (PoolTimeout).
                    taken = (self._owned.async_connection(self._pool) if self._owned
                             else _pooled(self._pool))
                    async with taken as conn:
                        rows = await self._run(conn, call)
        except (XPError, psycopg.Error) as exc:
            if not self.best_effort:
                raise
            _log_failure(call, exc, self.log_params)
            return None
        return _shape_result(call, rows)

    def _execute(self, call: Call) -> Any:
        return self._execute_async(call)
