"""Database schema management: alembic migrations and ruleset activation.

``upgrade`` migrates to head and, when no ruleset is active yet, activates the
default one (``winstory``). ``apply_ruleset`` installs a compiled config seed:
a new version when its content differs from every stored version of that name,
nothing when it is the active one (see ``pyxp.install_ruleset`` in sql/).
"""

from __future__ import annotations

from dataclasses import dataclass

import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb
from sqlalchemy.exc import DBAPIError

from pyxp import queries
from pyxp.database import connect
from pyxp.errors import wrap_errors
from pyxp.results import RetroactiveApplication, RulesetInstall
from pyxp.ruleset_config import RuleSet, load_ruleset

DEFAULT_RULESET = "winstory"
_PACKAGE = Path(__file__).resolve().parent


def migrations_directory() -> Path:
    """migrations/ of the checkout (editable install) or the copy inside an installed wheel."""
    for candidate in (_PACKAGE.parent / "migrations", _PACKAGE / "_migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError("pyxp migrations not found next to the package")


def alembic_config(conninfo: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_directory()))
    config.attributes["conninfo"] = conninfo
    return config


@dataclass(frozen=True)
class Upgrade:
    """What :func:`upgrade` did: the revision it found (read under the migrations' lock, after any
    other migration of the database ended), the one it left, and the default ruleset it activated."""

    before: str | None
    after: str | None
    installed: RulesetInstall | None


# A revision that locks several tables one after another can meet a live writer that holds one of
# them and waits for another: PostgreSQL ends one of the two with 40P01, the migration when it began
# waiting first (a rolling deploy's test, helper-69: 0034's TRUNCATE guards, four runs out of five
# under 8 writers). Each revision is its own transaction, rolled back alone: the run goes on from
# the last revision that finished, up to MIGRATION_ATTEMPTS runs in all.
RETRIED_SQLSTATES = ("40P01", "55P03")
_RELATIVE = re.compile(r"[+-][0-9]+")
MIGRATION_ATTEMPTS = 5


def lock_conflict(exc: BaseException) -> psycopg.Error | None:
    """The deadlock (40P01) or lock timeout (55P03) that stopped a migration run, if that is what did:
    raised by a revision's own SQL (psycopg's error), or by alembic's statements (wrapped by
    SQLAlchemy, as pyxp.cli unwraps it)."""
    error = exc.orig if isinstance(exc, DBAPIError) else exc
    return error if isinstance(error, psycopg.Error) and error.sqlstate in RETRIED_SQLSTATES else None


def _migrate(step: Any, conninfo: str, revision: str) -> Config:
    """Runs ``step`` (alembic's upgrade or downgrade) again after a run a lock conflict stopped; returns
    the first run's config (its ``revision_at_start`` is where the database was)."""
    first: Config | None = None
    target = revision
    for attempt in range(1, MIGRATION_ATTEMPTS + 1):
        config = alembic_config(conninfo)
        try:
            step(config, target)
            return first or config
        except Exception as exc:
            if first is None and "revision_at_start" in config.attributes:
                # (the first run that read where the database was: a run stopped before it read
                # that said nothing, and Upgrade.before was None, "empty database")
                first = config
                if _RELATIVE.fullmatch(revision):
                    # "-2" or "+1" counts from where the database is: a run stopped after a revision
                    # that committed, run again as given, went one step (or more) further. Counted
                    # from where the first run found it instead (alembic's "0041-2", "base+1").
                    target = f"{config.attributes['revision_at_start'] or 'base'}{revision}"
            conflict = lock_conflict(exc)
            if conflict is None or attempt == MIGRATION_ATTEMPTS:
                raise
            message = " ".join(str(conflict).split())[:200]
            sys.stderr.write(f"pyxp: a revision was stopped by {conflict.sqlstate} ({message}), with writers "
                             f"running: it was rolled back alone; running again ({attempt + 1} of "
                             f"{MIGRATION_ATTEMPTS})\n")
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def upgrade(conninfo: str, revision: str = "head", activate_default: bool = True) -> Upgrade:
    """Migrate to ``revision``; then activate the default ruleset if none is active."""
    config = _migrate(command.upgrade, conninfo, revision)
    installed = None
    if activate_default and active_ruleset(conninfo) is None:
        installed = apply_ruleset(conninfo, DEFAULT_RULESET)
    return Upgrade(config.attributes.get("revision_at_start"), current_revision(conninfo), installed)


def downgrade(conninfo: str, revision: str = "base") -> None:
    """Migrate down to ``revision`` (base: drop the pyxp schema; roles stay)."""
    _migrate(command.downgrade, conninfo, revision)


