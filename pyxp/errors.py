"""pyxp exceptions: one class per PX error code raised by the SQL functions.

The SQL functions refuse bad input with SQLSTATE ``PX0nn`` (see README.md,
"Error codes"). :func:`wrap_errors` turns such a database error into the
matching :class:`XPError` subclass, chained to the original psycopg error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg


class XPError(Exception):
    """Base class of every pyxp error.

    ``code`` is the SQLSTATE (``PX0nn``) when the database refused the call,
    ``hint`` what it accepts, ``detail`` any further detail it gave.
    """

    code: str | None = None

    def __init__(self, message: str, *, hint: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.detail = detail

    def __str__(self) -> str:
        """One line: ``CODE: message; detail (hint)``.

        The detail is what tells two refusals of one kind apart (PX010: what the
        first call with the key asked for, against this call), so it is part of
        the text a log or the CLI shows.
        """
        text = f"{self.code}: {self.message}" if self.code else self.message
        if self.detail:
            text += f"; {self.detail}"
        if self.hint:
            text += f" ({self.hint})"
        return " ".join(text.splitlines())


class InvalidWallet(XPError):
    code = "PX001"


class InvalidEmail(XPError):
    code = "PX002"


class UnknownCampaignType(XPError):
    code = "PX003"


class InvalidNumber(XPError):
    code = "PX004"


class ConflictingFlags(XPError):
    code = "PX005"


class InvalidPrice(XPError):
    code = "PX006"


class MissingMintValue(XPError):
    code = "PX007"


class InvalidVote(XPError):
    code = "PX008"


class UnknownAction(XPError):
    code = "PX009"


class IdempotencyConflict(XPError):
    code = "PX010"


class CampaignMismatch(XPError):
    code = "PX011"


class UnknownCampaign(XPError):
    code = "PX012"


class AppendOnlyLedger(XPError):
    code = "PX013"


class ReversalRefused(XPError):
    code = "PX014"


class UnknownTransaction(XPError):
    code = "PX015"


class InvalidIdentifier(XPError):
    code = "PX016"


class InvalidParams(XPError):
    code = "PX017"


class MissingInput(XPError):
    code = "PX018"


class BalanceOutOfRange(XPError):
    code = "PX019"


class NoActiveRuleset(XPError):
    code = "PX020"


class ClientIsAgency(XPError):
    code = "PX021"


class RegistrationRefused(XPError):
    code = "PX022"


class InvalidArgument(XPError):
    code = "PX023"


class InvalidRuleset(XPError):
    code = "PX024"


class IsolationRefused(XPError):
    """A writing function was called in a REPEATABLE READ or SERIALIZABLE transaction."""

    code = "PX025"


class InvalidPeriod(XPError):
    """A period other than all, day, week, month, year; a NULL or infinite ``at``."""

    code = "PX026"


class UnknownRuleset(XPError):
    """A ruleset id that pyxp.rulesets does not hold (simulation, retroactive application)."""

    code = "PX027"


class LedgerInconsistent(XPError):
    """What was written since the last audit checkpoint is inconsistent: no checkpoint was
    recorded. ``XP.audit_since_checkpoint()`` lists the findings."""

    code = "PX028"


class ArchivedRows(XPError):
    """What was asked needs ledger rows that were archived (README "Retention"): replaying a call
    whose rows were archived (its key stays used: nothing is written again), reversing an archived
    row, a board of a period that began before the archived range ended, a what-if over the whole
    ledger, a ruleset in another timezone, the change feed after a cursor the archived rows reach.
    Nothing was written."""

    code = "PX029"


class ArchiveRefused(XPError):
    """``archive_ledger_partitions`` would take a reversal out of the ledger and keep the row it
    reverses (a reversal whose transaction began before its original's, written before 0016):
    archive up to a later month. Nothing was archived."""

    code = "PX030"


class FeedGroupOverflow(XPError):
    """``changes`` met a feed group of more than 16,777,215 rows, whose cursors would be the next
    group's: it refuses rather than skip rows. Batches and retroactive applications keep a
    transaction below it (PX023). Also (0033) an adoption of a new timeline or a copy that would
    number transaction ids within a margin of 2^39, past what cursors hold: nothing written."""

    code = "PX031"


class LedgerCopied(XPError):
    """The database's ledger counts the transaction ids of another PostgreSQL cluster: it was copied
    here (pg_dump and restore, logical replication, pg_upgrade) and not adopted yet. Writes, the
    change feed, audit checkpoints and archives refuse until ``pyxp db upgrade`` runs once (README
    "Copies of the database"). Nothing was written."""

    code = "PX032"


class FeedForked(XPError):
    """``changes`` (and ``watch``) got a cursor handed out by a history this database left: a failover
    to a standby that had not received the last transactions, a point-in-time recovery, a copy
    restored while its source went on. The rows it was read up to are not in this ledger, and the new
    rows took their transaction ids. ``kept_cursor`` is where to go on from (every row the ledger kept
    is at or below it); what was read after it no longer happened (README "Copies of the database")."""

    code = "PX033"

    @property
    def kept_cursor(self) -> int | None:
        found = re.search(r"at or below cursor (\d+)", self.detail or "")
        return int(found.group(1)) if found else None


class NestedWrite(XPError):
    """A writing function (an award, a flow, a reversal, a batch) was called by a trigger that another
    call fired while inserting its ledger rows: an application's trigger on ``xp_transactions`` or
    ``xp_award_claims`` that awards. That call's balances are not updated yet; this one would read them
    stale and that one write over it (0035). Award after the call returns, or from a trigger on
    ``xp_balances`` or on a table of your own. Nothing was written by this call."""

    code = "PX034"


class DatabaseUnavailable(XPError):
    """No PostgreSQL server could be reached or started, or none answered within the connect timeout.

    Raised before anything was sent to the database: the call did not happen.
    """


__all__ = [
    "XPError", "DatabaseUnavailable", "ERRORS_BY_CODE", "wrap_errors", "error_from_database",
    "error_from_sqlstate",
    "InvalidWallet", "InvalidEmail", "UnknownCampaignType", "InvalidNumber", "ConflictingFlags",
    "InvalidPrice", "MissingMintValue", "InvalidVote", "UnknownAction", "IdempotencyConflict",
    "CampaignMismatch", "UnknownCampaign", "AppendOnlyLedger", "ReversalRefused",
    "UnknownTransaction", "InvalidIdentifier", "InvalidParams", "MissingInput", "BalanceOutOfRange",
    "NoActiveRuleset", "ClientIsAgency", "RegistrationRefused", "InvalidArgument", "InvalidRuleset",
    "IsolationRefused", "InvalidPeriod", "UnknownRuleset", "LedgerInconsistent", "ArchivedRows",
    "ArchiveRefused", "FeedGroupOverflow", "LedgerCopied", "FeedForked", "NestedWrite",
]

ERRORS_BY_CODE: dict[str, type[XPError]] = {
    cls.code: cls for cls in XPError.__subclasses__() if cls.code is not None
}


def error_from_sqlstate(code: str | None, message: str, hint: str | None = None,
                        detail: str | None = None) -> XPError | None:
    """The pyxp error for a SQLSTATE and the server's message, hint and detail; None if not ``PX``.

    For any driver: with asyncpg, ``error_from_sqlstate(exc.sqlstate, exc.message, exc.hint,
    exc.detail)`` on a ``asyncpg.PostgresError``. A ``PX`` code this version of the
    package does not know (a newer schema) gives a plain :class:`XPError` carrying it.
    """
    if not code or not code.startswith("PX"):
        return None
    cls = ERRORS_BY_CODE.get(code)
    if cls is not None:
        return cls(message, hint=hint, detail=detail)
    error = XPError(message, hint=hint, detail=detail)
    error.code = code
    return error


def error_from_database(exc: BaseException) -> XPError | None:
    """The pyxp error matching a PX-coded database error, or None for any other error.

    Takes a psycopg (3 or 2) error, whose fields are in ``exc.diag``, or any error
    carrying ``sqlstate``, ``message``, ``hint`` and ``detail`` attributes (asyncpg).
    """
    diag = getattr(exc, "diag", None)
    if diag is not None:
        return error_from_sqlstate(diag.sqlstate, diag.message_primary or str(exc),
                                   hint=diag.message_hint, detail=diag.message_detail)
    return error_from_sqlstate(getattr(exc, "sqlstate", None), getattr(exc, "message", None) or str(exc),
                               hint=getattr(exc, "hint", None), detail=getattr(exc, "detail", None))


@contextmanager
def wrap_errors() -> Iterator[None]:
    """Re-raise PX-coded database errors as :class:`XPError` subclasses (``from`` the original)."""
    try:
        yield
    except psycopg.Error as exc:
        error = error_from_database(exc)
        if error is None:
            raise
        raise error from exc
