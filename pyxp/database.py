"""Where the database is: PYXP_DATABASE_URL, libpq defaults, or a throwaway cluster.

Discovery order (used by the CLI, the demo and the tests):

1. ``PYXP_DATABASE_URL`` (a libpq URL or ``key=value`` string), if set;
2. libpq's own environment and defaults (``PGHOST``, ``PGPORT``, ``PGUSER``,
   ``PGDATABASE``, ..., else the local socket), if a server answers there;
   a server that answers but refuses (no such role or database, a password
   needed...) is an error saying what to set, never a reason to go elsewhere;
3. when nothing listens there: a throwaway cluster started from the local
   PostgreSQL binaries (``pg_ctl`` on PATH or under ``pg_config --bindir``),
   run as the ``postgres`` OS user (through ``runuser``) when we are root
   (PostgreSQL refuses to run as root);
4. otherwise :class:`~pyxp.errors.DatabaseUnavailable`, saying what to install or set.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pyxp.errors import DatabaseUnavailable

DATABASE_URL_VARIABLE = "PYXP_DATABASE_URL"


class BinaryResultsCursor(psycopg.Cursor[Any]):
    """A cursor whose results come in binary: psycopg parses text dates in the ISO DateStyle only,
    and a role's or database's DateStyle (SQL, German) made every command that reads a date fail
    with a traceback (a hostile test, 0029). The client sends ``binary=True`` on the connections
    it is given; the package's own connections use this cursor."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.format = pq.Format.BINARY


def connect(conninfo: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A connection of the package's own (CLI, migrations' helpers, rulesets): binary results, and
    the transactions it opens are READ COMMITTED, whatever the role's or database's default (pyxp's
    writers refuse the others: a managed service's SERIALIZABLE default stopped ``pyxp db upgrade``
    at its ruleset and every CLI award with PX025, a hostile test, 0030)."""
    conn = psycopg.connect(conninfo, cursor_factory=BinaryResultsCursor,
                           **{**utf8_unless_set(conninfo), **kwargs})
    conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
    return conn


def utf8_unless_set(conninfo: str) -> dict[str, str]:
    """client_encoding UTF8 unless the conninfo names one: Python's text is Unicode, and a
    PGCLIENTENCODING of LATIN1 or WIN1252 made every feed page or board holding a wallet outside
    that charset fail (22P05), a consumer stuck on that row (a hostile test, 0034)."""
    return {} if "client_encoding" in conninfo_to_dict(conninfo) else {"client_encoding": "UTF8"}


def configured_conninfo() -> str:
    """The conninfo the user configured: PYXP_DATABASE_URL, else "" (libpq defaults)."""
    return os.environ.get(DATABASE_URL_VARIABLE, "")


def connection_problem(conninfo: str, timeout: int = 3) -> str | None:
    """None when a server accepts a connection with this conninfo, else why not, on one line."""
    try:
        with psycopg.connect(conninfo, connect_timeout=timeout, autocommit=True):
            return None
    except psycopg.Error as exc:  # OperationalError: no server, refused; ProgrammingError: malformed
        return " ".join(str(exc).split())


def server_answers(conninfo: str, timeout: int = 3) -> bool:
    """True when a server accepts a connection with this conninfo."""
    return connection_problem(conninfo, timeout) is None


# libpq's words when nothing answered at an address: no socket, nothing listening,
# no route, no such host, no answer in time.
_NOBODY_THERE = ("Connection refused", "No such file or directory", "timeout expired",
                 "Connection timed out", "could not translate host name", "Name or service not known",
                 "Network is unreachable", "No route to host", "Cannot assign requested address")


def server_refused(problem: str) -> bool:
    """True when a connection problem (:func:`connection_problem`) comes from a server that
    answered and refused (a FATAL/ERROR message: no such role or database, authentication...),
    False when nothing answered at any address tried."""
    if re.search(r"\b(FATAL|ERROR|PANIC):", problem):
        return True
    return not any(words in problem for words in _NOBODY_THERE)


def _libpq_settings() -> str:
    """The PG* variables in effect (the password hidden), for a message."""
    shown = [f"{name}={'***' if name == 'PGPASSWORD' else value}"
             for name, value in sorted(os.environ.items()) if name.startswith("PG") and value]
    return " ".join(shown) if shown else "none set: local socket, your OS user name as role and database"


def shown_conninfo(conninfo: str) -> str:
    """The conninfo for a message: without its password (or a placeholder when it does not parse)."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "(not a valid conninfo)"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo(**params)  # type: ignore[arg-type]


def with_database(conninfo: str, dbname: str) -> str:
    """The same connection parameters, on another database of the same server."""
    return make_conninfo(conninfo, dbname=dbname)


def _postgres_bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    candidates = [Path(found).parent] if found else []
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if result.returncode == 0:
            candidates.append(Path(result.stdout.strip()))
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    return None


RUNUSER_FALLBACKS = ("/usr/sbin/runuser", "/sbin/runuser")


