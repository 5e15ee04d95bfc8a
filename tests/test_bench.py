"""`pyxp bench` (SPEC section 9, issue 6): the --quick profile runs end to end and reports.

One run of the quick profile against the test server, shared by the tests of
this module: ``pyxp bench --quick --audit --json`` through the click command
object (CliRunner). The table tests read the same figures through
``format_table``, as the command prints them without ``--json``. They check that
the benchmark runs, reports every measure and cleans up after itself — never its
speed: no timing assertions.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg.conninfo import make_conninfo

from pyxp.bench import BenchOptions, bench_command, format_table, raised_thresholds

QUICK = BenchOptions.profile(quick=True)

# The first words of each measure's line in the table.
MEASURES = [
    "(a) pgbench -N simple-update",
    "(b) pyxp.award via SQL",
    "(c) XP.award via Python",
    "(d) XP.award_many",
    "(d') the same from one client",
    "(e) one hot wallet",
    "(a') pgbench -N, CPU-bound",
    "(b') pyxp.award via SQL, CPU-bound",
    "(f) balance(wallet)",
    "(f) history(wallet, 50)",
    "(f) leaderboard(100)",
    "(f) wallet_rank(wallet)",
    "(f) level_for(total_xp)",
    "(f) leaderboard(100, period week)",
    "(f) wallet_rank(wallet, period week)",
    "(k) pyxp.award, capped / uncapped",
    "(l) simulate_rules(), a formula change",
    "(l) simulate_rules(), a cap",
    "(g) recalculate_levels(), ruleset switch",
    "(g) recalculate_levels(), nothing to change",
    "(h) bytes per award",
    "(h) bytes per ledger row",
    "(h') idempotency record of a flow call",
    "(i) XP.award unprepared / prepared",
]

READS = ["balance", "history", "leaderboard", "rank", "level_for"]

# Keys the issue requires in --json, each a positive number.
POSITIVE_KEYS = (
    ["pgbench_tps", "award_sql_per_s", "award_python_per_s", "batch_per_s", "batch_one_client_per_s",
     "hot_wallet_per_s",
     "recalculate_s", "bytes_per_ledger_row", "unprepared_award_ratio", "unprepared_award_per_s",
     "prepared_award_per_s", "pgbench_cpu_tps", "award_sql_cpu_per_s", "bytes_per_award", "rounds",
     "cap_capped_per_s", "cap_uncapped_per_s", "cap_ratio", "cap_ratio_paired", "cap_cpu_capped_per_s",
     "cap_cpu_uncapped_per_s", "cap_cpu_ratio_paired", "cap_rounds", "simulate_formula_s", "simulate_capped_s",
     "simulate_formula_changed", "request_bytes_per_flow_call", "request_rows_index_bytes_per_flow_row"]
    + [f"{read}_ms_{p}" for read in READS for p in ("p50", "p95", "p99")]
)


@pytest.fixture(scope="module")
def server(pyxp_server: Any) -> str:
    """Conninfo of the test server's `postgres` database: the bench creates its own scratch database."""
    return make_conninfo(host=pyxp_server.host, port=str(pyxp_server.port), user=pyxp_server.user,
                         password=pyxp_server.password or None, dbname="postgres")


def database_exists(server: str, name: str) -> bool:
    with psycopg.connect(server, autocommit=True) as conn:
        row = conn.execute("SELECT EXISTS (SELECT FROM pg_database WHERE datname = %s)", (name,)).fetchone()
    assert row is not None
    return bool(row[0])


@pytest.fixture(scope="module")
def bench_run(server: str) -> Result:
    """`pyxp bench --quick --audit --json` through the click command object the CLI registers: the
    module's one run (a quick run takes one to two minutes; the table tests format its figures)."""
    return CliRunner().invoke(bench_command, ["--quick", "--audit", "--json", "--database-url", server],
                              catch_exceptions=False)


@pytest.fixture(scope="module")
def figures(bench_run: Result) -> dict[str, Any]:
    assert bench_run.exit_code == 0, bench_run.output
    return json.loads(bench_run.stdout)  # the whole of stdout is one JSON object (progress is on stderr)


@pytest.fixture(scope="module")
def table(figures: dict[str, Any]) -> str:
    """What `pyxp bench` prints without --json: the run's figures through the same format_table."""
    return format_table(figures)


# --------------------------------------------------------------------------- the table


