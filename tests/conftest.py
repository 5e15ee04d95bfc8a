"""Test fixtures: a real PostgreSQL, a template database migrated once, a clone per test.

The server is found as the CLI finds it (pyxp.database.discovered_server):
PYXP_DATABASE_URL, else libpq defaults if a server answers, else a throwaway
cluster started from the local binaries. pytest-postgresql's noproc fixture
is then pointed at it: it builds the template database once per session with
``load_pyxp`` (alembic upgrade to head + the default ruleset) and each test
gets a fresh database cloned from that template.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb
from pytest_postgresql import factories

from pyxp import XP, schema
from pyxp.database import EmbeddedCluster, _postgres_bindir, discovered_server, locate_server
from pyxp.errors import DatabaseUnavailable
from pyxp.ruleset_config import load_ruleset

# The CLI of the package under test (the venv running pytest).
PYXP = str(Path(sys.executable).with_name("pyxp"))

_server_stack = ExitStack()


def pytest_configure(config: pytest.Config) -> None:
    """Find (or start) the server before pytest-postgresql reads its options.

    Under pytest-xdist only the workers run tests: the controller finds nothing.
    """
    try:
        if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
            locate_server()  # starts nothing: only fails early, and once, when there is no server
            return
        conninfo = _server_stack.enter_context(discovered_server())
    except DatabaseUnavailable as exc:  # one useful line, not a page of INTERNALERROR
        pytest.exit(f"pyxp tests need PostgreSQL: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
    with psycopg.connect(conninfo) as conn:
        info = conn.info
        config.option.postgresql_host = info.host  # a socket directory works too
        config.option.postgresql_port = info.port
        config.option.postgresql_user = info.user
        config.option.postgresql_password = info.password or None
    # Unique names: a CI run and a developer's run may share one server.
    config.option.postgresql_dbname = f"pyxp_test_{os.getpid()}"


def pytest_unconfigure(config: pytest.Config) -> None:
    _server_stack.close()


def load_pyxp(host: str, port: int, user: str, dbname: str, password: str | None, **_: Any) -> None:
    """Template loader: the migrated schema with the default ruleset active."""
    schema.upgrade(make_conninfo(host=host, port=str(port), user=user, dbname=dbname, password=password))


pyxp_server = factories.postgresql_noproc(load=[load_pyxp])
postgresql = factories.postgresql("pyxp_server")


@pytest.fixture
def conninfo(postgresql: psycopg.Connection[Any]) -> str:
    """Conninfo of this test's own database (a clone of the migrated template)."""
    info = postgresql.info
    return make_conninfo(host=info.host, port=str(info.port), user=info.user, dbname=info.dbname,
                         password=info.password or None)


@pytest.fixture
def db(conninfo: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit superuser connection to the test database, for setup and assertions."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        yield conn


@pytest.fixture
def xp(conninfo: str) -> Iterator[XP]:
    """The Python client on the test database (its own pool)."""
    client = XP(conninfo, max_connections=4)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def login_role(db: psycopg.Connection[Any]) -> Iterator[Callable[..., str]]:
    """``login_role("pyxp_writer")``: a new LOGIN role (unique name) member of the given roles.

    The roles are dropped at teardown, with whatever they own or were granted
    in the test database.
    """
    created: list[str] = []

    def make(*member_of: str) -> str:
        name = f"app_{uuid.uuid4().hex[:16]}"
        db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        created.append(name)
        for role in member_of:
            db.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(name)))
        return name

    yield make
    for name in created:
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
        db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture
def connect_as(conninfo: str) -> Iterator[Callable[[str], psycopg.Connection[Any]]]:
    """``connect_as(role)``: an autocommit connection to the test database as that role."""
    connections: list[psycopg.Connection[Any]] = []

    def connect(role: str, dbname: str | None = None) -> psycopg.Connection[Any]:
        target = make_conninfo(conninfo, user=role, **({"dbname": dbname} if dbname else {}))
        conn = psycopg.connect(target, autocommit=True)
        connections.append(conn)
        return conn

    yield connect
    for conn in connections:
        conn.close()