_VERSION_TABLES = """
SELECT n.nspname::text
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relname = 'alembic_version' AND c.relkind IN ('r', 'p') AND n.nspname IN ('pyxp', 'public')
"""


def current_revision(conninfo: str) -> str | None:
    """pyxp's revision in this database, None when pyxp is not installed.

    Read from ``pyxp.alembic_version`` (SELECT is granted to pyxp_reader). An
    install from before that table existed kept its row in
    ``public.alembic_version``: it is read there, but only a revision of pyxp's
    own chain, and only while the schema ``pyxp`` exists; an application's
    revision in that table is never reported as pyxp's.
    """
    with connect(conninfo) as conn:
        # A row-security policy the owner of pyxp puts on its version table would run as whoever
        # reads it (a deployer's pyxp db current: a hostile test, 0030): the read fails instead.
        conn.execute("SET LOCAL row_security = off")
        tables = {row[0] for row in conn.execute(_VERSION_TABLES)}
        if "pyxp" in tables:
            rows = [row[0] for row in conn.execute("SELECT version_num FROM pyxp.alembic_version")]
        elif "public" in tables and conn.execute(
                "SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'pyxp'").fetchone() is not None:
            rows = [row[0] for row in conn.execute(
                "SELECT version_num FROM public.alembic_version WHERE version_num = ANY(%s)",
                (own_revisions(),))]
        else:
            rows = []
    if len(rows) > 1:  # pyxp's chain is linear: several heads is a damaged history
        raise RuntimeError(f"pyxp.alembic_version holds several revisions: {', '.join(sorted(rows))}")
    return rows[0] if rows else None


# From this revision on, pyxp.schema_revision() says which revision's functions the database has.
FIRST_MARKED_REVISION = "0036"


def revision_mismatch(conn: psycopg.Connection[Any], recorded: str | None) -> str | None:
    """Why ``recorded`` (pyxp.alembic_version's revision) is not the revision of this database's
    functions (pyxp.schema_revision()), or None when it is, or cannot be told (no revision, or one
    this package does not know: newer). A logical replication that publishes pyxp's tables copies
    the version row and none of the functions (a hostile test, 0036)."""
    if recorded is None or recorded not in own_revisions():
        return None
    row = conn.execute("SELECT pg_catalog.to_regprocedure('pyxp.schema_revision()') IS NOT NULL").fetchone()
    functions = conn.execute("SELECT pyxp.schema_revision()").fetchone()[0] if row and row[0] else None
    if functions == recorded or (functions is None and recorded < FIRST_MARKED_REVISION):
        return None
    have = (f"{functions}'s" if functions else f"from before {FIRST_MARKED_REVISION} (pyxp.schema_revision() is "
            "missing)")
    return (f"pyxp.alembic_version says revision {recorded}, but this database's functions are {have}: the row "
            "was written elsewhere (a logical replication that publishes pyxp.alembic_version, or that table "
            "restored alone); publish pyxp's tables without it, and once nothing copies it here, set it to "
            f"the functions' revision (UPDATE pyxp.alembic_version SET version_num = "
            f"'{functions or 'the revision they are'}'), then pyxp db upgrade (README \"Copies of the database\")")


def _script_directory() -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(""))


def own_revisions() -> list[str]:
    """Every revision of pyxp's migration chain."""
    return sorted(script.revision for script in _script_directory().walk_revisions())


def head_revision() -> str | None:
    return _script_directory().get_current_head()


def _compiled(ruleset: str | os.PathLike[str] | RuleSet) -> RuleSet:
    return ruleset if isinstance(ruleset, RuleSet) else load_ruleset(os.fspath(ruleset))


def _install(conn: psycopg.Connection[Any], compiled: RuleSet, activate: bool) -> RulesetInstall:
    with conn.cursor(row_factory=class_row(RulesetInstall)) as cur:
        cur.execute(queries.INSTALL_RULESET if activate else queries.INSTALL_RULESET_INACTIVE,
                    {"definition": Jsonb(compiled.definition()), "source": compiled.source})
        result = cur.fetchone()
    assert result is not None
    return result


def apply_ruleset(conninfo: str, ruleset: str | os.PathLike[str] | RuleSet,
                  activate: bool = True) -> RulesetInstall:
    """Install a ruleset (a shipped name, a TOML path or a parsed RuleSet) and, unless
    ``activate`` is false, activate it. An installed, inactive version can be simulated
    (:func:`simulation_report`) or applied later."""
    with wrap_errors(), connect(conninfo) as conn:
        return _install(conn, _compiled(ruleset), activate)