def test_quick_profile_exits_0(bench_run: Result) -> None:
    assert bench_run.exit_code == 0, bench_run.output


def test_table_names_the_machine_and_the_server(table: str) -> None:
    assert re.search(r"machine\s+\d+ CPUs", table)
    assert re.search(r"server\s+PostgreSQL \d+", table)


@pytest.mark.parametrize("measure", MEASURES)
def test_table_prints_a_value_for_every_measure(table: str, measure: str) -> None:
    lines = [line for line in table.splitlines() if line.startswith(measure)]
    assert lines, f"no line for {measure!r} in:\n{table}"
    # Columns are separated by at least two spaces: measure, value, unit, ...
    value = re.split(r"\s{2,}", lines[0])[1]
    assert re.fullmatch(r"\d[\d,]*(\.\d+)?", value) and float(value.replace(",", "")) > 0, lines[0]


def test_table_gives_each_throughput_as_a_ratio_to_pgbench(table: str) -> None:
    header = next(line for line in table.splitlines() if line.startswith("measure"))
    assert "x (a)" in header
    pgbench_line = next(line for line in table.splitlines() if line.startswith(MEASURES[0]))
    assert re.search(r"\s1\.00\s", pgbench_line)


# --------------------------------------------------------------------------- --json


@pytest.mark.parametrize("key", POSITIVE_KEYS)
def test_json_has_every_figure_as_a_positive_number(figures: dict[str, Any], key: str) -> None:
    assert isinstance(figures.get(key), (int, float)) and not isinstance(figures[key], bool), figures.get(key)
    assert figures[key] > 0


def test_json_records_machine_server_options_and_seed(figures: dict[str, Any]) -> None:
    assert figures["machine"]["cpus"] >= 1
    assert figures["server"]["version"]
    assert figures["seed"] == 42
    assert figures["options"] == QUICK.as_dict()


@pytest.mark.parametrize("read", ["balance", "history"])
def test_json_reports_that_key_lookups_use_an_index(figures: dict[str, Any], read: str) -> None:
    """A wallet's balance and history page are index lookups (sql/01_schema.sql indexes)."""
    assert figures[f"{read}_uses_index"] is True, figures["plans"][read]


def test_json_reports_that_a_rank_reads_the_rank_buckets(figures: dict[str, Any]) -> None:
    """wallet_rank sums the rank buckets' counts and counts one bucket's range in the leaderboard
    index: no scan of the balances (sql/07_ranks.sql)."""
    plan = figures["plans"]["rank"]
    assert figures["rank_uses_index"] is True, plan
    assert any("xp_rank_counts" in scan for scan in plan["scans"]), plan
    assert any("xp_balances_leaderboard" in scan for scan in plan["scans"]), plan


def test_fixture_and_benchmark_awards_leave_a_consistent_ledger(figures: dict[str, Any]) -> None:
    """The set-based fixture plus every award of the run: pyxp.audit() finds nothing (SPEC 4)."""
    assert figures["audit_findings"] == 0, figures.get("audit_sample")
    assert figures["audit_vacuumed_findings"] == 0, figures.get("audit_vacuumed_sample")
    assert figures["audit_vacuum_s"] >= 0


def test_audit_checkpoints_verify_the_fixture_then_what_the_run_wrote(figures: dict[str, Any]) -> None:
    """(m): the first checkpoint verifies every fixture row; the one after the run exactly the
    rows the run wrote (every ledger row is in one of the two), with nothing found."""
    assert figures["checkpoint_first_rows"] == QUICK.ledger_rows
    assert figures["audit_since_checkpoint_findings"] == 0
    assert figures["rows_since_checkpoint"] > 0
    assert figures["rows_since_checkpoint"] + QUICK.ledger_rows == figures["ledger_rows_after_run"]


def test_the_archive_leaves_a_ledger_the_audit_proves(figures: dict[str, Any]) -> None:
    """(n): the archive of what is before this month (nothing, unless the quick fixture's hours
    reach into last month) leaves the rest, and audit() from the openings finds nothing."""
    assert figures["audit_after_archive_findings"] == 0, figures.get("audit_after_archive_sample")
    assert figures["archive_rows"] + figures["ledger_rows_after_archive"] >= figures["ledger_rows_after_run"]