STATE_QUERY = """
SELECT (SELECT count(*) FROM pyxp.xp_transactions) AS ledger_rows,
       (SELECT count(*) FROM pyxp.idempotency_keys) AS requests,
       (SELECT count(*) FROM pyxp.xp_balances) AS balances,
       (SELECT coalesce(sum(total_xp), 0) FROM pyxp.xp_balances) AS total_xp,
       (SELECT coalesce(sum(total_moderations), 0) FROM pyxp.xp_balances) AS moderations,
       (SELECT count(*) FROM pyxp.campaigns) AS campaigns,
       (SELECT md5(string_agg(concat_ws('/', campaign_id, campaign_type, creator_wallet), ',' ORDER BY campaign_id))
          FROM pyxp.campaigns) AS campaigns_digest,
       (SELECT count(*) FROM pyxp.subject_locks) AS subject_locks,
       (SELECT count(*) FROM pyxp.agency_b2c_clients) AS registrations,
       (SELECT count(*) FILTER (WHERE xp_granted) FROM pyxp.agency_b2c_clients) AS granted,
       (SELECT count(*) FROM pyxp.rulesets) AS rulesets,
       -- Which is active and since when: an activation (and, since 0040, its ruleset_activations row)
       -- moves it; read from rulesets, which every revision has (STATE_QUERY runs at older ones too).
       (SELECT md5(string_agg(concat_ws('/', ruleset_id, is_active, activated_at), ',' ORDER BY ruleset_id))
          FROM pyxp.rulesets) AS activations,
       (SELECT count(*) FROM pyxp.xp_cap_usage) AS cap_periods,
       (SELECT coalesce(sum(used_xp), 0) FROM pyxp.xp_cap_usage) AS cap_used,
       (SELECT count(*) FROM pyxp.xp_audit_checkpoints) AS checkpoints,
       (SELECT coalesce(sum(wallet_seq), 0) FROM pyxp.xp_wallet_checkpoints) AS checkpoint_positions,
       (SELECT count(*) FROM pyxp.xp_award_claims) AS award_claims,
       (SELECT count(*) FROM pg_inherits WHERE inhparent = 'pyxp.xp_transactions'::regclass) AS ledger_partitions,
       (SELECT count(*) FROM pyxp.xp_rank_counts) AS rank_count_rows,
       (SELECT coalesce(sum(wallets), 0) FROM pyxp.xp_rank_counts) AS ranked_wallets,
       (SELECT count(*) FROM pyxp.xp_ledger_archives) AS archives,
       (SELECT coalesce(sum(wallet_seq), 0) FROM pyxp.xp_wallet_openings) AS opening_positions,
       (SELECT count(*) FROM pyxp.xp_archived_originals) AS archived_originals,
       (SELECT coalesce(sum(used_xp), 0) FROM pyxp.xp_archived_cap_usage) AS archived_cap_used,
       (SELECT count(*) FROM pyxp.xp_requests WHERE archive_id IS NOT NULL) AS archived_requests
"""


def database_state(db: psycopg.Connection[Any]) -> tuple[Any, ...]:
    """Counts and sums of every pyxp table: equal before and after means nothing was written."""
    row = db.execute(STATE_QUERY).fetchone()
    assert row is not None
    return tuple(row)


@contextmanager
def nothing_written(db: psycopg.Connection[Any]) -> Iterator[None]:
    """Asserts that the block leaves every pyxp table as it found it."""
    before = database_state(db)
    yield
    assert database_state(db) == before, "a refused call wrote something"


@pytest.fixture
def unchanged(db: psycopg.Connection[Any]) -> Any:
    """``with unchanged(): ...`` — the block must write nothing (used around refusals)."""
    return lambda: nothing_written(db)


