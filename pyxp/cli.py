"""The ``pyxp`` command line (SPEC section 9).

Every command but ``demo`` works on the database given by ``--database-url``
(default: PYXP_DATABASE_URL, else libpq's environment and defaults). ``demo``
finds or starts a server (:func:`pyxp.database.discovered_server`) and plays
the seeds' stories on a scratch database.

Exit codes: 0 done, 1 ``audit`` found inconsistencies, 2 refused (a PX error,
bad usage, no database, a missing privilege: nothing written), 3 the connection was
lost during the command (its outcome is unknown: run it again, an award replays),
130 / 143 / 129 interrupted by SIGINT / SIGTERM / SIGHUP (the statement is cancelled; one
that had committed replays when run again). Errors are one line on stderr:
``error: CODE: message; detail (hint)``, e.g. ``error: PX001: invalid wallet: '' (what
is accepted)``; the hint names the command's flags where the SQL hint names a parameter,
and a missing privilege (42501) says which role or grant is needed. With ``--json`` the
error is ``{"error": {"code", "message", "detail", "hint"}}`` on stdout instead.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import re
import shlex
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

import click
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import class_row, dict_row

from pyxp import queries
from pyxp.client import XP
from pyxp.database import DATABASE_URL_VARIABLE, connect
from pyxp.errors import NoActiveRuleset, XPError, wrap_errors
from pyxp.results import Award, ClientRegistration, WalletArchive
from pyxp.ruleset_config import load_ruleset
from pyxp.tables import Cell, Column, Printer, Styled, change_line, level_change, print_audit, signed, xp_cell

EXIT_FINDINGS = 1
EXIT_REFUSED = 2
EXIT_OUTCOME_UNKNOWN = 3

# `pyxp levels`: totals whose level is shown after the first levels.
FAR_TOTALS = (10**6, 10**9, 10**12, 10**15, 2**62)


# --------------------------------------------------------------------------- errors


# The SQL parameters' ranges: a value outside them is a usage error here, not a bare 22003 from
# the cast (a hostile test, 0029); inside them the functions refuse what they refuse (PX023).
INTEGER = click.IntRange(-2**31, 2**31 - 1)
BIGINT = click.IntRange(-2**63, 2**63 - 1)


@dataclasses.dataclass(frozen=True)
class ErrorReport:
    """What a refused command reports: the one-line text on stderr, or ``{"error": ...}`` with --json.

    ``code`` is the SQLSTATE (``PX0nn`` for a pyxp refusal, e.g. ``42501`` for a missing
    privilege), None when no database gave one. ``show_code``: whether the text line starts with it.
    """

    message: str
    code: str | None = None
    detail: str | None = None
    hint: str | None = None
    show_code: bool = True

    def line(self) -> str:
        text = f"{self.code}: {self.message}" if self.code and self.show_code else self.message
        if self.detail:
            text += f"; {self.detail}"
        if self.hint:
            text += f" ({self.hint})"
        return _one_line(text)

    def as_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "detail": self.detail,
                          "hint": self.hint}}


class Refused(click.ClickException):
    """Exit code 2 and one line on stderr (``error: ...``), or with --json a JSON object on stdout."""

    exit_code = EXIT_REFUSED

    def __init__(self, report: ErrorReport | str, as_json: bool = False) -> None:
        self.report = report if isinstance(report, ErrorReport) else ErrorReport(report)
        self.as_json = as_json
        super().__init__(self.report.line())

    def show(self, file: Any = None) -> None:
        if self.as_json:
            click.echo(json.dumps(self.report.as_json(), indent=2, ensure_ascii=False))
        else:
            Printer(sys.stderr).error(self.message)


class OutcomeUnknown(Refused):
    """Exit code 3: the connection was lost while a statement ran; it may have committed."""

    exit_code = EXIT_OUTCOME_UNKNOWN


class Interrupted(Refused):
    """Exit code 128 + the signal's number (SIGINT, SIGTERM, SIGHUP): psycopg cancelled the statement."""

    def __init__(self, signum: int, as_json: bool = False) -> None:
        self.exit_code = 128 + signum
        super().__init__(ErrorReport(
            f"interrupted ({signal.Signals(signum).name}): the running statement was cancelled",
            hint="if it had committed already, running the same command again finds it done "
                 "(an award or a flow call with the same key replays; a ruleset already active changes "
                 "nothing)"), as_json)


# The signal that ended the command (main() turns SIGTERM and SIGHUP into KeyboardInterrupt, as SIGINT).
_received_signals: list[int] = []


def _one_line(text: str) -> str:
    return " ".join(text.split())


# Meta keys shared by every context of one invocation (click's ctx.meta).
_ARGS, _COMMAND, _JSON = "pyxp.args", "pyxp.command", "pyxp.json"
_USER, _DATABASE = "pyxp.user", "pyxp.database"  # who the command connected as, and where


def _invoked_command(ctx: click.Context) -> tuple[str, click.Command | None]:
    """The invoked sub-command's path (``award completion``) and object, as far as it was resolved."""
    names: list[str] = ctx.meta.get(_COMMAND, [])
    command: click.Command | None = ctx.command
    for name in names:
        command = command.get_command(ctx, name) if isinstance(command, click.Group) else None
    return " ".join(names), command


def _flag_names(command: click.Command | None) -> dict[str, str]:
    """SQL parameter name -> the command's option (``campaign_type`` -> ``--campaign-type``).

    Only names with an underscore: a one-word name (``reason``) reads the same either way, and
    would match ordinary words of a hint.
    """
    flags: dict[str, str] = {}
    for param in command.params if command is not None else ():
        if isinstance(param, click.Option) and param.name and "_" in param.name and param.name != "as_json":
            preferred = "--" + param.name.replace("_", "-")
            flags[param.name] = preferred if preferred in param.opts else param.opts[0]
    return flags


def _with_flags(text: str | None, flags: dict[str, str], message: bool = False) -> str | None:
    """A hint (or message) of the SQL functions with their parameter names as the CLI's flags.

    In a hint every name is translated (``is_paid => true`` -> ``--is-paid``); in a message only
    where it names the parameter (``invalid max_rows: 0``, ``needs a positive price_completion``),
    never in a value the caller passed.
    """
    if not text or not flags:
        return text
    names = "|".join(re.escape(name) for name in sorted(flags, key=len, reverse=True))
    if message:
        pattern = rf"(?:(?<=^invalid )|(?<=needs a positive )|(?<=has a ))({names})\b(?=:|,| \()"
        return re.sub(pattern, lambda m: flags[m.group(1)], text)
    return re.sub(rf"\b({names})\b(?: => true)?", lambda m: flags[m.group(1)], text)


def _px_report(ctx: click.Context, exc: XPError) -> ErrorReport:
    flags = _flag_names(_invoked_command(ctx)[1])
    return ErrorReport(_with_flags(exc.message, flags, message=True) or exc.message, exc.code,
                       exc.detail, _with_flags(exc.hint, flags))


def _identifier(name: str) -> str:
    """A role or database name as SQL writes it (quoted unless a plain lower-case identifier)."""
    return name if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) else '"' + name.replace('"', '""') + '"'


def _role(ctx: click.Context) -> str:
    """The role the command connected as (for GRANT advice), as SQL writes it."""
    user = ctx.meta.get(_USER)
    if not user:
        settings = ctx.find_object(Settings)
        url = (settings.database_url if settings else "") or os.environ.get(DATABASE_URL_VARIABLE, "")
        try:
            user = conninfo_to_dict(url).get("user")
        except psycopg.Error:
            user = None
    return _identifier(str(user or os.environ.get("PGUSER") or getpass.getuser()))


def _migrating_role(role: str, database: str | None) -> str:
    on = f"GRANT CREATE ON DATABASE {_identifier(database) if database else '...'} TO {role}"
    return (f"pyxp db upgrade and downgrade run as the migrating role: one that may create a schema in this "
            f"database (its owner, or {on}) and either create roles (CREATEROLE) or, if a DBA created "
            f"pyxp_owner, pyxp_writer and pyxp_reader beforehand, is a member of pyxp_owner "
            f'(GRANT pyxp_owner TO {role}); see README "Install into a database"')


