"""``pyxp bench``: how fast the ledger is, measured side by side with pgbench on one server.

On a scratch database ``pyxp_bench_<random>`` of the server it is pointed at
(migrated with :func:`pyxp.schema.upgrade`, dropped at the end, also on error
or Ctrl-C), in one run:

(a) ``pgbench -N`` (built-in simple-update: UPDATE + SELECT + INSERT history),
    scale = clients: the ceiling of a small write transaction on this server;
(b) single awards through the SQL function ``pyxp.award`` (a pgbench custom
    script, same clients and duration);
(c) the same through the Python client (one thread per client, one pool);
(d) the batch API ``XP.award_many`` (``pyxp.award_many``);
(e) one hot wallet receiving every award (pgbench custom script);
(f) reads at scale: ``balance``, ``history`` (a page of 50), ``leaderboard(100)``,
    ``wallet_rank``, ``level_for``: client-side latency per call over one
    connection, and EXPLAIN (ANALYZE, BUFFERS) of the SELECT inside each;
(g) ``recalculate_levels()`` over every balance, triggered by a ruleset switch
    (the active ruleset with its level thresholds raised by 20 %);
(h) bytes per ledger row, table and indexes;
(i) what the client's never-prepare rule costs: ``XP.award`` on one direct
    connection as the client runs it (``prepare=False``, so that it is safe
    behind a transaction pooler) against psycopg's default (a named prepared
    statement after 5 uses), one thread, the sides alternating call by call,
    medians of 7 rounds (3 with ``--quick``);
(j) what wake-ups cost the awards of (b): the same pgbench script with the
    change feed's wake-up trigger as shipped (at most one NOTIFY per 100 ms),
    without it, and with a NOTIFY on every commit (the design it replaces),
    each with and without a session listening on ``pyxp_changes``; after a
    2 s warm-up, the sides alternate round by round, medians of 3 rounds
    (``seconds`` / 2 each, at least 2 s).

The fixture for (f), (g) and (h) is loaded set-based, as superuser, straight
into the pyxp tables (bypassing the API), but it is a consistent ledger: rows
of the active ruleset's actions as generic awards (``pyxp.award``) with
natural-looking idempotency keys, campaign ids and metadata, each its own
idempotency record (``request_digest``, as the engine writes it),
``balance_after`` chained per wallet, balances equal to the sums with their
levels (``pyxp.audit()`` finds nothing: (m) checks it). Wallet number
``n`` (1..wallets) is ``0x`` + 40 hex digits derived from ``md5(seed:n)``;
every wallet has at least one row and activity is skewed (a few wallets hold
thousands of rows). The secondary indexes of ``xp_transactions`` are dropped
during the load and rebuilt after it (same definitions), which is much faster
than maintaining them row by row; they are therefore freshly built B-trees
when (h) is measured.

Order of the run: fixture, VACUUM ANALYZE, (h), (f), pgbench init, then
(a), (b), (c), (d), (e), each right after a CHECKPOINT (so that none of them
pays for a checkpoint another one started), then (i) and (g). Reads run on the
freshly vacuumed fixture; every throughput measure runs on the loaded ledger,
with wallets drawn from it. No figure is asserted here: the targets of the
issue are evaluated and printed (``met?``), the exit code stays 0.

Use :data:`bench_command` (registered by the CLI as ``pyxp bench``), or
:func:`run_bench` and :func:`format_table` from Python; ``python -m pyxp.bench``
runs the command on its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import psycopg
from psycopg import sql
from psycopg.abc import Params, Query
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from pyxp import schema
from pyxp.client import XP
from pyxp.database import DATABASE_URL_VARIABLE, connection_problem, discovered_server, shown_conninfo
from pyxp.errors import XPError
from pyxp.results import AwardRequest
from pyxp.ruleset_config import load_ruleset, parse_ruleset
from pyxp.tables import Column, Printer, Styled

# The action every benchmark award uses: +2, no formula input (winstory: a VALID moderation vote).
ACTION = "MODERATION_VALIDATED_BY_MODERATOR"

# Targets of the issue (README "Performance"). Read latencies and the
# recalculation are stated at 1M wallets / 10M ledger rows.
TARGET_WALLETS = 1_000_000
TARGET_LEDGER_ROWS = 10_000_000
READS = ("balance", "history", "leaderboard", "rank", "level_for", "week_board", "week_rank")
# (k): the benchmark's action capped as a moderator's vote would be (SPEC 12).
CAP = {"max_xp": 20, "per": "day"}
# (h'): the campaign the votes of the idempotency-record measure name (ids as long as real ones).
BENCH_CAMPAIGN = "0f8fad5b-d9cb-469f-a165-70867728950e"

Log = Callable[[str], None]


class BenchError(click.ClickException):
    """A benchmark that cannot run (no pgbench, not a superuser, pgbench failed...): exit code 2."""

    exit_code = 2


# --------------------------------------------------------------------------- options


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """Sizes of one run. :meth:`profile` gives the defaults and the ``--quick`` profile."""

    clients: int = 4
    seconds: int = 10
    wallets: int = 200_000
    ledger_rows: int = 1_000_000
    batch_size: int = 1000
    read_samples: int = 200
    seed: int = 42
    quick: bool = False
    keep: bool = False

    @classmethod
    def profile(cls, quick: bool = False, **overrides: Any) -> BenchOptions:
        """The default profile (under 2 minutes on 2 cores) or the quick one (a smoke test,
        about 20 s), with every override that is not None applied on top."""
        base: dict[str, Any] = {"clients": 2, "seconds": 2, "wallets": 2000, "ledger_rows": 10_000,
                                "batch_size": 200, "read_samples": 50} if quick else {}
        base.update({key: value for key, value in overrides.items() if value is not None})
        return cls(quick=quick, **base).checked()

    def checked(self) -> BenchOptions:
        problems = [f"{name} must be at least {low}" for name, low in
                    (("clients", 1), ("seconds", 1), ("wallets", 1), ("batch_size", 1), ("read_samples", 1))
                    if getattr(self, name) < low]
        if self.ledger_rows < self.wallets:
            problems.append(f"ledger_rows ({self.ledger_rows}) must be at least wallets ({self.wallets}): "
                            "every wallet gets at least one row")
        if self.batch_size > 10_000:
            problems.append("batch_size is at most 10000 (pyxp.award_many's limit)")
        if problems:
            raise BenchError("; ".join(problems))
        return self

    def as_dict(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def wallet_of(number: int, seed: int) -> str:
    """Wallet number ``number`` of the fixture: ``0x`` + 40 hex digits (same formula as the SQL)."""
    return ("0x" + hashlib.md5(f"{seed}:{number}".encode()).hexdigest()
            + hashlib.md5(f"{number}:{seed}".encode()).hexdigest()[:8])


def _sql_wallet(number: str, seed: int) -> str:
    """The SQL expression of :func:`wallet_of` for a number expression."""
    return f"'0x' || md5('{seed}:' || {number}) || left(md5({number} || ':{seed}'), 8)"


# --------------------------------------------------------------------------- statistics


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p95, p99 (inclusive interpolation); None when there are no values."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0], "p99": values[0]}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98]}


def _put_latencies(results: dict[str, Any], prefix: str, milliseconds: Sequence[float]) -> None:
    for name, value in percentiles(milliseconds).items():
        results[f"{prefix}_ms_{name}"] = None if value is None else round(value, 3)


# --------------------------------------------------------------------------- machine and server


def machine_info() -> dict[str, Any]:
    """The machine the benchmark runs on (the client side; the server is described separately)."""
    info: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    try:
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        pass
    try:
        info["ram_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


SERVER_SETTINGS = ("shared_buffers", "synchronous_commit", "fsync", "wal_level", "autovacuum",
                   "max_connections", "jit")


def server_info(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    info: dict[str, Any] = {"version": _scalar(conn, "SHOW server_version"),
                            "host": conn.info.host, "port": conn.info.port}
    host = conn.info.host or ""
    info["local"] = host.startswith("/") or host in ("localhost", "127.0.0.1", "::1")
    for name in SERVER_SETTINGS:
        info[name] = _scalar(conn, sql.SQL("SHOW {}").format(sql.Identifier(name)))
    return info


# --------------------------------------------------------------------------- scratch database


def _scalar(conn: psycopg.Connection[Any], query: str | sql.Composable,
            params: Sequence[Any] | None = None) -> Any:
    """The first column of the first row of a query."""
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


def _admin_conninfo(conninfo: str) -> str:
    """A conninfo of the server that connects: the given one, else the same on database postgres."""
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10):
            return conninfo
    except psycopg.errors.InvalidCatalogName:
        fallback = make_conninfo(conninfo, dbname="postgres")
        with psycopg.connect(fallback, autocommit=True, connect_timeout=10):
            return fallback


@contextmanager
def scratch_database(admin: str, keep: bool, log: Log) -> Iterator[str]:
    """Creates ``pyxp_bench_<random>``; yields its name; drops it at the end unless ``keep``."""
    name = f"pyxp_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        if keep:
            log(f"scratch database {name} kept (--keep)")
        else:
            try:
                drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(drop)
                log(f"scratch database {name} dropped")
            except psycopg.Error as exc:
                log(f"could not drop the scratch database {name}: {' '.join(str(exc).split())}")


# --------------------------------------------------------------------------- fixture

# Kinds of fixture rows: (low, high) of a 0..99 draw, action, amount, key prefix,
# completion (key and subject on a completion id) or campaign key, counts as a
# moderation (key also carries the wallet), metadata as the flow functions write it.
FIXTURE_KINDS = """(VALUES
 (0, 50, 'MODERATION_VALIDATED_BY_MODERATOR', 2, 'campaign.vote:', false, true,
  '{"vote_decision": "VALID", "campaign_type": "B2C"}'::jsonb),
 (50, 65, 'MODERATION_REFUSED_BY_MODERATOR', -1, 'campaign.vote:', false, true,
  '{"vote_decision": "REFUSE", "campaign_type": "B2C"}'),
 (65, 85, 'Completion_Submit_B2C_Free', 100, 'completion.submitted:', true, false,
  '{"campaign_type": "B2C", "is_paid": false}'),
 (85, 95, 'Completion_Validated_B2C', 100, 'completion.outcome:', true, false, '{"campaign_type": "B2C"}'),
 (95, 98, 'Completion_Refused_B2C', -50, 'completion.outcome:', true, false, '{"campaign_type": "B2C"}'),
 (98, 100, 'B2C_MINT', 1000, 'campaign.created:', false, false,
  '{"campaign_type": "B2C", "mint_value": null, "no_rewards": false, "winstory_creates_video": false}')
) AS k(lo, hi, action, amount, prefix, completion, vote, metadata)"""

# Row g (1..R) goes to wallet g for g <= W (every wallet has a row), else to
# 1 + floor(W * u^2), u uniform in [0, 1) from a seeded hash of g: a skewed
# activity (wallet 1 gets about R / sqrt(W) rows). Its kind is a second hash.
# Row g is created 3 s after row g - 1, the last one now.
FIXTURE_STEPS: tuple[tuple[str, str], ...] = (
    ("kinds", "CREATE UNLOGGED TABLE public.bench_kinds AS SELECT * FROM {kinds}"),
    ("wallets", """CREATE UNLOGGED TABLE public.bench_wallets AS
        SELECT w, '0x' || md5({seed_text} || ':' || w) || left(md5(w || ':' || {seed_text}), 8) AS wallet
          FROM generate_series(1, {wallets}) w"""),
    ("rows", """CREATE UNLOGGED TABLE public.bench_rows AS
        SELECT s.g, s.w, s.kind, s.amount, sum(s.amount) OVER (PARTITION BY s.w ORDER BY s.g) AS balance_after,
               row_number() OVER (PARTITION BY s.w ORDER BY s.g) AS seq
          FROM (SELECT u.g, u.w, u.kind,
                       (SELECT k.amount FROM public.bench_kinds k
                         WHERE u.kind >= k.lo AND u.kind < k.hi) AS amount
                  FROM (SELECT g,
                               CASE WHEN g <= {wallets} THEN g
                                    ELSE 1 + floor({wallets} * power(((hashint8extended(g, {seed}) >> 11)
                                         & 4503599627370495)::float8 / 4503599627370496, 2))::bigint END AS w,
                               floor(((hashint8extended(g, {seed} + 1) >> 11) & 4503599627370495)::float8
                                     / 4503599627370496 * 100)::int AS kind
                          FROM generate_series(1, {rows}) g) u) s
         ORDER BY s.g"""),
    ("analyze", "ANALYZE public.bench_kinds, public.bench_wallets, public.bench_rows"),
    # Every row is a generic award (pyxp.award), its own idempotency record:
    # request_digest = pyxp.inputs_digest of its inputs, spelled out here (no
    # function call per row).
    ("xp_transactions", """INSERT INTO pyxp.xp_transactions (id, user_wallet, transaction_type, xp_amount,
                                      balance_after, rule_id, campaign_id, subject, idempotency_key, metadata,
                                      created_at, request_digest, wallet_seq)
        OVERRIDING SYSTEM VALUE
        SELECT r.g, bw.wallet, k.action, r.amount, r.balance_after, ru.rule_id, 'cmp_' || (r.g / 7),
               CASE WHEN k.completion THEN 'cpl_' || r.g END,
               'bench.fixture:' || k.prefix || CASE WHEN k.completion THEN 'cpl_' || r.g ELSE 'cmp_' || r.g END
                        || CASE WHEN k.vote THEN ':' || bw.wallet ELSE '' END,
               k.metadata, now() - ({rows} - r.g) * interval '3 seconds',
               ('x' || encode(substr(sha256(convert_to(jsonb_build_object(
                   'action', k.action, 'wallet', bw.wallet, 'params', '{{}}'::jsonb)::text, 'UTF8')), 1, 8),
                   'hex'))::bit(64)::bigint, r.seq
          FROM public.bench_rows r
          JOIN public.bench_wallets bw ON bw.w = r.w
          JOIN public.bench_kinds k ON r.kind >= k.lo AND r.kind < k.hi
          JOIN pyxp.rules ru ON ru.ruleset_id = {ruleset} AND ru.action = k.action"""),
    # Each row's claim (pyxp.key_hash, spelled out: no function call per row).
    ("xp_award_claims", """INSERT INTO pyxp.xp_award_claims (key_hash, transaction_id, created_at)
        SELECT encode(substr(sha256(convert_to(t.idempotency_key, 'UTF8')), 1, 16), 'hex')::uuid, t.id, t.created_at
          FROM pyxp.xp_transactions t"""),
    ("identity", "SELECT setval(pg_get_serial_sequence('pyxp.xp_transactions', 'id'), {rows})"),
    ("xp_balances", """INSERT INTO pyxp.xp_balances (user_wallet, total_xp, current_level, xp_to_next_level,
                                   total_moderations, created_at, updated_at, last_wallet_seq, ranked)
        SELECT bw.wallet, s.total, c.level, (c.next_level_xp - s.total)::bigint, 0,
               now() - ({rows} - s.first_g) * interval '3 seconds',
               now() - ({rows} - s.last_g) * interval '3 seconds', s.rows_, true
          FROM (SELECT r.w, sum(r.amount)::bigint AS total, min(r.g) AS first_g, max(r.g) AS last_g,
                       count(*) AS rows_
                  FROM public.bench_rows r JOIN public.bench_kinds k ON r.kind >= k.lo AND r.kind < k.hi
                 GROUP BY r.w) s
          JOIN public.bench_wallets bw ON bw.w = s.w
         CROSS JOIN LATERAL pyxp.curve_position({ruleset}, s.total) c
         ORDER BY bw.wallet"""),
    # Each balance's latest periods and their XP (SPEC 12), as the writer would have kept them.
    ("periods", "SELECT pyxp.rebuild_period_columns((SELECT r.timezone FROM pyxp.rulesets r WHERE r.is_active))"),
    # The rank buckets cut from the loaded balances (counted: ranked = true above), as migration 0009 does.
    ("rank buckets", "SELECT pyxp.rebalance_rank_buckets(1024, true)"),
    ("cleanup", "DROP TABLE public.bench_rows, public.bench_wallets, public.bench_kinds"),
)


def load_fixture(conn: psycopg.Connection[Any], options: BenchOptions, log: Log) -> float:
    """Loads ``options.wallets`` balances and ``options.ledger_rows`` ledger rows; returns seconds.

    One transaction (all or nothing), as superuser: ``session_replication_role
    = replica`` skips the foreign-key triggers (the rows are consistent by
    construction); the secondary indexes of xp_transactions are rebuilt after
    the load. Then VACUUM ANALYZE, as autovacuum would eventually do.
    """
    started = time.perf_counter()
    ruleset = _scalar(conn, "SELECT pyxp.active_ruleset_id()")
    values = {"wallets": sql.Literal(options.wallets), "rows": sql.Literal(options.ledger_rows),
              "seed": sql.Literal(options.seed), "seed_text": sql.Literal(str(options.seed)),
              "ruleset": sql.Literal(ruleset), "kinds": sql.SQL(FIXTURE_KINDS)}
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("SET LOCAL work_mem = '1GB'")
        conn.execute("SET LOCAL maintenance_work_mem = '1GB'")
        rebuilt = conn.execute("""
            SELECT c.relname, pg_get_indexdef(i.indexrelid)
              FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = 'pyxp.xp_transactions'::regclass AND NOT i.indisprimary
             ORDER BY c.relname""").fetchall()
        for name, _ in rebuilt:
            conn.execute(sql.SQL("DROP INDEX pyxp.{}").format(sql.Identifier(name)))
        for step, statement in FIXTURE_STEPS:
            step_started = time.perf_counter()
            conn.execute(sql.SQL(statement).format(**values))  # type: ignore[arg-type]
            log(f"  fixture {step}: {time.perf_counter() - step_started:.1f} s")
        for name, definition in rebuilt:
            step_started = time.perf_counter()
            # A partitioned index's definition reads "ON ONLY": built that way, it would skip the partitions.
            conn.execute(definition.replace(" ON ONLY ", " ON ", 1))  # type: ignore[arg-type]  # pg_get_indexdef
            log(f"  fixture index {name}: {time.perf_counter() - step_started:.1f} s")
    step_started = time.perf_counter()
    conn.execute("VACUUM (ANALYZE) pyxp.xp_transactions, pyxp.xp_balances, pyxp.xp_requests, pyxp.xp_award_claims")
    log(f"  fixture vacuum analyze: {time.perf_counter() - step_started:.1f} s")
    return time.perf_counter() - started


# --------------------------------------------------------------------------- (h) sizes


def ledger_sizes(conn: psycopg.Connection[Any], rows: int) -> dict[str, Any]:
    """Bytes per ledger row: the ledger's partitions with their indexes, heap, each index (summed
    over the partitions), and with its idempotency records (xp_requests, xp_award_claims)."""
    sizes = conn.execute("""
        SELECT sum(pg_total_relation_size(p.relid)), sum(pg_relation_size(p.relid)), sum(pg_table_size(p.relid)),
               pg_total_relation_size('pyxp.xp_requests') + pg_total_relation_size('pyxp.xp_award_claims')
          FROM pg_partition_tree('pyxp.xp_transactions') p WHERE p.isleaf
    """).fetchone()
    assert sizes is not None
    total, heap, table, requests = (int(size) for size in sizes)
    indexes = conn.execute("""
        SELECT c.relname, sum(pg_relation_size(p.relid))::bigint
          FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         CROSS JOIN LATERAL pg_partition_tree(i.indexrelid) p
         WHERE i.indrelid = 'pyxp.xp_transactions'::regclass AND p.isleaf
         GROUP BY c.relname ORDER BY c.relname""").fetchall()
    return {
        "ledger_rows_measured": rows,
        "ledger_total_bytes": total,
        "bytes_per_ledger_row": round(total / rows, 1),
        "heap_bytes_per_ledger_row": round(heap / rows, 1),
        "toast_and_maps_bytes_per_ledger_row": round((table - heap) / rows, 1),
        "index_bytes_per_ledger_row": {name: round(size / rows, 1) for name, size in indexes},
        "requests_bytes_per_ledger_row": round(requests / rows, 1),  # xp_requests + xp_award_claims
        "ledger_and_requests_bytes_per_row": round((total + requests) / rows, 1),
        # Per award: its ledger row, its idempotency record (xp_award_claims for a generic award,
        # xp_requests for flows and reversals) and every index of both.
        "bytes_per_award": round((total + requests) / rows, 1),
    }


def request_sizes(conn: psycopg.Connection[Any], options: BenchOptions) -> dict[str, Any]:
    """(h') The idempotency record of a flow call (``xp_requests``, one per flow call or reversal;
    the fixture has none): votes by fixture wallets on one campaign with a 36-character id (keys
    of ~95 characters); per call, what its request adds to the table and its primary key, and per
    ledger row what the index finding a call's rows (``xp_transactions_request_rows``) adds."""
    count = min(options.wallets, 500 if options.quick else 5000)
    measured = """SELECT pg_relation_size('pyxp.xp_requests') + pg_relation_size('pyxp.xp_requests_pkey'),
                         (SELECT sum(pg_relation_size(p.relid))::bigint
                            FROM pg_partition_tree('pyxp.xp_transactions_request_rows') p)"""
    conn.execute("SELECT pyxp.award_campaign_creation('0xbench_creator', %s, 'B2C')", (BENCH_CAMPAIGN,))
    requests_before, index_before = conn.execute(measured).fetchone() or (0, 0)
    conn.execute(sql.SQL("SELECT count(*) FROM generate_series(1, %s) i, "
                         "pyxp.award_moderation_vote({wallet}, %s, 'VALID')").format(
                             wallet=sql.SQL(_sql_wallet("i", options.seed))),  # type: ignore[arg-type]
                 (count, BENCH_CAMPAIGN))
    requests_after, index_after = conn.execute(measured).fetchone() or (0, 0)
    return {"flow_calls_measured": count,
            "request_bytes_per_flow_call": round((requests_after - requests_before) / count, 1),
            "request_rows_index_bytes_per_flow_row": round((index_after - index_before) / count, 1)}


