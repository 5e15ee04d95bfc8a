"""pyxp behind a real PgBouncer in transaction mode (SPEC section 7 "Connection poolers", issue 9).

Transaction pooling (PgBouncer, Supavisor, Supabase's pooler on port 6543) hands
each transaction to whichever server connection is free, so the server sessions
are shared by every client. A named prepared statement (psycopg prepares a query
after ``prepare_threshold`` = 5 uses, as ``_pg3_0``, ``_pg3_1``...) is created
on one server session and executed later on another, where the same name may be
another client's statement: ``onboard_agency_client`` then runs
``award_campaign_approval`` with an email as campaign id, or fails with 26000
(no such statement), 42P05 (duplicate statement), 08P01, or a row of the wrong
shape. The Python client must never let one caller's call run as another's.

The fixture starts a private PgBouncer (``pool_mode = transaction``, four server
connections per database) in a temporary directory, pointed at the test server
with a wildcard database entry, and stops it at the end of the module. Without
pgbouncer the module is skipped, except in CI (``CI`` set), where it fails.

The main test runs every flow, refusal and read from several processes, each
with threads on one ``pyxp.XP(<pgbouncer conninfo>)``: each thread works in its
own namespace (wallets, campaigns, emails) and keeps a model of what its calls
wrote, so every result, balance and history page can be checked exactly, and
the ledger compared with the sum of the models. No timing is asserted.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from psycopg_pool import ConnectionPool

from conftest import waited_for
from pyxp import XP, AsyncXP, XPError
from pyxp.results import (
    AuditFinding,
    Award,
    AwardRequest,
    Balance,
    ClientRegistration,
    LeaderboardRow,
    LedgerRow,
    Level,
)

pytestmark = pytest.mark.slow

PROCESSES = 4
THREADS = 3  # per process, sharing one XP with a pool of CONNECTIONS
CONNECTIONS = 2
CALLS_PER_THREAD = 150  # 450 calls per process, 1,800 in all
# Refusals only in the last quarter of each caller's calls: psycopg forgets its
# prepared statements on every rollback (a refusal), and production traffic is
# mostly successful calls, each query used far past prepare_threshold (5).
QUIET_SHARE = 0.75
POOL_SIZE = 4  # PgBouncer's server connections per database: 8 client connections share them

ACTION = "MODERATION_VALIDATED_BY_MODERATOR"  # +2 in the default ruleset (SPEC section 2)

# Levels of the default curve (SPEC section 3) for a few totals.
LEVELS = {0: 1, 99: 1, 100: 2, 249: 2, 250: 3, 500: 4, 999: 4, 1000: 5, 2000: 6, 3999: 6, 4000: 7}

FLOWS = ("award_campaign_creation", "award_campaign_approval", "award_moderation_vote", "award_completion",
         "award_completion_moderation", "register_agency_client", "onboard_agency_client", "award",
         "award_many", "reverse")
READS = ("balance", "history", "leaderboard", "rank", "level_for", "audit")


# --------------------------------------------------------------------------- PgBouncer


def pgbouncer_binary() -> str | None:
    """pgbouncer on PATH, else where the Debian/Ubuntu package puts it (/usr/sbin is not on every PATH)."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    for candidate in ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/usr/local/bin/pgbouncer"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _quoted(value: str) -> str:
    """A value of PgBouncer's auth_file: in double quotes, inner quotes doubled."""
    return '"' + value.replace('"', '""') + '"'


@dataclass
class PgBouncer:
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    def conninfo(self, database: str) -> str:
        """The conninfo of ``database`` (a conninfo of the server) through this PgBouncer."""
        return make_conninfo(database, host="127.0.0.1", port=str(self.port), connect_timeout="10")

    def log(self) -> str:
        try:
            return (self.directory / "pgbouncer.log").read_text(errors="replace")[-4000:]
        except OSError as exc:
            return f"(no log: {exc})"

    def stop(self) -> None:
        """SIGTERM (immediate shutdown), then SIGKILL if it is still there after 10 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _start_pgbouncer(binary: str, server: Any, directory: Path,
                     account: pwd.struct_passwd | None) -> PgBouncer:
    port = _free_port()
    user = server.user
    (directory / "userlist.txt").write_text(f"{_quoted(user)} {_quoted(server.password or '')}\n")
    (directory / "pgbouncer.ini").write_text(f"""\