def simulation_report(conninfo: str, ruleset: str | os.PathLike[str] | RuleSet, top: int = 10) -> dict[str, Any]:
    """What ``pyxp.simulation_report`` says of ``ruleset`` (SPEC 13): per action, the largest
    changes, a summary. A version not installed yet is installed for the simulation only, in a
    transaction rolled back at the end: nothing is written."""
    with wrap_errors(), connect(conninfo) as conn:
        installed = _install(conn, _compiled(ruleset), activate=False)
        report = conn.execute(queries.SIMULATION_REPORT, {"ruleset_id": installed.ruleset_id, "top": top}).fetchone()
        conn.rollback()
    assert report is not None
    return dict(report[0])


def apply_rules_retroactively(conninfo: str, ruleset: str | os.PathLike[str] | RuleSet) -> RetroactiveApplication:
    """Install ``ruleset`` if needed, activate it and append the RULES_ADJUSTMENT rows that make
    every balance what the simulation says (``pyxp.apply_rules_retroactively``), in one
    transaction. Again with the same version: nothing added."""
    with wrap_errors(), connect(conninfo) as conn:
        installed = _install(conn, _compiled(ruleset), activate=False)
        with conn.cursor(row_factory=class_row(RetroactiveApplication)) as cur:
            cur.execute(queries.APPLY_RULES_RETROACTIVELY, {"ruleset_id": installed.ruleset_id})
            result = cur.fetchone()
    assert result is not None
    return result


# What an installed database may still need from a pyxp db upgrade, read from the catalogs (any role
# can): a ledger copied from another cluster and not adopted (0032: its writes and feed refuse, PX032),
# and the partitions' guard missing (a dump of pyxp's schemas only does not carry event triggers, and a
# role that is no superuser cannot install them: a hostile test saw "up to date" there).
_PENDING_DEPLOYMENT = """
SELECT CASE WHEN c.subscribed
            THEN 'this database subscribes to pyxp''s tables (logical replication): its ledger is its publisher''s '
                 'until the switchover (drop the subscription, then run pyxp db upgrade)'
                 || CASE WHEN c.named = 0 THEN '' ELSE '; run pyxp db upgrade now to refuse writes here until then' END
            WHEN c.named = 0
            THEN 'the subscription is gone: run pyxp db upgrade before writing (it adopts the ledger)'
            WHEN pg_catalog.has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')
                 AND c.named <> (pg_catalog.pg_control_system()).system_identifier
            THEN 'the ledger was copied from another PostgreSQL cluster: run pyxp db upgrade before writing '
                 '(README "Copies of the database")' END
  FROM (SELECT (SELECT pg_catalog.substring(p.prosrc, '[0-9]+')::numeric FROM pg_catalog.pg_proc p
                 WHERE p.oid = pg_catalog.to_regprocedure('pyxp.ledger_cluster()')) AS named,
               EXISTS (SELECT FROM pg_catalog.pg_subscription s
                         JOIN pg_catalog.pg_subscription_rel r ON r.srsubid = s.oid
                         JOIN pg_catalog.pg_class k ON k.oid = r.srrelid
                        WHERE s.subdbid = (SELECT d.oid FROM pg_catalog.pg_database d
                                            WHERE d.datname = pg_catalog.current_database())
                          AND k.relnamespace = 'pyxp'::regnamespace) AS subscribed) c
UNION ALL
SELECT 'the ledger partitions'' guard is not installed: a superuser''s pyxp db upgrade installs it'
 WHERE pg_catalog.to_regclass('pyxp.xp_transactions') IS NOT NULL
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname LIKE 'pyxp%' AND evtenabled = 'A')
"""


def copied_revision(conninfo: str, recorded: str | None) -> str | None:
    """:func:`revision_mismatch` on a connection of its own."""
    with connect(conninfo) as conn:
        return revision_mismatch(conn, recorded)


def pending_deployment(conninfo: str) -> list[str]:
    """What this installed database still needs from a ``pyxp db upgrade`` (empty: nothing)."""
    with connect(conninfo) as conn:
        return [row[0] for row in conn.execute(_PENDING_DEPLOYMENT) if row[0] is not None]


def active_ruleset(conninfo: str) -> dict[str, Any] | None:
    """The active ruleset row (id, name, version, floor, definition, source), or None."""
    with connect(conninfo) as conn, conn.cursor(row_factory=dict_row) as cur:
        conn.execute("SET LOCAL row_security = off")
        try:
            cur.execute(queries.ACTIVE_RULESET)
        except psycopg.errors.UndefinedTable:
            return None
        return cur.fetchone()