# --------------------------------------------------------------------------- (f) reads

# The SELECT inside each read function of sql/07_reads.sql, sql/07_periods.sql and
# sql/03_levels.sql (keep in sync), with the function's variables as parameters: EXPLAIN runs
# their generic plan, the one a PL/pgSQL function may settle on after 5 calls.
READ_PLANS: dict[str, tuple[str, str]] = {
    "balance": ("text", """SELECT b.user_wallet, b.total_xp, b.current_level, b.xp_to_next_level,
               b.total_moderations, b.created_at, b.updated_at
          FROM pyxp.xp_balances b WHERE b.user_wallet = $1"""),
    "history": ("text, integer, bigint", """SELECT t.id, t.user_wallet, t.transaction_type, t.xp_amount,
               t.xp_requested, t.balance_after, t.rule_id, t.campaign_id, t.subject, t.idempotency_key,
               t.metadata, t.reverses, t.created_at
          FROM pyxp.xp_transactions t
         WHERE t.user_wallet = $1 AND t.wallet_seq < $3
         ORDER BY t.wallet_seq DESC LIMIT $2"""),
    "leaderboard": ("integer, integer", """SELECT
               $2 + row_number() OVER (ORDER BY b.total_xp DESC, b.user_wallet COLLATE "C"),
               b.user_wallet, b.total_xp, b.current_level
          FROM (SELECT x.user_wallet, x.total_xp, x.current_level FROM pyxp.xp_balances x
                 ORDER BY x.total_xp DESC, x.user_wallet COLLATE "C" OFFSET $2 LIMIT $1) b
         ORDER BY 1"""),
    # What wallet_rank('all') runs: the same function, inlined, so EXPLAIN shows its scans.
    "rank": ("bigint, text", "SELECT r.rank FROM pyxp.board_rank($1, $2) r"),
    "level_for": ("bigint, bigint", "SELECT * FROM pyxp.curve_position($1, $2) c"),
}