def test_ruleset_switch_recalculates_every_balance(figures: dict[str, Any]) -> None:
    """(g) measures a real recalculation: the new curve changes every balance (SPEC 3)."""
    assert figures["recalculate_balances"] == QUICK.wallets
    assert figures["recalculate_changed"] == QUICK.wallets
    assert figures["recalculate_noop_changed"] == 0


def test_client_awards_leave_no_prepared_statement_on_the_server(figures: dict[str, Any]) -> None:
    """(i) compares like with like: the client's session holds no named prepared statement
    (safe behind a transaction pooler, SPEC section 7), psycopg's default one does."""
    assert figures["unprepared_award_server_statements"] == 0
    assert figures["prepared_award_server_statements"] >= 1
    assert len(figures["unprepared_award_rounds"]) >= 3
    for side in ("pgbench", "award_sql", "hot_wallet", "pgbench_cpu", "award_sql_cpu"):
        assert len(figures[f"{side}_spread"]) == figures["rounds"] >= 3, side


def test_the_run_drops_its_scratch_database(figures: dict[str, Any], server: str) -> None:
    assert figures["database"].startswith("pyxp_bench_")
    assert not database_exists(server, figures["database"])


# --------------------------------------------------------------------------- options


# Sizes refused before any connection (the URL points nowhere: nothing can be written).
TOO_FEW_ROWS = ["--wallets", "10", "--ledger-rows", "5", "--database-url", "host=/nonexistent port=1"]


def test_the_module_runs_as_a_program_and_refuses_before_connecting() -> None:
    """`python -m pyxp.bench` is the command (a separate process): a bad size is refused, exit 2."""
    result = subprocess.run([sys.executable, "-m", "pyxp.bench", *TOO_FEW_ROWS],
                            capture_output=True, text=True, timeout=120, env=dict(os.environ), check=False)
    assert result.returncode == 2, result.stderr
    assert "ledger_rows (5) must be at least wallets (10)" in result.stderr


def test_more_wallets_than_ledger_rows_is_refused_before_connecting() -> None:
    result = CliRunner().invoke(bench_command, TOO_FEW_ROWS)
    assert result.exit_code == 2
    assert "ledger_rows (5) must be at least wallets (10)" in result.output


def test_explicit_sizes_override_the_quick_profile() -> None:
    options = BenchOptions.profile(quick=True, clients=3, seconds=None)
    assert (options.clients, options.seconds, options.wallets) == (3, QUICK.seconds, QUICK.wallets)


def test_ruleset_switch_raises_every_threshold() -> None:
    source = 'name = "x"\n[levels]\nthresholds = [0, 100, 250, 500]\n'
    assert raised_thresholds(source) == 'name = "x"\n[levels]\nthresholds = [0, 120, 300, 600]\n'


def test_caps_measure_awards_under_the_capped_rules(figures: dict[str, Any]) -> None:
    """(k) runs its capped side under a ruleset whose action is capped (audit() above checks the allowances)."""
    assert figures["cap_rows_capped"] > 0 and figures["cap_rows_cut"] >= 0


def test_caps_cost_is_the_median_of_each_rounds_ratio(figures: dict[str, Any]) -> None:
    """(k) and (k'): one ratio per round (its capped side over its uncapped side, run back to back),
    and the target reads their median."""
    for prefix in ("cap", "cap_cpu"):
        capped, uncapped = figures[f"{prefix}_capped_spread"], figures[f"{prefix}_uncapped_spread"]
        assert len(capped) == len(uncapped) == figures["cap_rounds"]
        ratios = [round(c / u, 3) for c, u in zip(capped, uncapped, strict=True)]
        assert figures[f"{prefix}_round_ratios"] == ratios
        assert figures[f"{prefix}_ratio_paired"] == round(statistics.median(ratios), 3)
    assert figures["targets"]["cap"]["observed"] == figures["cap_ratio_paired"]
    assert figures["targets"]["cap_cpu"]["observed"] == figures["cap_cpu_ratio_paired"]


def test_a_flow_calls_idempotency_record_is_about_100_bytes(figures: dict[str, Any]) -> None:
    """Issue 15 item 4, measured by the bench: votes with 95-character keys; 0009's form took 453
    bytes per call (the key text and a jsonb copy of the inputs). The quick profile's 500 votes
    carry a few pages of slack."""
    assert figures["flow_calls_measured"] == 500
    assert figures["request_bytes_per_flow_call"] < 200
    assert figures["request_rows_index_bytes_per_flow_row"] < 100
