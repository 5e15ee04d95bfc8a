"""What-if and retroactive rule changes (SPEC 13, issue 14).

The reference for a simulation is a second database where the same calls were made from scratch
under the candidate ruleset: every wallet's simulated total and level must equal that database's
balance, for formula changes, removed actions, a floor, a cap, a curve change and reversals.
"""

from __future__ import annotations

import copy
import io
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from conftest import edit_ledger, nothing_written
from psycopg.types.json import Jsonb

from pyxp import schema
from pyxp.bench import plan_nodes
from pyxp.cli import cli, print_simulation
from pyxp.ruleset_config import load_ruleset
from pyxp.tables import Printer

Call = tuple[str, tuple[Any, ...]]

# Every kind of row: flows with and without formula inputs, votes both ways, refusals (penalties),
# generic awards with params, an onboarding; ("reverse", (wallet, type)) reverses that wallet's row of that type.
CALLS: list[Call] = [
    ("SELECT * FROM pyxp.award_campaign_creation('0xcreator', 'c1', 'B2C', NULL, true)", ()),
    ("SELECT * FROM pyxp.award_campaign_approval('c1')", ()),
    *[("SELECT * FROM pyxp.award_moderation_vote(%s, 'c1', %s, 'B2C')", (f"0xmod{m}", "VALID" if m % 3 else "REFUSE"))
      for m in range(6)],
    *[("SELECT * FROM pyxp.award_moderation_vote('0xmod1', %s, 'VALID', 'B2C')", (f"c{n}",)) for n in range(2, 9)],
    *[("SELECT * FROM pyxp.award_moderation_vote('0xmod2', %s, 'REFUSE', 'B2C')", (f"c{n}",)) for n in range(2, 9)],
    ("SELECT * FROM pyxp.award_completion('0xdone', 'c1', 'k1', 'B2C', false, false, true, 300)", ()),
    ("SELECT * FROM pyxp.award_completion('0xdone', 'c1', 'k1', 'B2C', false, true)", ()),
    ("SELECT * FROM pyxp.award_completion('0xdone', 'c1', 'k2', 'B2C')", ()),
    ("SELECT * FROM pyxp.award_completion('0xdone', 'c1', 'k2', 'B2C', true)", ()),
    ("SELECT * FROM pyxp.award_completion('0xlow', 'c1', 'k3', 'B2C', false, true)", ()),
    ("SELECT * FROM pyxp.award_completion('0xlow', 'c1', 'k4', 'B2C', false, true)", ()),
    ("SELECT * FROM pyxp.award('0xgen', 'Completion_Submit_B2C_Paid', 'g1', '{\"PRICE_COMPLETION\": 250}')", ()),
    ("SELECT * FROM pyxp.award('0xgen', 'CAMPAIGN_APPROVED', 'g2')", ()),
    ("SELECT * FROM pyxp.register_agency_client('0xagency', 'a@b.co', 'c9')", ()),
    ("SELECT * FROM pyxp.onboard_agency_client('a@b.co', '0xclient')", ()),
    ("reverse", ("0xmod0", "MODERATION_REFUSED_BY_MODERATOR")),
    ("reverse", ("0xgen", "CAMPAIGN_APPROVED")),
    ("reverse", ("0xdone", "Completion_Refused_B2C")),
    ("SELECT * FROM pyxp.award_moderation_vote('0xmod1', 'c20', 'VALID', 'B2C')", ()),
    ("SELECT * FROM pyxp.award_completion('0xlow', 'c1', 'k5', 'B2C', false, true)", ()),
]


def run_calls(conn: psycopg.Connection[Any]) -> None:
    for statement, args in CALLS:
        if statement != "reverse":
            conn.execute(statement, args)
            continue
        wallet, action = args
        row = conn.execute("SELECT id FROM pyxp.xp_transactions WHERE user_wallet = %s AND transaction_type = %s",
                           (wallet, action)).fetchone()
        if row is not None:  # the candidate may have no such row (a removed action): nothing to reverse
            conn.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'simulation test')", (row[0],))