READ_CALLS = {
    "balance": "SELECT * FROM pyxp.balance(wallet => %s)",
    "history": "SELECT * FROM pyxp.history(wallet => %s, max_rows => 50)",
    "leaderboard": "SELECT * FROM pyxp.leaderboard(max_rows => 100)",
    "rank": "SELECT pyxp.wallet_rank(wallet => %s)",
    "level_for": "SELECT * FROM pyxp.level_for(total_xp => %s)",
    "week_board": "SELECT * FROM pyxp.leaderboard(max_rows => 100, period => 'week')",
    "week_rank": "SELECT pyxp.wallet_rank(wallet => %s, period => 'week')",
}

INDEX_NODES = ("Index Scan", "Index Only Scan", "Bitmap Index Scan")


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A node of EXPLAIN (FORMAT JSON) and every node below it, parents first."""
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


# Tables a read may scan whole by design: the rank buckets' counts (one row per bucket and
# per backend that moved wallets since the last rebalance; a rank sums those before its bucket).
WHOLE_SCANS_BY_DESIGN = frozenset({"xp_rank_counts"})


def plan_summary(explained: dict[str, Any]) -> dict[str, Any]:
    """From EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON): the top node, the scans, whether an index is
    used (no sequential scan of a pyxp table, but those of :data:`WHOLE_SCANS_BY_DESIGN`)."""
    plan = explained["Plan"]
    nodes = list(plan_nodes(plan))
    scans = []
    for node in nodes:
        if "Relation Name" in node or "Index Name" in node:
            kind = node["Node Type"] + (" Backward" if node.get("Scan Direction") == "Backward" else "")
            target = node.get("Index Name") or node.get("Relation Name")
            scans.append(f"{kind} on {target}" if kind == "Seq Scan" else f"{kind} using {target}")
    seq_scans = [n for n in nodes if n["Node Type"] == "Seq Scan" and n.get("Schema", "pyxp") == "pyxp"
                 and n.get("Relation Name") not in WHOLE_SCANS_BY_DESIGN]
    top = plan["Node Type"]
    text = " > ".join([top] * (top not in " ".join(scans)) + scans[:1])
    return {
        "top_node": top,
        "scans": scans,
        "summary": text,
        "uses_index": bool(any(n["Node Type"] in INDEX_NODES for n in nodes)) and not seq_scans,
        "execution_ms": round(explained.get("Execution Time", 0.0), 3),
        "shared_hit_blocks": plan.get("Shared Hit Blocks"),
        "shared_read_blocks": plan.get("Shared Read Blocks"),
    }


def explain_reads(conn: psycopg.Connection[Any], arguments: dict[str, Sequence[Any]]) -> dict[str, Any]:
    """Generic plans (plan_cache_mode = force_generic_plan) of the SELECTs of :data:`READ_PLANS`."""
    plans: dict[str, Any] = {}
    conn.execute("SET plan_cache_mode = force_generic_plan")
    try:
        for name, (types, query) in READ_PLANS.items():
            statement = sql.Identifier(f"pyxp_bench_{name}")
            conn.execute(sql.SQL("PREPARE {} ({}) AS {}").format(
                statement, sql.SQL(types), sql.SQL(query)))  # type: ignore[arg-type]
            try:
                row = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE {} ({})").format(
                    statement, sql.SQL(", ").join(sql.Literal(a) for a in arguments[name]))).fetchone()
            finally:
                conn.execute(sql.SQL("DEALLOCATE {}").format(statement))
            explained = row[0] if row else None  # type: ignore[index]
            if isinstance(explained, str):
                explained = json.loads(explained)
            plans[name] = plan_summary(explained[0])  # type: ignore[index]
    finally:
        conn.execute("RESET plan_cache_mode")
    return plans


def measure_reads(conn: psycopg.Connection[Any], options: BenchOptions, rng: random.Random) -> dict[str, Any]:
    """Client-side latency of each read function, ``read_samples`` calls each, one connection."""
    samples = options.read_samples
    uniform = [wallet_of(rng.randint(1, options.wallets), options.seed) for _ in range(samples)]
    # History: the wallet of a random ledger row, so active wallets (full pages) weigh as they read.
    row_ids = [rng.randint(1, options.ledger_rows) for _ in range(samples)]
    owners = dict(conn.execute("SELECT id, user_wallet FROM pyxp.xp_transactions WHERE id = ANY(%s)",
                               (row_ids,)).fetchall())
    active = [owners[i] for i in row_ids]
    totals = [rng.randint(-1000, 10**7) for _ in range(samples)]
    # Week ranks: wallets on this week's board (a wallet off it answers NULL at once).
    this_week = [w for (w,) in conn.execute(
        "SELECT b.user_wallet FROM pyxp.xp_balances b "
        "WHERE b.week_start = date_trunc('week', now(), (SELECT r.timezone FROM pyxp.rulesets r WHERE r.is_active)) "
        "ORDER BY hashtext(b.user_wallet || %s) LIMIT %s", (str(options.seed), samples))] or uniform[:1]
    arguments: dict[str, list[Any]] = {"balance": uniform, "history": active, "leaderboard": [None] * samples,
                                       "rank": uniform, "level_for": totals, "week_board": [None] * samples,
                                       "week_rank": [this_week[i % len(this_week)] for i in range(samples)]}
    results: dict[str, Any] = {}
    rows_returned = 0
    for name in READS:
        timings = []
        for argument in arguments[name]:
            params = () if argument is None else (argument,)
            started = time.perf_counter()
            rows = conn.execute(READ_CALLS[name], params).fetchall()  # type: ignore[arg-type]
            timings.append((time.perf_counter() - started) * 1000)
            if name == "history":
                rows_returned += len(rows)
        _put_latencies(results, name, timings)
    results["history_rows_per_page_mean"] = round(rows_returned / samples, 1)

    # EXPLAIN the inner SELECTs with the first sample's arguments.
    ruleset = _scalar(conn, "SELECT pyxp.active_ruleset_id()")
    total = _scalar(conn, "SELECT total_xp FROM pyxp.xp_balances WHERE user_wallet = %s", (uniform[0],))
    plans = explain_reads(conn, {"balance": [uniform[0]], "history": [active[0], 50, 9223372036854775807],
                                 "leaderboard": [100, 0], "rank": [total, uniform[0]],
                                 "level_for": [ruleset, totals[0]]})
    results["plans"] = plans
    for name, plan in plans.items():
        results[f"{name}_uses_index"] = plan["uses_index"]
    return results


# --------------------------------------------------------------------------- pgbench


def pgbench_binary() -> str:
    """pgbench of the local PostgreSQL installation (PATH, else ``pg_config --bindir``)."""
    found = shutil.which("pgbench")
    if found:
        return found
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(result.stdout.strip()) / "pgbench"
        if result.returncode == 0 and candidate.exists():
            return str(candidate)
    raise BenchError("pgbench not found: install the PostgreSQL client tools (e.g. apt-get install "
                     "postgresql-client, or postgresql-contrib on older distributions) "
                     "or put pgbench on PATH")


@dataclasses.dataclass
class Pgbench:
    """Runs pgbench against one database; the password goes through the environment."""

    binary: str
    conninfo: str

    def _target(self) -> tuple[str, dict[str, str]]:
        params = conninfo_to_dict(self.conninfo)
        env = dict(os.environ)
        password = params.pop("password", None)
        if password:
            env["PGPASSWORD"] = str(password)
        return make_conninfo(**params), env  # type: ignore[arg-type]

    def run(self, args: Sequence[str], cwd: str | None = None, server_options: str = "") -> str:
        target, env = self._target()
        if server_options:  # e.g. "-c synchronous_commit=off" for every session pgbench opens
            env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} {server_options}".strip()
        command = [self.binary, *args, target]
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, check=False)
        if result.returncode != 0:
            tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-4:])
            raise BenchError(f"pgbench {' '.join(args)} failed (exit {result.returncode}): {tail}")
        return result.stdout

    def initialize(self, scale: int) -> None:
        self.run(["-i", "-q", "-s", str(scale)])

    def throughput(self, args: Sequence[str], options: BenchOptions, server_options: str = "") -> dict[str, Any]:
        """tps (without initial connection time), transactions and per-transaction latency percentiles."""
        with tempfile.TemporaryDirectory(prefix="pyxp-bench-") as directory:
            out = self.run(["-n", *args, "-c", str(options.clients), "-j", str(options.clients),
                            "-T", str(options.seconds), f"--random-seed={options.seed}",
                            "-l", f"--log-prefix={directory}/tx"], cwd=directory, server_options=server_options)
            latencies = []
            for log_file in Path(directory).glob("tx.*"):
                for line in log_file.read_text().splitlines():
                    fields = line.split()
                    if len(fields) >= 3 and fields[2].isdigit():
                        latencies.append(int(fields[2]) / 1000)  # microseconds -> ms
        tps = re.search(r"^tps = ([0-9.]+) \((?:without initial connection time|excluding connections "
                        r"establishing)\)", out, re.MULTILINE)
        processed = re.search(r"number of transactions actually processed: (\d+)", out)
        if tps is None:
            raise BenchError(f"cannot read the tps in pgbench's output: {' | '.join(out.splitlines()[-5:])}")
        count = int(processed.group(1)) if processed else len(latencies)
        return {"per_s": float(tps.group(1)), "count": count, "latencies": latencies}


def award_script(options: BenchOptions, directory: str, hot: bool) -> str:
    """A pgbench script: one pyxp.award per transaction, random wallet of the fixture (or wallet 1)."""
    name = "hot" if hot else "sql"
    call = (f"SELECT * FROM pyxp.award(wallet => {_sql_wallet(':w', options.seed)}, action => '{ACTION}', "
            f"idempotency_key => 'bench.{name}:' || :client_id || ':' || :k);")
    lines = ["\\set w 1" if hot else f"\\set w random(1, {options.wallets})",
             "\\set k random(1, 9000000000000000)", call]
    path = Path(directory) / f"award_{name}.sql"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# Rounds of the single-award comparisons (a), (b), (e) and their CPU-bound
# twins: each side runs once per round, the order reversed every other round,
# so that a noisy neighbour hits both sides alike; medians are reported with
# every round's figure (the spread).
ROUNDS = 3
# (k) and (k'): a capped award against an uncapped one differ by a few per cent, less than a
# round's noise on a shared host, so they get more rounds (full profile, --quick).
CAP_ROUNDS = (5, 3)
CPU_BOUND = "-c synchronous_commit=off"  # no commit flush: what the CPU allows, for both sides


def _run_seed(options: BenchOptions, *parts: object) -> int:
    """A seed derived from the run's seed and what distinguishes this run from the others."""
    digest = hashlib.sha256(":".join(map(str, (options.seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def alternating_rounds(bench: Pgbench, conn: psycopg.Connection[Any], sides: dict[str, list[str]],
                       options: BenchOptions, server_options: str = "",
                       before_side: Callable[[str], None] | None = None,
                       rounds: int = ROUNDS) -> dict[str, dict[str, Any]]:
    """Each side's pgbench arguments, ``rounds`` times in alternating order, each run right after
    ``before_side(side)`` (if given) and a CHECKPOINT. Returns per side: the median rate, every
    round's rate (in round order), all latencies, the transactions and the WAL bytes they wrote."""
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    wal: dict[str, float] = {side: 0.0 for side in sides}
    order = list(sides)
    for number in range(rounds):
        for side in (order if number % 2 == 0 else list(reversed(order))):
            if before_side is not None:
                before_side(side)
            conn.execute("CHECKPOINT")
            since = _scalar(conn, "SELECT pg_current_wal_lsn()")
            # A seed of its own per run: the same seed would draw the same keys, and replay them.
            seeded = dataclasses.replace(options, seed=_run_seed(options, server_options, side, number))
            runs[side].append(bench.throughput(sides[side], seeded, server_options))
            wal[side] += float(_scalar(conn, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", (since,)))
    measured: dict[str, dict[str, Any]] = {}
    for side, results in runs.items():
        count = sum(r["count"] for r in results)
        measured[side] = {"per_s": statistics.median(r["per_s"] for r in results),
                          "spread": [round(r["per_s"], 1) for r in results], "count": count,
                          "latencies": [v for r in results for v in r["latencies"]],
                          "wal_bytes_per_tx": round(wal[side] / max(count, 1))}
    return measured


# --------------------------------------------------------------------------- (c), (d) Python client


def _run_threads(count: int, seconds: int, work: Callable[[int, threading.Event, float], None]) -> float:
    """Runs ``work(index, stop, deadline)`` in ``count`` threads; returns the elapsed seconds."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def target(index: int) -> None:
        try:
            work(index, stop, deadline)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            stop.set()

    started = time.perf_counter()
    deadline = started + seconds
    threads = [threading.Thread(target=target, args=(i,), daemon=True, name=f"pyxp-bench-{i}")
               for i in range(count)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    if errors:
        raise errors[0]
    return time.perf_counter() - started


def _timed_client_calls(conninfo: str, options: BenchOptions, name: str,
                        prepare: Callable[[XP, random.Random, int, int], Callable[[], object]],
                        ) -> tuple[list[float], float]:
    """``clients`` threads on one pool of ``clients`` connections, each repeating for the
    duration: ``prepare(xp, rng, thread_index, call_number)`` builds a call, untimed; the call
    itself is timed. Returns per-call latencies (ms) and the seconds elapsed."""
    latencies: list[list[float]] = [[] for _ in range(options.clients)]
    with ConnectionPool(conninfo, min_size=options.clients, max_size=options.clients, open=True,
                        name=f"pyxp-bench-{name}") as pool:
        pool.wait(timeout=30)
        xp = XP(pool)

        def work(index: int, stop: threading.Event, deadline: float) -> None:
            rng = random.Random(f"{options.seed}:{name}:{index}")
            mine = latencies[index]
            while not stop.is_set() and time.perf_counter() < deadline:
                call = prepare(xp, rng, index, len(mine))
                started = time.perf_counter()
                call()
                mine.append((time.perf_counter() - started) * 1000)

        elapsed = _run_threads(options.clients, options.seconds, work)
    return [value for values in latencies for value in values], elapsed


def python_awards(conninfo: str, options: BenchOptions) -> dict[str, Any]:
    """(c): ``clients`` threads, each calling XP.award in a loop; one pool of ``clients`` connections."""
    def one_award(xp: XP, rng: random.Random, index: int, number: int) -> Callable[[], object]:
        wallet = wallet_of(rng.randint(1, options.wallets), options.seed)
        return lambda: xp.award(wallet, ACTION, f"bench.py:{index}:{number}")

    every, elapsed = _timed_client_calls(conninfo, options, "python", one_award)
    return {"per_s": len(every) / elapsed, "count": len(every), "latencies": every}


def batch_awards(conninfo: str, options: BenchOptions) -> dict[str, Any]:
    """(d): ``clients`` threads, each sending batches of ``batch_size`` awards (XP.award_many)."""
    def one_batch(xp: XP, rng: random.Random, index: int, number: int) -> Callable[[], object]:
        events = [AwardRequest(wallet_of(rng.randint(1, options.wallets), options.seed), ACTION,
                               f"bench.batch:{index}:{number}:{i}") for i in range(options.batch_size)]
        return lambda: xp.award_many(events)

    every, elapsed = _timed_client_calls(conninfo, options, "batch", one_batch)
    awards = len(every) * options.batch_size
    return {"per_s": awards / elapsed, "count": awards, "batches": len(every), "latencies": every}


# --------------------------------------------------------------------------- (i) prepared statements

# Rounds of (i) and awards per side in each round: (default, --quick).
PREPARE_ROUNDS = (7, 3)
PREPARE_CALLS = (150, 40)


class PreparingCursor(psycopg.Cursor[Any]):
    """A cursor that lets psycopg prepare as it does by default (a named statement after
    ``prepare_threshold`` uses on the connection), whatever ``prepare`` it is given: with it,
    the client's own code, which passes ``prepare=False``, runs prepared."""

    def execute(self, query: Query, params: Params | None = None, *,  # type: ignore[override]
                prepare: bool | None = None, binary: bool | None = None) -> PreparingCursor:
        super().execute(query, params, binary=binary)
        return self


class PreparingXP(XP):
    """The client on :class:`PreparingCursor` (it opens its own cursors, whatever the
    connection's ``cursor_factory``)."""

    _cursor_class = PreparingCursor


def prepared_statement_cost(conninfo: str, options: BenchOptions) -> dict[str, Any]:
    """(i): ``XP.award`` on one direct connection per side, the client as it is (unprepared)
    against psycopg's default (prepared after 5 uses), one thread.

    Each round alternates the sides call by call (which side goes first alternates between
    rounds), so both see the same load; a side's rate in a round is 1 / its median call
    latency, and the figures are the medians over the rounds. ``synchronous_commit`` is off
    in both sessions: the WAL flush of each commit, identical on both sides, would otherwise
    swamp the difference. Also counts the prepared statements each session holds at the end
    (the unprepared side must hold none)."""
    rounds, per_side = PREPARE_ROUNDS[options.quick], PREPARE_CALLS[options.quick]
    rng = random.Random(f"{options.seed}:prepare")
    wallets = [wallet_of(rng.randint(1, options.wallets), options.seed) for _ in range(997)]
    run, calls = secrets.token_hex(4), 0
    with psycopg.connect(conninfo, autocommit=True) as plain, \
            psycopg.connect(conninfo, autocommit=True) as preparing:
        sides = {"unprepared": (XP(plain), plain), "prepared": (PreparingXP(preparing), preparing)}
        for conn in (plain, preparing):
            conn.execute("SET synchronous_commit = off")

        def award(side: str) -> float:
            """One award; its latency in seconds."""
            nonlocal calls
            calls += 1
            wallet, key = wallets[calls % len(wallets)], f"bench.prepare:{run}:{side}:{calls}"
            started = time.perf_counter()
            sides[side][0].award(wallet, ACTION, key)
            return time.perf_counter() - started

        for _ in range(10):  # warm-up, past psycopg's prepare_threshold (5)
            for side in sides:
                award(side)
        rates: dict[str, list[float]] = {side: [] for side in sides}
        for number in range(rounds):
            order = ("unprepared", "prepared") if number % 2 == 0 else ("prepared", "unprepared")
            latencies: dict[str, list[float]] = {side: [] for side in sides}
            for _ in range(per_side):
                for side in order:
                    latencies[side].append(award(side))
            for side, values in latencies.items():
                rates[side].append(1 / statistics.median(values))
        statements = {side: _scalar(conn, "SELECT count(*) FROM pg_prepared_statements")
                      for side, (_, conn) in sides.items()}
    unprepared, prepared = statistics.median(rates["unprepared"]), statistics.median(rates["prepared"])
    return {
        "unprepared_award_ratio": round(unprepared / prepared, 3),
        "unprepared_award_per_s": round(unprepared, 1),
        "prepared_award_per_s": round(prepared, 1),
        "unprepared_award_rounds": [{"unprepared": round(u, 1), "prepared": round(p, 1)}
                                    for u, p in zip(rates["unprepared"], rates["prepared"])],
        "unprepared_award_calls_per_side": per_side,
        "unprepared_award_server_statements": statements["unprepared"],
        "prepared_award_server_statements": statements["prepared"],
    }


# --------------------------------------------------------------------------- (j) wake-ups

# (j): configuration -> (SQL that sets it up on the scratch database, listener?)
WAKEUP_SIDES: dict[str, tuple[str, bool]] = {
    "none": ("ALTER TABLE pyxp.xp_transactions DISABLE TRIGGER xp_transactions_wake_feed", False),
    "throttled": ("ALTER TABLE pyxp.xp_transactions ENABLE TRIGGER xp_transactions_wake_feed", False),
    "throttled_listened": ("ALTER TABLE pyxp.xp_transactions ENABLE TRIGGER xp_transactions_wake_feed", True),
    "every_commit": ("ALTER TABLE pyxp.xp_transactions ENABLE TRIGGER pyxp_bench_notify_every", False),
    "every_commit_listened": ("ALTER TABLE pyxp.xp_transactions ENABLE TRIGGER pyxp_bench_notify_every", True),
}
WAKEUP_ROUNDS = 3


@contextmanager
def _listener(conninfo: str, active: bool) -> Iterator[list[int]]:
    """A session LISTENing on pyxp_changes and draining what arrives; yields [notifications]."""
    received, stop = [0], threading.Event()
    if not active:
        yield received
        return

    def drain() -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("LISTEN pyxp_changes")
            while not stop.is_set():
                received[0] += sum(1 for _ in conn.notifies(timeout=0.2))

    thread = threading.Thread(target=drain, daemon=True, name="pyxp-bench-listener")
    thread.start()
    try:
        yield received
    finally:
        stop.set()
        thread.join(5)


def wakeup_cost(bench: Pgbench, conn: psycopg.Connection[Any], scratch: str, script: str,
                options: BenchOptions) -> dict[str, Any]:
    """(j): award throughput of the (b) script per wake-up design, alternating rounds."""
    conn.execute("""CREATE FUNCTION pyxp.pyxp_bench_notify_every() RETURNS trigger LANGUAGE plpgsql AS
                    $$ BEGIN PERFORM pg_notify('pyxp_changes', ''); RETURN NULL; END $$""")
    conn.execute("""CREATE TRIGGER pyxp_bench_notify_every AFTER INSERT ON pyxp.xp_transactions
                    FOR EACH STATEMENT EXECUTE FUNCTION pyxp.pyxp_bench_notify_every()""")
    run = dataclasses.replace(options, seconds=max(2, options.seconds // 2))
    bench.throughput(["-f", script], dataclasses.replace(options, seconds=2))  # warm-up, not counted
    rates: dict[str, list[float]] = {side: [] for side in WAKEUP_SIDES}
    notified: dict[str, int] = {side: 0 for side in WAKEUP_SIDES}
    try:
        for number in range(WAKEUP_ROUNDS):
            sides = list(WAKEUP_SIDES) if number % 2 == 0 else list(reversed(WAKEUP_SIDES))
            for side in sides:
                setup, listened = WAKEUP_SIDES[side]
                conn.execute("ALTER TABLE pyxp.xp_transactions DISABLE TRIGGER pyxp_bench_notify_every")
                conn.execute("ALTER TABLE pyxp.xp_transactions DISABLE TRIGGER xp_transactions_wake_feed")
                conn.execute(setup)
                conn.execute("CHECKPOINT")
                with _listener(scratch, listened) as received:
                    seeded = dataclasses.replace(run, seed=_run_seed(options, "wakeup", side, number))
                    rates[side].append(bench.throughput(["-f", script], seeded)["per_s"])
                notified[side] += received[0]
    finally:
        conn.execute("DROP TRIGGER pyxp_bench_notify_every ON pyxp.xp_transactions")
        conn.execute("DROP FUNCTION pyxp.pyxp_bench_notify_every()")
        conn.execute("ALTER TABLE pyxp.xp_transactions ENABLE TRIGGER xp_transactions_wake_feed")
    medians = {side: statistics.median(values) for side, values in rates.items()}
    base = medians["none"]
    results: dict[str, Any] = {"wakeup_rounds": WAKEUP_ROUNDS, "wakeup_seconds_per_run": run.seconds}
    for side, value in medians.items():
        results[f"wakeup_{side}_per_s"] = round(value, 1)
        results[f"wakeup_{side}_ratio"] = round(value / base, 3) if base else None
        results[f"wakeup_{side}_spread"] = [round(v, 1) for v in rates[side]]
        if WAKEUP_SIDES[side][1]:
            results[f"wakeup_{side}_notifications"] = notified[side]
    return results


# --------------------------------------------------------------------------- (k) caps


def capped_definition() -> dict[str, Any]:
    """The default rules with the benchmark's action capped (CAP), as ruleset winstory-capped."""
    definition = load_ruleset(schema.DEFAULT_RULESET).definition()
    definition["name"] = "winstory-capped"
    for rule in definition["rules"]:
        if rule["action"] == ACTION:
            rule["cap"] = dict(CAP)
    return definition


def cap_cost(bench: Pgbench, conn: psycopg.Connection[Any], script: str, options: BenchOptions) -> dict[str, Any]:
    """(k): the (b) script under the default rules and under the same rules with its action capped,
    alternating rounds, fsync on as (b) and CPU-bound as (b'); each side activates its ruleset
    first (activation re-derives levels: not timed).

    The two sides of a round run one right after the other, so a round's ratio (capped / uncapped)
    sees one state of a shared host; the figure the target reads is the median of those ratios
    (``cap_ratio_paired``), which a slow spell in one round moves less than the ratio of the two
    sides' medians (``cap_ratio``, kept)."""
    capped = Jsonb(capped_definition())

    def activate(side: str) -> None:
        if side == "capped":
            conn.execute("SELECT * FROM pyxp.install_ruleset(%s, %s)", (capped, f"# (k) {ACTION} capped {CAP}"))
        else:
            source = load_ruleset(schema.DEFAULT_RULESET)
            conn.execute("SELECT * FROM pyxp.install_ruleset(%s, %s)", (Jsonb(source.definition()), source.source))

    rounds = CAP_ROUNDS[options.quick]
    results: dict[str, Any] = {"cap_rounds": rounds}
    for prefix, server_options in (("cap", ""), ("cap_cpu", CPU_BOUND)):
        measured = alternating_rounds(bench, conn, {"uncapped": ["-f", script], "capped": ["-f", script]},
                                      options, server_options, before_side=activate, rounds=rounds)
        uncapped, capped_side = measured["uncapped"], measured["capped"]
        paired = [round(c / u, 3) for c, u in zip(capped_side["spread"], uncapped["spread"], strict=True) if u]
        results.update({
            f"{prefix}_uncapped_per_s": round(uncapped["per_s"], 1),
            f"{prefix}_capped_per_s": round(capped_side["per_s"], 1),
            f"{prefix}_uncapped_spread": uncapped["spread"], f"{prefix}_capped_spread": capped_side["spread"],
            f"{prefix}_ratio": round(capped_side["per_s"] / uncapped["per_s"], 3) if uncapped["per_s"] else None,
            f"{prefix}_round_ratios": paired,
            f"{prefix}_ratio_paired": round(statistics.median(paired), 3) if paired else None,
        })
    activate("uncapped")
    capped_rows, cut = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE t.xp_requested IS NOT NULL) FROM pyxp.xp_transactions t "
        "JOIN pyxp.rules ru ON ru.rule_id = t.rule_id AND ru.cap_max_xp IS NOT NULL").fetchone() or (0, 0)
    results.update({"cap_rows_capped": capped_rows, "cap_rows_cut": cut})
    return results


# --------------------------------------------------------------------------- (g) recalculation


def raised_thresholds(source: str, factor: float = 1.2) -> str:
    """The ruleset source with every level threshold multiplied by ``factor`` (a new curve)."""
    match = re.search(r"^(thresholds\s*=\s*\[)([^\]]*)(\])", source, re.MULTILINE)
    if match is None:
        raise BenchError("the active ruleset's source has no `thresholds = [...]` line to change")
    numbers = [int(n) for n in re.findall(r"-?\d+", match.group(2))]
    raised = ", ".join(str(round(n * factor)) for n in numbers)
    return source[:match.start(2)] + raised + source[match.end(2):]


def recalculation(conninfo: str, conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """(g): switch to the active ruleset with raised thresholds (install_ruleset re-derives every
    balance's level in one recalculate_levels()), then one recalculate_levels() with nothing to change."""
    active = schema.active_ruleset(conninfo)
    if active is None:
        raise BenchError("no active ruleset in the scratch database")
    ruleset = parse_ruleset(raised_thresholds(active["source"]), "pyxp bench: thresholds x1.2")
    balances = _scalar(conn, "SELECT count(*) FROM pyxp.xp_balances")
    started = time.perf_counter()
    installed = schema.apply_ruleset(conninfo, ruleset)
    switch_s = time.perf_counter() - started
    started = time.perf_counter()
    unchanged = _scalar(conn, "SELECT pyxp.recalculate_levels()")
    noop_s = time.perf_counter() - started
    return {"recalculate_s": round(switch_s, 3), "recalculate_changed": installed.balances_changed,
            "recalculate_balances": balances, "recalculate_noop_s": round(noop_s, 3),
            "recalculate_noop_changed": unchanged,
            "recalculate_ruleset": f"{installed.name} v{installed.version}"}


# --------------------------------------------------------------------------- (l) what-if


def simulation_cost(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """(l): pyxp.simulate_rules over the whole ledger, for two candidates installed without
    activation: a formula change (every total is a sum) and the (k) cap on the benchmark's action
    (the wallets with capped gains are folded row by row, in ledger order)."""
    formula = load_ruleset(schema.DEFAULT_RULESET).definition()
    formula["name"] = "winstory-formula"
    for rule in formula["rules"]:
        if rule["action"] == ACTION:
            rule["constant"] = "3"
    results: dict[str, Any] = {}
    for key, definition in (("formula", formula), ("capped", capped_definition())):
        ruleset_id = _scalar(conn, "SELECT ruleset_id FROM pyxp.install_ruleset(%s, %s, false)",
                             (Jsonb(definition), f"# (l) {key}"))
        started = time.perf_counter()
        changed = _scalar(conn, "SELECT count(*) FILTER (WHERE total_xp_then <> total_xp_now) "
                                "FROM pyxp.simulate_rules(%s)", (ruleset_id,))
        results[f"simulate_{key}_s"] = round(time.perf_counter() - started, 2)
        results[f"simulate_{key}_changed"] = changed
    return results


# --------------------------------------------------------------------------- the run


def timed_checkpoint(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """(m) pyxp.record_audit_checkpoint(): seconds, and what it verified."""
    started = time.perf_counter()
    row = conn.execute("SELECT wallets_verified, rows_verified FROM pyxp.record_audit_checkpoint()").fetchone()
    assert row is not None
    return {"seconds": round(time.perf_counter() - started, 3), "wallets": row[0], "rows": row[1]}


def timed_audit(conn: psycopg.Connection[Any], name: str) -> dict[str, Any]:
    """pyxp.audit(): ``<name>_s`` seconds, ``<name>_findings`` and a sample of them."""
    started = time.perf_counter()
    findings = conn.execute("SELECT * FROM pyxp.audit()").fetchall()
    return {f"{name}_s": round(time.perf_counter() - started, 2), f"{name}_findings": len(findings),
            f"{name}_sample": [list(map(str, row)) for row in findings[:5]]}


# What (m) vacuums before its second full audit: the tables the run wrote to.
VACUUMED = ("pyxp.xp_transactions, pyxp.xp_balances, pyxp.xp_award_claims, pyxp.xp_requests, "
            "pyxp.xp_wallet_checkpoints, pyxp.xp_rank_counts, pyxp.xp_period_rank_counts, pyxp.xp_cap_usage")


def audit_cost(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """(m) At the end of the run: what the run wrote since the fixture's checkpoint, verified
    incrementally (audit_since_checkpoint, then record_audit_checkpoint), then the full audit(),
    as the run left the tables and again after a VACUUM of them: the run's writes leave their
    pages not all-visible, so index-only scans visit the heap until a vacuum (autovacuum's work
    on a deployment; this one may run without it)."""
    results: dict[str, Any] = {}
    started = time.perf_counter()
    findings = conn.execute("SELECT * FROM pyxp.audit_since_checkpoint()").fetchall()
    results["audit_since_checkpoint_s"] = round(time.perf_counter() - started, 3)
    results["audit_since_checkpoint_findings"] = len(findings)
    checkpoint = timed_checkpoint(conn)
    results["checkpoint_s"] = checkpoint["seconds"]
    results["ledger_rows_after_run"] = _scalar(conn, "SELECT count(*) FROM pyxp.xp_transactions")
    results["rows_since_checkpoint"], results["wallets_since_checkpoint"] = checkpoint["rows"], checkpoint["wallets"]
    results.update(timed_audit(conn, "audit"))
    started = time.perf_counter()
    conn.execute(f"VACUUM {VACUUMED}")  # type: ignore[arg-type]  # a constant
    results["audit_vacuum_s"] = round(time.perf_counter() - started, 2)
    results.update(timed_audit(conn, "audit_vacuumed"))
    return results


def archive_cost(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """(n) Last, since it takes rows out: pyxp.archive_ledger_partitions() of every partition
    before this month (the fixture's rows are 3 s apart back from now: what falls before the
    first of the month), then the full audit() of what is left, from the openings."""
    started = time.perf_counter()
    moved = conn.execute("SELECT coalesce(sum(rows_archived), 0) "
                         "FROM pyxp.archive_ledger_partitions(date_trunc('month', now(), 'UTC'))").fetchone()
    results: dict[str, Any] = {"archive_s": round(time.perf_counter() - started, 2),
                               "archive_rows": int(moved[0]) if moved else 0,
                               "ledger_rows_after_archive": _scalar(conn, "SELECT count(*) FROM pyxp.xp_transactions")}
    results.update(timed_audit(conn, "audit_after_archive"))
    return results


def _put_throughput(results: dict[str, Any], key: str, measured: dict[str, Any]) -> None:
    results[f"{key}_per_s"] = round(measured["per_s"], 1)
    results[f"{key}_count"] = measured["count"]
    _put_latencies(results, key, measured["latencies"])


def evaluate_targets(results: dict[str, Any]) -> dict[str, Any]:
    """Each target of the issue: the observed figure, whether it is met, whether at the stated scale."""
    at_scale = results["wallets"] >= TARGET_WALLETS and results["ledger_rows"] >= TARGET_LEDGER_ROWS
    a, b = results.get("pgbench_tps"), results.get("award_sql_per_s")

    def ratio(x: float | None, y: float | None) -> float | None:
        return round(x / y, 3) if x is not None and y else None

    targets: dict[str, Any] = {}

    def put(key: str, text: str, observed: float | None, met: bool | None, scaled: bool = True) -> None:
        targets[key] = {"target": text, "observed": observed, "met": met, "at_target_scale": scaled}

    for key, text, observed, limit in (
        ("award_sql", "(b) >= 0.9 x (a)", ratio(b, a), 0.9),
        ("award_sql_cpu", "(b') >= 0.9 x (a') CPU-bound",
         ratio(results.get("award_sql_cpu_per_s"), results.get("pgbench_cpu_tps")), 0.9),
        ("award_python", "(c) >= 0.6 x (b)", ratio(results.get("award_python_per_s"), b), 0.6),
        ("batch", "(d) >= 8 x (a)", ratio(results.get("batch_per_s"), a), 8.0),
        ("hot_wallet", "(e) >= 0.6 x (b)", ratio(results.get("hot_wallet_per_s"), b), 0.6),
    ):
        put(key, text, observed, None if observed is None else observed >= limit)
    for name in ("balance", "history", "leaderboard"):
        p50 = results.get(f"{name}_ms_p50")
        put(name, "p50 < 2 ms", p50, None if p50 is None else p50 < 2, at_scale)
    p50 = results.get("rank_ms_p50")
    put("rank", "p50 < 1 ms", p50, None if p50 is None else p50 < 1,
        results["wallets"] >= TARGET_WALLETS)
    for name in ("week_board", "week_rank"):
        p50 = results.get(f"{name}_ms_p50")
        put(name, "p50 < 5 ms", p50, None if p50 is None else p50 < 5, at_scale)
    observed = results.get("cap_ratio_paired")
    put("cap", "(k) capped >= 0.9 x uncapped", observed, None if observed is None else observed >= 0.9)
    observed = results.get("cap_cpu_ratio_paired")
    put("cap_cpu", "(k') capped >= 0.9 x uncapped, CPU-bound", observed,
        None if observed is None else observed >= 0.9)
    seconds = results.get("recalculate_s")
    put("recalculate", "< 30 s", seconds, None if seconds is None else seconds < 30,
        (results.get("recalculate_balances") or 0) >= TARGET_WALLETS)
    seconds = results.get("simulate_capped_s")
    put("simulate", "< 60 s", seconds, None if seconds is None else seconds < 60, at_scale)
    size = results.get("bytes_per_award")
    put("bytes_per_award", "<= 350 bytes", size, None if size is None else size <= 350)
    seconds = results.get("audit_s")
    put("audit", "< 30 s", seconds, None if seconds is None else seconds < 30, at_scale)
    seconds = results.get("audit_vacuumed_s")
    put("audit_vacuumed", "< 30 s, after a VACUUM", seconds, None if seconds is None else seconds < 30, at_scale)
    seconds, rows = results.get("audit_since_checkpoint_s"), results.get("rows_since_checkpoint")
    per_100k = None if seconds is None or not rows else round(seconds * 100_000 / rows, 3)
    put("audit_since_checkpoint", "< 2 s per 100k new rows", per_100k, None if per_100k is None else per_100k < 2,
        at_scale and (rows or 0) >= 10_000)
    return targets


def run_bench(conninfo: str, options: BenchOptions, log: Log | None = None) -> dict[str, Any]:
    """Runs every measure on a scratch database of the server ``conninfo`` points at.

    Returns one JSON-ready dict: the figures (``pgbench_tps``, ``award_sql_per_s``,
    ``award_python_per_s``, ``batch_per_s``, ``batch_one_client_per_s``, ``hot_wallet_per_s``,
    ``<read>_ms_p50/p95/p99``, ``recalculate_s``, ``bytes_per_ledger_row``,
    ``unprepared_award_ratio``, ...), the plans, the targets, the machine, the server, the
    options and the seed. Progress goes to ``log``.
    """
    say: Log = log or (lambda message: None)
    options = options.checked()
    run_started = time.perf_counter()
    pgbench = pgbench_binary()
    admin = _admin_conninfo(conninfo)
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.info.parameter_status("is_superuser") != "on":
            raise BenchError(f"pyxp bench needs a superuser (it loads its fixture straight into the pyxp "
                             f"tables); {conn.info.user!r} is not one")
        server = server_info(conn)
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(), "server": server, "options": options.as_dict(), "seed": options.seed,
        "clients": options.clients, "seconds": options.seconds, "wallets": options.wallets,
        "ledger_rows": options.ledger_rows, "batch_size": options.batch_size,
        "read_samples": options.read_samples, "pgbench_scale": max(options.clients, 1),
    }
    rng = random.Random(options.seed)
    with scratch_database(admin, options.keep, say) as name:
        results["database"] = name
        scratch = make_conninfo(admin, dbname=name)
        say(f"scratch database {name}: migrating")
        schema.upgrade(scratch)
        with psycopg.connect(scratch, autocommit=True) as conn:
            say(f"fixture: {options.wallets} wallets, {options.ledger_rows} ledger rows")
            results["fixture_s"] = round(load_fixture(conn, options, say), 2)
            say("(h) sizes")
            results.update(ledger_sizes(conn, options.ledger_rows))
            say("(m) first audit checkpoint: the whole fixture")
            first = timed_checkpoint(conn)
            results["checkpoint_first_s"], results["checkpoint_first_rows"] = first["seconds"], first["rows"]
            say(f"(f) reads: {options.read_samples} calls each")
            results.update(measure_reads(conn, options, rng))
            say(f"pgbench -i -s {results['pgbench_scale']}")
            bench = Pgbench(pgbench, scratch)
            bench.initialize(results["pgbench_scale"])
            conn.execute("VACUUM ANALYZE")

            with tempfile.TemporaryDirectory(prefix="pyxp-bench-") as scripts:
                single, hot = award_script(options, scripts, hot=False), award_script(options, scripts, hot=True)
                run = dataclasses.replace(options, seconds=max(2, options.seconds // 2))
                results["rounds"], results["seconds_per_round_run"] = ROUNDS, run.seconds
                say(f"(a) pgbench -N, (b) pyxp.award via SQL, (e) one hot wallet: {options.clients} clients, "
                    f"{ROUNDS} alternating rounds of {run.seconds} s each")
                for key, measured in alternating_rounds(
                        bench, conn, {"pgbench": ["-N"], "award_sql": ["-f", single], "hot_wallet": ["-f", hot]},
                        run).items():
                    _put_throughput(results, key, measured)
                    results[f"{key}_spread"] = measured["spread"]
                    results[f"{key}_wal_bytes_per_tx"] = measured["wal_bytes_per_tx"]
                say(f"(a') and (b') CPU-bound ({CPU_BOUND}, both sides): {ROUNDS} alternating rounds")
                for key, measured in alternating_rounds(
                        bench, conn, {"pgbench_cpu": ["-N"], "award_sql_cpu": ["-f", single]}, run,
                        CPU_BOUND).items():
                    results[f"{key}_per_s"] = round(measured["per_s"], 1)
                    results[f"{key}_spread"] = measured["spread"]
                measures: tuple[tuple[str, str, Callable[[], dict[str, Any]]], ...] = (
                    ("award_python", "(c) XP.award from Python threads",
                     lambda: python_awards(scratch, options)),
                    ("batch", f"(d) XP.award_many, batches of {options.batch_size}",
                     lambda: batch_awards(scratch, options)),
                    # (d'): what (d)'s clients gain over one. Batches of random wallets share
                    # some (1000 of 200k: about 5 per pair), and a batch waits, in wallet
                    # order, for the commit of any batch holding one of them.
                    ("batch_one_client", f"(d') XP.award_many, batches of {options.batch_size}, one client",
                     lambda: batch_awards(scratch, dataclasses.replace(options, clients=1))),
                )
                for key, title, measure in measures:
                    say(title)
                    conn.execute("CHECKPOINT")  # every measure starts right after a checkpoint
                    since = _scalar(conn, "SELECT pg_current_wal_lsn()")
                    measured = measure()
                    wal = _scalar(conn, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", (since,))
                    _put_throughput(results, key, measured)
                    results[f"{key}_wal_bytes_per_tx"] = round(float(wal) / max(measured["count"], 1))
                    if "batches" in measured:
                        results[f"{key}_batches"] = measured["batches"]
                results["pgbench_tps"] = results.pop("pgbench_per_s")
                results["pgbench_cpu_tps"] = results.pop("pgbench_cpu_per_s")
                results["award_sql_new_rows"] = _scalar(
                    conn, "SELECT count(*) FROM pyxp.xp_transactions WHERE idempotency_key LIKE 'bench.sql:%'")
                say(f"(k) and (k') caps: the (b) script with its action uncapped and capped ({CAP}), "
                    f"{CAP_ROUNDS[options.quick]} alternating rounds, fsync on and CPU-bound")
                results.update(cap_cost(bench, conn, single, run))
                say("(j) wake-ups: the (b) script with and without NOTIFY, alternating rounds")
                results.update(wakeup_cost(bench, conn, scratch, award_script(options, scripts, hot=False),
                                           options))

            say("(i) XP.award unprepared vs prepared, one direct connection, alternating rounds")
            conn.execute("CHECKPOINT")
            results.update(prepared_statement_cost(scratch, options))

            say("(l) simulate_rules() over the whole ledger: a formula change, a cap")
            results.update(simulation_cost(conn))
            say("(m) audit: what the run wrote since the first checkpoint, then the whole ledger")
            results.update(audit_cost(conn))
            say("(g) recalculate_levels() on a ruleset switch")
            results.update(recalculation(scratch, conn))
            say("(h') the idempotency record of a flow call: votes with 95-character keys")
            results.update(request_sizes(conn, options))
            say("(n) archive_ledger_partitions() before this month, then audit() from the openings")
            results.update(archive_cost(conn))
    results["elapsed_s"] = round(time.perf_counter() - run_started, 1)
    results["targets"] = evaluate_targets(results)
    return results


# --------------------------------------------------------------------------- the table


def _number(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value >= 1000:
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _ms(value: Any) -> str:
    return "-" if value is None else (f"{value:.2f}" if value < 100 else f"{value:.0f}")


def _gib(size: int | None) -> str:
    return "?" if size is None else f"{size / 2**30:.1f} GiB"


def format_table(results: dict[str, Any]) -> str:
    """The results as text: the machine and server, then one line per measure with its
    latencies, its ratio to (a), its target and whether it is met."""
    out = io.StringIO()
    printer = Printer(out, colour=False)
    machine, server = results.get("machine", {}), results.get("server", {})
    targets, plans = results.get("targets", {}), results.get("plans", {})
    get = results.get
    printer.line(f"pyxp bench  {get('started_at', '')}  ({get('elapsed_s', '?')} s)")
    printer.line(f"  machine   {machine.get('cpus_usable', machine.get('cpus'))} CPUs "
                 f"({machine.get('cpu_model', 'unknown model')}), {_gib(machine.get('ram_bytes'))} RAM, "
                 f"{machine.get('platform', '')}, Python {machine.get('python', '')}")
    printer.line(f"  server    PostgreSQL {server.get('version', '?')} at {server.get('host')}:"
                 f"{server.get('port')} ({'same machine' if server.get('local') else 'remote'})")
    printer.line("  settings  " + ", ".join(f"{name} {server[name]}"
                                            for name in SERVER_SETTINGS if name in server))
    printer.line(f"  database  {get('database', '?')} (scratch, "
                 f"{'kept' if get('options', {}).get('keep') else 'dropped at the end'})")
    printer.line(f"  fixture   {get('wallets', 0):,} wallets, {get('ledger_rows', 0):,} ledger rows, "
                 f"loaded in {get('fixture_s', '?')} s")
    printer.line(f"  run       {get('clients')} clients, {get('seconds')} s per throughput measure, "
                 f"pgbench scale {get('pgbench_scale')}, batches of {get('batch_size')}, "
                 f"{get('read_samples')} read samples, seed {get('seed')}")
    printer.blank()

    rows: list[list[Any]] = []
    below_scale = False

    def row(label: str, value: str, unit: str, key: str | None = None, ratio: str = "",
            target: str | None = None, note: str = "") -> None:
        nonlocal below_scale
        latencies = [_ms(get(f"{key}_ms_{p}")) for p in ("p50", "p95", "p99")] if key else ["", "", ""]
        goal, met = targets.get(target or ""), ""
        text = ""
        if goal:
            text = goal["target"]
            if goal["observed"] is not None and text.startswith("("):  # a ratio: show it
                text += f": {goal['observed']:.2f}"
            if goal["met"] is not None:
                met = ("yes" if goal["met"] else "NO") + ("" if goal["at_target_scale"] else "*")
                below_scale = below_scale or not goal["at_target_scale"]
        rows.append([label, value, unit, *latencies, ratio, text, Styled(met), note])

    a = get("pgbench_tps")
    for label, key, unit in (
        (f"(a) pgbench -N simple-update, scale {get('pgbench_scale')}", "pgbench", "tx/s"),
        ("(b) pyxp.award via SQL (pgbench script)", "award_sql", "awards/s"),
        ("(c) XP.award via Python (threads+pool)", "award_python", "awards/s"),
        (f"(d) XP.award_many, {get('batch_size')} per batch", "batch", "awards/s"),
        ("(d') the same from one client", "batch_one_client", "awards/s"),
        ("(e) one hot wallet via SQL", "hot_wallet", "awards/s"),
    ):
        value = get("pgbench_tps" if key == "pgbench" else f"{key}_per_s")
        wal = get(f"{key}_wal_bytes_per_tx")
        spread = get(f"{key}_spread")
        row(label, _number(value), unit, key, f"{value / a:.2f}" if value is not None and a else "-", key,
            ("" if wal is None else f"WAL {wal / 1024:.1f} kB/{'award' if key.startswith('batch') else 'tx'}")
            + ("" if not spread else f"; rounds {', '.join(_number(v, 0) for v in spread)}"))
    a_cpu = get("pgbench_cpu_tps")
    for label, key in (("(a') pgbench -N, CPU-bound", "pgbench_cpu"), ("(b') pyxp.award via SQL, CPU-bound", "award_sql_cpu")):
        value = get("pgbench_cpu_tps" if key == "pgbench_cpu" else f"{key}_per_s")
        spread = get(f"{key}_spread")
        note = "synchronous_commit = off"
        if value is not None and a_cpu:
            note += f"; x (a'): {value / a_cpu:.2f}"
        if spread:
            note += f"; rounds {', '.join(_number(v, 0) for v in spread)}"
        row(label, _number(value), "tx/s", None, f"{value / a:.2f}" if value is not None and a else "-",
            key if key == "award_sql_cpu" else None, note)
    ratio = get("unprepared_award_ratio")
    row("(i) XP.award unprepared / prepared", "-" if ratio is None else f"{ratio:.2f}", "x",
        note=f"{_number(get('unprepared_award_per_s'))} vs {_number(get('prepared_award_per_s'))} "
             f"awards/s: medians of {len(get('unprepared_award_rounds') or [])} alternating rounds, "
             "1 direct connection")
    for side, label in (("throttled", "(j) wake-ups as shipped (1 NOTIFY/100 ms)"),
                        ("throttled_listened", "(j)   ... with a listener"),
                        ("every_commit", "(j) NOTIFY on every commit"),
                        ("every_commit_listened", "(j)   ... with a listener")):
        ratio = get(f"wakeup_{side}_ratio")
        heard = get(f"wakeup_{side}_notifications")
        row(label, "-" if ratio is None else f"{ratio:.2f}", "x none",
            note=f"{_number(get(f'wakeup_{side}_per_s'))} vs {_number(get('wakeup_none_per_s'))} awards/s "
                 f"without wake-ups, medians of {get('wakeup_rounds')} alternating rounds"
                 + ("" if heard is None else f"; {heard:,} notifications heard"))
    for prefix, label, target in (("cap", "(k) pyxp.award, capped / uncapped rule", "cap"),
                                  ("cap_cpu", "(k') the same, CPU-bound", "cap_cpu")):
        ratio, paired = get(f"{prefix}_ratio_paired"), get(f"{prefix}_round_ratios") or []
        row(label, "-" if ratio is None else f"{ratio:.2f}", "x", target=target,
            note=f"median of {len(paired)} rounds' ratios ({', '.join(f'{v:.2f}' for v in paired)}); "
                 f"medians {_number(get(f'{prefix}_capped_per_s'))} vs {_number(get(f'{prefix}_uncapped_per_s'))} "
                 f"awards/s = {_number(get(f'{prefix}_ratio'), 2)}"
                 + (f"; cap {CAP['max_xp']} XP per {CAP['per']}, {get('cap_rows_cut', 0):,} rows cut in all"
                    if prefix == "cap_cpu" else ""))
    for name, label in (("balance", "(f) balance(wallet)"), ("history", "(f) history(wallet, 50)"),
                        ("leaderboard", "(f) leaderboard(100)"), ("rank", "(f) wallet_rank(wallet)"),
                        ("level_for", "(f) level_for(total_xp)"),
                        ("week_board", "(f) leaderboard(100, period week)"),
                        ("week_rank", "(f) wallet_rank(wallet, period week)")):
        plan = plans.get(name, {})
        note = plan.get("summary", "") + ("" if plan.get("uses_index", True) else "  (no index)")
        row(label, _ms(get(f"{name}_ms_p50")), "ms p50", name, target=name, note=note)
    row("(g) recalculate_levels(), ruleset switch", _number(get("recalculate_s"), 3), "s",
        target="recalculate",
        note=f"{get('recalculate_changed', 0):,} of {get('recalculate_balances', 0):,} balances changed")
    row("(g) recalculate_levels(), nothing to change", _number(get("recalculate_noop_s"), 3), "s")
    row("(l) simulate_rules(), a formula change", _number(get("simulate_formula_s"), 2), "s",
        note=f"{get('simulate_formula_changed', 0):,} wallets would change")
    row("(l) simulate_rules(), a cap", _number(get("simulate_capped_s"), 2), "s", target="simulate",
        note=f"{get('simulate_capped_changed', 0):,} wallets would change; capped wallets folded in order")
    row("(m) audit(), the whole ledger", _number(get("audit_s"), 2), "s", target="audit",
        note=f"{get('audit_findings', '?')} findings")
    row("(m) audit(), the whole ledger, after VACUUM", _number(get("audit_vacuumed_s"), 2), "s",
        target="audit_vacuumed", note=f"{get('audit_vacuumed_findings', '?')} findings; the VACUUM took {_number(get('audit_vacuum_s'), 2)} s")
    row("(m) audit_since_checkpoint()", _number(get("audit_since_checkpoint_s"), 3), "s",
        target="audit_since_checkpoint",
        note=f"{get('rows_since_checkpoint', 0):,} rows of {get('wallets_since_checkpoint', 0):,} wallets written "
             f"by the run; {get('audit_since_checkpoint_findings', '?')} findings")
    row("(m) record_audit_checkpoint(), after the run", _number(get("checkpoint_s"), 3), "s")
    row("(m) record_audit_checkpoint(), first: the fixture", _number(get("checkpoint_first_s"), 2), "s",
        note=f"{get('checkpoint_first_rows', 0):,} rows")
    row("(n) archive_ledger_partitions(), rows before this month", _number(get("archive_s"), 2), "s",
        note=f"{get('archive_rows', 0):,} rows archived, {get('ledger_rows_after_archive', 0):,} left")
    row("(n) audit() after the archive, from the openings", _number(get("audit_after_archive_s"), 2), "s",
        note=f"{get('audit_after_archive_findings', '?')} findings")
    row("(h) bytes per award (row+claim+indexes)", _number(get("bytes_per_award")), "bytes",
        target="bytes_per_award")
    row("(h) bytes per ledger row (table+indexes)", _number(get("bytes_per_ledger_row")), "bytes")
    row("(h)   heap", _number(get("heap_bytes_per_ledger_row")), "bytes")
    for index, size in (get("index_bytes_per_ledger_row") or {}).items():
        row(f"(h)   index {index}", _number(size), "bytes")
    row("(h)   xp_requests (flows, reversals)", _number(get("requests_bytes_per_ledger_row")), "bytes")
    row("(h') idempotency record of a flow call", _number(get("request_bytes_per_flow_call")), "bytes",
        note=f"{get('flow_calls_measured', 0):,} votes, 95-character keys: xp_requests + its primary key; "
             f"+ {_number(get('request_rows_index_bytes_per_flow_row'))} bytes per row in the ledger's index "
             "finding a call's rows")
    printer.table([Column("measure"), Column("value", ">"), Column("unit"), Column("p50 ms", ">"),
                   Column("p95 ms", ">"), Column("p99 ms", ">"), Column("x (a)", ">"), Column("target"),
                   Column("met?"), Column("plan / note")], rows, indent=0)
    printer.blank()
    notes = [
        "Latencies: per transaction (pgbench), per call (Python, reads) or per batch (d), client side.",
        "Plans: generic plan of the SELECT inside each read function, EXPLAIN (ANALYZE, BUFFERS).",
        "WAL: server-wide WAL written during the measure (each starts after a CHECKPOINT), per transaction.",
    ]
    if below_scale:
        notes.append(f"* target stated at {TARGET_WALLETS:,} wallets / {TARGET_LEDGER_ROWS:,} ledger rows; "
                     "this run is smaller, so the verdict is indicative "
                     "(full size: --wallets 1000000 --ledger-rows 10000000).")
    if "audit_findings" in results:
        notes.append(f"audit: {results['audit_findings']} inconsistencies after the run.")
    for note in notes:
        printer.line(note)
    return out.getvalue()


# --------------------------------------------------------------------------- the command


@contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C (so the scratch database is dropped), in the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.command("bench", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--database-url", envvar=DATABASE_URL_VARIABLE, default=None, metavar="URL",
              help="Server to run on (a scratch database is created there and dropped) "
                   f"[default: ${DATABASE_URL_VARIABLE}, else libpq defaults, "
                   "else a throwaway local cluster].")
@click.option("--clients", type=click.IntRange(1, 500), default=None,
              help="Concurrent clients of every throughput measure; pgbench scale = clients. [default: 4]")
@click.option("--seconds", type=click.IntRange(1), default=None,
              help="Duration of each throughput measure. [default: 10]")
@click.option("--wallets", type=click.IntRange(1), default=None,
              help="Wallets (balances) of the fixture. [default: 200000]")
@click.option("--ledger-rows", type=click.IntRange(1), default=None,
              help="Ledger rows of the fixture (at least --wallets). [default: 1000000]")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=None,
              help="Awards per batch in (d). [default: 1000]")
@click.option("--read-samples", type=click.IntRange(1), default=None,
              help="Calls of each read function. [default: 200]")
@click.option("--seed", type=int, default=42, show_default=True,
              help="Seed of every random choice (fixture, wallets, keys, pgbench --random-seed).")
@click.option("--quick", is_flag=True,
              help="Smoke-test profile: 2 clients, 2 s, 2000 wallets, 10000 rows, batches of 200, "
                   "50 samples.")
@click.option("--audit", is_flag=True, hidden=True, help="Kept for scripts: (m) always runs pyxp.audit() now.")
@click.option("--keep", is_flag=True, help="Keep the scratch database.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.pass_context
def bench_command(ctx: click.Context, database_url: str | None, clients: int | None,
                  seconds: int | None, wallets: int | None, ledger_rows: int | None,
                  batch_size: int | None, read_samples: int | None, seed: int, quick: bool, audit: bool,
                  keep: bool, as_json: bool) -> None:
    """Measure pyxp against pgbench on a scratch database: single awards (SQL, Python), batches,
    a hot wallet, reads at scale, level recalculation, bytes per ledger row, and what the
    client's never-prepare rule (safe behind transaction poolers) costs.

    Defaults finish in under 2 minutes on 2 cores; full size: --wallets 1000000
    --ledger-rows 10000000. Needs a superuser and pgbench. Progress goes to stderr.
    """
    del audit  # --audit: accepted from older scripts; (m) always runs pyxp.audit() now
    options = BenchOptions.profile(quick, clients=clients, seconds=seconds, wallets=wallets,
                                   ledger_rows=ledger_rows, batch_size=batch_size, read_samples=read_samples,
                                   seed=seed, keep=keep or None)
    if not database_url:  # registered under `pyxp`: the group's --database-url
        database_url = getattr(ctx.find_root().obj, "database_url", None) or None

    def log(message: str) -> None:
        click.echo(f"bench: {message}", err=True)

    try:
        with _interrupt_on_sigterm():
            if database_url:
                problem = connection_problem(database_url)
                if problem is not None and "does not exist" not in problem:
                    raise BenchError(f"cannot connect with {shown_conninfo(database_url)!r}: {problem}")
                results = run_bench(database_url, options, log)
            else:
                with discovered_server() as server:
                    results = run_bench(server, options, log)
    except psycopg.Error as exc:
        raise BenchError(" ".join(str(exc).split())) from exc
    except XPError as exc:
        raise BenchError(" ".join(str(exc).split())) from exc
    click.echo(json.dumps(results, indent=2) if as_json else format_table(results).rstrip("\n"))


if __name__ == "__main__":
    bench_command()
