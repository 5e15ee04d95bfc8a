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
returns ``None`` instead of raising.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any, Literal

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import class_row, tuple_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from pyxp import queries
from pyxp.database import configured_conninfo
from pyxp.errors import XPError, wrap_errors
from pyxp.results import (
    AuditFinding,
    Award,
    AwardRequest,
    AwardRow,
    Balance,
    BatchAwardRow,
    ClientRegistration,
    LeaderboardRow,
    LedgerRow,
    Level,
)

log = logging.getLogger("pyxp")

Number = int | Decimal | float | None
Shape = Literal["award", "batch", "rows", "one", "scalar"]


@dataclass(frozen=True)
class Call:
    """One SQL function call: its name (for logs), query, parameters and result shape."""

    name: str
    query: str
    params: Mapping[str, Any]
    row_type: type | None = None  # None: plain tuples
    shape: Shape = "award"


def json_text(value: Any) -> str:
    """JSON for a jsonb parameter. Decimals keep their exact digits; a non-finite
    number becomes a string, which the database refuses as "not a number" (PX004)."""
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{json.dumps(str(k))}:{json_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(json_text(v) for v in value) + "]"
    if isinstance(value, (float, Decimal)) and not isinstance(value, bool):
        if not math.isfinite(value):
            return json.dumps(str(value))
        return format(value, "f") if isinstance(value, Decimal) else repr(value)
    return json.dumps(value)


def _idle(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    return conn.info.transaction_status == TransactionStatus.IDLE


def _join_callers_transaction(conn: psycopg.Connection[Any]) -> None:
    """On a caller's non-autocommit connection, open its transaction as psycopg would for
    any statement, so the call's savepoint commits or rolls back with the caller's work."""
    if not conn.autocommit and _idle(conn):
        conn.execute("BEGIN")


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


def _log_failure(call: Call, exc: Exception) -> None:
    code = getattr(exc, "code", None) or getattr(getattr(exc, "diag", None), "sqlstate", None)
    log.warning("pyxp %s failed (best effort, ignored): %s [%s] params=%r", call.name, exc, code, dict(call.params))


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

    def leaderboard(self, max_rows: int = 100, offset_rows: int = 0) -> list[LeaderboardRow]:
        return self._execute(Call("leaderboard", queries.LEADERBOARD, {
            "max_rows": max_rows, "offset_rows": offset_rows}, LeaderboardRow, "rows"))

    def rank(self, wallet: str) -> int | None:
        return self._execute(Call("wallet_rank", queries.WALLET_RANK, {"wallet": wallet}, None, "scalar"))

    def level_for(self, total_xp: int) -> Level:
        return self._execute(Call("level_for", queries.LEVEL_FOR, {"total_xp": total_xp}, Level, "one"))

    def recalculate_levels(self) -> int:
        return self._execute(Call("recalculate_levels", queries.RECALCULATE_LEVELS, {}, None, "scalar"))

    def audit(self) -> list[AuditFinding]:
        return self._execute(Call("audit", queries.AUDIT, {}, AuditFinding, "rows"))


class XP(_Api):
    """Synchronous client. See the module docstring for what ``target`` may be."""

    def __init__(self, target: str | ConnectionPool | psycopg.Connection[Any] | None = None, *,
                 best_effort: bool = False, max_connections: int = 10) -> None:
        self.best_effort = best_effort
        self._connection: psycopg.Connection[Any] | None = None
        self._owned_pool = False
        if isinstance(target, psycopg.Connection):
            self._connection = target
            self._pool: ConnectionPool | None = None
        elif isinstance(target, ConnectionPool):
            self._pool = target
        else:
            conninfo = configured_conninfo() if target is None else target
            self._pool = ConnectionPool(conninfo, min_size=1, max_size=max_connections, open=False,
                                        name="pyxp")
            # Best effort: a database that is down fails the calls (logged), not the constructor.
            self._pool.open(wait=not best_effort)
            self._owned_pool = True

    def close(self) -> None:
        """Close the pool this client opened (not a pool or connection it was given)."""
        if self._owned_pool and self._pool is not None:
            self._pool.close()

    def __enter__(self) -> XP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, conn: psycopg.Connection[Any], call: Call) -> list[Any]:
        factory = class_row(call.row_type) if call.row_type else tuple_row
        with conn.transaction(), conn.cursor(row_factory=factory) as cur:  # type: ignore[arg-type]
            cur.execute(call.query, call.params)
            return cur.fetchall()

    def _execute(self, call: Call) -> Any:
        try:
            with wrap_errors():
                if self._connection is not None:
                    _join_callers_transaction(self._connection)
                    rows = self._run(self._connection, call)
                else:
                    assert self._pool is not None
                    with self._pool.connection() as conn:
                        rows = self._run(conn, call)
        except (XPError, psycopg.Error) as exc:
            if not self.best_effort:
                raise
            _log_failure(call, exc)
            return None
        return _shape_result(call, rows)


class AsyncXP(_Api):
    """Asynchronous twin of :class:`XP`: the same methods, each to be awaited.

    Build it with ``await AsyncXP.connect(target)`` (or give it an open
    ``AsyncConnectionPool`` / ``psycopg.AsyncConnection``) and ``await close()``.
    """

    def __init__(self, target: AsyncConnectionPool | psycopg.AsyncConnection[Any], *,
                 best_effort: bool = False) -> None:
        if not isinstance(target, (AsyncConnectionPool, psycopg.AsyncConnection)):
            raise TypeError("AsyncXP takes an AsyncConnectionPool or an AsyncConnection; "
                            "for a conninfo use: await AsyncXP.connect(conninfo)")
        self.best_effort = best_effort
        self._connection = target if isinstance(target, psycopg.AsyncConnection) else None
        self._pool = target if isinstance(target, AsyncConnectionPool) else None
        self._owned_pool = False

    @classmethod
    async def connect(cls, target: str | None = None, *, best_effort: bool = False,
                      max_connections: int = 10) -> AsyncXP:
        """A client over its own pool (PYXP_DATABASE_URL / libpq defaults when target is None)."""
        conninfo = configured_conninfo() if target is None else target
        pool = AsyncConnectionPool(conninfo, min_size=1, max_size=max_connections, open=False, name="pyxp")
        await pool.open(wait=True)
        client = cls(pool, best_effort=best_effort)
        client._owned_pool = True
        return client

    async def close(self) -> None:
        if self._owned_pool and self._pool is not None:
            await self._pool.close()

    async def __aenter__(self) -> AsyncXP:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, conn: psycopg.AsyncConnection[Any], call: Call) -> list[Any]:
        factory = class_row(call.row_type) if call.row_type else tuple_row
        async with conn.transaction(), conn.cursor(row_factory=factory) as cur:  # type: ignore[arg-type]
            await cur.execute(call.query, call.params)
            return await cur.fetchall()

    async def _execute_async(self, call: Call) -> Any:
        try:
            with wrap_errors():
                if self._connection is not None:
                    if not self._connection.autocommit and _idle(self._connection):
                        await self._connection.execute("BEGIN")  # see _join_callers_transaction
                    rows = await self._run(self._connection, call)
                else:
                    assert self._pool is not None
                    async with self._pool.connection() as conn:
                        rows = await self._run(conn, call)
        except (XPError, psycopg.Error) as exc:
            if not self.best_effort:
                raise
            _log_failure(call, exc)
            return None
        return _shape_result(call, rows)

    def _execute(self, call: Call) -> Any:
        return self._execute_async(call)