def variant(name: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    definition = copy.deepcopy(load_ruleset("winstory").definition())
    definition["name"] = name
    change(definition)
    return definition


def rule(definition: dict[str, Any], action: str) -> dict[str, Any]:
    return next(r for r in definition["rules"] if r["action"] == action)


def formulas(d: dict[str, Any]) -> None:
    rule(d, "CAMPAIGN_APPROVED")["constant"] = "150"
    rule(d, "Completion_Submit_B2C_Paid")["coefficients"] = {"PRICE_COMPLETION": "2"}
    rule(d, "Completion_Refused_B2C")["constant"] = "-80"


def removed(d: dict[str, Any]) -> None:
    d["rules"] = [r for r in d["rules"] if r["action"] not in ("MODERATION_REFUSED_BY_MODERATOR", "OPTION_WINSTORY_VIDEO")]


def floor(d: dict[str, Any]) -> None:
    d["balance_floor"] = 0


def capped(d: dict[str, Any]) -> None:
    for action in ("MODERATION_VALIDATED_BY_MODERATOR", "MODERATION_REFUSED_BY_MODERATOR", "Completion_Moderation_Validated"):
        rule(d, action).update(cap={"max_xp": 7, "per": "day"}, group="moderation")
    rule(d, "CAMPAIGN_APPROVED")["cap"] = {"max_xp": 120, "per": "week"}


def curve(d: dict[str, Any]) -> None:
    for level in d["levels"][1:]:
        level["threshold"] = level["threshold"] * 3 // 4
    for this, after in zip(d["levels"], d["levels"][1:]):
        this["increment"] = after["threshold"] - this["threshold"]


def everything(d: dict[str, Any]) -> None:
    for change in (formulas, floor, capped, curve):
        change(d)
    rule(d, "Completion_Validated_B2C")["constant"] = "-200"  # a penalty cut by the floor, then reversed


VARIANTS = {"formulas": formulas, "removed": removed, "floor": floor, "capped": capped, "curve": curve,
            "everything": everything}


def install(conn: psycopg.Connection[Any], definition: dict[str, Any], activate: bool) -> int:
    row = conn.execute("SELECT ruleset_id FROM pyxp.install_ruleset(%s, %s, %s)",
                       (Jsonb(definition), "# test", activate)).fetchone()
    assert row is not None
    return int(row[0])


def balances(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, int]]:
    return {w: (t, lv) for w, t, lv in conn.execute("SELECT user_wallet, total_xp, current_level FROM pyxp.xp_balances")}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_simulation_equals_replaying_the_calls_under_the_candidate(
        db: psycopg.Connection[Any], fresh_database: Callable[[], str], unchanged: Any, name: str) -> None:
    candidate = variant(f"candidate-{name}", VARIANTS[name])
    run_calls(db)
    candidate_id = install(db, candidate, activate=False)
    with unchanged():
        simulated = db.execute("SELECT user_wallet, total_xp_now, total_xp_then, level_now, level_then "
                               "FROM pyxp.simulate_rules(%s)", (candidate_id,)).fetchall()
        report = db.execute("SELECT pyxp.simulation_report(%s, 1000)", (candidate_id,)).fetchone()[0]  # type: ignore[index]
    now = balances(db)
    assert {w: (t, lv) for w, t, _, lv, _ in simulated} == now

    replayed = fresh_database()
    schema.upgrade(replayed)
    with psycopg.connect(replayed, autocommit=True) as other:
        install(other, candidate, activate=True)
        run_calls(other)
        expected = balances(other)
        per_action = dict(other.execute("SELECT transaction_type, sum(xp_amount) FROM pyxp.xp_transactions GROUP BY 1"))
    then = {w: (t, lv) for w, _, t, _, lv in simulated}
    assert then == {w: expected.get(w, (0, 1)) for w in then}, name
    assert set(expected) <= set(then)
    assert any(then[w] != now[w] for w in then), "the candidate changes nothing: a useless case"
    # The report agrees with the same replay, action by action, and with the per-wallet figures.
    got = {a["action"]: a["xp_then"] for a in report["actions"] if a["xp_then"] or a["action"] in per_action}
    assert got == {a: x for a, x in per_action.items() if x or a in got}
    assert report["summary"]["xp_then"] == sum(t for t, _ in then.values())
    assert report["summary"]["up"] == sum(then[w][0] > now[w][0] for w in then)
    assert report["not_simulated"] == []


def test_the_report_names_the_rules_the_replay_cannot_count(conninfo: str, db: psycopg.Connection[Any],
                                                            tmp_path: Any) -> None:
    """The replay re-evaluates rows: a rule a candidate adds on calls that wrote no row of its action
    counts nothing for them, and a rule that selects other calls (event, campaign types, condition)
    is applied to every old row of its action. A hostile test (0037) found both silently off from a
    replay of the calls; the report and the CLI now name them."""
    def added_and_retargeted(d: dict[str, Any]) -> None:
        d["rules"].append({**rule(d, "CAMPAIGN_APPROVED"), "action": "APPROVAL_BONUS", "constant": "50",
                           "formula": "50", "description": "a bonus on approval"})
        rule(d, "CAMPAIGN_APPROVED")["campaign_types"] = ["AGENCY_B2C"]
    run_calls(db)
    candidate_id = install(db, variant("candidate-added", added_and_retargeted), activate=False)
    report = db.execute("SELECT pyxp.simulation_report(%s)", (candidate_id,)).fetchone()[0]  # type: ignore[index]
    assert report["not_simulated"] == [{"action": "APPROVAL_BONUS", "reason": "added"},
                                       {"action": "CAMPAIGN_APPROVED", "reason": "selection_changed"}]
    path = tmp_path / "added.toml"
    path.write_text(load_ruleset("winstory").source.replace('name = "winstory"', 'name = "winstory-added"'))
    shown = CliRunner().invoke(cli, ["--database-url", conninfo, "rules", "simulate", str(path)])
    assert shown.exit_code == 0 and "not simulated" not in shown.output, shown.output  # (the same rules)
    assert print_lines(report) == [
        "not simulated: APPROVAL_BONUS (a rule on calls that wrote no row of its action: not counted for past calls)",
        "not simulated: CAMPAIGN_APPROVED (another event, campaign types or condition: applied to every old row "
        "of its action)"]