@pytest.fixture
def fresh_database(conninfo: str) -> Iterator[Callable[[], str]]:
    """``fresh_database()``: conninfo of a new empty database on the test server, dropped at teardown;
    ``fresh_database("TEMPLATE template0 LOCALE 'C'")`` with those CREATE DATABASE options."""
    admin = make_conninfo(conninfo, dbname="postgres")
    names: list[str] = []

    def create(options: str = "") -> str:
        name = f"pyxp_fresh_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} " + options).format(sql.Identifier(name)))
        names.append(name)
        return make_conninfo(conninfo, dbname=name)

    yield create
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def node_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with node-postgres (`pg`) installed from the npm registry, once per session, for the
    README's JavaScript examples. Without node or npm: skipped, except under CI (a failure)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if os.environ.get("CI"):
            pytest.fail("node and npm are required under CI (README: From other languages)")
        pytest.skip("node or npm not installed")
    folder = tmp_path_factory.mktemp("node-pg")
    result = subprocess.run([npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund", "pg"],
                            check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (folder / "node_modules" / "pg").is_dir()
    return folder


def balance_updates(db: psycopg.Connection[Any]) -> tuple[int, int]:
    """(updates, HOT updates) of xp_balances this backend counted and has not reported yet: they
    add up over its transactions, so read them before and after, in one transaction."""
    row = db.execute("SELECT pg_stat_get_xact_tuples_updated(c.oid), pg_stat_get_xact_tuples_hot_updated(c.oid)"
                     "  FROM pg_class c WHERE c.oid = 'pyxp.xp_balances'::regclass").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def naive_period_ranks(db: psycopg.Connection[Any], period: str) -> dict[str, int]:
    """Each wallet's rank on the board of the current period (the tests award now), by a plain
    count of the balances, to hold pyxp.wallet_rank's period counts (migration 0014) to."""
    return dict(db.execute(sql.SQL("""
        SELECT b.user_wallet, row_number() OVER (ORDER BY b.{xp} DESC, b.user_wallet COLLATE "C")
          FROM pyxp.xp_balances b
         WHERE b.{start} = date_trunc(%s, now(), (SELECT timezone FROM pyxp.rulesets WHERE is_active))""").format(
        xp=sql.Identifier(f"{period}_xp"), start=sql.Identifier(f"{period}_start")), (period,)).fetchall())


def edit_ledger(db: psycopg.Connection[Any], statement: str, *params: Any) -> None:
    """An owner's change of ledger rows behind the append-only trigger (SPEC 7: audit() sees the
    result; the other readers must say which row they cannot read)."""
    db.execute("ALTER TABLE pyxp.xp_transactions DISABLE TRIGGER xp_transactions_append_only")
    try:
        db.execute(statement, params)
    finally:
        db.execute("ALTER TABLE pyxp.xp_transactions ENABLE ALWAYS TRIGGER xp_transactions_append_only")


def install_variant(db: psycopg.Connection[Any], name: str, timezone: str | None = None,
                    caps: dict[str, tuple[int, str, str | None]] | None = None,
                    balance_floor: int | None = None) -> None:
    """Activates the default rules as ruleset ``name``, with ``timezone``, caps
    (action -> (max_xp, per, group)) and a balance floor, through pyxp.install_ruleset as
    ``pyxp rules apply`` does."""
    definition = load_ruleset("winstory").definition()
    definition["name"] = name
    if timezone is not None:
        definition["timezone"] = timezone
    if balance_floor is not None:
        definition["balance_floor"] = balance_floor
    for rule in definition["rules"]:
        if rule["action"] in (caps or {}):
            max_xp, per, group = (caps or {})[rule["action"]]
            rule["cap"] = {"max_xp": max_xp, "per": per}
            if group is not None:
                rule["group"] = group
    db.execute("SELECT * FROM pyxp.install_ruleset(%s, %s)", (Jsonb(definition), f"# test variant {name}"))


def called_behind_holder(conninfo: str, db: psycopg.Connection[Any], held: str,
                         call: Callable[[psycopg.Connection[Any]], Any]) -> dict[str, Any]:
    """Runs ``held`` in a transaction left open, then ``call(conn)`` in a thread on its own
    autocommit connection; once that call waits for the holder (``pg_blocking_pids``), commits
    ``held``. Returns ``{"result": what call returned}`` or ``{"sqlstate": its error's}``:
    deterministic races, no sleeps."""
    outcome: dict[str, Any] = {}
    with psycopg.connect(conninfo) as holder:
        holder.execute(held)
        pid = holder.info.backend_pid

        def run() -> None:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                try:
                    outcome["result"] = call(conn)
                except psycopg.Error as exc:
                    outcome["sqlstate"] = exc.sqlstate

        thread = threading.Thread(target=run)
        thread.start()
        waiting = None
        for _ in range(400):  # until the call waits for the holder
            waiting = db.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                 "AND %s = ANY (pg_blocking_pids(pid))", (pid,)).fetchone()
            if waiting == (1,):
                break
            thread.join(0.05)
        assert waiting == (1,), "the call never waited for the holder's transaction"
        holder.commit()
        thread.join(60)
        assert not thread.is_alive()
    return outcome


def primary_with_pyxp() -> tuple[EmbeddedCluster, str]:
    """A private cluster started from the local server binaries, database ``pyxp`` migrated on it:
    (the cluster, the database's conninfo). Skips where there are no binaries; the caller stops it."""
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (pg_ctl, pg_basebackup) on this machine")
    bindir = Path(os.path.realpath(bindir / "pg_ctl")).parent  # pg_ctl may be a link; pg_basebackup is beside the real one
    primary = EmbeddedCluster(bindir).start()
    try:
        with psycopg.connect(primary.conninfo, autocommit=True) as conn:
            conn.execute("CREATE DATABASE pyxp")
        url = make_conninfo(primary.conninfo, dbname="pyxp")
        schema.upgrade(url)
    except BaseException:
        primary.stop()
        raise
    return primary, url


@pytest.fixture(scope="module")
def two_phase_server() -> Iterator[str]:
    """Conninfo of database ``pyxp`` on a private server that allows prepared transactions."""
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries on this machine")
    cluster = EmbeddedCluster(bindir).start()
    try:
        with psycopg.connect(cluster.conninfo, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET max_prepared_transactions = 4")
            conn.execute("CREATE DATABASE pyxp")
            conn.execute("CREATE DATABASE other_app")
        cluster.stop_server()
        cluster.start_existing()
        target = make_conninfo(cluster.conninfo, dbname="pyxp")
        schema.upgrade(target)
        yield target
    finally:
        cluster.stop()


def base_backup(primary: EmbeddedCluster, standby: EmbeddedCluster) -> None:
    """Copies ``primary`` into ``standby``'s directory as a streaming standby (pg_basebackup -R), not started."""
    if standby.run_as:
        stat = primary.directory.stat()
        os.chown(standby.directory, stat.st_uid, stat.st_gid)
    standby._run("pg_basebackup", "-D", str(standby.datadir), "-R", "-X", "stream", "-c", "fast",
                 "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres")


def settled(read: Callable[[], Any], expected: Any, seconds: float = 60,
            until: Callable[[Any], bool] | None = None) -> Any:
    """``read()`` until it returns ``expected`` (or ``until(result)`` is true) or ``seconds`` pass; its last
    result. The feed hands out a commit once no older transaction of the cluster may still add to its group
    (sql/11_changes.sql): a transaction of the other test worker can hold a page back for a moment."""
    done = until if until is not None else (lambda got: got == expected)
    got = read()
    deadline = time.monotonic() + seconds
    while not done(got) and time.monotonic() < deadline:
        time.sleep(0.05)
        got = read()
    return got


def steady(read: Callable[[], Any], reads: int = 20) -> Any:
    """``read()`` of the change feed until two reads in a row agree (at most ``reads``); the last. A read
    may come back short once when a transaction of another database (the other test worker's) that its
    snapshot saw running ends before it looks at pg_locks (sql/11_changes.sql): the next read is whole.
    For a read whose expected rows the test does not know beforehand."""
    previous, got = read(), read()
    for _ in range(reads):
        if got == previous:
            break
        previous, got = got, read()
    return got


def waited_for(condition: Callable[[], bool], seconds: float = 60) -> bool:
    """Whether ``condition()`` came true within ``seconds`` (polled every 50 ms)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def terminate_sessions(db: psycopg.Connection[Any], application_name: str) -> int:
    """pg_terminate_backend of the sessions of that name, waiting until each has exited."""
    return len(db.execute("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                          "WHERE application_name = %s AND pid <> pg_backend_pid()",
                          (application_name,)).fetchall())