OWNER_FUNCTIONS = ("install_ruleset", "recalculate_levels", "simulate_rules", "rebalance_rank_buckets",
                   "create_ledger_partitions", "archive_ledger_partitions")


def _permission_hint(ctx: click.Context, message: str) -> str:
    """What a permission error (SQLSTATE 42501) needs, in the terms of README "Install into a database"."""
    role = _role(ctx)
    command = _invoked_command(ctx)[0]
    match = re.search(r"permission denied for (function|table|schema|database|sequence|view) (\S+)", message)
    kind, name = match.groups() if match else ("", "")
    if ("admin option on role" in message or "permission denied to create role" in message
            or command in ("db upgrade", "db downgrade")):
        return _migrating_role(role, ctx.meta.get(_DATABASE))
    if "permission denied to create database" in message:
        return (f"pyxp {command or 'demo'} creates a scratch database: give {role} CREATEDB "
                f"(ALTER ROLE {role} CREATEDB), or point --database-url / {DATABASE_URL_VARIABLE} "
                "at a role that has it")
    if kind == "function" and name in OWNER_FUNCTIONS:
        return (f"pyxp.{name} is the owner's: connect as the role that ran pyxp db upgrade "
                "(a member of pyxp_owner); pyxp_writer awards, pyxp_reader reads")
    if kind == "function":
        return f"pyxp.{name} is for pyxp_writer: GRANT pyxp_writer TO {role}"
    if kind == "schema":
        return (f"{role} has no pyxp role: GRANT pyxp_writer TO {role} (award and read), "
                f"or GRANT pyxp_reader TO {role} (read)")
    if kind in ("table", "view", "sequence"):
        what = ("pyxp's migration history (pyxp.alembic_version)" if name == "alembic_version"
                else "pyxp's tables")
        return (f"{'pyxp ' + command if command else 'this command'} reads {what}, which needs pyxp_reader: "
                f"GRANT pyxp_reader TO {role} (pyxp_writer only calls functions)")
    return (f"{role} lacks a privilege: pyxp_writer awards, pyxp_reader reads, the migrating role installs; "
            'see README "Install into a database"')


def _schema_installed(ctx: click.Context) -> bool:
    """Whether schema pyxp exists in the command's database (False when that cannot be told)."""
    try:
        with connect(_settings(ctx).database_url, autocommit=True, connect_timeout=3) as conn:
            return bool(conn.execute("SELECT to_regnamespace('pyxp') IS NOT NULL").fetchone()[0])
    except psycopg.Error:
        return False


def _server_full(exc: psycopg.OperationalError) -> bool:
    """A connection refused because the server is at max_connections (SQLSTATE 53300, which libpq
    reports only in the message of a failed connection)."""
    text = str(exc)
    return "too many clients already" in text or "remaining connection slots are reserved" in text


def _database_report(ctx: click.Context, exc: psycopg.Error) -> ErrorReport:
    """The report of a database error that is not a PX refusal."""
    if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None and _server_full(exc):
        # (a hostile test, 0035: "set --database-url" was the advice, the URL being right)
        return ErrorReport(f"PostgreSQL has no free connection: {_one_line(str(exc))}", "53300",
                           hint="the server is at max_connections; nothing was sent: run the command again "
                                "later, or put a pooler in front (README \"Deploying behind a pooler\")")
    if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
        return ErrorReport(f"cannot connect to PostgreSQL: {_one_line(str(exc))}",
                           hint=f"set --database-url or {DATABASE_URL_VARIABLE}, "
                                "e.g. postgresql://user@host:5432/dbname")
    if isinstance(exc, psycopg.ProgrammingError) and exc.sqlstate is None:
        return ErrorReport(f"invalid database URL: {_one_line(str(exc))}",
                           hint="a libpq URL postgresql://user@host:port/dbname or key=value pairs")
    message = _one_line(exc.diag.message_primary or str(exc))
    if exc.sqlstate in ("3F000", "42P01", "42883") and "pyxp" in message:
        if exc.sqlstate == "3F000" or not _schema_installed(ctx):
            return ErrorReport("the pyxp schema is not installed in this database", exc.sqlstate, message,
                               "run: pyxp db upgrade", show_code=False)
        # (a hostile test, 0030: a downgrade stopped by a missing function said "not installed")
        return ErrorReport(message, exc.sqlstate, exc.diag.message_detail,
                           "the pyxp schema is installed, without this: pyxp db current shows its revision, "
                           "pyxp db upgrade brings it to this package's")
    if exc.sqlstate == "42501":
        return ErrorReport(message, exc.sqlstate, exc.diag.message_detail, _permission_hint(ctx, message))
    return ErrorReport(message, exc.sqlstate or None, exc.diag.message_detail, exc.diag.message_hint)


def _wants_json(ctx: click.Context) -> bool:
    """--json was given: by the command's own option if it was parsed, else by the raw arguments."""
    if _JSON in ctx.meta:
        return bool(ctx.meta[_JSON])
    args: list[str] = ctx.meta.get(_ARGS, [])
    return "--json" in (args[:args.index("--")] if "--" in args else args)


class _Group(click.Group):
    """A command group that records which sub-command runs (for error reports)."""

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            ctx.meta.setdefault(_COMMAND, []).append(command.name or name)
        return name, command, rest


class _Cli(_Group):
    """The top-level group: turns pyxp and database errors into one line (or JSON) and exit code 2.

    `bench` is loaded only when asked for: it imports more than other commands need.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "bench"])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name == "bench":
            from pyxp.bench import bench_command

            return bench_command
        return super().get_command(ctx, name)

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        ctx = super().make_context(info_name, list(args), parent, **extra)
        ctx.meta[_ARGS] = list(args)
        return ctx

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except XPError as exc:  # PX refusals, ConfigError, DatabaseUnavailable
            raise Refused(_px_report(ctx, exc), _wants_json(ctx)) from exc
        except psycopg.Error as exc:
            raise Refused(_database_report(ctx, exc), _wants_json(ctx)) from exc
        except UnicodeEncodeError as exc:  # an argument that is no UTF-8 text (bytes the shell passed)
            raise Refused(ErrorReport(f"an argument is not UTF-8 text: {exc.object[exc.start:exc.end]!r}",
                                      hint="pass wallets, keys and ids as UTF-8 text"),
                          _wants_json(ctx)) from exc
        except Refused as exc:
            exc.as_json = _wants_json(ctx)
            raise
        except KeyboardInterrupt as exc:  # (click would print "Aborted!" and exit 1)
            signum = _received_signals[-1] if _received_signals else signal.SIGINT
            raise Interrupted(signum, _wants_json(ctx)) from exc
        except click.UsageError as exc:
            if not _wants_json(ctx):
                raise
            command = _invoked_command(ctx)[0]
            raise Refused(ErrorReport(exc.format_message(), hint=f"pyxp {command} --help".replace("  ", " ")),
                          as_json=True) from exc


# --------------------------------------------------------------------------- plumbing


@dataclasses.dataclass
class Settings:
    database_url: str


def _settings(ctx: click.Context) -> Settings:
    return ctx.find_object(Settings)  # type: ignore[return-value]


@contextmanager
def _connection(ctx: click.Context) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the command's database (each client call is its own transaction:
    its statement alone, or, where the session's default isolation is not READ COMMITTED, in a
    BEGIN ISOLATION LEVEL READ COMMITTED block: a hostile test, 0030, found every award refused
    with PX025 on a role or database defaulting to SERIALIZABLE)."""
    with connect(_settings(ctx).database_url, autocommit=True) as conn:
        ctx.meta[_USER], ctx.meta[_DATABASE] = conn.info.user, conn.info.dbname  # for permission advice
        try:
            if conn.execute("SELECT current_setting('default_transaction_isolation') = 'read committed'"
                            ).fetchone()[0]:
                conn.isolation_level = None  # (statement-mode poolers refuse BEGIN)
            yield conn
        except psycopg.OperationalError as exc:
            # Connected, then lost while a statement ran (a network cut, pg_terminate_backend,
            # a restart): it may have committed. Not "cannot connect" and exit 2, which say
            # nothing was written (a hostile test, 0034: the award was in the ledger).
            if exc.sqlstate is not None and not exc.sqlstate.startswith(("08", "57P")):
                raise
            raise OutcomeUnknown(ErrorReport(
                f"the connection to PostgreSQL was lost during the command: {_one_line(str(exc))}",
                exc.sqlstate, "whether it was applied is unknown",
                "run the same command again: an award that was applied replays its first result "
                "(same key), one that was not is made"), _wants_json(ctx)) from exc