def _runuser() -> str:
    """runuser, also when /usr/sbin is not on PATH (cron, `su` without `-`)."""
    found = shutil.which("runuser")
    if found:
        return found
    for candidate in RUNUSER_FALLBACKS:
        if os.access(candidate, os.X_OK):
            return candidate
    raise DatabaseUnavailable(
        "PostgreSQL refuses to run as root, and runuser (util-linux), needed to run it as the postgres "
        f"OS user, is neither on PATH nor at {' or '.join(RUNUSER_FALLBACKS)}; install util-linux, "
        f"run as a regular user, or set {DATABASE_URL_VARIABLE} to a running server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedCluster:
    """A private PostgreSQL cluster in a temporary directory, on a free port.

    Started with the local binaries; as root, every server command runs as the
    ``postgres`` OS user. :meth:`stop` stops it and removes its files.
    """

    def __init__(self, bindir: Path, port: int | None = None) -> None:
        self.bindir = bindir
        self.port = port or _free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="pyxp-cluster-"))
        self.datadir = self.directory / "data"
        self.log = self.directory / "log"
        self.run_as: str | None = "postgres" if os.geteuid() == 0 else None
        self.user = "postgres"

    @property
    def conninfo(self) -> str:
        return make_conninfo(host="127.0.0.1", port=str(self.port), user=self.user, dbname="postgres")

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.run_as:
            command = [_runuser(), "-u", self.run_as, "--", *command]
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot run {command[0]}: {exc.strerror or exc}") from None
        if result.returncode != 0:
            output = " ".join((result.stderr.strip() or result.stdout).split())
            raise DatabaseUnavailable(f"{args[0]} failed: {output}")

    def start(self) -> EmbeddedCluster:
        """initdb and start; on failure nothing is left behind (no server, no directory)."""
        try:
            if self.run_as:
                _runuser()  # before anything is made: no runuser, no cluster
                try:
                    entry = pwd.getpwnam(self.run_as)
                except KeyError:
                    raise DatabaseUnavailable(
                        f"PostgreSQL refuses to run as root and there is no {self.run_as!r} OS user "
                        f"to run it as; create one (useradd {self.run_as}) or run as a regular user") from None
                os.chown(self.directory, entry.pw_uid, entry.pw_gid)
            self._run("initdb", "-D", str(self.datadir), "-U", self.user, "-A", "trust", "-E", "UTF8",
                      "--no-instructions")
            self._start_server()
        except BaseException:
            self.stop(mode="immediate")
            raise
        return self

    def _start_server(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        try:
            self._run("pg_ctl", "-D", str(self.datadir), "-o", options, "-l", str(self.log),
                      "-w", "-t", "60", "start")
        except DatabaseUnavailable as exc:  # the reason is in the server log
            raise DatabaseUnavailable(f"{exc.message}; server log: {self._log_tail()}") from None

    def stop_server(self, mode: str = "fast") -> None:
        """Stops the server but keeps its files, so :meth:`start_existing` can start it again.

        ``mode="immediate"`` is what a crash is for the data: no shutdown checkpoint,
        the next start recovers from the WAL.
        """
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def start_existing(self) -> EmbeddedCluster:
        """Starts the existing data directory again, on the same port (after :meth:`stop_server`)."""
        self._start_server()
        return self

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, mode: str = "fast") -> None:
        """Stops the server (if running) and removes the cluster's directory."""
        try:
            if (self.datadir / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def locate_server(allow_embedded: bool = True) -> str | Path:
    """Steps 1-4 of the discovery order, starting nothing: the conninfo of a server that
    accepts us, or the directory of the binaries to start a throwaway cluster from.

    Raises :class:`DatabaseUnavailable` (what to set or install) otherwise.
    """
    conninfo = configured_conninfo()
    if os.environ.get(DATABASE_URL_VARIABLE):
        problem = connection_problem(conninfo)
        if problem is not None:
            raise DatabaseUnavailable(
                f"cannot connect with {DATABASE_URL_VARIABLE}={shown_conninfo(conninfo)!r}: {problem}; "
                "start the server, or fix or unset the variable")
        return conninfo
    problem = connection_problem(conninfo)
    if problem is None:
        return conninfo
    if server_refused(problem):
        raise DatabaseUnavailable(
            f"a PostgreSQL server answered with libpq's defaults but refused the connection: {problem}; "
            f"set PGUSER / PGDATABASE / PGPASSWORD to a role and database it accepts, or "
            f"{DATABASE_URL_VARIABLE} (e.g. postgresql://user@host:5432/db) "
            f"(libpq variables now: {_libpq_settings()})")
    bindir = _postgres_bindir() if allow_embedded else None
    if bindir is None:
        raise DatabaseUnavailable(
            "no PostgreSQL server answers with libpq's defaults and no PostgreSQL binaries were found; "
            f"set {DATABASE_URL_VARIABLE} (e.g. postgresql://user@host:5432/db) or PGHOST/PGPORT/PGUSER, "
            "or install the PostgreSQL server (e.g. apt-get install postgresql) so pg_ctl is on PATH "
            "or under `pg_config --bindir`")
    return bindir


@contextmanager
def discovered_server(allow_embedded: bool = True) -> Iterator[str]:
    """Yields the conninfo of a server to use, following the discovery order above.

    A throwaway cluster, if one had to be started, is stopped and removed on exit.
    """
    found = locate_server(allow_embedded)
    if isinstance(found, str):
        yield found
        return
    cluster = EmbeddedCluster(found).start()
    try:
        yield cluster.conninfo
    finally:
        cluster.stop()