def print_lines(report: dict[str, Any]) -> list[str]:
    """The CLI's report, as text, its lines about rules not simulated."""
    out = io.StringIO()
    print_simulation(Printer(out, colour=False), report)
    return [line for line in out.getvalue().splitlines() if line.startswith("not simulated")]


def test_retroactive_application_makes_every_balance_the_simulation(db: psycopg.Connection[Any]) -> None:
    run_calls(db)
    candidate_id = install(db, variant("retro", everything), activate=False)
    simulated = {w: (t, lv) for w, _, t, _, lv in db.execute("SELECT * FROM pyxp.simulate_rules(%s)", (candidate_id,))}
    before = db.execute("SELECT max(id) FROM pyxp.xp_transactions").fetchone()[0]  # type: ignore[index]
    first = db.execute("SELECT * FROM pyxp.apply_rules_retroactively(%s)", (candidate_id,)).fetchone()
    assert first is not None and first[3] is False
    assert balances(db) == simulated
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []
    adjustments = db.execute("SELECT user_wallet, xp_amount, metadata FROM pyxp.xp_transactions WHERE id > %s",
                             (before,)).fetchall()
    assert len(adjustments) == first[4] > 0
    assert all(m["ruleset_id"] == candidate_id and m["ruleset"] == "retro" and m["version"] == 1
               for _, _, m in adjustments)
    history = db.execute("SELECT transaction_type, metadata ->> 'ruleset' FROM pyxp.history(%s, 1)",
                         (adjustments[0][0],)).fetchall()
    assert history == [("RULES_ADJUSTMENT", "retro")]
    # The feed's horizon is the cluster-wide xmin: a transaction another test (another xdist
    # worker) keeps open hides these rows from the feed until it ends (tests/test_changes.py).
    deadline = time.monotonic() + 60
    while True:
        feed = db.execute("SELECT count(*) FROM pyxp.changes(0, 1000) "
                          "WHERE transaction_type = 'RULES_ADJUSTMENT'").fetchone()
        if feed == (len(adjustments),) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert feed == (len(adjustments),)
    # Idempotent; and a simulation of the applied version now changes nothing.
    again = db.execute("SELECT * FROM pyxp.apply_rules_retroactively(%s)", (candidate_id,)).fetchone()
    assert again is not None and again[3] is True and again[4] == 0
    assert db.execute("SELECT max(id) FROM pyxp.xp_transactions").fetchone()[0] == before + len(adjustments)  # type: ignore[index]
    assert db.execute("SELECT count(*) FROM pyxp.simulate_rules(%s) WHERE total_xp_then <> total_xp_now",
                      (candidate_id,)).fetchone() == (0,)
    # An adjustment is not reversed: the rules are.
    with nothing_written(db), pytest.raises(psycopg.Error) as refused:
        db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'no')", (before + 1,))
    assert refused.value.sqlstate == "PX014"