@contextmanager
def _client(ctx: click.Context) -> Iterator[XP]:
    with _connection(ctx) as conn:
        yield XP(conn)


def _conninfo(ctx: click.Context) -> str:
    """The database URL, after checking that it answers (schema functions open their own connections)."""
    with _connection(ctx):
        pass
    return _settings(ctx).database_url


@contextmanager
def _migrations(revisions: bool = True) -> Iterator[ModuleType]:
    """:mod:`pyxp.schema`, loaded only by the commands that need it (alembic and SQLAlchemy
    take longer to import than an award takes to run); alembic's errors become one line.
    ``revisions``: the command runs revisions (``db``), whose cancellation is explained as such;
    the ``rules`` commands run none (a hostile test, 0035: a cancelled ``rules apply`` was
    reported as a stopped migration, with ``pyxp db upgrade`` as the advice)."""
    from alembic.util import CommandError
    from sqlalchemy.exc import DBAPIError

    from pyxp import schema

    try:
        yield schema
    except CommandError as exc:
        raise Refused(_one_line(f"migration: {exc}")) from exc
    except DBAPIError as exc:  # a psycopg error, wrapped by SQLAlchemy
        if isinstance(exc.orig, psycopg.Error):
            raise (_stopped_migration(exc.orig) if revisions else None) or exc.orig from exc
        raise
    except psycopg.Error as exc:  # the revisions' own SQL, run on the driver's connection
        stopped = _stopped_migration(exc) if revisions else None
        if stopped is None:
            raise
        raise stopped from exc


def _stopped_migration(error: psycopg.Error) -> Refused | None:
    """A migration cancelled or terminated midway (not a connection problem: a hostile test, 0029,
    was told "cannot connect to PostgreSQL" after a migration had run for a while, or a bare 57014
    from a role's statement_timeout), or stopped by the server's resources: a full disk, memory,
    a configured limit (class 53: a bare 53100 said nothing of where the database was left, 0036)."""
    resources = (error.sqlstate or "").startswith("53")
    where = ("each revision is its own transaction: the database is at the last one that finished "
             "(pyxp db current), and pyxp db upgrade goes on from there")
    from pyxp.schema import RETRIED_SQLSTATES  # (loaded: the error came from it)

    if error.sqlstate in RETRIED_SQLSTATES:  # (pyxp.schema ran it again, MIGRATION_ATTEMPTS times in all)
        return Refused(ErrorReport(
            f"the migration stopped: {_one_line(str(error))}", code=error.sqlstate,
            hint=f"{where}; writers kept locking what a revision locks (README \"Upgrading while "
                 "the application writes\"): run it again"))
    if not (resources or isinstance(error, (psycopg.errors.QueryCanceled, psycopg.errors.AdminShutdown))):
        return None  # (a connection that failed or broke without a code: the usual report)
    return Refused(ErrorReport(
        f"the migration stopped: {_one_line(str(error))}", code=error.sqlstate,
        hint=f"{where}; free what the server lacks first (disk space, memory, or the limit named)" if resources
        else f"{where}; a role's or database's statement_timeout cancels a long revision: "
             "PGOPTIONS='-c statement_timeout=0'"))


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else str(value)
    return value


def _print_json(value: Any) -> None:
    click.echo(json.dumps(_jsonable(value), indent=2, ensure_ascii=False))


def _remember_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    ctx.meta[_JSON] = value  # errors too are then reported as JSON
    return value


json_option = click.option("--json", "as_json", is_flag=True, is_eager=True, expose_value=True,
                           callback=_remember_json,
                           help='Print JSON instead of a table (an error: {"error": {...}} on stdout).')


class DecimalType(click.ParamType):
    """A number as typed (exact); the database decides whether it is acceptable."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Decimal:
        if isinstance(value, Decimal):
            return value
        try:
            return Decimal(str(value).strip())
        except InvalidOperation:
            self.fail(f"{value!r} is not a number", param, ctx)


NUMBER = DecimalType()


# --------------------------------------------------------------------------- the group


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--database-url", envvar=DATABASE_URL_VARIABLE, default="", metavar="URL",
              help=f"libpq URL or key=value conninfo "
                   f"[default: ${DATABASE_URL_VARIABLE}, else libpq defaults]")
@click.version_option(package_name="pyxp")
@click.pass_context
def cli(ctx: click.Context, database_url: str) -> None:
    """pyxp: the XP ledger of a campaign platform, kept in PostgreSQL.

    Start with `pyxp demo`: it plays the seeds' stories on a scratch database.
    """
    ctx.obj = Settings(database_url)


# --------------------------------------------------------------------------- db


@cli.group(cls=_Group)
def db() -> None:
    """Migrate the database (alembic)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Migrate up, then activate the default ruleset if none is active."""
    conninfo = _conninfo(ctx)
    with _migrations() as schema:
        done = schema.upgrade(conninfo, revision)
    if done.before == done.after and revision not in ("head", done.after):
        click.echo(f"already at revision {done.after}, past {revision}: nothing done "
                   f"(pyxp db downgrade --revision {revision} goes back)")
    elif done.before == done.after:
        click.echo(f"already at revision {done.after}")
    else:
        click.echo(f"migrated {done.before or 'empty database'} -> {done.after}")
    if done.installed is not None:
        click.echo(f"activated ruleset {done.installed.name} v{done.installed.version}")


@db.command("downgrade")
@click.option("--revision", default="base", show_default=True,
              help="Target revision; base drops the pyxp schema and all its data.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def db_downgrade(ctx: click.Context, revision: str, yes: bool) -> None:
    """Migrate down (to base: drop the pyxp schema, ledger included)."""
    conninfo = _conninfo(ctx)
    if not yes:
        click.confirm(f"Downgrade to {revision}? "
                      "Down to base this drops every pyxp table, the ledger included", abort=True)
    with _migrations() as schema:
        before = schema.current_revision(conninfo)
        schema.downgrade(conninfo, revision)
        after = schema.current_revision(conninfo)
    click.echo(f"migrated {before or 'empty database'} -> {after or 'base (no pyxp schema)'}")


@db.command("current")
@json_option
@click.pass_context
def db_current(ctx: click.Context, as_json: bool) -> None:
    """Show the database's revision, the head revision and the active ruleset."""
    conninfo = _conninfo(ctx)
    with _migrations() as schema:
        current, head = schema.current_revision(conninfo), schema.head_revision()
        copied = schema.copied_revision(conninfo, current)
        if copied is not None:  # (0036: a subscriber's row said its publisher's revision)
            raise Refused(copied, _wants_json(ctx))
        active = schema.active_ruleset(conninfo) if current else None
        pending = schema.pending_deployment(conninfo) if current else []
    ruleset = {"name": active["name"], "version": active["version"]} if active else None
    if as_json:
        _print_json({"revision": current, "head": head, "up_to_date": current == head,
                     "active_ruleset": ruleset, "pending": pending})
        return
    for warning in pending:
        click.echo(f"WARNING: {warning}", err=True)
    if current is not None and current not in schema.own_revisions():
        # (0029, a hostile test: it said "behind head: run pyxp db upgrade", which then failed)
        state = "newer than this pyxp, which does not know it: upgrade the package"
    else:
        state = "up to date" if current == head else "behind head: run pyxp db upgrade"
    click.echo(f"revision {current or 'none'} (head {head}; {state})")
    if ruleset:
        click.echo(f"active ruleset {ruleset['name']} v{ruleset['version']}")


