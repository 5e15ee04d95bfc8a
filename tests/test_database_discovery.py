"""Where the database is (SPEC section 9, "Embedded default"): pyxp.database.discovered_server.

Order: PYXP_DATABASE_URL → libpq defaults if a server answers → a throwaway
cluster from the local binaries → an error saying what to install or set.
"""

from __future__ import annotations

import socket
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
