"""The `pyxp` command line, end to end: a subprocess against the test database (SPEC section 9).

Exit codes: 0 done, 1 audit findings, 2 refused (PX error, bad usage, no database).
Every refusal is one line on stderr (`error: PX0nn: what (accepted)`), no traceback,
and writes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pyxp import schema
from pyxp.database import DATABASE_URL_VARIABLE, _free_port
from pyxp.ruleset_config import load_ruleset


def run(conninfo: str, *args: str, stdin: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m pyxp.cli ARGS` with PYXP_DATABASE_URL pointing at ``conninfo``."""
    environment = {**os.environ, DATABASE_URL_VARIABLE: conninfo, **(env or {})}
    return subprocess.run([sys.executable, "-m", "pyxp.cli", *args], capture_output=True, text=True,
                          env=environment, input=stdin if stdin is not None else "", timeout=300)


def ok(conninfo: str, *args: str) -> str:
    result = run(conninfo, *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def ok_json(conninfo: str, *args: str) -> Any:
    return json.loads(ok(conninfo, *args, "--json"))


def assert_one_line_error(result: subprocess.CompletedProcess[str], starts: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {starts}"), lines[0]


CREATE_CAMPAIGN = ("award", "campaign-creation", "--creator-wallet", "0x_creator", "--campaign-id",
                   "campaign_123", "--campaign-type", "B2C", "--mint-value", "1000",
                   "--winstory-creates-video", "--no-rewards")


# --------------------------------------------------------------------------- general


def test_help_lists_every_command() -> None:
    out = ok("", "--help")
    for command in ("db", "rules", "levels", "award", "balance", "history", "leaderboard", "audit", "demo"):
        assert f"  {command} " in out


def test_console_script_is_installed_and_runs() -> None:
    script = Path(sys.executable).with_name("pyxp")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "pyxp, version" in result.stdout


def test_unreachable_database_is_one_line_and_exit_2() -> None:
    result = run(f"host=127.0.0.1 port={_free_port()} connect_timeout=3", "balance", "0xabc")
    assert_one_line_error(result, "cannot connect to PostgreSQL")
    assert DATABASE_URL_VARIABLE in result.stderr


def test_malformed_database_url_is_one_line_and_exit_2() -> None:
    assert_one_line_error(run("not a url", "audit"), "invalid database URL")


def test_database_url_option_wins_over_the_variable(conninfo: str) -> None:
    dead = f"host=127.0.0.1 port={_free_port()} connect_timeout=3"
    out = ok(dead, "--database-url", conninfo, "balance", "0xabc", "--json")
    assert json.loads(out)["total_xp"] == 0


def test_table_output_has_no_colour_when_piped(conninfo: str) -> None:
    assert "\x1b[" not in ok(conninfo, *CREATE_CAMPAIGN)


# --------------------------------------------------------------------------- db


def test_db_current_reports_revision_head_and_active_ruleset(conninfo: str) -> None:
    current = ok_json(conninfo, "db", "current")
    assert current == {"revision": schema.head_revision(), "head": schema.head_revision(), "up_to_date": True,
                       "active_ruleset": {"name": "winstory", "version": 1}}
    assert "up to date" in ok(conninfo, "db", "current")


def test_db_upgrade_at_head_changes_nothing(conninfo: str, unchanged: Any) -> None:
    with unchanged():
        out = ok(conninfo, "db", "upgrade")
    assert out == f"already at revision {schema.head_revision()}\n"


def test_db_downgrade_then_upgrade_rebuilds_schema_and_default_ruleset(conninfo: str,
                                                                        db: psycopg.Connection[Any]) -> None:
    assert "base (no pyxp schema)" in ok(conninfo, "db", "downgrade", "--yes")
    assert db.execute("SELECT to_regnamespace('pyxp')").fetchone() == (None,)
    assert ok_json(conninfo, "db", "current")["revision"] is None

    out = ok(conninfo, "db", "upgrade")
    assert f"-> {schema.head_revision()}" in out
    assert "activated ruleset winstory v1" in out
    assert ok_json(conninfo, "db", "current")["active_ruleset"] == {"name": "winstory", "version": 1}


def test_db_downgrade_asks_first_and_declining_changes_nothing(conninfo: str, unchanged: Any) -> None:
    with unchanged():
        result = run(conninfo, "db", "downgrade", stdin="n\n")
    assert result.returncode == 1
    assert "drops every pyxp table" in result.stdout
    assert "Aborted" in result.stderr


def test_db_downgrade_to_an_unknown_revision_is_refused(conninfo: str, unchanged: Any) -> None:
    with unchanged():
        assert_one_line_error(run(conninfo, "db", "downgrade", "--revision", "9999", "--yes"), "migration:")


def test_commands_on_a_database_without_the_schema_say_to_upgrade(conninfo: str) -> None:
    ok(conninfo, "db", "downgrade", "--yes")
    result = run(conninfo, "balance", "0xabc")
    assert_one_line_error(result, "the pyxp schema is not installed")
    assert "pyxp db upgrade" in result.stderr


# --------------------------------------------------------------------------- rules


def test_rules_show_lists_the_active_rules_and_floor(conninfo: str) -> None:
    out = ok(conninfo, "rules", "show")
    assert "ruleset winstory v1" in out
    assert "balance floor: none" in out
    assert "Completion_Submit_B2C_Paid" in out and "100 + PRICE_COMPLETION" in out
    shown = ok_json(conninfo, "rules", "show")
    assert [r["action"] for r in shown["rules"]] == [r.action for r in load_ruleset("winstory").rules]
    assert shown["balance_floor"] is None


def test_rules_apply_activates_a_shipped_ruleset_once(conninfo: str, db: psycopg.Connection[Any]) -> None:
    assert "winstory-flows v1 created and activated" in ok(conninfo, "rules", "apply", "winstory-flows")
    assert db.execute("SELECT name FROM pyxp.rulesets WHERE is_active").fetchone() == ("winstory-flows",)
    assert "already active: nothing changed" in ok(conninfo, "rules", "apply", "winstory-flows")
    assert "winstory v1 re-activated" in ok(conninfo, "rules", "apply", "winstory")


def test_rules_apply_json_reports_the_install(conninfo: str) -> None:
    installed = ok_json(conninfo, "rules", "apply", "winstory-flows")
    assert installed["name"] == "winstory-flows" and installed["created"] and installed["activated"]


def test_rules_apply_of_a_bad_file_names_the_line_and_writes_nothing(conninfo: str, unchanged: Any,
                                                                    tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n\n[[rules]]\naction = "X"\nevent = "campaign.created"\n'
                   'earn_xp = "A ** 2"\n')
    with unchanged():
        result = run(conninfo, "rules", "apply", str(bad))
    assert_one_line_error(result, f"{bad}:6: ")
    assert "accepted:" in result.stderr


def test_rules_apply_of_an_unknown_name_lists_the_shipped_ones(conninfo: str, unchanged: Any) -> None:
    with unchanged():
        result = run(conninfo, "rules", "apply", "no-such-ruleset")
    assert_one_line_error(result, "no ruleset named 'no-such-ruleset'")
    assert "winstory, winstory-flows" in result.stderr


def test_rules_diff_of_the_active_ruleset_is_no_change(conninfo: str) -> None:
    assert ok(conninfo, "rules", "diff", "winstory").startswith("no change")
    assert ok_json(conninfo, "rules", "diff", "winstory")["changes"] == []


def test_rules_diff_lists_added_and_removed_rules(conninfo: str, unchanged: Any) -> None:
    with unchanged():
        diff = ok_json(conninfo, "rules", "diff", "winstory-flows")
    changes = {(c["kind"], c["what"]) for c in diff["changes"]}
    assert diff["changed"] is True
    assert {("added", "COMPLETION_SUBMITTED"), ("added", "COMPLETION_100_VALIDATED"),
            ("removed", "Completion_Submit_B2C_Free"), ("changed", "name")} <= changes
    assert ("changed", "B2C_MINT") not in changes  # same creation rules in both


def test_rules_diff_shows_amount_floor_and_curve_changes(conninfo: str, tmp_path: Path) -> None:
    text = load_ruleset("winstory").source
    text = text.replace('name = "winstory"', 'name = "winstory"\nbalance_floor = 0', 1)
    text = text.replace("thresholds = [0, 100, 250, 500, 1000, 2000, 4000]",
                        "thresholds = [0, 100, 250, 500, 1000, 2000, 5000]", 1)
    assert text.count("earn_xp = 1000") >= 1
    changed = tmp_path / "changed.toml"
    changed.write_text(text.replace("earn_xp = 1000", "earn_xp = 1200", 1))

    details = {(c["what"], c["detail"]) for c in ok_json(conninfo, "rules", "diff", str(changed))["changes"]}
    assert ("balance floor", "None -> 0") in details
    assert ("B2C_MINT", "XP: 1000 -> 1200") in details
    assert any(what == "level curve" and "from level 7" in detail for what, detail in details)
    assert "B2C_MINT" in ok(conninfo, "rules", "diff", str(changed))


# --------------------------------------------------------------------------- levels


def level_for(db: psycopg.Connection[Any], total_xp: int) -> int:
    row = db.execute("SELECT level FROM pyxp.level_for(%s)", [total_xp]).fetchone()
    assert row is not None
    return int(row[0])


def test_levels_lists_the_first_60_from_level_for(conninfo: str, db: psycopg.Connection[Any]) -> None:
    listed = ok_json(conninfo, "levels")["levels"]
    assert [row["level"] for row in listed] == list(range(1, 61))
    assert [row["threshold"] for row in listed[:7]] == [0, 100, 250, 500, 1000, 2000, 4000]
    for row, following in zip(listed, listed[1:]):
        assert row["threshold"] + row["increment"] == following["threshold"]
    for row in listed:  # the listed thresholds are where pyxp.level_for changes level
        assert level_for(db, row["threshold"]) == row["level"]
        if row["level"] > 1:
            assert level_for(db, row["threshold"] - 1) == row["level"] - 1


def test_levels_of_far_totals_reach_the_balance_limit(conninfo: str, db: psycopg.Connection[Any]) -> None:
    far = ok_json(conninfo, "levels", "--first", "3")["totals"]
    assert far[-1]["total_xp"] == 2**62
    for row in far:
        assert level_for(db, row["total_xp"]) == row["level"]
    asked = ok_json(conninfo, "levels", "--first", "1", "--xp", "2500", "--xp", "2")["totals"]
    assert [row["level"] for row in asked] == [6, 1]


def test_levels_table_is_aligned(conninfo: str) -> None:
    out = ok(conninfo, "levels", "--first", "7", "--xp", "2500")
    assert "      7       4000       2700" in out
    assert "     2500      6       2000       2000" in out


# --------------------------------------------------------------------------- award


def test_award_campaign_creation_prints_rows_and_the_level_up(conninfo: str) -> None:
    out = ok(conninfo, *CREATE_CAMPAIGN)
    for action in ("B2C_MINT", "OPTION_WINSTORY_VIDEO", "OPTION_NO_REWARDS"):
        assert action in out
    assert "+2500 XP, total 2500, level 1 → 6  level up!" in out


def test_award_repeated_is_replayed_and_writes_nothing(conninfo: str, unchanged: Any) -> None:
    first = ok_json(conninfo, *CREATE_CAMPAIGN)
    with unchanged():
        again = ok_json(conninfo, *CREATE_CAMPAIGN)
    assert (first["xp"], first["level_before"], first["level_after"]) == (2500, 1, 6)
    assert first["replayed"] is False
    assert again["replayed"] is True
    assert [r["transaction_id"] for r in again["rows"]] == [r["transaction_id"] for r in first["rows"]]


def test_award_flow_commands_play_the_flow_diagrams_example(conninfo: str) -> None:
    """Every flow sub-command once: the seed's example balances (ruleset winstory-flows)."""
    ok(conninfo, "rules", "apply", "winstory-flows")
    assert ok_json(conninfo, *CREATE_CAMPAIGN)["total_xp"] == 2500
    assert ok_json(conninfo, "award", "moderation-vote", "--moderator-wallet", "0x_moderator",
                   "--campaign-id", "campaign_123", "--vote-decision", "VALID")["xp"] == 2
    assert ok_json(conninfo, "award", "completion", "--completer-wallet", "0x_completer", "--campaign-id",
                   "campaign_123", "--completion-id", "comp_1")["xp"] == 10
    assert ok_json(conninfo, "award", "completion", "--completer-wallet", "0x_completer", "--campaign-id",
                   "campaign_123", "--completion-id", "comp_1", "--is-validated")["total_xp"] == 110
    approval = ok_json(conninfo, "award", "campaign-approval", "--campaign-id", "campaign_123")
    assert approval["total_xp"] == 2600
    assert ok_json(conninfo, "award", "campaign-creation", "--creator-wallet", "0x_agency", "--campaign-id",
                   "campaign_agency", "--campaign-type", "AGENCY_B2C", "--no-rewards")["total_xp"] == 2000
    registered = ok_json(conninfo, "award", "register-client", "--agency-wallet", "0x_agency",
                         "--client-email", "Client@Example.com", "--campaign-id", "campaign_agency",
                         "--company-name", "Client Corp")
    assert (registered["client_email"], registered["xp_granted"]) == ("client@example.com", False)
    onboarded = ok_json(conninfo, "award", "onboard-client", "--client-email", "client@example.com",
                        "--client-wallet", "0x_client")
    assert (onboarded["xp"], onboarded["level_after"]) == (1000, 5)
    assert onboarded["rows"][0]["user_wallet"] == "0x_client"
    assert ok_json(conninfo, "balance", "0x_completer")["xp_to_next_level"] == 140


def test_award_completion_paid_and_completion_moderation(conninfo: str) -> None:
    """xp-completers scenario 1 through the CLI: +400, 3 votes +2, validation +100."""
    common = ("--campaign-id", "camp_001", "--completion-id", "comp_001", "--campaign-type", "B2C")
    paid = ok_json(conninfo, "award", "completion", "--completer-wallet", "0xabc", *common, "--is-paid",
                   "--price-completion", "300")
    assert paid["xp"] == 400
    for moderator in ("0xmod1", "0xmod2", "0xmod3"):
        vote = ok_json(conninfo, "award", "completion-moderation", "--moderator-wallet", moderator, *common,
                       "--vote-decision", "VALID")
        assert vote["xp"] == 2
    assert ok_json(conninfo, "award", "completion", "--completer-wallet", "0xabc", *common,
                   "--is-validated")["total_xp"] == 500


def test_award_completion_individual_refused(conninfo: str) -> None:
    common = ("--completer-wallet", "0xdef", "--campaign-id", "camp_002", "--completion-id", "comp_002",
              "--campaign-type", "INDIVIDUAL", "--mint-value-winc", "5000")
    assert ok_json(conninfo, "award", "completion", *common)["xp"] == 5000
    refused = ok_json(conninfo, "award", "completion", *common, "--is-refused")
    assert (refused["xp"], refused["total_xp"]) == (-2500, 2500)
    assert (refused["level_before"], refused["level_after"]) == (7, 6)


def test_award_generic_with_params_and_context(conninfo: str, db: psycopg.Connection[Any]) -> None:
    awarded = ok_json(conninfo, "award", "generic", "0xabc", "Completion_Submit_B2C_Paid", "manual-1",
                      "--param", "PRICE_COMPLETION=12.5",
                      "--context", '{"note": "manual", "campaign_id": "c9"}')
    assert awarded["xp"] == 113  # 100 + 12.5, halves away from zero
    row = db.execute("SELECT campaign_id, metadata->>'note' FROM pyxp.xp_transactions "
                     "WHERE id = %s", [awarded["rows"][0]["transaction_id"]]).fetchone()
    assert row == ("c9", "manual")


def test_award_onboard_without_registration_awards_nothing(conninfo: str, unchanged: Any) -> None:
    with unchanged():
        out = ok(conninfo, "award", "onboard-client", "--client-email", "nobody@example.com",
                 "--client-wallet", "0xnobody")
    assert out == "no pending registration for nobody@example.com: nothing awarded\n"


def test_award_reverse_appends_the_compensating_row(conninfo: str) -> None:
    created = ok_json(conninfo, *CREATE_CAMPAIGN)
    reversed_ = ok_json(conninfo, "award", "reverse", str(created["rows"][0]["transaction_id"]),
                        "--reason", "test")
    assert reversed_["rows"][0]["transaction_type"] == "REVERSAL"
    assert (reversed_["xp"], reversed_["total_xp"]) == (-1000, 1500)


CAMPAIGN = ("--campaign-id", "c1")
CREATOR = ("award", "campaign-creation", "--creator-wallet", "0xc", *CAMPAIGN)
COMPLETER = ("--completer-wallet", "0xc", *CAMPAIGN, "--completion-id", "k1")

REFUSALS = [
    pytest.param(["award", "generic", " ", "B2C_MINT", "k"], "PX001", id="bad-wallet"),
    pytest.param(["balance", ""], "PX001", id="bad-wallet-balance"),
    pytest.param(["award", "onboard-client", "--client-email", "not-an-email", "--client-wallet", "0xc"],
                 "PX002", id="bad-email"),
    pytest.param([*CREATOR, "--campaign-type", "B2B"], "PX003", id="unknown-campaign-type"),
    pytest.param([*CREATOR, "--campaign-type", "B2C", "--mint-value", "-5"], "PX004", id="negative-number"),
    pytest.param(["award", "generic", "0xc", "Completion_Submit_B2C_Paid", "k",
                  "--param", "PRICE_COMPLETION=abc"], "PX004", id="param-not-a-number"),
    pytest.param(["award", "completion", *COMPLETER, "--campaign-type", "B2C",
                  "--is-validated", "--is-refused"], "PX005", id="both-flags"),
    pytest.param(["award", "completion", *COMPLETER, "--campaign-type", "B2C", "--is-paid"],
                 "PX006", id="paid-without-price"),
    pytest.param(["award", "completion", *COMPLETER, "--campaign-type", "INDIVIDUAL"],
                 "PX007", id="individual-without-mint"),
    pytest.param(["award", "moderation-vote", "--moderator-wallet", "0xm", *CAMPAIGN,
                  "--campaign-type", "B2C", "--vote-decision", "MAYBE"], "PX008", id="bad-vote"),
    pytest.param(["award", "generic", "0xc", "NO_SUCH_ACTION", "k"], "PX009", id="unknown-action"),
    pytest.param(["award", "completion", *COMPLETER], "PX012", id="unknown-campaign"),
    pytest.param(["award", "reverse", "999999", "--reason", "r"], "PX015", id="unknown-transaction"),
    pytest.param(["history", "0xc", "--limit", "0"], "PX023", id="bad-row-count"),
]


@pytest.mark.parametrize(("args", "code"), REFUSALS)
def test_refusal_is_one_line_with_its_px_code_and_writes_nothing(conninfo: str, unchanged: Any,
                                                                args: list[str], code: str) -> None:
    with unchanged():
        result = run(conninfo, *args)
    assert_one_line_error(result, f"{code}: ")
    assert result.stderr.rstrip().endswith(")"), "the hint (what is accepted) closes the line"


def test_idempotency_conflict_is_refused_and_writes_nothing(conninfo: str, unchanged: Any) -> None:
    ok(conninfo, *CREATE_CAMPAIGN)
    with unchanged():
        result = run(conninfo, "award", "campaign-creation", "--creator-wallet", "0x_creator",
                     "--campaign-id", "campaign_123", "--campaign-type", "B2C")
    assert_one_line_error(result, "PX010: campaign campaign_123 was already created with other inputs")


USAGE_ERRORS = [
    pytest.param(["award", "campaign-creation", "--creator-wallet", "0xc", "--campaign-type", "B2C"],
                 "Missing option '--campaign-id'", id="missing-option"),
    pytest.param(["award", "completion", *COMPLETER, "--is-paid", "--price-completion", "cheap"],
                 "'cheap' is not a number", id="number-option"),
    pytest.param(["award", "generic", "0xc", "B2C_MINT", "k", "--context", "{not json"],
                 "--context", id="context-not-json"),
    pytest.param(["award", "generic", "0xc", "B2C_MINT", "k", "--param", "PRICE_COMPLETION"],
                 "expected NAME=VALUE", id="param-without-value"),
    pytest.param(["no-such-command"], "No such command", id="unknown-command"),
]


@pytest.mark.parametrize(("args", "message"), USAGE_ERRORS)
def test_usage_error_exits_2_and_writes_nothing(conninfo: str, unchanged: Any, args: list[str],
                                                message: str) -> None:
    with unchanged():
        result = run(conninfo, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- reads


def test_balance_shows_level_and_xp_to_next_level(conninfo: str) -> None:
    ok(conninfo, *CREATE_CAMPAIGN)
    shown = ok_json(conninfo, "balance", "0x_creator")
    assert {k: shown[k] for k in ("total_xp", "current_level", "xp_to_next_level", "rank")} == \
        {"total_xp": 2500, "current_level": 6, "xp_to_next_level": 1500, "rank": 1}
    assert "1500 to lvl 7" in ok(conninfo, "balance", "0x_creator")


def test_balance_of_an_unknown_wallet_is_zero_at_level_1(conninfo: str) -> None:
    shown = ok_json(conninfo, "balance", "0xnew")
    assert (shown["total_xp"], shown["current_level"], shown["xp_to_next_level"]) == (0, 1, 100)
    assert shown["rank"] is None


def test_history_is_newest_first_and_pages(conninfo: str) -> None:
    ok(conninfo, *CREATE_CAMPAIGN)
    rows = ok_json(conninfo, "history", "0x_creator")
    assert [r["transaction_type"] for r in rows] == ["OPTION_NO_REWARDS", "OPTION_WINSTORY_VIDEO", "B2C_MINT"]
    assert [r["balance_after"] for r in rows] == [2500, 1500, 1000]
    first_page = ok(conninfo, "history", "0x_creator", "--limit", "2")
    assert f"--before-id {rows[1]['transaction_id']}" in first_page
    older = ok_json(conninfo, "history", "0x_creator", "--before-id", str(rows[1]["transaction_id"]))
    assert [r["transaction_type"] for r in older] == ["B2C_MINT"]


def test_leaderboard_ranks_by_total_xp(conninfo: str) -> None:
    ok(conninfo, *CREATE_CAMPAIGN)
    ok(conninfo, "award", "generic", "0xsmall", "CAMPAIGN_APPROVED", "k1")
    board = ok_json(conninfo, "leaderboard")
    assert [(r["rank"], r["user_wallet"], r["total_xp"]) for r in board] == [(1, "0x_creator", 2500),
                                                                             (2, "0xsmall", 100)]
    assert ok(conninfo, "leaderboard", "--offset", "1").count("0xsmall") == 1


# --------------------------------------------------------------------------- audit


def test_audit_of_a_healthy_ledger_is_clean(conninfo: str) -> None:
    ok(conninfo, *CREATE_CAMPAIGN)
    assert ok(conninfo, "audit").startswith("audit: clean")
    assert ok_json(conninfo, "audit") == []


def tamper(db: psycopg.Connection[Any]) -> None:
    """What a superuser can still do (SPEC section 7): disable the trigger and edit a row."""
    db.execute("ALTER TABLE pyxp.xp_transactions DISABLE TRIGGER xp_transactions_append_only")
    db.execute("UPDATE pyxp.xp_transactions SET xp_amount = xp_amount + 1 "
               "WHERE id = (SELECT min(id) FROM pyxp.xp_transactions)")
    db.execute("ALTER TABLE pyxp.xp_transactions ENABLE TRIGGER xp_transactions_append_only")


def test_audit_after_tampering_exits_1_and_names_the_finding(conninfo: str,
                                                              db: psycopg.Connection[Any]) -> None:
    ok(conninfo, *CREATE_CAMPAIGN)
    tamper(db)
    result = run(conninfo, "audit")
    assert result.returncode == 1
    assert "balance_mismatch" in result.stdout and "0x_creator" in result.stdout
    as_json = run(conninfo, "audit", "--json")
    assert as_json.returncode == 1
    assert "balance_mismatch" in {finding["check_name"] for finding in json.loads(as_json.stdout)}