@db.command("rebalance-ranks")
@click.option("--bucket-size", type=click.IntRange(16, 1_000_000), default=1024, show_default=True,
              help="Balances per rank bucket after a re-cut.")
@click.option("--full", is_flag=True, help="Re-cut every bucket, not only those that grew past twice the size.")
@json_option
@click.pass_context
def db_rebalance_ranks(ctx: click.Context, bucket_size: int, full: bool, as_json: bool) -> None:
    """Re-cut the rank buckets that grew (owner only; holds awards while it runs)."""
    with _client(ctx) as xp:
        result = xp.rebalance_rank_buckets(bucket_size=bucket_size, full_rebuild=full)
    if as_json:
        _print_json(dataclasses.asdict(result))
        return
    click.echo(f"{result.recut_buckets} rank buckets re-cut, {result.buckets} in all")


@db.command("create-partitions")
@click.option("--months-ahead", type=click.IntRange(0, 120), default=2, show_default=True,
              help="Months after this one whose ledger partitions must exist.")
@json_option
@click.pass_context
def db_create_partitions(ctx: click.Context, months_ahead: int, as_json: bool) -> None:
    """Create the ledger's monthly partitions ahead (owner only; run it monthly)."""
    with _client(ctx) as xp:
        made = xp.create_ledger_partitions(months_ahead=months_ahead)
    if as_json:
        _print_json([dataclasses.asdict(partition) for partition in made])
        return
    for partition in made:
        click.echo(f"{partition.partition_name}: " + ("created" if partition.created else f"not created: {partition.note}"))
    if not made:
        click.echo(f"every month up to {months_ahead} months ahead has its partition")



@db.command("archive")
@click.option("--before", "archived_before", required=True, type=click.DateTime(["%Y-%m-%d"]),
              help="Archive the partitions ending on or before this day (UTC; at most this month's first).")
@json_option
@click.pass_context
def db_archive(ctx: click.Context, archived_before: datetime, as_json: bool) -> None:
    """Move old ledger partitions, verified by an audit checkpoint, to schema pyxp_archive (owner only)."""
    with _client(ctx) as xp:
        moved = xp.archive_ledger_partitions(archived_before.replace(tzinfo=UTC))
    if as_json:
        _print_json([dataclasses.asdict(partition) for partition in moved])
        return
    for partition in moved:
        click.echo(f"{partition.partition_name}: {partition.rows_archived} rows archived to {partition.archive_table}"
                   f" (archive {partition.archive_id})")
    if not moved:
        click.echo(f"no partition of the ledger ends on or before {archived_before:%Y-%m-%d}")
# --------------------------------------------------------------------------- rules


@cli.group(cls=_Group)
def rules() -> None:
    """Show, compare and apply rulesets (TOML config seeds)."""


def _active_or_refuse(conninfo: str) -> dict[str, Any]:
    with _migrations(revisions=False) as schema:
        active = schema.active_ruleset(conninfo)
    if active is None:
        raise NoActiveRuleset("no active ruleset",
                              hint="activate one: pyxp db upgrade, or pyxp rules apply winstory")
    return active


def _types(campaign_types: list[str] | None) -> str:
    return ", ".join(campaign_types) if campaign_types else "all"


class _Instant(click.ParamType):
    """An ISO 8601 date or date-time; without an offset it stays naive: read in the ruleset's timezone."""

    name = "instant"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 date or date-time (e.g. 2026-11-20T18:00+01:00)", param, ctx)


def _in_ruleset_zone(ctx: click.Context, at: datetime | None) -> datetime | None:
    """A naive --at read in the active ruleset's timezone (the zone its periods are counted in)."""
    if at is None or at.tzinfo is not None:
        return at
    with wrap_errors(), _connection(ctx) as conn:
        zone = conn.execute(queries.ACTIVE_TIMEZONE).fetchone()
    return at.replace(tzinfo=ZoneInfo(zone[0] if zone else "UTC"))


@rules.command("show")
@json_option
@click.pass_context
def rules_show(ctx: click.Context, as_json: bool) -> None:
    """The active ruleset: rules and balance floor."""
    conninfo = _conninfo(ctx)
    active = _active_or_refuse(conninfo)
    with _connection(ctx) as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(queries.ACTIVE_RULES).fetchall()
    floor = active["balance_floor"]
    if as_json:
        _print_json({"name": active["name"], "version": active["version"], "balance_floor": floor,
                     "activated_at": active["activated_at"], "rules": rows})
        return
    out = Printer()
    out.line(Styled(f"ruleset {active['name']} v{active['version']}", bold=True),
             f" (active since {active['activated_at']:%Y-%m-%d %H:%M})")
    out.line("balance floor: ", "none (penalties apply in full)" if floor is None else str(floor))
    out.blank()
    out.table([Column("action"), Column("event"), Column("campaign types"), Column("condition"),
               Column("XP")],
              [[r["action"], r["event"] or "(by action only)", _types(r["campaign_types"]),
                r["condition"] or "", r["formula"]] for r in rows])


@rules.command("list")
@json_option
@click.pass_context
def rules_list(ctx: click.Context, as_json: bool) -> None:
    """Every installed ruleset version: which is active, when, how many rules."""
    with _connection(ctx) as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(queries.RULESETS).fetchall()
    if as_json:
        _print_json(rows)
        return
    if not rows:
        click.echo("no ruleset installed (run: pyxp db upgrade)")
        return

    def when(at: datetime | None) -> str:
        return f"{at:%Y-%m-%d %H:%M:%S}" if at else "-"

    out = Printer()
    out.table([Column("id", ">"), Column("name"), Column("version", ">"), Column("active"), Column("created_at"),
               Column("activated_at"), Column("timezone"), Column("rules", ">")],
              [[r["ruleset_id"], r["name"], r["version"],
                Styled("active", fg="green", bold=True) if r["active"] else "",
                when(r["created_at"]), when(r["activated_at"]), r["timezone"], r["rules"]] for r in rows])


@rules.command("history")
@click.option("--at", "at", type=_Instant(), default=None,
              help="Only the ruleset in force at this ISO 8601 instant (naive: in the active ruleset's timezone).")
@json_option
@click.pass_context
def rules_history(ctx: click.Context, at: datetime | None, as_json: bool) -> None:
    """Every activation of a ruleset, newest first (pyxp.ruleset_activations); --at: the one in force then."""
    at = _in_ruleset_zone(ctx, at)
    with _connection(ctx) as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(queries.RULESET_ACTIVATIONS, {"at": at}).fetchall()
    if as_json:
        _print_json(rows)
        return
    if not rows:
        click.echo("no ruleset activated yet (run: pyxp db upgrade)" if at is None
                   else f"no ruleset was in force at {at.isoformat()}: none was activated before")
        return
    out = Printer()
    out.table([Column("activation", ">"), Column("activated_at"), Column("ruleset"), Column("timezone"),
               Column("replaced"), Column("note")],
              [[r["activation_id"], f"{r['activated_at']:%Y-%m-%d %H:%M:%S}", f"{r['name']} v{r['version']}",
                r["timezone"], f"{r['replaced_name']} v{r['replaced_version']}" if r["replaced_name"] else "",
                "rebuilt by 0040 (latest only)" if r["reconstructed"] else ""] for r in rows])


@rules.command("install")
@click.argument("name_or_file")
@json_option
@click.pass_context
def rules_install(ctx: click.Context, name_or_file: str, as_json: bool) -> None:
    """Install a ruleset version without activating it (to simulate it, or apply it later).

    NAME_OR_FILE: a shipped name (winstory, winstory-flows) or a .toml file.
    """
    compiled = load_ruleset(name_or_file)  # a config error is reported before connecting
    with _migrations(revisions=False) as schema:
        result = schema.apply_ruleset(_conninfo(ctx), compiled, activate=False)
    if as_json:
        _print_json(result)
    else:
        how = "installed (not active)" if result.created else "already installed: nothing changed"
        click.echo(f"ruleset {result.name} v{result.version} {how}; "
                   f"simulate it: pyxp rules simulate {shlex.quote(name_or_file)}")


