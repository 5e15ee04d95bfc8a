"""Where the database is (SPEC section 9, "Embedded default"): pyxp.database.discovered_server.

Order: PYXP_DATABASE_URL → libpq defaults if a server answers → a throwaway
cluster from the local binaries → an error saying what to install or set.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from pyxp import database
from pyxp.database import DATABASE_URL_VARIABLE, EmbeddedCluster, discovered_server
from pyxp.errors import DatabaseUnavailable

LIBPQ_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGSERVICE")

needs_binaries = pytest.mark.skipif(database._postgres_bindir() is None,
                                    reason="no local PostgreSQL binaries (pg_ctl, initdb)")


def port_of(conninfo: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return int(conn.execute("SHOW port").fetchone()[0])  # type: ignore[index]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No PYXP_DATABASE_URL and no libpq variables: each test sets what it needs."""
    for name in (DATABASE_URL_VARIABLE, *LIBPQ_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def dead_server_env(clean_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """libpq defaults point at a port where nothing listens."""
    clean_env.setenv("PGHOST", "127.0.0.1")
    clean_env.setenv("PGPORT", str(database._free_port()))
    clean_env.setenv("PGCONNECT_TIMEOUT", "3")
    return clean_env


def test_url_variable_is_used_when_its_server_answers(clean_env: pytest.MonkeyPatch, conninfo: str) -> None:
    clean_env.setenv(DATABASE_URL_VARIABLE, conninfo)
    with discovered_server() as found:
        assert found == conninfo
        assert port_of(found) == port_of(conninfo)


def test_libpq_defaults_are_used_when_a_server_answers_there(clean_env: pytest.MonkeyPatch,
                                                             conninfo: str) -> None:
    params = conninfo_to_dict(conninfo)
    clean_env.setenv("PGHOST", str(params["host"]))
    clean_env.setenv("PGPORT", str(params["port"]))
    clean_env.setenv("PGUSER", str(params["user"]))
    clean_env.setenv("PGDATABASE", str(params["dbname"]))
    with discovered_server() as found:
        assert found == ""  # libpq's own environment and defaults, no throwaway cluster
        assert port_of(found) == port_of(conninfo)


def test_url_variable_at_a_dead_port_is_an_error_naming_the_variable(
        clean_env: pytest.MonkeyPatch) -> None:
    """An explicit URL that does not answer is an error, never a silent fallback to another server."""
    clean_env.setenv(DATABASE_URL_VARIABLE, f"host=127.0.0.1 port={database._free_port()} connect_timeout=3")
    clean_env.setattr(database, "_postgres_bindir", lambda: pytest.fail("must not start a cluster"))
    with pytest.raises(DatabaseUnavailable, match=DATABASE_URL_VARIABLE) as raised:
        with discovered_server():
            pass
    assert "Connection refused" in str(raised.value)


def test_malformed_url_variable_is_an_error_naming_the_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(DATABASE_URL_VARIABLE, "not a url")
    with pytest.raises(DatabaseUnavailable, match=DATABASE_URL_VARIABLE):
        with discovered_server():
            pass


def test_url_variable_error_does_not_show_the_password(clean_env: pytest.MonkeyPatch) -> None:
    port = database._free_port()
    clean_env.setenv(DATABASE_URL_VARIABLE,
                     f"postgresql://someone:s3cret-pw@127.0.0.1:{port}/db?connect_timeout=3")
    with pytest.raises(DatabaseUnavailable) as raised:
        with discovered_server():
            pass
    assert "s3cret-pw" not in str(raised.value)
    assert str(port) in str(raised.value)


@needs_binaries
def test_no_server_but_binaries_starts_a_throwaway_cluster_then_removes_it(
        dead_server_env: pytest.MonkeyPatch) -> None:
    with discovered_server() as found:
        with psycopg.connect(found, autocommit=True) as conn:
            data_directory = Path(conn.execute("SHOW data_directory").fetchone()[0])  # type: ignore[index]
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert data_directory.exists()
    assert not data_directory.parent.exists(), "the cluster's directory is removed on exit"
    assert not database.server_answers(found, timeout=2), "the cluster is stopped on exit"


def test_no_server_and_no_binaries_says_what_to_install_or_set(dead_server_env: pytest.MonkeyPatch) -> None:
    dead_server_env.setattr(database, "_postgres_bindir", lambda: None)
    with pytest.raises(DatabaseUnavailable) as raised:
        with discovered_server():
            pass
    message = str(raised.value)
    assert DATABASE_URL_VARIABLE in message
    assert "install the PostgreSQL server" in message


@needs_binaries
def test_cluster_that_cannot_start_leaves_no_directory_and_says_why() -> None:
    """Its port is taken: the error quotes the server log; nothing is left behind."""
    bindir = database._postgres_bindir()
    assert bindir is not None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cluster = EmbeddedCluster(bindir, port=taken.getsockname()[1])
        with pytest.raises(DatabaseUnavailable, match="server log"):
            cluster.start()
    assert not cluster.directory.exists()


def test_cluster_without_a_user_to_run_as_says_what_to_do(tmp_path: Path) -> None:
    cluster = EmbeddedCluster(tmp_path)
    cluster.run_as = "pyxp-no-such-user"
    with pytest.raises(DatabaseUnavailable, match="useradd pyxp-no-such-user"):
        cluster.start()
    assert not cluster.directory.exists()


# --------------------------------------------------------------------------- a server that refuses


@pytest.mark.parametrize("variable", ["PGUSER", "PGDATABASE"])
def test_a_server_that_answers_and_refuses_is_an_error_not_a_throwaway_cluster(
        clean_env: pytest.MonkeyPatch, conninfo: str, variable: str) -> None:
    """PGUSER=nosuchrole: the server says "role does not exist"; that is what the user must
    hear (and what to set), not a silent switch to another, empty server."""
    params = conninfo_to_dict(conninfo)
    clean_env.setenv("PGHOST", str(params["host"]))
    clean_env.setenv("PGPORT", str(params["port"]))
    clean_env.setenv("PGUSER", str(params["user"]))
    clean_env.setenv(variable, "pyxp_no_such_name")
    clean_env.setattr(database, "_postgres_bindir", lambda: pytest.fail("must not start a cluster"))
    with pytest.raises(DatabaseUnavailable) as raised:
        with discovered_server():
            pass
    message = str(raised.value)
    assert "does not exist" in message and "pyxp_no_such_name" in message
    assert f"{variable}=pyxp_no_such_name" in message, "names the setting in effect"
    assert "PGUSER" in message and DATABASE_URL_VARIABLE in message, "says what to set"


@pytest.mark.parametrize(("problem", "refused"), [
    ('connection to server on socket "/run/.s.PGSQL.5432" failed: FATAL:  role "x" does not exist', True),
    ('connection to server at "h", port 5432 failed: FATAL:  password authentication failed', True),
    ('connection to server at "h", port 5432 failed: fe_sendauth: no password supplied', True),
    ('connection to server at "127.0.0.1", port 1 failed: Connection refused', False),
    ('connection to server on socket "/tmp/.s.PGSQL.1" failed: No such file or directory', False),
    ("connection timeout expired", False),
    ('could not translate host name "nohost" to address: Name or service not known', False),
    ('at "localhost" (::1), port 5432 failed: Connection refused connection to server at "localhost" '
     '(127.0.0.1), port 5432 failed: FATAL:  database "x" does not exist', True),
])
def test_refused_is_told_from_nobody_listening(problem: str, refused: bool) -> None:
    assert database.server_refused(problem) is refused


# --------------------------------------------------------------------------- root without /usr/sbin


def test_runuser_is_found_outside_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """cron, or `su` without `-`: PATH has no /usr/sbin, runuser is still found there."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(database.shutil, "which", lambda name: None)
    monkeypatch.setattr(database.os, "access", lambda path, mode: path == "/sbin/runuser")
    assert database._runuser() == "/sbin/runuser"


def test_no_runuser_at_all_is_one_clear_error_and_leaves_nothing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(database.shutil, "which", lambda name: None)
    monkeypatch.setattr(database, "RUNUSER_FALLBACKS", (str(tmp_path / "no-runuser"),))
    cluster = EmbeddedCluster(tmp_path)
    cluster.run_as = "postgres"
    with pytest.raises(DatabaseUnavailable, match="runuser") as raised:
        cluster.start()
    assert "util-linux" in str(raised.value)
    assert not cluster.directory.exists()


@needs_binaries
@pytest.mark.skipif(os.geteuid() != 0, reason="runuser is used only as root")
def test_as_root_without_sbin_on_path_a_throwaway_cluster_still_starts(tmp_path: Path) -> None:
    """End to end, in a process whose PATH is cron's: the cluster starts, answers, is removed."""
    script = (
        "from pyxp import database\n"
        "import psycopg\n"
        "bindir = database._postgres_bindir()\n"
        "assert bindir is not None, 'pg_config --bindir not found'\n"
        "cluster = database.EmbeddedCluster(bindir).start()\n"
        "try:\n"
        "    with psycopg.connect(cluster.conninfo) as conn:\n"
        "        print(conn.execute('SELECT 42').fetchone()[0])\n"
        "finally:\n"
        "    cluster.stop()\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["PATH"] = "/usr/bin:/bin"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42"


# --------------------------------------------------------------------------- pytest without PostgreSQL


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_pytest_without_postgresql_says_so_in_a_few_lines(tmp_path: Path, workers: list[str]) -> None:
    """No server, no binaries: one useful line, not 166 lines of INTERNALERROR."""
    repository = Path(__file__).resolve().parent.parent
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PG") and key != DATABASE_URL_VARIABLE}
    env.update(PATH=str(Path(sys.executable).parent), PGHOST="127.0.0.1", PGPORT=str(database._free_port()),
               PGCONNECT_TIMEOUT="3")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers,
                             "tests/test_levels.py"], capture_output=True, text=True, env=env,
                            cwd=repository, timeout=300, check=False)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert "INTERNALERROR" not in output and "Traceback" not in output
    assert len(output.splitlines()) <= 3, output
    assert "install the PostgreSQL server" in output and DATABASE_URL_VARIABLE in output