def test_awards_during_a_retroactive_application_are_neither_lost_nor_counted_twice(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    run_calls(db)
    candidate_id = install(db, variant("concurrent", formulas), activate=False)
    done: list[Any] = []

    def award(n: int) -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            done.append(conn.execute("SELECT xp_amount FROM pyxp.award('0xmod1', 'CAMPAIGN_APPROVED', %s)",
                                     (f"during-{n}",)).fetchone())

    with psycopg.connect(conninfo) as applying:
        applying.execute("SELECT * FROM pyxp.apply_rules_retroactively(%s)", (candidate_id,)).fetchall()
        threads = [threading.Thread(target=award, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        assert done == []  # they wait for the application's commit
        applying.commit()
    for thread in threads:
        thread.join()
    assert sorted(done) == [(150,)] * 8  # under the new rules
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []
    assert db.execute("SELECT count(*) FROM pyxp.simulate_rules(%s) WHERE total_xp_then <> total_xp_now",
                      (candidate_id,)).fetchone() == (0,)


def test_refusals_write_nothing(db: psycopg.Connection[Any], unchanged: Any, login_role: Any,
                                connect_as: Any) -> None:
    # On a ledger with no balance yet too: simulate_rules checked the id only when it joined a balance,
    # and answered "no wallets" for any id (a hostile test, 0037).
    for call in ("SELECT * FROM pyxp.simulate_rules(987654)", "SELECT * FROM pyxp.simulate_rules(NULL)"):
        with unchanged(), pytest.raises(psycopg.Error) as refused:
            db.execute(call)
        assert refused.value.sqlstate == "PX027", call
    run_calls(db)
    for call in ("SELECT * FROM pyxp.simulate_rules(987654)", "SELECT pyxp.simulation_report(987654)",
                 "SELECT * FROM pyxp.apply_rules_retroactively(987654)", "SELECT * FROM pyxp.simulate_rules(NULL)"):
        with unchanged(), pytest.raises(psycopg.Error) as refused:
            db.execute(call)
        assert refused.value.sqlstate == "PX027", call
    candidate_id = install(db, variant("refused", formulas), activate=False)
    writer = connect_as(login_role("pyxp_writer"))
    with unchanged(), pytest.raises(psycopg.errors.InsufficientPrivilege):
        writer.execute("SELECT * FROM pyxp.apply_rules_retroactively(%s)", (candidate_id,))
    assert writer.execute("SELECT count(*) FROM pyxp.simulate_rules(%s)", (candidate_id,)).fetchone()[0] > 0  # type: ignore[index]
    with unchanged(), pytest.raises(psycopg.Error) as refused:
        db.execute("SELECT * FROM pyxp.award('0xx', 'CAMPAIGN_APPROVED', 'rules.adjustment:1:0xx')")
    assert refused.value.sqlstate == "PX016"
    for reserved in ("RULES_ADJUSTMENT", "Reversal"):
        definition = variant("reserved", lambda d: rule(d, "CAMPAIGN_APPROVED").update(action=reserved))
        with unchanged(), pytest.raises(psycopg.Error) as refused:
            install(db, definition, activate=False)
        assert refused.value.sqlstate == "PX024" and "reserved" in str(refused.value)


def test_installing_without_activating_leaves_the_active_ruleset(db: psycopg.Connection[Any]) -> None:
    awards_lock_free = db.execute("SELECT * FROM pyxp.install_ruleset(%s, 'x', false)",
                                  (Jsonb(variant("quiet", formulas)),)).fetchone()
    assert awards_lock_free is not None and awards_lock_free[3:] == (True, False, 0)
    assert db.execute("SELECT name FROM pyxp.rulesets WHERE is_active").fetchone() == ("winstory",)
    again = db.execute("SELECT created, activated FROM pyxp.install_ruleset(%s, 'x', false)",
                       (Jsonb(variant("quiet", formulas)),)).fetchone()
    assert again == (False, False)


def test_cli_install_simulate_and_apply_retroactively(conninfo: str, db: psycopg.Connection[Any], tmp_path: Any) -> None:
    run_calls(db)
    source = load_ruleset("winstory").source.replace('name = "winstory"', 'name = "winstory-next"').replace(
        "earn_xp = 100\n", "earn_xp = 130\n", 1)
    path = tmp_path / "next.toml"
    path.write_text(source)
    runner = CliRunner()
    base = ["--database-url", conninfo, "rules"]
    installed = runner.invoke(cli, [*base, "install", str(path)])
    assert installed.exit_code == 0 and "installed (not active)" in installed.output, installed.output
    listed = runner.invoke(cli, [*base, "list", "--json"])
    assert {(r["name"], r["active"]) for r in json.loads(listed.output)} == {("winstory", True), ("winstory-next", False)}

    before = db.execute("SELECT count(*), sum(total_xp) FROM pyxp.xp_balances").fetchone()
    shown = runner.invoke(cli, [*base, "simulate", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "simulation of winstory-next v1" in shown.output and "per action" in shown.output
    assert "largest changes" in shown.output and "would level up" in shown.output
    as_json = json.loads(runner.invoke(cli, [*base, "simulate", str(path), "--json", "--top", "3"]).output)
    assert len(as_json["top_changes"]) <= 3 and as_json["summary"]["wallets"] == before[0]  # type: ignore[index]
    assert db.execute("SELECT count(*), sum(total_xp) FROM pyxp.xp_balances").fetchone() == before

    applied = runner.invoke(cli, [*base, "apply", str(path), "--retroactive"])
    assert applied.exit_code == 0 and "wallet(s) adjusted" in applied.output, applied.output
    assert db.execute("SELECT sum(total_xp) FROM pyxp.xp_balances").fetchone() == (as_json["summary"]["xp_then"],)
    again = runner.invoke(cli, [*base, "apply", str(path), "--retroactive"])
    assert "nothing added; 0 balance(s) changed level" in again.output, again.output
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_cli_retroactive_curve_change_says_what_changed(conninfo: str, db: psycopg.Connection[Any],
                                                        tmp_path: Any) -> None:
    """A curve-only change adds no row but changes levels: the CLI said "was already applied
    retroactively: nothing added" (a hostile test)."""
    run_calls(db)
    source = load_ruleset("winstory").source.replace('name = "winstory"', 'name = "winstory-curve"').replace(
        "thresholds = [0, 100, 250, 500, 1000, 2000, 4000]", "thresholds = [0, 10, 25, 50, 100, 200, 400]")
    path = tmp_path / "curve.toml"
    path.write_text(source)
    levels = "SELECT user_wallet, current_level, xp_to_next_level FROM pyxp.xp_balances"
    before = set(db.execute(levels).fetchall())
    applied = CliRunner().invoke(cli, ["--database-url", conninfo, "rules", "apply", str(path), "--retroactive"])
    assert applied.exit_code == 0, applied.output
    changed = len(set(db.execute(levels).fetchall()) - before)
    assert changed > 0
    assert applied.output.strip().endswith(f"nothing added; {changed} balance(s) changed level on activation")
    assert "already applied" not in applied.output


def test_applying_again_brings_balances_back_to_the_simulation(db: psycopg.Connection[Any]) -> None:
    """Idempotent by the numbers: after a reversal, or another version applied meanwhile, applying
    a version again appends what brings every balance back to its simulation, and nothing more."""
    run_calls(db)
    first = install(db, variant("first", formulas), activate=False)
    second = install(db, variant("second", floor), activate=False)

    def apply(ruleset_id: int) -> tuple[Any, ...]:
        row = db.execute("SELECT already_applied, wallets_adjusted FROM pyxp.apply_rules_retroactively(%s)",
                         (ruleset_id,)).fetchone()
        assert row is not None
        return tuple(row)

    def off(ruleset_id: int) -> int:
        return int(db.execute("SELECT count(*) FROM pyxp.simulate_rules(%s) WHERE total_xp_then <> total_xp_now",
                              (ruleset_id,)).fetchone()[0])  # type: ignore[index]

    assert apply(first)[0] is False and off(first) == 0
    approved = db.execute("SELECT id FROM pyxp.xp_transactions WHERE transaction_type = 'CAMPAIGN_APPROVED' "
                          "AND user_wallet = '0xcreator'").fetchone()[0]  # type: ignore[index]
    db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'after the change')", (approved,))
    assert off(first) == 1                      # the reversal took back 100, the row is worth 150 now
    assert apply(first) == (False, 1) and off(first) == 0
    assert apply(first) == (True, 0)
    assert apply(second)[0] is False and off(second) == 0
    assert apply(first)[0] is False and off(first) == 0   # A, B, then A again
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []
    # The report's actions add up to its summary, the earlier adjustments included (a hostile
    # test found them left out of the actions only).
    report = db.execute("SELECT pyxp.simulation_report(%s)", (second,)).fetchone()[0]  # type: ignore[index]
    assert sum(a["xp_now"] for a in report["actions"]) == report["summary"]["xp_now"]
    assert sum(a["xp_then"] for a in report["actions"]) == report["summary"]["xp_then"]
    assert any(a["action"] == "RULES_ADJUSTMENT" and a["xp_then"] == 0 for a in report["actions"])


def test_a_candidate_formula_needing_an_input_the_rows_lack_is_refused(db: psycopg.Connection[Any],
                                                                       unchanged: Any) -> None:
    run_calls(db)
    candidate = install(db, variant("needs-input", lambda d: rule(d, "CAMPAIGN_APPROVED").update(
        coefficients={"PRICE_COMPLETION": "2"})), activate=False)
    with unchanged(), pytest.raises(psycopg.Error) as refused:
        db.execute("SELECT * FROM pyxp.simulate_rules(%s)", (candidate,))
    assert refused.value.sqlstate == "PX018" and "PRICE_COMPLETION" in str(refused.value)


def test_the_downgrade_below_0007_is_refused_while_adjustments_exist(fresh_database: Callable[[], str]) -> None:
    target = fresh_database()
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        run_calls(conn)
        conn.execute("SELECT * FROM pyxp.apply_rules_retroactively(%s)",
                      (install(conn, variant("kept", formulas), activate=False),))
    schema.downgrade(target, "0007")  # 0008's downgrade (checkpoints, numbering) has nothing to refuse
    with pytest.raises(psycopg.Error) as refused:
        schema.downgrade(target, "0006")
    assert refused.value.sqlstate == "PX024" and schema.current_revision(target) == "0007"


# Found by a hostile test (2026-11-27, 0027).

def test_a_generic_awards_context_is_not_a_formula_input(db: psycopg.Connection[Any], unchanged: Any) -> None:
    """A generic award's metadata is its context with its params; its formula inputs are its
    params only. A context note named like an input made the simulation fail with 22P02 (a text)
    or use it as the input (a number) at 0026; now the row has no such input (PX018), as a live
    award would. A param and a context key of one name with two values are refused since 0041
    (up to 0040 the metadata kept the param's: what the simulation reads either way)."""
    db.execute("SELECT * FROM pyxp.award('0xctx', 'CAMPAIGN_APPROVED', 'ctx-1', '{}', "
               "'{\"PRICE_COMPLETION\": \"see ticket 42\"}')")
    with unchanged(), pytest.raises(psycopg.Error, match="context key 'PRICE_COMPLETION' is also a param"):
        db.execute("SELECT * FROM pyxp.award('0xctx', 'Completion_Submit_B2C_Paid', 'ctx-2', "
                   "'{\"PRICE_COMPLETION\": 250}', '{\"PRICE_COMPLETION\": 9999}')")
    db.execute("SELECT * FROM pyxp.award('0xctx', 'Completion_Submit_B2C_Paid', 'ctx-2', "
               "'{\"PRICE_COMPLETION\": 250}', '{\"note\": 9999}')")
    paid = install(db, variant("paid-twice", lambda d: rule(d, "Completion_Submit_B2C_Paid").update(
        coefficients={"PRICE_COMPLETION": "2"})), activate=False)
    constant = int(rule(load_ruleset("winstory").definition(), "Completion_Submit_B2C_Paid")["constant"])
    then = db.execute("SELECT total_xp_then FROM pyxp.simulate_rules(%s)", (paid,)).fetchall()
    assert then == [(100 + constant + 2 * 250,)]  # the params' 250
    for context in ('"see ticket 42"', "5000"):
        db.execute("SELECT * FROM pyxp.award('0xctx2', 'CAMPAIGN_APPROVED', %s, '{}', %s)",
                   (f"ctx-{context}", f'{{"PRICE_COMPLETION": {context}}}'))
        approved = install(db, variant(f"approved-by-price-{len(context)}", lambda d: rule(d, "CAMPAIGN_APPROVED").update(
            coefficients={"PRICE_COMPLETION": "2"})), activate=False)
        with unchanged(), pytest.raises(psycopg.Error) as refused:
            db.execute("SELECT * FROM pyxp.apply_rules_retroactively(%s)", (approved,))
        assert refused.value.sqlstate == "PX018" and "PRICE_COMPLETION" in str(refused.value), refused.value


def test_a_candidate_amount_over_the_award_limit_is_refused(db: psycopg.Connection[Any], unchanged: Any) -> None:
    """A live award over 10^15 XP is refused (PX004); so is a simulation that would count one (at
    0026 a retroactive application wrote an adjustment of 2.5 * 10^15 XP)."""
    db.execute("SELECT * FROM pyxp.award('0xbig', 'Completion_Submit_B2C_Paid', 'big-1', '{\"PRICE_COMPLETION\": 250}')")
    huge = install(db, variant("huge", lambda d: rule(d, "Completion_Submit_B2C_Paid").update(
        coefficients={"PRICE_COMPLETION": "10000000000000"})), activate=False)
    for call in ("SELECT * FROM pyxp.simulate_rules(%s)", "SELECT * FROM pyxp.apply_rules_retroactively(%s)"):
        with unchanged(), pytest.raises(psycopg.Error) as refused:
            db.execute(call, (huge,))
        assert refused.value.sqlstate == "PX004" and "10^15" in str(refused.value.diag.message_hint)


def test_a_retroactive_application_stops_at_the_feeds_bound(db: psycopg.Connection[Any], unchanged: Any) -> None:
    """Its adjustments count among the rows of its transaction (0028): past 15,728,640, a cursor could
    not rank them in their feed group (sql/11_changes.sql). Refused (PX023), nothing written; the
    rows before are as if another batch of the transaction had written them."""
    run_calls(db)
    candidate_id = install(db, variant("bound", everything), activate=False)
    with unchanged(), pytest.raises(psycopg.Error) as refused, db.transaction():
        db.execute("SELECT set_config('pyxp.transaction_rows', "
                   "pyxp.transaction_mark(pg_current_xact_id()) || ':15728640', true)")
        db.execute("SELECT * FROM pyxp.apply_rules_retroactively(%s)", (candidate_id,))
    assert refused.value.sqlstate == "PX023" and "15728640" in str(refused.value)


def test_retroactive_applications_in_one_transaction_each_write_their_rows(db: psycopg.Connection[Any]) -> None:
    """Their adjustments' keys differ (0027): at 0026 the second application's rows were taken for
    replays of the first's, nothing was written, and the balance stayed off the simulation."""
    run_calls(db)
    first = install(db, variant("first", formulas), activate=False)
    second = install(db, variant("second", floor), activate=False)
    approved = db.execute("SELECT id FROM pyxp.xp_transactions WHERE transaction_type = 'CAMPAIGN_APPROVED' "
                          "AND user_wallet = '0xcreator'").fetchone()
    assert approved is not None
    with db.transaction():
        db.execute("SELECT * FROM pyxp.apply_rules_retroactively(%s)", (first,))
        db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'in the same transaction')", (approved[0],))
        db.execute("SELECT * FROM pyxp.apply_rules_retroactively(%s)", (first,))
        db.execute("SELECT * FROM pyxp.apply_rules_retroactively(%s)", (second,))
        db.execute("SELECT * FROM pyxp.apply_rules_retroactively(%s)", (first,))
    assert db.execute("SELECT count(*) FROM pyxp.simulate_rules(%s) WHERE total_xp_then <> total_xp_now",
                      (first,)).fetchone() == (0,)
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


# 0043: the simulation reads the ledger once and sorts its rows once.

@pytest.mark.parametrize("edited", ['"abc"', '{"n": 300}', '[300]', 'true'])
def test_an_input_that_is_not_a_number_is_refused_naming_its_row(db: psycopg.Connection[Any], unchanged: Any,
                                                                   edited: str) -> None:
    """The writer stores formula inputs as numbers; an owner who edits one to a text, an object,
    an array or a boolean makes the row unreadable under a formula. The simulation failed with
    22P02 or 22023 without naming the row (0042, which made audit() report it); it is refused with
    PX004 naming the transaction and the input, and a retroactive application writes nothing."""
    run_calls(db)
    (paid,), = db.execute("SELECT transaction_id FROM pyxp.award('0xedited', 'Completion_Submit_B2C_Paid', 'ed-1',"
                          " '{\"PRICE_COMPLETION\": 300}')").fetchall()
    edit_ledger(db, "UPDATE pyxp.xp_transactions SET metadata = jsonb_set(metadata, '{PRICE_COMPLETION}', %s)"
                    " WHERE id = %s", Jsonb(json.loads(edited)), paid)
    candidate = install(db, variant("edited", formulas), activate=False)
    for call in ("SELECT * FROM pyxp.simulate_rules(%s)", "SELECT pyxp.simulation_report(%s)",
                 "SELECT * FROM pyxp.apply_rules_retroactively(%s)"):
        with unchanged(), pytest.raises(psycopg.Error) as refused:
            db.execute(call, (candidate,))
        assert refused.value.sqlstate == "PX004", (call, refused.value)
        assert f"transaction {paid}: input PRICE_COMPLETION" in str(refused.value), refused.value
    # A number kept as a string is what pyxp.rule_amount reads: the simulation reads it too.
    edit_ledger(db, "UPDATE pyxp.xp_transactions SET metadata = jsonb_set(metadata, '{PRICE_COMPLETION}', '\" 3e2\"')"
                    " WHERE id = %s", paid)
    then = db.execute("SELECT total_xp_then FROM pyxp.simulate_rules(%s) WHERE user_wallet = '0xedited'",
                      (candidate,)).fetchall()
    assert then == [(int(rule(variant("x", formulas), "Completion_Submit_B2C_Paid")["constant"]) + 2 * 300,)]


def sorted_and_read(db: psycopg.Connection[Any], call: str, *params: Any) -> tuple[int, int]:
    """The rows sorted by the statements of ``call`` that read the ledger (every Sort node's rows,
    times its loops), and the rows they read of the ledger's partitions, from auto_explain's plans
    with their counts."""
    plans: list[dict[str, Any]] = []

    def keep(notice: psycopg.errors.Diagnostic) -> None:
        message = notice.message_primary or ""
        if "plan:" in message:
            plans.append(json.loads(message.split("plan:", 1)[1])["Plan"])

    db.add_notice_handler(keep)
    try:
        for setting in ("LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
                        "SET auto_explain.log_nested_statements = on", "SET auto_explain.log_analyze = on",
                        "SET auto_explain.log_timing = off", "SET auto_explain.log_format = json",
                        "SET client_min_messages = log"):
            db.execute(setting)
        db.execute(call, params).fetchall()
    finally:
        db.execute("RESET client_min_messages")
        db.execute("RESET auto_explain.log_min_duration")
        db.remove_notice_handler(keep)

    def reads_ledger(node: dict[str, Any]) -> bool:
        return node.get("Relation Name", "").startswith("xp_transactions") and "Scan" in node["Node Type"]

    ledger_statements = [list(plan_nodes(plan)) for plan in plans if any(map(reads_ledger, plan_nodes(plan)))]
    sorted_rows = sum(node["Actual Rows"] * node["Actual Loops"]
                      for nodes in ledger_statements for node in nodes if node["Node Type"] == "Sort")
    read = sum(node["Actual Rows"] * node["Actual Loops"]
               for nodes in ledger_statements for node in nodes if reads_ledger(node))
    return sorted_rows, read


def test_a_caps_simulation_sorts_each_ledger_row_once(db: psycopg.Connection[Any]) -> None:
    """0042 materialized the ledger's rows twice and sorted them four times (by wallet and
    allowance for the caps, by id twice to join the caps' cuts and the reversals' originals back,
    by reversed id): 71 s of a cap's simulation at 10M rows. 0043 sorts each row once, by wallet
    (30 s), and reads the ledger once when no wallet has to be folded in order."""
    events = [{"wallet": f"0xsort{n % 40}", "action": action, "idempotency_key": f"sort:{n}"}
              for n in range(600) for action in [("MODERATION_VALIDATED_BY_MODERATOR", "CAMPAIGN_APPROVED",
                                                  "MODERATION_REFUSED_BY_MODERATOR")[n % 3]]]
    db.execute("SELECT * FROM pyxp.award_many(%s)", (Jsonb(events),))
    (rows,), = db.execute("SELECT count(*) FROM pyxp.xp_transactions").fetchall()
    candidate = install(db, variant("sorted-once", capped), activate=False)
    sorted_rows, read = sorted_and_read(db, "SELECT * FROM pyxp.simulate_rules(%s)", candidate)
    rules = len(variant("x", capped)["rules"])  # (sorted to number the candidate's allowances)
    assert read == rows and sorted_rows <= rows + rules, (read, sorted_rows, rows)


# Found by a differential review of 0043 (helper-73): owners' edits that 0042 and 0043 read apart.

def capped_approvals(db: psycopg.Connection[Any]) -> int:
    """A candidate capping CAMPAIGN_APPROVED (100 XP a row) at 120 XP a week."""
    return install(db, variant("approvals-capped", lambda d: rule(d, "CAMPAIGN_APPROVED").update(
        cap={"max_xp": 120, "per": "week"})), activate=False)


def reversed_by_key(db: psycopg.Connection[Any], key: str) -> None:
    db.execute("SELECT * FROM pyxp.reverse_transaction((SELECT id FROM pyxp.xp_transactions"
               " WHERE idempotency_key = %s), 'test')", (key,))


@pytest.mark.parametrize("edit", ["original deleted", "reverses an adjustment"])
def test_a_reversal_of_a_row_the_fold_does_not_hold_takes_back_nothing(db: psycopg.Connection[Any],
                                                                      edit: str) -> None:
    """A wallet folded in order (a reversal frees a capped allowance) with a reversal of a row its
    rows do not hold (deleted, or `reverses` edited to name an adjustment): the fold's state became
    NULL and the total fell back to the sum that ignores order, which since 0043's first form
    counted the freeing reversal as nothing: 120 where the fold gives 20 (g1 100, g3 20 by the cap,
    g1's reversal -100; g2 gone, or g2 0 by the cap and its reversal taking back nothing)."""
    for key in ("g1", "g2", "g3"):
        db.execute("SELECT * FROM pyxp.award('0xw', 'CAMPAIGN_APPROVED', %s)", (key,))
    reversed_by_key(db, "g1")
    reversed_by_key(db, "g2")
    if edit == "original deleted":
        edit_ledger(db, "DELETE FROM pyxp.xp_transactions WHERE idempotency_key = 'g2'")
    else:
        db.execute("SELECT * FROM pyxp.award('0xv', 'CAMPAIGN_APPROVED', 'v1')")
        db.execute("SELECT * FROM pyxp.apply_rules_retroactively(%s)", (install(db, variant(
            "approvals-150", lambda d: rule(d, "CAMPAIGN_APPROVED").update(constant="150")), activate=False),))
        edit_ledger(db, "UPDATE pyxp.xp_transactions SET reverses = (SELECT id FROM pyxp.xp_transactions"
                        " WHERE transaction_type = 'RULES_ADJUSTMENT' AND user_wallet = '0xv')"
                        " WHERE reverses = (SELECT id FROM pyxp.xp_transactions WHERE idempotency_key = 'g2')")
    then = dict(db.execute("SELECT user_wallet, total_xp_then FROM pyxp.simulate_rules(%s)",
                           (capped_approvals(db),)).fetchall())
    assert then["0xw"] == 20, then


def test_an_input_edited_to_null_is_refused_naming_its_row(db: psycopg.Connection[Any], unchanged: Any) -> None:
    """The writer refuses a null input (PX004); edited to null in a row, the candidate's formula
    gave the row no amount, a folded wallet's state became NULL (its total then ignored the order:
    120 where 20 is right), and audit() saw nothing. The simulation refuses it with PX004 naming the
    row, and the audit reports it (tests/test_audit_checkpoints.py)."""
    for key in ("g1", "g3"):
        db.execute("SELECT * FROM pyxp.award('0xw', 'CAMPAIGN_APPROVED', %s)", (key,))
    (paid,), = db.execute("SELECT transaction_id FROM pyxp.award('0xw', 'Completion_Submit_B2C_Paid', 'p1',"
                          " '{\"PRICE_COMPLETION\": 40}')").fetchall()
    reversed_by_key(db, "g1")
    edit_ledger(db, "UPDATE pyxp.xp_transactions SET metadata = jsonb_set(metadata, '{PRICE_COMPLETION}', 'null')"
                    " WHERE id = %s", paid)
    assert [row[0] for row in db.execute("SELECT * FROM pyxp.audit()")] == ["amount_mismatch"]
    candidate = capped_approvals(db)
    with unchanged(), pytest.raises(psycopg.Error) as refused:
        db.execute("SELECT * FROM pyxp.simulate_rules(%s)", (candidate,))
    assert refused.value.sqlstate == "PX004" and f"transaction {paid}: input PRICE_COMPLETION" in str(refused.value)


def test_the_report_counts_a_freeing_reversal_of_a_wallet_without_a_balance(db: psycopg.Connection[Any]) -> None:
    """A wallet whose balance row an owner deleted is not among the folded wallets of the report
    (their totals come from the balances): its rows count what applies when order does not matter.
    Its freeing reversal counted nothing there since 0043's first form (REVERSAL 0); it counts the
    opposite of what its original asks (-100)."""
    db.execute("SELECT * FROM pyxp.award('0xx', 'CAMPAIGN_APPROVED', 'x1')")
    reversed_by_key(db, "x1")
    db.execute("SELECT * FROM pyxp.award('0xx', 'CAMPAIGN_APPROVED', 'x2')")
    db.execute("ALTER TABLE pyxp.xp_balances DISABLE TRIGGER USER")
    try:
        db.execute("DELETE FROM pyxp.xp_balances WHERE user_wallet = '0xx'")
    finally:
        db.execute("ALTER TABLE pyxp.xp_balances ENABLE TRIGGER USER")
    (report,), = db.execute("SELECT pyxp.simulation_report(%s)", (capped_approvals(db),)).fetchall()
    assert {a["action"]: a["xp_then"] for a in report["actions"]}["REVERSAL"] == -100, report["actions"]