@rules.command("simulate")
@click.argument("name_or_file")
@click.option("--top", default=10, show_default=True, type=click.IntRange(1, 1000),
              help="How many of the wallets with the largest changes to list.")
@json_option
@click.pass_context
def rules_simulate(ctx: click.Context, name_or_file: str, top: int, as_json: bool) -> None:
    """What every balance would be had NAME_OR_FILE been active for the whole ledger.

    Writes nothing (pyxp.simulation_report): per action XP now -> then, the wallets with the
    largest changes, level changes and a summary. Apply it: pyxp rules apply --retroactive.
    """
    compiled = load_ruleset(name_or_file)
    with _migrations(revisions=False) as schema:
        report = schema.simulation_report(_conninfo(ctx), compiled, top)
    if as_json:
        _print_json(report)
        return
    print_simulation(Printer(), report)


def print_simulation(out: Printer, report: dict[str, Any]) -> None:
    ruleset, summary = report["ruleset"], report["summary"]

    def change(now: int, then: int) -> Styled:
        delta = then - now
        return Styled(f"{delta:+,}" if delta else "0", fg="green" if delta > 0 else "red" if delta < 0 else None)

    out.line(Styled(f"simulation of {ruleset['name']} v{ruleset['version']}", bold=True),
             " over the whole ledger (nothing written)")
    out.blank()
    out.table([Column("action"), Column("rows", ">"), Column("XP now", ">"), Column("XP then", ">"),
               Column("change", ">")],
              [[a["action"], f"{a['rows']:,}", f"{a['xp_now']:,}", f"{a['xp_then']:,}",
                change(a["xp_now"], a["xp_then"])] for a in report["actions"]],
              title="per action")
    out.blank()
    if report["top_changes"]:
        out.table([Column("wallet"), Column("total now", ">"), Column("total then", ">"), Column("change", ">"),
                   Column("level", ">")],
                  [[w["user_wallet"], f"{w['total_xp_now']:,}", f"{w['total_xp_then']:,}",
                    change(w["total_xp_now"], w["total_xp_then"]),
                    f"{w['level_now']} -> {w['level_then']}" if w["level_now"] != w["level_then"]
                    else str(w["level_now"])] for w in report["top_changes"]],
                  title="largest changes")
        out.blank()
    out.line(f"{summary['wallets']:,} wallets: {summary['up']:,} up, {summary['down']:,} down, "
             f"{summary['unchanged']:,} unchanged; {summary['level_up']:,} would level up, "
             f"{summary['level_down']:,} down; total XP {summary['xp_now']:,} -> {summary['xp_then']:,}")
    reasons = {"added": "a rule on calls that wrote no row of its action: not counted for past calls",
               "selection_changed": "another event, campaign types or condition: applied to every old row "
                                    "of its action"}
    for rule in report["not_simulated"]:
        out.line(Styled(f"not simulated: {rule['action']} ({reasons[rule['reason']]})", fg="yellow"))


@rules.command("apply")
@click.argument("name_or_file")
@click.option("--retroactive", is_flag=True,
              help="Also append one RULES_ADJUSTMENT row per wallet so that every balance is what the "
                   "simulation says (pyxp rules simulate first).")
@json_option
@click.pass_context
def rules_apply(ctx: click.Context, name_or_file: str, retroactive: bool, as_json: bool) -> None:
    """Install and activate a ruleset.

    NAME_OR_FILE: a shipped name (winstory, winstory-flows) or a .toml file.
    """
    compiled = load_ruleset(name_or_file)  # a config error is reported before connecting
    if retroactive:
        with _migrations(revisions=False) as schema:
            applied = schema.apply_rules_retroactively(_conninfo(ctx), compiled)
        if as_json:
            _print_json(applied)
        elif applied.already_applied:  # (a first application of a curve-only change too: say so)
            click.echo(f"ruleset {applied.name} v{applied.version} active; every balance already equals "
                       f"its simulation: nothing added; {applied.balances_changed} balance(s) changed level "
                       f"on activation")
        else:
            click.echo(f"ruleset {applied.name} v{applied.version} active; {applied.wallets_adjusted:,} "
                       f"wallet(s) adjusted by {applied.xp_adjusted:+,} XP in all (RULES_ADJUSTMENT rows); "
                       f"{applied.balances_changed} balance(s) changed level on activation")
        return
    with _migrations(revisions=False) as schema:
        result = schema.apply_ruleset(_conninfo(ctx), compiled)
    if as_json:
        _print_json(result)
    elif not result.activated:
        click.echo(f"ruleset {result.name} v{result.version} is already active: nothing changed")
    else:
        how = ("created and activated" if result.created
               else "activated (installed before with the same content)")
        click.echo(f"ruleset {result.name} v{result.version} {how}; "
                   f"{result.balances_changed} balance(s) changed level")


def ruleset_changes(active: dict[str, Any] | None, new: dict[str, Any]) -> list[tuple[str, str, str]]:
    """What applying the compiled definition ``new`` changes against ``active`` (a stored definition).

    One (kind, what, detail) per change; empty when they are identical.
    """
    if active == new:
        return []
    if active is None:
        return [("added", "ruleset", f"{new['name']} (no ruleset is active)")]
    changes: list[tuple[str, str, str]] = []
    for key in ("name", "description", "balance_floor"):
        if active.get(key) != new.get(key):
            changes.append(("changed", key.replace("_", " "), f"{active.get(key)!r} -> {new.get(key)!r}"))
    zones = (active.get("timezone") or "UTC", new.get("timezone") or "UTC")  # (no timezone: UTC)
    if zones[0] != zones[1]:
        changes.append(("changed", "timezone", f"{zones[0]} -> {zones[1]} (periods and caps move)"))
    changes.extend(_curve_change(active["levels"], new["levels"]))
    old_rules = {r["action"]: r for r in active["rules"]}
    new_rules = {r["action"]: r for r in new["rules"]}
    for action, rule in new_rules.items():
        if action not in old_rules:
            changes.append(("added", action, _rule_summary(rule)))
    for action, rule in old_rules.items():
        if action not in new_rules:
            changes.append(("removed", action, _rule_summary(rule)))
    common = [action for action in new_rules if action in old_rules]
    for action in common:
        before, after = old_rules[action], new_rules[action]
        for key, label in (("event", "event"), ("campaign_types", "campaign types"),
                           ("condition", "condition"), ("formula", "XP"), ("description", "description"),
                           ("cap", "cap"), ("group", "group")):
            if before.get(key) != after.get(key):
                detail = f"{label}: {_show(before.get(key))} -> {_show(after.get(key))}"
                changes.append(("changed", action, detail))
        same_text = before.get("formula") == after.get("formula")
        if same_text and _linear(before) != _linear(after):
            changes.append(("changed", action, f"XP: {_linear(before)} -> {_linear(after)}"))
    if [action for action in old_rules if action in new_rules] != common:
        changes.append(("changed", "rule order", "rows of one award are written in the new order"))
    if not changes:
        changes.append(("changed", "definition", "compiled form differs"))
    return changes


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(value)
    if isinstance(value, dict) and set(value) == {"max_xp", "per"}:  # a cap
        return f"{value['max_xp']} XP per {value['per']}"
    return str(value)


def _linear(rule: dict[str, Any]) -> str:
    terms = [rule["constant"]] + [f"{c} * {name}" for name, c in rule["coefficients"].items()]
    return " + ".join(terms)


def _rule_summary(rule: dict[str, Any]) -> str:
    when = rule["event"] or "by action only"
    if rule.get("campaign_types"):
        when += f" [{', '.join(rule['campaign_types'])}]"
    if rule.get("condition"):
        when += f" if {rule['condition']}"
    capped = f", at most {_show(rule['cap'])}" if rule.get("cap") else ""
    grouped = f" (group {rule['group']})" if rule.get("group") else ""
    return f"{when}: {rule['formula']} XP{capped}{grouped}"