[databases]
* = host={server.host} port={server.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir = {directory}
pidfile = {directory}/pgbouncer.pid
logfile = {directory}/pgbouncer.log
auth_type = trust
auth_file = {directory}/userlist.txt
admin_users = {user}
pool_mode = transaction
default_pool_size = {POOL_SIZE}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 200
ignore_startup_parameters = extra_float_digits,options
query_wait_timeout = 120
log_connections = 0
log_disconnections = 0
""")
    identity: dict[str, Any] = {}
    if account is not None:  # PgBouncer refuses to run as root
        for path in directory.iterdir():
            os.chown(path, account.pw_uid, account.pw_gid)
        os.chown(directory, account.pw_uid, account.pw_gid)
        identity = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    process = subprocess.Popen([binary, str(directory / "pgbouncer.ini")], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **identity)
    bouncer = PgBouncer(port, directory, process)
    deadline = time.monotonic() + 30  # a readiness wait, not a measure
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return bouncer
        except OSError:
            time.sleep(0.1)
    bouncer.stop()
    raise RuntimeError(f"pgbouncer did not start on port {port} (exit {process.returncode}):\n"
                       f"{bouncer.log()}")


@pytest.fixture(scope="module")
def pgbouncer(pyxp_server: Any) -> Iterator[PgBouncer]:
    """A PgBouncer in transaction mode in front of the test server (any database), for this module."""
    binary = pgbouncer_binary()
    if binary is None:
        reason = ("pgbouncer is not installed (apt-get install pgbouncer): the transaction-pooling tests "
                  "need a real PgBouncer")
        if running_in_ci():
            pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip", pytrace=False)
        pytest.skip(reason)
    account = None
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            account = pwd.getpwnam("nobody")
    directory = Path(tempfile.mkdtemp(prefix="pyxp-pgbouncer-"))
    bouncer: PgBouncer | None = None
    try:
        for attempt in range(3):  # another process may take the free port first
            try:
                bouncer = _start_pgbouncer(binary, pyxp_server, directory, account)
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        assert bouncer is not None
        yield bouncer
    finally:
        if bouncer is not None:
            bouncer.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pooled(pgbouncer: PgBouncer, conninfo: str, db: psycopg.Connection[Any]) -> str:
    """Conninfo of this test's database through the PgBouncer, checked to answer there."""
    through = pgbouncer.conninfo(conninfo)
    with psycopg.connect(through, autocommit=True, prepare_threshold=None) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
    assert row == (conninfo_to_dict(conninfo)["dbname"],), pgbouncer.log()
    return through


# --------------------------------------------------------------------------- one caller

Row = tuple[str, str, int]  # transaction_type, user_wallet, xp_amount


class Player:
    """One caller (a thread) with its own namespace: plays stories of every flow and reads,
    checks every result against its model, and records what its calls wrote."""

    def __init__(self, xp: XP, name: str, rng: random.Random) -> None:
        self.xp, self.name, self.rng = xp, name, rng
        self.calls: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.rows: Counter[str] = Counter()  # transaction_type -> rows written
        self.balances: Counter[str] = Counter()  # wallet -> XP written
        self.wallet_rows: Counter[str] = Counter()  # wallet -> rows written
        self.failures: list[str] = []
        self.refusing = False  # see QUIET_SHARE
        self.serial = 0
        self.moderators = [f"0x_{name}_mod{i}" for i in range(3)]

    # -- calls -------------------------------------------------------------------
    def new_id(self, kind: str) -> str:
        self.serial += 1
        return f"{kind}-{self.name}-{self.serial}"

    def fail(self, what: str, problem: str) -> None:
        self.failures.append(f"{self.name} {what}: {problem}")

    def call(self, method: str, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        """(True, result), or (False, None) after recording the exception as a failure."""
        self.calls[method] += 1
        try:
            return True, getattr(self.xp, method)(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every exception is a finding
            code = getattr(exc, "code", None) or getattr(getattr(exc, "diag", None), "sqlstate", None)
            self.fail(f"{method}{args}{kwargs or ''}", f"{type(exc).__name__} [{code}]: {exc}")
            return False, None

    def record(self, rows: list[Row]) -> None:
        for transaction_type, wallet, amount in rows:
            self.rows[transaction_type] += 1
            self.balances[wallet] += amount
            self.wallet_rows[wallet] += 1

    def check_award(self, what: str, result: Any, expect: list[Row], replayed: bool) -> bool:
        if not isinstance(result, Award):
            self.fail(what, f"returned {result!r}, expected an Award")
            return False
        got = sorted((r.transaction_type, r.user_wallet, r.xp_amount) for r in result.rows)
        if got != sorted(expect) or any(r.replayed is not replayed for r in result.rows):
            self.fail(what, f"rows {[(*row, r.replayed) for row, r in zip(got, result.rows)]}, "
                            f"expected {sorted(expect)} replayed={replayed}")
            return False
        return True

    def award(self, method: str, *args: Any, expect: list[Row], replayed: bool = False,
              **kwargs: Any) -> Award | None:
        """A call expected to write exactly ``expect`` (or to replay it)."""
        ok, result = self.call(method, *args, **kwargs)
        if not ok or not self.check_award(f"{method}{args}{kwargs or ''}", result, expect, replayed):
            return None
        if not replayed:
            self.record(expect)
        return result

    def refused(self, code: str, method: str, *args: Any, **kwargs: Any) -> None:
        """A deliberate refusal: must raise the XPError of ``code`` (and write nothing).
        Skipped in the quiet part of the run (see QUIET_SHARE)."""
        if not self.refusing:
            return
        self.calls[method] += 1
        what = f"{method}{args}{kwargs or ''}"
        try:
            result = getattr(self.xp, method)(*args, **kwargs)
        except XPError as exc:
            if exc.code != code:
                self.fail(what, f"refused with {exc.code} ({exc}), expected {code}")
            else:
                self.refusals[code] += 1
            return
        except Exception as exc:  # noqa: BLE001
            self.fail(what, f"{type(exc).__name__}: {exc}, expected refusal {code}")
            return
        self.fail(what, f"returned {result!r}, expected refusal {code}")

    # -- stories: each yields after every call, so stories and reads interleave -----
    def campaign_story(self) -> Iterator[None]:
        cid = self.new_id("cmp")
        creator = f"0x_{self.name}_creator{self.serial}"
        video = self.rng.random() < 0.5
        created = [("B2C_MINT", creator, 1000)] + ([("OPTION_WINSTORY_VIDEO", creator, 500)] if video else [])
        self.award("award_campaign_creation", creator, cid, "B2C", winstory_creates_video=video,
                   expect=created)
        yield
        valid, refuse = self.rng.sample(self.moderators, 2)
        self.award("award_moderation_vote", valid, cid, "VALID",
                   expect=[("MODERATION_VALIDATED_BY_MODERATOR", valid, 2)])
        yield
        self.refused("PX008", "award_moderation_vote", refuse, cid, "MAYBE")
        yield
        self.award("award_moderation_vote", refuse, cid, "REFUSE",
                   expect=[("MODERATION_REFUSED_BY_MODERATOR", refuse, -1)])
        yield
        self.award("award_campaign_approval", cid, expect=[("CAMPAIGN_APPROVED", creator, 100)])
        yield
        self.award("award_campaign_approval", cid, creator, expect=[("CAMPAIGN_APPROVED", creator, 100)],
                   replayed=True)
        yield
        self.refused("PX012", "award_campaign_approval", self.new_id("cmp-unknown"))

    def completion_story(self) -> Iterator[None]:
        cid, cpl = self.new_id("cmp"), self.new_id("cpl")
        completer = f"0x_{self.name}_completer{self.rng.randrange(3)}"
        if self.rng.random() < 0.5:
            self.award("award_completion", completer, cid, cpl, "B2C", is_paid=True, price_completion=50,
                       expect=[("Completion_Submit_B2C_Paid", completer, 150)])
        else:
            self.award("award_completion", completer, cid, cpl, "B2C",
                       expect=[("Completion_Submit_B2C_Free", completer, 100)])
        yield
        moderator = self.rng.choice(self.moderators)
        if self.rng.random() < 0.5:
            self.award("award_completion_moderation", moderator, cid, cpl, "VALID",
                       expect=[("Completion_Moderation_Validated", moderator, 2)])
        else:
            self.award("award_completion_moderation", moderator, cid, cpl, "REFUSE",
                       expect=[("Completion_Moderation_Refused", moderator, -1)])
        yield
        self.refused("PX005", "award_completion", completer, cid, cpl, is_validated=True, is_refused=True)
        yield
        if self.rng.random() < 0.6:
            self.award("award_completion", completer, cid, cpl, is_validated=True,
                       expect=[("Completion_Validated_B2C", completer, 100)])
        else:
            self.award("award_completion", completer, cid, cpl, is_refused=True,
                       expect=[("Completion_Refused_B2C", completer, -50)])

    def agency_story(self) -> Iterator[None]:
        cid = self.new_id("cmp")
        agency, client = f"0x_{self.name}_agency{self.serial}", f"0x_{self.name}_client{self.serial}"
        email = f"client-{self.name}-{self.serial}@example.com"
        self.award("award_campaign_creation", agency, cid, "AGENCY_B2C",
                   expect=[("AGENCY_B2C_MINT", agency, 1000)])
        yield
        ok, registration = self.call("register_agency_client", agency, email, cid, "ACME")
        if ok and not (isinstance(registration, ClientRegistration) and registration.agency_wallet == agency
                       and registration.client_email == email and registration.campaign_id == cid
                       and not registration.xp_granted):
            self.fail(f"register_agency_client({agency}, {email}, {cid})", f"returned {registration!r}")
        yield
        self.refused("PX002", "onboard_agency_client", f"not-an-email-{self.serial}", client)
        yield
        self.award("onboard_agency_client", email, client, expect=[("B2C_CLIENT_ONBOARDED", client, 1000)])
        yield
        self.award("onboard_agency_client", email, client, expect=[("B2C_CLIENT_ONBOARDED", client, 1000)],
                   replayed=True)
        yield
        # Nobody registered this one: no rows, no error.
        self.award("onboard_agency_client", f"nobody-{self.name}-{self.serial}@example.com", client,
                   expect=[])

    def generic_story(self) -> Iterator[None]:
        wallet = f"0x_{self.name}_user{self.rng.randrange(3)}"
        key = self.new_id("pooler")
        first = self.award("award", wallet, ACTION, key, expect=[(ACTION, wallet, 2)])
        yield
        self.award("award", wallet, ACTION, key, expect=[(ACTION, wallet, 2)], replayed=True)
        yield
        self.refused("PX009", "award", wallet, "NO_SUCH_ACTION", self.new_id("pooler"))
        yield
        events = [(f"0x_{self.name}_user{self.rng.randrange(3)}", self.new_id("pooler")) for _ in range(3)]
        ok, batch = self.call("award_many", [{"wallet": w, "action": ACTION, "idempotency_key": k}
                                             for w, k in events])
        if ok:
            if not isinstance(batch, list) or len(batch) != len(events):
                self.fail(f"award_many({events})", f"returned {batch!r}")
            elif all(self.check_award(f"award_many event {i}", award, [(ACTION, w, 2)], False)
                     for i, (award, (w, _)) in enumerate(zip(batch, events))):
                self.record([(ACTION, w, 2) for w, _ in events])
        yield
        if first is not None:
            self.award("reverse", first.rows[0].transaction_id, "pooler test",
                       expect=[("REVERSAL", wallet, -2)])
            yield
        self.refused("PX015", "reverse", 2**62, "no such row")

    def read(self) -> None:
        """One read, checked against what this caller wrote (nobody else writes its wallets)."""
        kind = self.rng.choices(READS, weights=(4, 4, 2, 2, 2, 2))[0]
        wallet = self.rng.choice(sorted(self.balances)) if self.balances else None
        if wallet is None and kind in ("balance", "history", "rank"):
            kind = "level_for"
        if kind == "balance":
            ok, result = self.call("balance", wallet)
            if ok and not (isinstance(result, Balance) and result.user_wallet == wallet
                           and result.total_xp == self.balances[wallet]):
                self.fail(f"balance({wallet})",
                          f"returned {result!r}, expected total {self.balances[wallet]}")
        elif kind == "history":
            max_rows = self.rng.choice((5, 50))
            ok, result = self.call("history", wallet, max_rows)
            if ok and not (isinstance(result, list)
                           and all(isinstance(r, LedgerRow) and r.user_wallet == wallet for r in result)
                           and len(result) == min(self.wallet_rows[wallet], max_rows)):
                self.fail(f"history({wallet}, {max_rows})",
                          f"returned {result!r}, expected {min(self.wallet_rows[wallet], max_rows)} rows")
        elif kind == "leaderboard":
            ok, result = self.call("leaderboard", 5)
            if ok and not (isinstance(result, list) and all(isinstance(r, LeaderboardRow) for r in result)
                           and [r.rank for r in result] == list(range(1, len(result) + 1))
                           and (result or not self.balances)):
                self.fail("leaderboard(5)", f"returned {result!r}")
        elif kind == "rank":
            ok, result = self.call("rank", wallet)
            if ok and not (isinstance(result, int) and result >= 1):
                self.fail(f"rank({wallet})", f"returned {result!r}")
        elif kind == "level_for":
            total = self.rng.choice(sorted(LEVELS))
            ok, result = self.call("level_for", total)
            if ok and not (isinstance(result, Level) and result.level == LEVELS[total]):
                self.fail(f"level_for({total})", f"returned {result!r}, expected level {LEVELS[total]}")
        else:
            ok, result = self.call("audit")  # one statement, one snapshot: clean even mid-run
            if ok and not (isinstance(result, list) and all(isinstance(r, AuditFinding) for r in result)
                           and not result):
                self.fail("audit()", f"returned {result!r}")

    def play(self, calls: int) -> None:
        stories: list[Callable[[], Iterator[None]]] = [
            self.campaign_story, self.completion_story, self.agency_story, self.generic_story]
        queue: list[Callable[[], Iterator[None]]] = []
        active: list[Iterator[None]] = []
        while (done := sum(self.calls.values())) < calls:
            self.refusing = done >= calls * QUIET_SHARE
            if len(active) < 3:
                if not queue:  # every kind of story in turn, in a random order
                    queue = self.rng.sample(stories, len(stories))
                active.append(queue.pop()())
            if self.rng.random() < 0.3:
                self.read()
                continue
            story = self.rng.choice(active)
            if next(story, StopIteration) is StopIteration:
                active.remove(story)
        self.refusing = True
        for story in active:
            for _ in story:
                pass

    def report(self) -> dict[str, Any]:
        return {"calls": self.calls, "refusals": self.refusals, "rows": self.rows,
                "balances": self.balances, "failures": self.failures}


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of callers' (or processes') reports."""
    merged: dict[str, Any] = {"calls": Counter(), "refusals": Counter(), "rows": Counter(),
                              "balances": Counter(), "failures": []}
    for report in reports:
        for key in ("calls", "refusals", "rows", "balances"):
            merged[key].update(report[key])
        merged["failures"].extend(report["failures"])
    return merged


def play_in_process(conninfo: str, process: int, threads: int, calls: int, seed: int) -> dict[str, Any]:
    """One process: ``threads`` callers sharing one ``XP(conninfo)`` (its own pool)."""
    reports: list[dict[str, Any]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def run(thread: int) -> None:
        name = f"p{process}t{thread}"
        player = Player(xp, name, random.Random(f"{seed}:{name}"))
        try:
            player.play(calls)
        except BaseException:  # noqa: BLE001 - reported to the test
            player.failures.append(f"{name} crashed: {traceback.format_exc()}")
        with lock:
            reports.append(player.report())

    try:
        with XP(conninfo, max_connections=CONNECTIONS) as xp:
            workers = [threading.Thread(target=run, args=(t,), name=f"pooler-{process}-{t}")
                       for t in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
    except Exception:  # noqa: BLE001
        failures.append(f"process {process} crashed: {traceback.format_exc()}")
    merged = merge(reports)
    merged["failures"].extend(failures)
    return merged


# --------------------------------------------------------------------------- the tests

# What each kind of ledger row must look like, whoever wrote it: a call run as
# another function's would leave e.g. an email in campaign_id.
ROW_SHAPES = """
SELECT t.id, t.transaction_type, t.user_wallet, t.campaign_id, t.subject
  FROM pyxp.xp_transactions t
 WHERE NOT CASE
       WHEN t.transaction_type = 'B2C_CLIENT_ONBOARDED'
            THEN t.subject LIKE 'client-%@example.com' AND t.campaign_id LIKE 'cmp-%'
                 AND t.user_wallet LIKE '0x\\_%\\_client%'
       WHEN t.transaction_type IN ('B2C_MINT', 'OPTION_WINSTORY_VIDEO', 'CAMPAIGN_APPROVED')
            THEN t.campaign_id LIKE 'cmp-%' AND t.user_wallet LIKE '0x\\_%\\_creator%'
       WHEN t.transaction_type = 'AGENCY_B2C_MINT'
            THEN t.campaign_id LIKE 'cmp-%' AND t.user_wallet LIKE '0x\\_%\\_agency%'
       WHEN t.transaction_type = 'MODERATION_VALIDATED_BY_MODERATOR' AND t.idempotency_key LIKE 'pooler-%'
            THEN t.campaign_id IS NULL AND t.user_wallet LIKE '0x\\_%\\_user%'  -- generic award
       WHEN t.transaction_type LIKE 'MODERATION\\_%'
            THEN t.campaign_id LIKE 'cmp-%' AND t.user_wallet LIKE '0x\\_%\\_mod%'
       WHEN t.transaction_type LIKE 'Completion\\_Moderation\\_%'
            THEN t.campaign_id LIKE 'cmp-%' AND t.subject LIKE 'cpl-%' AND t.user_wallet LIKE '0x\\_%\\_mod%'
       WHEN t.transaction_type LIKE 'Completion\\_%'
            THEN t.campaign_id LIKE 'cmp-%' AND t.subject LIKE 'cpl-%'
                 AND t.user_wallet LIKE '0x\\_%\\_completer%'
       WHEN t.transaction_type = 'REVERSAL'
            THEN t.reverses IS NOT NULL AND t.user_wallet LIKE '0x\\_%\\_user%'
       ELSE false END
 ORDER BY t.id LIMIT 20
"""


def test_every_flow_from_many_processes_through_transaction_pooling(
        pooled: str, db: psycopg.Connection[Any], pgbouncer: PgBouncer) -> None:
    """1,800 calls of every flow, refusal and read from 4 processes x 3 threads, 8 client
    connections on 4 server connections: each call runs as itself, the ledger is what the
    callers were told."""
    context = multiprocessing.get_context("spawn")  # no fork of a threaded pytest process
    with context.Pool(PROCESSES) as pool:  # terminated (workers killed) on exit, also on failure
        pending = pool.starmap_async(play_in_process, [(pooled, p, THREADS, CALLS_PER_THREAD, 9)
                                                       for p in range(PROCESSES)])
        reports = pending.get(timeout=900)  # a hang fails the test instead of the suite
    run = merge(reports)

    failures = run["failures"]
    assert not failures, (f"{len(failures)} calls failed or returned another call's result; first ones:\n"
                          + "\n".join(failures[:15]) + f"\npgbouncer log:\n{pgbouncer.log()[-1500:]}")
    for report in reports:  # every flow and read in every process
        assert all(report["calls"][method] for method in FLOWS + READS), report["calls"]
    assert sum(run["calls"].values()) >= PROCESSES * THREADS * CALLS_PER_THREAD
    assert set(run["refusals"]) == {"PX002", "PX005", "PX008", "PX009", "PX012", "PX015"}

    by_type = dict(db.execute("SELECT transaction_type, count(*) FROM pyxp.xp_transactions GROUP BY 1"
                              ).fetchall())
    assert by_type == dict(run["rows"])
    assert db.execute(ROW_SHAPES).fetchall() == []
    balances = dict(db.execute("SELECT user_wallet, total_xp FROM pyxp.xp_balances").fetchall())
    assert balances == dict(run["balances"])
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_async_clients_through_transaction_pooling(pooled: str, db: psycopg.Connection[Any]) -> None:
    """AsyncXP: 6 clients (each its own pool), each cycling through 4 calls of different shapes
    in its own order, 40 rounds: every result is the call's own."""
    clients, rounds = 6, 40
    failures: list[str] = []

    async def play(index: int, xp: AsyncXP) -> None:
        wallet = f"0x_async{index}"
        steps = ["award", "balance", "level_for", "onboard"]
        steps = steps[index % 4:] + steps[:index % 4]  # each client's n-th prepared query differs
        for n in range(rounds):
            for step in steps:
                try:
                    if step == "award":
                        award = await xp.award(wallet, ACTION, f"async-{index}-{n}")
                        ok = isinstance(award, Award) and award.transaction_types == [ACTION] \
                            and award.rows[0].user_wallet == wallet
                        result: Any = award
                    elif step == "balance":
                        result = await xp.balance(wallet)
                        ok = isinstance(result, Balance) and result.user_wallet == wallet \
                            and result.total_xp in (2 * n, 2 * n + 2)
                    elif step == "level_for":
                        result = await xp.level_for(100 * (n % 3))
                        ok = isinstance(result, Level) and result.level == (1, 2, 2)[n % 3]
                    else:
                        result = await xp.onboard_agency_client(f"nobody{index}@example.com", wallet)
                        ok = isinstance(result, Award) and result.rows == ()
                except Exception as exc:  # noqa: BLE001
                    ok, result = False, f"{type(exc).__name__}: {exc}"
                if not ok:
                    failures.append(f"client {index} round {n} {step}: {result!r}")

    async def main() -> None:
        xps = [await AsyncXP.connect(pooled, max_connections=2) for _ in range(clients)]
        try:
            await asyncio.wait_for(asyncio.gather(*(play(i, xp) for i, xp in enumerate(xps))), timeout=600)
        finally:
            for xp in xps:
                await xp.close()

    asyncio.run(main())
    assert not failures, f"{len(failures)} failures; first ones:\n" + "\n".join(failures[:15])
    rows = db.execute("SELECT user_wallet, count(*), sum(xp_amount) FROM pyxp.xp_transactions "
                      "GROUP BY 1 ORDER BY 1").fetchall()
    assert rows == [(f"0x_async{i}", rounds, 2 * rounds) for i in range(clients)]
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_refusals_through_the_pooler_write_nothing(pooled: str, unchanged: Any) -> None:
    """Refusals through the pooler, one after the other: each a PX error, nothing written."""
    with XP(pooled, max_connections=1) as xp, unchanged():
        for n in range(8):
            with pytest.raises(XPError) as refused:
                xp.onboard_agency_client(f"not-an-email-{n}", "0x_client")
            assert refused.value.code == "PX002"
            with pytest.raises(XPError) as refused:
                xp.award_moderation_vote("0x_mod", "cmp-unknown", "VALID")
            assert refused.value.code == "PX012"


def statement_pooled(pgbouncer: PgBouncer, conninfo: str) -> str:
    """This test's database through the same PgBouncer in statement mode (a database entry of its
    own, added to the configuration and reloaded)."""
    server = conninfo_to_dict(conninfo)
    alias = f"stmt_{server['dbname']}"[:63]
    ini = pgbouncer.directory / "pgbouncer.ini"
    entry = (f"{alias} = host={server.get('host', '127.0.0.1')} port={server.get('port', '5432')} "
             f"dbname={server['dbname']} pool_mode=statement\n")
    ini.write_text(ini.read_text().replace("[databases]\n", "[databases]\n" + entry, 1))
    pgbouncer.process.send_signal(signal.SIGHUP)
    through = make_conninfo(pgbouncer.conninfo(conninfo), dbname=alias)
    deadline = time.monotonic() + 30  # a readiness wait for the reload, not a measure
    while True:
        try:
            with psycopg.connect(through, autocommit=True, prepare_threshold=None) as conn:
                if conn.execute("SELECT current_database()").fetchone() == (server["dbname"],):
                    return through
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def test_an_autocommit_client_through_statement_pooling(pgbouncer: PgBouncer, conninfo: str,
                                                        db: psycopg.Connection[Any]) -> None:
    """A statement-mode pooler refuses transaction blocks (08P01). The client sends none on an
    autocommit connection (0029; a hostile test found every call refused), so a pool of such
    connections serves every call; the client's own pool opens transactions (READ COMMITTED)
    and needs transaction or session mode."""
    through = statement_pooled(pgbouncer, conninfo)
    with psycopg.connect(through, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as refused:
            with conn.transaction():
                conn.execute("SELECT 1", prepare=False)
        assert refused.value.sqlstate == "08P01"
    with ConnectionPool(through, kwargs={"autocommit": True, "prepare_threshold": None},
                        min_size=1, max_size=2) as pool:
        xp = XP(pool)
        first = xp.award("0xstmt", "CAMPAIGN_APPROVED", "stmt-1")
        assert first.total_xp == 100 and xp.award("0xstmt", "CAMPAIGN_APPROVED", "stmt-1").replayed
        assert [a.total_xp for a in xp.award_many([AwardRequest("0xstmt", "CAMPAIGN_APPROVED", "stmt-2")])] == [200]
        xp.reverse(first.rows[0].transaction_id, "test")
        assert xp.balance("0xstmt").total_xp == 100
        assert [r.transaction_type for r in xp.history("0xstmt")] == ["REVERSAL", "CAMPAIGN_APPROVED",
                                                                       "CAMPAIGN_APPROVED"]
        with pytest.raises(XPError) as px:
            xp.award_moderation_vote("0x_mod", "cmp-unknown", "VALID")
        assert px.value.code == "PX012"
    assert db.execute("SELECT count(*) FROM pyxp.audit()").fetchone() == (0,)


def test_a_watcher_without_listen_leaves_no_pooled_connection_listening(
        pooled: str, db: psycopg.Connection[Any]) -> None:
    """XP.watch through a transaction-mode pooler left its LISTEN on the pooled server connection it
    ran on, after the watch had ended: PgBouncer logged a warning per wake-up and handed the
    notifications to the next client of that connection (a hostile test, 0037). With listen=False
    (pyxp watch --no-listen) the loop reads on its timer alone: every row, and no server connection
    of the pool listens afterwards."""
    stop = threading.Event()
    seen: list[int] = []
    with XP(pooled, max_connections=1) as xp:
        def follow() -> None:
            for change in xp.watch(0, "0x_unlistened", poll_interval=0.1, stop=stop, listen=False):
                seen.append(change.transaction_id)
        watcher = threading.Thread(target=follow)
        watcher.start()
        awarded = [db.execute("SELECT transaction_id FROM pyxp.award('0x_unlistened', %s, %s)",
                              (ACTION, f"unlistened-{n}")).fetchone()[0] for n in range(3)]  # type: ignore[index]
        assert waited_for(lambda: seen == awarded)
        stop.set()
        watcher.join(30)
    listening = set()
    for _ in range(5 * POOL_SIZE):  # each connection may get another server connection of the pool
        with psycopg.connect(pooled, autocommit=True, prepare_threshold=None) as conn:
            listening |= {row[0] for row in conn.execute("SELECT pg_listening_channels()")}
    assert listening == set()