def _curve_change(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The first level whose threshold differs; else a change of the curve's constant tail."""
    for before, after in zip(old, new):
        if before["threshold"] != after["threshold"]:
            return [("changed", "level curve", f"from level {after['level']}: threshold "
                     f"{before['threshold']} -> {after['threshold']}")]
    if old != new:
        return [("changed", "level curve", f"constant tail: +{old[-1]['increment']} per level from level "
                 f"{old[-1]['level']} -> +{new[-1]['increment']} per level from level {new[-1]['level']}")]
    return []


@rules.command("diff")
@click.argument("name_or_file")
@json_option
@click.pass_context
def rules_diff(ctx: click.Context, name_or_file: str, as_json: bool) -> None:
    """What applying NAME_OR_FILE would change."""
    compiled = load_ruleset(name_or_file)
    with _migrations(revisions=False) as schema:
        active = schema.active_ruleset(_conninfo(ctx))
    changes = ruleset_changes(active["definition"] if active else None, compiled.definition())
    if as_json:
        _print_json({"active": {"name": active["name"], "version": active["version"]} if active else None,
                     "file": compiled.name, "changed": bool(changes),
                     "changes": [{"kind": k, "what": w, "detail": d} for k, w, d in changes]})
        return
    against = f"{active['name']} v{active['version']} (active)" if active else "no active ruleset"
    if not changes:
        click.echo(f"no change: {name_or_file} is identical to {against}")
        return
    out = Printer()
    out.line(f"{name_or_file} ({compiled.name}) against {against}:")
    colours = {"added": "green", "removed": "red", "changed": "yellow"}
    out.table([Column("change"), Column("what"), Column("detail")],
              [[Styled(kind, fg=colours[kind]), what, detail] for kind, what, detail in changes])


# --------------------------------------------------------------------------- levels


@cli.command()
@click.option("--first", default=60, show_default=True, type=click.IntRange(1, 10_000),
              help="How many levels to list from level 1.")
@click.option("--xp", "totals", multiple=True, type=int, metavar="TOTAL",
              help="Also show the level of this total (repeatable) "
                   "[default: 10^6, 10^9, 10^12, 10^15, 2^62].")
@json_option
@click.pass_context
def levels(ctx: click.Context, first: int, totals: tuple[int, ...], as_json: bool) -> None:
    """The active level curve (from pyxp.level_for).

    Each level's level_start_xp (total XP needed), next_level_xp and increment
    (the XP between them); then the level of some totals, as pyxp.level_for returns it.
    """
    totals = totals or FAR_TOTALS
    with wrap_errors(), _connection(ctx) as conn, conn.cursor(row_factory=dict_row) as cur:
        first_rows = cur.execute(queries.FIRST_LEVELS, {"first": first}).fetchall()
        far_rows = cur.execute(queries.LEVELS_OF_TOTALS, {"totals": list(totals)}).fetchall()
    if as_json:
        _print_json({"levels": first_rows, "totals": far_rows})
        return
    out = Printer()
    out.table([Column("level", ">"), Column("level_start_xp", ">"), Column("next_level_xp", ">"),
               Column("increment", ">")],
              [[r["level"], r["level_start_xp"], r["next_level_xp"], r["increment"]] for r in first_rows],
              title=f"levels 1-{first_rows[-1]['level']} (total XP needed, XP to the next level)")
    out.blank()
    out.table([Column("total_xp", ">"), Column("level", ">"), Column("level_start_xp", ">"),
               Column("next_level_xp", ">"), Column("xp_to_next_level", ">")],
              [[r["total_xp"], r["level"], r["level_start_xp"], r["next_level_xp"], r["xp_to_next_level"]]
               for r in far_rows],
              title="far levels (pyxp.level_for of a total)")


# --------------------------------------------------------------------------- award


@cli.group(cls=_Group)
def award() -> None:
    """Award XP: one sub-command per Winstory flow, or generic."""


def _print_award(result: Award, as_json: bool) -> None:
    if as_json:
        _print_json({"xp": result.xp, "total_xp": result.total_xp, "level_before": result.level_before,
                     "level_after": result.level_after, "leveled_up": result.leveled_up,
                     "replayed": result.replayed, "rows": list(result.rows)})
        return
    out = Printer()
    if not result.rows:
        out.line("no ledger row written (no rule of the active ruleset applies)")
        return
    out.table([Column("id", ">"), Column("wallet"), Column("transaction_type"), Column("XP", ">"),
               Column("total", ">"), Column("level"), Column("to next", ">"), Column("replayed")],
              [[r.transaction_id, r.user_wallet, r.transaction_type, xp_cell(r.xp_amount, r.xp_requested),
                r.total_xp, level_change(out, r.previous_level, r.current_level), r.xp_to_next_level,
                "yes" if r.replayed else ""] for r in result.rows])
    summary: list[Cell] = [f"{signed(result.xp)} XP, total {result.total_xp}, level "]
    summary.append(level_change(out, result.level_before or 1, result.level_after or 1))
    if result.leveled_up:
        summary.append(Styled("  level up!", fg="yellow", bold=True))
    if result.replayed:
        summary.append(" (replayed: an earlier identical call, nothing written)")
    out.line(*summary)


def _parse_param(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise click.BadParameter(f"{text!r}: expected NAME=VALUE, e.g. PRICE_COMPLETION=300",
                                 param_hint="--param")
    try:  # a JSON number stays a number, with its digits (a float rounded 2.49999999999999999 to 2.5,
        # and the award to +103 where SQL gave +102: a hostile test, helper-76); anything else goes as
        # text and the database says why not
        parsed = json.loads(value, parse_float=Decimal)
    except ValueError:
        parsed = value
    return name.strip(), parsed


def _parse_context(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        return json.loads(text, parse_float=Decimal)  # type: ignore[no-any-return]
    except ValueError as exc:
        raise click.BadParameter(f"not JSON ({exc})", param_hint="--context") from None


@award.command("generic")
@click.argument("wallet")
@click.argument("action")
@click.argument("key")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="A formula input, e.g. PRICE_COMPLETION=300 (repeatable).")
@click.option("--context", metavar="JSON",
              help='Free JSON kept in the row\'s metadata, e.g. {"note": "bonus"}.')
@json_option
@click.pass_context
def award_generic(ctx: click.Context, wallet: str, action: str, key: str, params: tuple[str, ...],
                  context: str | None, as_json: bool) -> None:
    """Any active rule by action code, once per KEY.

    Awards the rule ACTION of the active ruleset to WALLET, once per idempotency KEY.
    """
    parsed: dict[str, Any] = {}
    for name, value in (_parse_param(p) for p in params):
        if name in parsed:  # a dict would keep the last one silently (a hostile test)
            raise click.BadParameter(f"{name} given twice", param_hint="--param")
        parsed[name] = value
    with _client(ctx) as xp:
        _print_award(xp.award(wallet, action, key, parsed, _parse_context(context)), as_json)


@award.command("campaign-creation")
@click.option("--creator-wallet", required=True)
@click.option("--campaign-id", required=True)
@click.option("--campaign-type", required=True, help="B2C, AGENCY_B2C, INDIVIDUAL (or FOR_B2C, ...).")
@click.option("--mint-value", type=NUMBER)
@click.option("--winstory-creates-video", is_flag=True, help="Option: Winstory creates the video.")
@click.option("--no-rewards", is_flag=True, help="Option: a campaign without rewards.")
@json_option
@click.pass_context
def award_campaign_creation(ctx: click.Context, creator_wallet: str, campaign_id: str, campaign_type: str,
                            mint_value: Decimal | None, winstory_creates_video: bool, no_rewards: bool,
                            as_json: bool) -> None:
    """Campaign created: MINT and options, to the creator."""
    with _client(ctx) as xp:
        _print_award(xp.award_campaign_creation(creator_wallet, campaign_id, campaign_type, mint_value,
                                                winstory_creates_video, no_rewards), as_json)


@award.command("campaign-approval")
@click.option("--campaign-id", required=True)
@click.option("--creator-wallet", help="Needed only for a campaign pyxp does not know.")
@json_option
@click.pass_context
def award_campaign_approval(ctx: click.Context, campaign_id: str, creator_wallet: str | None,
                            as_json: bool) -> None:
    """Campaign approved by moderation: XP to its creator."""
    with _client(ctx) as xp:
        _print_award(xp.award_campaign_approval(campaign_id, creator_wallet), as_json)


@award.command("moderation-vote")
@click.option("--moderator-wallet", required=True)
@click.option("--campaign-id", required=True)
@click.option("--vote-decision", required=True, help="VALID or REFUSE.")
@click.option("--campaign-type", help="Needed only for a campaign pyxp does not know.")
@json_option
@click.pass_context
def award_moderation_vote(ctx: click.Context, moderator_wallet: str, campaign_id: str, vote_decision: str,
                          campaign_type: str | None, as_json: bool) -> None:
    """A moderator votes on a campaign."""
    with _client(ctx) as xp:
        _print_award(xp.award_moderation_vote(moderator_wallet, campaign_id, vote_decision, campaign_type),
                     as_json)


@award.command("completion")
@click.option("--completer-wallet", required=True)
@click.option("--campaign-id", required=True)
@click.option("--completion-id", required=True)
@click.option("--campaign-type", help="Needed only for a campaign pyxp does not know.")
@click.option("--is-validated", is_flag=True, help="The completion was validated.")
@click.option("--is-refused", is_flag=True, help="The completion was refused.")
@click.option("--is-paid", is_flag=True, help="A paid mission (with --price-completion).")
@click.option("--price-completion", type=NUMBER)
@click.option("--mint-value-winc", type=NUMBER, help="MINT value in $WINC (INDIVIDUAL campaigns).")
@json_option
@click.pass_context
def award_completion(ctx: click.Context, completer_wallet: str, campaign_id: str, completion_id: str,
                     campaign_type: str | None, is_validated: bool, is_refused: bool, is_paid: bool,
                     price_completion: Decimal | None, mint_value_winc: Decimal | None,
                     as_json: bool) -> None:
    """Completion submitted, validated or refused.

    No flag: the submission (free, or paid with --is-paid --price-completion;
    INDIVIDUAL with --mint-value-winc). --is-validated / --is-refused: the outcome.
    """
    with _client(ctx) as xp:
        _print_award(xp.award_completion(completer_wallet, campaign_id, completion_id, campaign_type,
                                         is_validated, is_refused, is_paid, price_completion,
                                         mint_value_winc), as_json)


@award.command("completion-moderation")
@click.option("--moderator-wallet", required=True)
@click.option("--campaign-id", required=True)
@click.option("--completion-id", required=True)
@click.option("--vote-decision", required=True, help="VALID or REFUSE.")
@click.option("--campaign-type", help="Needed only for a campaign pyxp does not know.")
@json_option
@click.pass_context
def award_completion_moderation(ctx: click.Context, moderator_wallet: str, campaign_id: str,
                                completion_id: str, vote_decision: str, campaign_type: str | None,
                                as_json: bool) -> None:
    """A moderator votes on a completion."""
    with _client(ctx) as xp:
        _print_award(xp.award_completion_moderation(moderator_wallet, campaign_id, completion_id,
                                                    vote_decision, campaign_type), as_json)


@award.command("register-client")
@click.option("--agency-wallet", required=True)
@click.option("--client-email", required=True)
@click.option("--campaign-id", required=True)
@click.option("--company-name")
@json_option
@click.pass_context
def award_register_client(ctx: click.Context, agency_wallet: str, client_email: str, campaign_id: str,
                          company_name: str | None, as_json: bool) -> None:
    """Agency registers a B2C client (XP at sign-in).

    The client earns the onboarding XP when it first signs in (onboard-client).
    """
    with _client(ctx) as xp:
        registration: ClientRegistration = xp.register_agency_client(agency_wallet, client_email,
                                                                     campaign_id, company_name)
    if as_json:
        _print_json(registration)
        return
    state = "already onboarded" if registration.xp_granted else "pending until the client signs in"
    click.echo(f"{registration.client_email} registered by {registration.agency_wallet} "
               f"for campaign {registration.campaign_id}: {state}")


@award.command("onboard-client")
@click.option("--client-email", required=True)
@click.option("--client-wallet", required=True)
@json_option
@click.pass_context
def award_onboard_client(ctx: click.Context, client_email: str, client_wallet: str, as_json: bool) -> None:
    """Agency client signs in: onboarding XP, once.

    The XP goes to the client's wallet, never to the agency's.
    """
    with _client(ctx) as xp:
        result = xp.onboard_agency_client(client_email, client_wallet)
    if not result.rows and not as_json:
        click.echo(f"no pending registration for {client_email}: nothing awarded")
        return
    _print_award(result, as_json)


@award.command("reverse")
@click.argument("transaction_id", type=BIGINT)
@click.option("--reason", required=True, help="Why (kept in the compensating row).")
@json_option
@click.pass_context
def award_reverse(ctx: click.Context, transaction_id: int, reason: str, as_json: bool) -> None:
    """Compensating row for a ledger row (once).

    Appends the opposite of TRANSACTION_ID's amount to the same wallet.
    """
    with _client(ctx) as xp:
        _print_award(xp.reverse(transaction_id, reason), as_json)


# --------------------------------------------------------------------------- reads


@cli.command()
@click.argument("wallet")
@json_option
@click.pass_context
def balance(ctx: click.Context, wallet: str, as_json: bool) -> None:
    """A wallet's XP, level and XP to the next level."""
    with _client(ctx) as xp:
        row = xp.balance(wallet)
        rank = xp.rank(wallet)
    if as_json:
        _print_json({**_jsonable(row), "rank": rank})
        return
    Printer().table(
        [Column("wallet"), Column("total XP", ">"), Column("level", ">"), Column("to next level", ">"),
         Column("moderations", ">"), Column("rank", ">")],
        [[row.user_wallet, row.total_xp, row.current_level,
          f"{row.xp_to_next_level} to lvl {row.current_level + 1}", row.total_moderations, rank or "-"]])


@cli.command()
@click.argument("wallet")
@click.option("--max-rows", "--limit", "max_rows", default=50, show_default=True, type=INTEGER,
              help="Rows per page (1-1000); --limit is an alias.")
@click.option("--before-id", type=BIGINT, help="Page on: rows older than this transaction id.")
@json_option
@click.pass_context
def history(ctx: click.Context, wallet: str, max_rows: int, before_id: int | None, as_json: bool) -> None:
    """A wallet's ledger rows, newest first (pyxp.history).

    Rows an archive took out of the ledger are not listed: the listing's end says how many,
    up to when, and where they are (README "Retention").
    """
    with _connection(ctx) as conn:
        rows = XP(conn).history(wallet, max_rows, before_id)
        archive = None if as_json or len(rows) == max_rows else _wallet_archive(conn, wallet)
    if as_json:
        _print_json(rows)
        return
    if not rows:
        if archive is None:
            click.echo("no ledger rows")
        elif before_id is not None:  # a page past the rows left: the wallet may still have some
            click.echo(f"no ledger rows before id {before_id}; older: {_archived_rows(archive)}")
        else:
            click.echo(f"no ledger rows left: {_archived_rows(archive)}; its balance counts them: "
                       f"{archive.total_xp} XP, level {archive.current_level}")
        return
    out = Printer()
    out.table([Column("id", ">"), Column("at"), Column("transaction_type"), Column("XP", ">"),
               Column("balance", ">"), Column("campaign"), Column("subject")],
              [[r.transaction_id, f"{r.created_at:%Y-%m-%d %H:%M:%S}", r.transaction_type,
                xp_cell(r.xp_amount, r.xp_requested), r.balance_after, r.campaign_id or "", r.subject or ""]
               for r in rows])
    if len(rows) == max_rows:
        page = "" if max_rows == 50 else f" --max-rows {max_rows}"
        more = f"more: pyxp history {shlex.quote(wallet)}{page} --before-id {rows[-1].transaction_id}"
        out.line(Styled(more, dim=True))
    elif archive is not None:
        out.line(Styled(f"older: {_archived_rows(archive)}", dim=True))


def _wallet_archive(conn: psycopg.Connection[Any], wallet: str) -> WalletArchive | None:
    """What archives took of the wallet's rows; None when none (or an unknown wallet), or when the
    connection may not read the retention tables (a writer alone: the listing then says nothing)."""
    try:
        with conn.cursor(row_factory=class_row(WalletArchive)) as cur:
            return cur.execute(queries.WALLET_ARCHIVE, {"wallet": wallet}).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return None


def _archived_rows(archive: WalletArchive) -> str:
    """``the 3 rows of 0xabc before 2026-01-01 were archived to schema pyxp_archive (...)``."""
    count = archive.archived_rows
    before = archive.archived_before.astimezone(UTC)
    day = f"{before:%Y-%m-%d}" if before.time() == datetime.min.time() else f"{before:%Y-%m-%d %H:%M:%S} UTC"
    return (f"the {count} row{'' if count == 1 else 's'} of {archive.user_wallet} before {day} "
            f"{'was' if count == 1 else 'were'} archived to schema pyxp_archive "
            "(pyxp.xp_ledger_archives lists each archive's tables)")


@cli.command()
@click.option("--max-rows", "--limit", "max_rows", default=20, show_default=True, type=INTEGER,
              help="Rows (1-1000); --limit is an alias.")
@click.option("--offset-rows", "--offset", "offset_rows", default=0, show_default=True, type=INTEGER,
              help="Skip this many ranks; --offset is an alias.")
@click.option("--period", default="all", show_default=True,
              type=click.Choice(["all", "day", "week", "month", "year"], case_sensitive=False),
              help="A calendar period in the ruleset's timezone (week: ISO, from Monday).")
@click.option("--at", "at", type=_Instant(), default=None,
              help="The period containing this instant (ISO 8601, e.g. 2026-11-20 or 2026-11-20T18:00+01:00; "
                   "without an offset: in the ruleset's timezone). Default: now.")
@json_option
@click.pass_context
def leaderboard(ctx: click.Context, max_rows: int, offset_rows: int, period: str, at: datetime | None,
                as_json: bool) -> None:
    """Wallets by total XP, or by XP in a day, week, month or year (pyxp.leaderboard)."""
    at = _in_ruleset_zone(ctx, at)
    with _client(ctx) as xp:
        rows = xp.leaderboard(max_rows, offset_rows, period.lower(), at)
    if as_json:
        _print_json(rows)
        return
    if not rows:
        click.echo("no balances yet" if period.lower() == "all" else f"nobody earned XP in that {period.lower()}")
        return
    if period.lower() == "all":
        Printer().table([Column("rank", ">"), Column("wallet"), Column("total XP", ">"), Column("level", ">")],
                        [[r.rank, r.user_wallet, r.total_xp, r.current_level] for r in rows])
        return
    Printer().table([Column("rank", ">"), Column("wallet"), Column(f"{period.lower()} XP", ">"),
                     Column("total XP", ">"), Column("level", ">")],
                    [[r.rank, r.user_wallet, r.period_xp, r.total_xp, r.current_level] for r in rows])


@cli.command()
@click.option("--since-checkpoint", is_flag=True,
              help="Only what was written since the last checkpoint (pyxp.audit_since_checkpoint()).")
@click.option("--checkpoint", "record", is_flag=True,
              help="Verify what was written since the last checkpoint and record a new one "
                   "(pyxp.record_audit_checkpoint(); a writer's or the owner's call, on the primary).")
@json_option
@click.pass_context
def audit(ctx: click.Context, since_checkpoint: bool, record: bool, as_json: bool) -> None:
    """Prove every balance from the ledger; exit 1 on findings.

    Runs pyxp.audit(): chains of running balances, balances against ledger sums,
    levels against the curve, reversals, rule ids, periods, caps, checkpoints.
    """
    if since_checkpoint and record:
        raise click.UsageError("--since-checkpoint and --checkpoint are exclusive (--checkpoint verifies first)")
    with _client(ctx) as xp:
        if record:
            checkpoint = xp.record_audit_checkpoint()
        else:
            findings = xp.audit_since_checkpoint() if since_checkpoint else xp.audit()
    if record:
        if as_json:
            _print_json(checkpoint)
        else:
            click.echo(f"checkpoint {checkpoint.checkpoint_id}: {checkpoint.rows_verified} rows of "
                       f"{checkpoint.wallets_verified} wallets verified since the previous one")
        return
    if as_json:
        _print_json(findings)
    else:
        print_audit(Printer(), findings)
    if findings:
        ctx.exit(EXIT_FINDINGS)


# --------------------------------------------------------------------------- watch


@cli.command()
@click.option("--wallet", help="Only this wallet's changes.")
@click.option("--after", "after_cursor", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Resume after this cursor (the last one printed); 0: the whole ledger.")
@click.option("--no-listen", "no_listen", is_flag=True,
              help="Read on the timer alone, without LISTEN (behind a transaction-mode pooler).")
@json_option
@click.pass_context
def watch(ctx: click.Context, wallet: str | None, after_cursor: int, no_listen: bool, as_json: bool) -> None:
    """Print ledger changes as they commit, until Ctrl-C.

    Follows the change feed (pyxp.changes): every committed ledger row once, in
    order, woken by NOTIFY pyxp_changes and reading at least once a second;
    reconnects if the connection drops. Level-ups stand out. --json: one object
    per line (for jq), with its cursor: pass the last one to --after to resume.
    Behind a transaction-mode pooler (PgBouncer), pass --no-listen: a LISTEN
    would stay on a pooled server connection after the watch ends.
    """
    out = Printer()
    with XP(_conninfo(ctx), max_connections=1) as xp:
        try:
            for change in xp.watch(after_cursor, wallet, listen=not no_listen):
                if as_json:
                    click.echo(json.dumps(_jsonable(change), ensure_ascii=False))
                else:
                    out.line(*change_line(out, change))
                out.stream.flush()
        except KeyboardInterrupt:
            return


# --------------------------------------------------------------------------- demo


@cli.command()
@click.option("--keep", is_flag=True,
              help="Keep the scratch database (and a throwaway cluster) to explore; prints its URL.")
@click.pass_context
def demo(ctx: click.Context, keep: bool) -> None:
    """Play the seeds' stories on a scratch database.

    The database is created, migrated, played on, printed, then dropped
    (--keep: kept, and its URL printed).

    The server: --database-url / PYXP_DATABASE_URL, else libpq defaults if a
    server answers, else a throwaway cluster started from the local PostgreSQL binaries
    (--keep leaves it running and prints how to stop and remove it).
    """
    from pyxp.demo import play_on_discovered_server

    if ctx.find_root().get_parameter_source("database_url") == click.core.ParameterSource.COMMANDLINE:
        os.environ[DATABASE_URL_VARIABLE] = _settings(ctx).database_url  # discovery starts from it
    if play_on_discovered_server(Printer(), keep=keep):
        ctx.exit(EXIT_FINDINGS)


def _interrupt(signum: int, frame: object) -> None:
    _received_signals.append(signum)
    raise KeyboardInterrupt


def main() -> None:
    """Console script entry point (``pyxp``).

    SIGTERM (``timeout``, systemd, Kubernetes) and SIGHUP (a closed terminal, a dropped ssh
    session) interrupt a command as Ctrl-C does: psycopg cancels the running statement. Left
    to their defaults, the process died and an award waiting for a lock was written after it
    had gone (a hostile test and its re-test, 0034)."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    cli(prog_name="pyxp")


if __name__ == "__main__":
    main()
