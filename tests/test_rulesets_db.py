"""Rulesets in the database (SPEC sections 1, 2, 8): applying a config seed creates,
activates or re-activates versions; ledger rows keep their rule; malformed definitions
and bad TOML files never reach the tables."""

from __future__ import annotations

import copy
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from pyxp import XP, schema
from pyxp import errors as E
from pyxp.ruleset_config import ConfigError, load_ruleset


def winstory_text() -> str:
    return (resources.files("pyxp") / "rulesets" / "winstory.toml").read_text(encoding="utf-8")


def write(tmp_path: Path, text: str, name: str = "winstory.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def modified_winstory(tmp_path: Path) -> str:
    """winstory.toml with the free B2C submission worth 150 instead of 100."""
    text = winstory_text()
    old = 'condition = "free"\nearn_xp = 100\ndescription = "Completion submitted on a free B2C mission'
    assert text.count(old) == 1
    return write(tmp_path, text.replace(old, old.replace("earn_xp = 100", "earn_xp = 150")))


def rulesets(db: psycopg.Connection[Any]) -> list[tuple[str, int, bool]]:
    return db.execute("SELECT name, version, is_active FROM pyxp.rulesets ORDER BY ruleset_id").fetchall()


def active(db: psycopg.Connection[Any]) -> tuple[str, int]:
    rows = db.execute("SELECT name, version FROM pyxp.rulesets WHERE is_active").fetchall()
    assert len(rows) == 1, "exactly one version is active"
    return rows[0]


def award(db: psycopg.Connection[Any], wallet: str, action: str, key: str) -> tuple[int, int]:
    row = db.execute("SELECT transaction_id, xp_amount FROM pyxp.award(wallet => %s, action => %s,"
                     " idempotency_key => %s)", (wallet, action, key)).fetchone()
    assert row is not None
    return row


# --------------------------------------------------------------------------- versions


def test_the_template_has_winstory_version_1_active(db: psycopg.Connection[Any]) -> None:
    assert rulesets(db) == [("winstory", 1, True)]


def test_applying_the_active_ruleset_again_changes_nothing(
        conninfo: str, db: psycopg.Connection[Any], unchanged: Any) -> None:
    """SPEC 8: applying the same file again changes nothing."""
    before = db.execute("SELECT * FROM pyxp.rulesets").fetchall()
    rules = db.execute("SELECT count(*) FROM pyxp.rules").fetchone()
    with unchanged():
        result = schema.apply_ruleset(conninfo, "winstory")
    assert (result.name, result.version, result.created, result.activated, result.balances_changed) == (
        "winstory", 1, False, False, 0)
    assert db.execute("SELECT * FROM pyxp.rulesets").fetchall() == before  # activated_at untouched too
    assert db.execute("SELECT count(*) FROM pyxp.rules").fetchone() == rules


def test_applying_the_same_file_from_a_path_changes_nothing(
        conninfo: str, db: psycopg.Connection[Any], tmp_path: Path, unchanged: Any) -> None:
    with unchanged():
        result = schema.apply_ruleset(conninfo, write(tmp_path, winstory_text()))
    assert (result.version, result.created, result.activated) == (1, False, False)


def test_apply_ruleset_accepts_a_pathlib_path(
        conninfo: str, db: psycopg.Connection[Any], tmp_path: Path) -> None:
    """apply_ruleset takes "a TOML path"; a pathlib.Path is one."""
    result = schema.apply_ruleset(conninfo, Path(modified_winstory(tmp_path)))  # type: ignore[arg-type]
    assert (result.name, result.version, result.created) == ("winstory", 2, True)
    assert active(db) == ("winstory", 2)


def test_a_modified_file_creates_and_activates_version_2(
        conninfo: str, db: psycopg.Connection[Any], xp: XP, tmp_path: Path) -> None:
    """SPEC 8: a file that differs from the active version creates and activates a new one."""
    result = schema.apply_ruleset(conninfo, modified_winstory(tmp_path))
    assert (result.name, result.version, result.created, result.activated) == ("winstory", 2, True, True)
    assert rulesets(db) == [("winstory", 1, False), ("winstory", 2, True)]
    assert xp.award("0x_completer", "Completion_Submit_B2C_Free", "k1").xp == 150
    # The new version's rules and curve are stored with it.
    assert db.execute("SELECT count(*) FROM pyxp.rules WHERE ruleset_id = %s",
                      (result.ruleset_id,)).fetchone() == (21,)
    assert db.execute("SELECT count(*) > 0 FROM pyxp.level_thresholds WHERE ruleset_id = %s",
                      (result.ruleset_id,)).fetchone() == (True,)


def test_applying_a_new_version_twice_creates_it_once(
        conninfo: str, db: psycopg.Connection[Any], tmp_path: Path) -> None:
    path = modified_winstory(tmp_path)
    schema.apply_ruleset(conninfo, path)
    result = schema.apply_ruleset(conninfo, path)
    assert (result.version, result.created, result.activated) == (2, False, False)
    assert rulesets(db) == [("winstory", 1, False), ("winstory", 2, True)]


def test_reapplying_old_content_reactivates_the_old_version(
        conninfo: str, db: psycopg.Connection[Any], xp: XP, tmp_path: Path) -> None:
    schema.apply_ruleset(conninfo, modified_winstory(tmp_path))
    result = schema.apply_ruleset(conninfo, "winstory")
    assert (result.name, result.version, result.created, result.activated) == ("winstory", 1, False, True)
    assert rulesets(db) == [("winstory", 1, True), ("winstory", 2, False)]
    assert xp.award("0x_completer", "Completion_Submit_B2C_Free", "k1").xp == 100


def test_exactly_one_version_is_active_through_switches(
        conninfo: str, db: psycopg.Connection[Any], tmp_path: Path) -> None:
    modified = modified_winstory(tmp_path)
    for target, expected in [(modified, ("winstory", 2)), ("winstory-flows", ("winstory-flows", 1)),
                             ("winstory", ("winstory", 1)), (modified, ("winstory", 2)),
                             ("winstory-flows", ("winstory-flows", 1))]:
        schema.apply_ruleset(conninfo, target)
        assert active(db) == expected
    assert len(rulesets(db)) == 3


def test_the_database_refuses_a_second_active_version(
        conninfo: str, db: psycopg.Connection[Any], unchanged: Any) -> None:
    schema.apply_ruleset(conninfo, "winstory-flows")
    with unchanged(), pytest.raises(psycopg.errors.UniqueViolation):
        db.execute("UPDATE pyxp.rulesets SET is_active = true")


def test_ledger_rows_keep_their_rule_after_a_switch(
        conninfo: str, db: psycopg.Connection[Any], xp: XP, tmp_path: Path) -> None:
    """SPEC 1: ledger rows keep the id of the rule that produced them."""
    first_id, _ = award(db, "0x_completer", "Completion_Submit_B2C_Free", "k1")
    rule_v1 = db.execute("SELECT rule_id FROM pyxp.xp_transactions WHERE id = %s", (first_id,)).fetchone()
    schema.apply_ruleset(conninfo, modified_winstory(tmp_path))
    second_id, amount = award(db, "0x_completer", "Completion_Submit_B2C_Free", "k2")
    assert amount == 150
    rows = db.execute(
        "SELECT t.id, t.xp_amount, rs.name, rs.version, ru.action, ru.formula"
        "  FROM pyxp.xp_transactions t JOIN pyxp.rules ru USING (rule_id)"
        "  JOIN pyxp.rulesets rs USING (ruleset_id)"
        " ORDER BY t.id").fetchall()
    assert rows == [
        (first_id, 100, "winstory", 1, "Completion_Submit_B2C_Free", "100"),
        (second_id, 150, "winstory", 2, "Completion_Submit_B2C_Free", "150"),
    ]
    assert db.execute("SELECT rule_id FROM pyxp.xp_transactions WHERE id = %s",
                      (first_id,)).fetchone() == rule_v1
    assert xp.audit() == []
    schema.apply_ruleset(conninfo, "winstory-flows")
    assert xp.audit() == []
    assert xp.balance("0x_completer").total_xp == 250


def test_replay_after_a_switch_returns_the_original_result(
        conninfo: str, db: psycopg.Connection[Any], xp: XP, tmp_path: Path, unchanged: Any) -> None:
    """A retry after the rules changed is still the original award, not a new one."""
    first = xp.award("0x_completer", "Completion_Submit_B2C_Free", "k1")
    schema.apply_ruleset(conninfo, modified_winstory(tmp_path))
    with unchanged():
        again = xp.award("0x_completer", "Completion_Submit_B2C_Free", "k1")
    assert again.replayed
    assert [(r.transaction_id, r.xp_amount, r.total_xp) for r in again.rows] == [
        (r.transaction_id, r.xp_amount, r.total_xp) for r in first.rows]


def test_switching_to_winstory_flows_changes_the_actions(
        conninfo: str, db: psycopg.Connection[Any], xp: XP, unchanged: Any) -> None:
    """SPEC 2: winstory-flows awards COMPLETION_SUBMITTED +10 and has no per-type completion rules."""
    with unchanged(), pytest.raises(E.UnknownAction):
        xp.award("0x_completer", "COMPLETION_SUBMITTED", "k0")
    result = schema.apply_ruleset(conninfo, "winstory-flows")
    assert (result.name, result.version, result.created, result.activated) == (
        "winstory-flows", 1, True, True)
    assert xp.award("0x_completer", "COMPLETION_SUBMITTED", "k1").xp == 10
    assert xp.award("0x_completer", "COMPLETION_100_VALIDATED", "k2").xp == 100
    for action in ("Completion_Submit_B2C_Free", "Completion_Refused_B2C", "Completion_Submit_Individual"):
        with unchanged(), pytest.raises(E.UnknownAction):
            xp.award("0x_completer", action, f"k-{action}")
    # Creation, moderation and onboarding rules are the same.
    assert xp.award("0x_creator", "B2C_MINT", "k3").xp == 1000
    assert xp.award("0x_moderator", "MODERATION_REFUSED_BY_MODERATOR", "k4").xp == -1
    assert xp.audit() == []


# --------------------------------------------------------------------------- activation history

IN_FORCE_AT = """
    SELECT a.ruleset_id FROM pyxp.ruleset_activations a
     WHERE a.activated_at <= %s
     ORDER BY a.activation_id DESC
     LIMIT 1"""  # README "Which ruleset was in force when"


def activations(db: psycopg.Connection[Any]) -> list[tuple[int, int | None, bool]]:
    return db.execute("SELECT ruleset_id, previous_ruleset_id, reconstructed FROM pyxp.ruleset_activations"
                      " ORDER BY activation_id").fetchall()


def test_every_activation_is_kept_in_order_with_the_ruleset_it_replaced(
        conninfo: str, db: psycopg.Connection[Any], xp: XP, tmp_path: Path) -> None:
    """rulesets.activated_at keeps a ruleset's latest activation only (a DBA's review, 0039): after
    v1 -> v2 -> v1 -> flows, the history (0040) holds all four, and the ruleset in force at any instant
    between them is the one that wrote the awards made then."""
    v1 = db.execute("SELECT ruleset_id FROM pyxp.rulesets WHERE is_active").fetchone()[0]  # type: ignore[index]
    modified = modified_winstory(tmp_path)
    made: list[tuple[Any, int]] = []  # (an instant, the ruleset of the rule of an award made then)
    for target in (None, modified, "winstory", "winstory-flows"):
        if target is not None:
            schema.apply_ruleset(conninfo, target)
        action = "COMPLETION_SUBMITTED" if target == "winstory-flows" else "Completion_Submit_B2C_Free"
        row = xp.award("0x_completer", action, f"k-{len(made)}").rows[0]
        made.append(db.execute("SELECT t.created_at, ru.ruleset_id FROM pyxp.xp_transactions t"
                               " JOIN pyxp.rules ru USING (rule_id) WHERE t.id = %s",
                               (row.transaction_id,)).fetchone())  # type: ignore[arg-type]
    v2, flows = (db.execute("SELECT ruleset_id FROM pyxp.rulesets WHERE name = %s AND version = %s",
                            (name, version)).fetchone()[0]  # type: ignore[index]
                 for name, version in (("winstory", 2), ("winstory-flows", 1)))
    assert activations(db) == [(v1, None, False), (v2, v1, False), (v1, v2, False), (flows, v1, False)]
    for at, ruleset in made:
        assert db.execute(IN_FORCE_AT, (at,)).fetchone() == (ruleset,)
    # Each ruleset's activated_at is its last activation's; v1's first one is still there.
    assert db.execute("""
        SELECT r.ruleset_id, count(*), max(a.activated_at) = r.activated_at
          FROM pyxp.rulesets r JOIN pyxp.ruleset_activations a USING (ruleset_id)
         GROUP BY r.ruleset_id, r.activated_at ORDER BY 1""").fetchall() == [(v1, 2, True), (v2, 1, True),
                                                                            (flows, 1, True)]
    assert xp.audit() == []


def test_applying_the_active_ruleset_again_adds_no_activation(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    before = activations(db)
    assert len(before) == 1  # the template's db upgrade activated winstory
    schema.apply_ruleset(conninfo, "winstory")
    assert activations(db) == before


@pytest.mark.parametrize("statement", [
    "UPDATE pyxp.ruleset_activations SET activated_at = activated_at - interval '1 day'",
    "UPDATE pyxp.ruleset_activations SET ruleset_id = ruleset_id",
    "DELETE FROM pyxp.ruleset_activations",
    "TRUNCATE pyxp.ruleset_activations",
])
@pytest.mark.parametrize("replica", [False, True])
def test_the_activation_history_is_append_only_even_for_the_owner(
        conninfo: str, db: psycopg.Connection[Any], unchanged: Any, statement: str, replica: bool) -> None:
    """An UPDATE or DELETE would rewrite which ruleset was in force when: PX013 for the owner too, also
    under session_replication_role = replica (the triggers fire ALWAYS)."""
    schema.apply_ruleset(conninfo, "winstory-flows")
    with unchanged(), db.transaction(), pytest.raises(psycopg.Error) as refused:
        db.execute("SET LOCAL ROLE pyxp_owner")
        if replica:
            db.execute("RESET ROLE; SET LOCAL session_replication_role = replica")
        db.execute(statement)
    assert refused.value.sqlstate == "PX013"
    assert "append-only" in str(refused.value) or "TRUNCATE of pyxp.ruleset_activations" in str(refused.value)


@pytest.mark.parametrize(("tamper", "finding"), [
    ("DELETE FROM pyxp.ruleset_activations WHERE activation_id = (SELECT max(activation_id)"
     " FROM pyxp.ruleset_activations)", "is active, but the last activation"),
    ("DELETE FROM pyxp.ruleset_activations WHERE activation_id = (SELECT max(activation_id) - 1"
     " FROM pyxp.ruleset_activations)", "but the activation before it is of ruleset"),
    ("UPDATE pyxp.rulesets SET activated_at = activated_at - interval '1 hour' WHERE is_active",
     "says it was activated at"),
    ("UPDATE pyxp.ruleset_activations SET activated_at = activated_at + interval '1 hour'"
     " WHERE activation_id = (SELECT max(activation_id) FROM pyxp.ruleset_activations)",
     "says it was activated at"),
    # What the owner may do with the triggers on (a hostile test): an activation passed off as
    # rebuilt by 0040, and a re-activation of the active ruleset, each with activated_at moved to it.
    ("UPDATE pyxp.rulesets SET activated_at = now() - interval '1 hour' WHERE is_active;"
     " INSERT INTO pyxp.ruleset_activations (ruleset_id, activated_at, previous_ruleset_id, reconstructed)"
     " SELECT ruleset_id, activated_at, NULL, true FROM pyxp.rulesets WHERE is_active",
     "is marked rebuilt by 0040, but activation"),
    ("UPDATE pyxp.rulesets SET activated_at = now() - interval '1 hour' WHERE is_active;"
     " INSERT INTO pyxp.ruleset_activations (ruleset_id, activated_at, previous_ruleset_id)"
     " SELECT ruleset_id, activated_at, ruleset_id FROM pyxp.rulesets WHERE is_active",
     "replaced ruleset"),
])
def test_audit_finds_a_history_that_does_not_match_the_rulesets(
        conninfo: str, db: psycopg.Connection[Any], xp: XP, tamper: str, finding: str) -> None:
    """What a superuser's tampering (triggers disabled) leaves: audit() says so (activation_history)."""
    schema.apply_ruleset(conninfo, "winstory-flows")
    schema.apply_ruleset(conninfo, "winstory")
    assert xp.audit() == []
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute("ALTER TABLE pyxp.ruleset_activations DISABLE TRIGGER ruleset_activations_append_only")
        db.execute(tamper)
        db.execute("ALTER TABLE pyxp.ruleset_activations ENABLE ALWAYS TRIGGER ruleset_activations_append_only")
    found = [(f.check_name, f.detail) for f in xp.audit()]
    assert found and {name for name, _ in found} == {"activation_history"}, found
    assert any(finding in detail for _, detail in found), found


# --------------------------------------------------------------------------- malformed definitions


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(definition: dict[str, Any]) -> None:
        target: Any = definition
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
    return change


def _duplicate_action(definition: dict[str, Any]) -> None:
    definition["rules"][1]["action"] = definition["rules"][0]["action"]


def _levels_not_increasing(definition: dict[str, Any]) -> None:
    levels = definition["levels"]
    levels[1]["threshold"], levels[2]["threshold"] = levels[2]["threshold"], levels[1]["threshold"]


def _levels_flat(definition: dict[str, Any]) -> None:
    """Level 3 at the same total as level 2: a zero increment, otherwise consistent."""
    levels = definition["levels"]
    drop = levels[1]["increment"]
    levels[1]["increment"] = 0
    for row in levels[2:]:
        row["threshold"] -= drop


def _level_1_not_at_0(definition: dict[str, Any]) -> None:
    for row in definition["levels"]:
        row["threshold"] += 10


def _level_numbers_skip(definition: dict[str, Any]) -> None:
    definition["levels"][3]["level"] = 5


def _two_last_levels(definition: dict[str, Any]) -> None:
    definition["levels"][0]["is_last"] = True


MALFORMED = {
    "name with spaces": _set(("name",), "Bad Name!"),
    "empty name": _set(("name",), ""),
    "no name": lambda d: d.pop("name"),
    "levels not increasing": _levels_not_increasing,
    "levels flat": _levels_flat,
    "level 1 not at 0": _level_1_not_at_0,
    "levels skip a number": _level_numbers_skip,
    "two last levels": _two_last_levels,
    "no levels": _set(("levels",), []),
    "levels not a list": _set(("levels",), {"1": 0}),
    "rules not a list": _set(("rules",), {"B2C_MINT": 1000}),
    "duplicate action": _duplicate_action,
    "bad action": _set(("rules", 0, "action"), "B2C MINT; DROP TABLE x"),
    "non-numeric constant": _set(("rules", 0, "constant"), "abc"),
    "constant as expression": _set(("rules", 0, "constant"), "1000 + 1"),
    "non-numeric coefficient": _set(("rules", 8, "coefficients"), {"PRICE_COMPLETION": "lots"}),
    "lower-case input": _set(("rules", 8, "coefficients"), {"price": "1"}),
    "unknown campaign type": _set(("rules", 0, "campaign_types"), ["B2B"]),
    "floor not a number": _set(("balance_floor",), "zero"),
}


@pytest.mark.parametrize("problem", sorted(MALFORMED))
def test_install_ruleset_refuses_a_malformed_definition(
        db: psycopg.Connection[Any], unchanged: Any, problem: str) -> None:
    """The compiler produces well-formed definitions; install_ruleset still checks what
    a direct SQL caller sends (PX024), and writes nothing."""
    definition = copy.deepcopy(load_ruleset("winstory").definition())
    definition["name"] = "direct"
    MALFORMED[problem](definition)
    levels = db.execute("SELECT count(*) FROM pyxp.level_thresholds").fetchone()
    with unchanged(), pytest.raises(psycopg.Error) as caught:
        db.execute("SELECT * FROM pyxp.install_ruleset(definition => %s, source => 'direct')",
                   (Jsonb(definition),))
    assert caught.value.sqlstate == "PX024"
    assert db.execute("SELECT count(*) FROM pyxp.level_thresholds").fetchone() == levels
    assert active(db) == ("winstory", 1)


def test_install_ruleset_accepts_a_well_formed_definition(db: psycopg.Connection[Any]) -> None:
    """The control case of the test above: the unmodified definition installs."""
    definition = load_ruleset("winstory").definition()
    definition["name"] = "direct"
    row = db.execute("SELECT name, version, created, activated FROM pyxp.install_ruleset("
                     "definition => %s, source => 'direct')", (Jsonb(definition),)).fetchone()
    assert row == ("direct", 1, True, True)
    assert active(db) == ("direct", 1)


def test_schema_apply_ruleset_raises_invalid_ruleset(conninfo: str, unchanged: Any) -> None:
    compiled = load_ruleset("winstory")
    broken = copy.copy(compiled)
    object.__setattr__(broken, "name", "Bad Name!")
    with unchanged(), pytest.raises(E.InvalidRuleset):
        schema.apply_ruleset(conninfo, broken)


# --------------------------------------------------------------------------- bad TOML files


PAID_FORMULA = 'earn_xp = "100 + PRICE_COMPLETION"'
BAD_FILES = {  # problem -> the file's text
    "invalid TOML": 'name = "winstory"\n[[rules]\n',
    "no rules": 'name = "winstory"\n',
    "non-linear formula": winstory_text().replace(PAID_FORMULA, 'earn_xp = "PRICE_COMPLETION * PRICE_COMPLETION"'),
    "unknown input": winstory_text().replace(PAID_FORMULA, 'earn_xp = "100 + PRICE"'),
    "unknown key": winstory_text().replace(PAID_FORMULA, PAID_FORMULA + '\nbonus_xp = 5'),
}


@pytest.mark.parametrize("problem", sorted(BAD_FILES))
def test_a_bad_toml_file_never_reaches_the_database(
        conninfo: str, db: psycopg.Connection[Any], tmp_path: Path, unchanged: Any, problem: str) -> None:
    text = BAD_FILES[problem]
    assert text != winstory_text()
    with unchanged(), pytest.raises(ConfigError):
        schema.apply_ruleset(conninfo, write(tmp_path, text))
    assert rulesets(db) == [("winstory", 1, True)]


def test_a_missing_ruleset_file_is_a_config_error(conninfo: str, tmp_path: Path, unchanged: Any) -> None:
    with unchanged(), pytest.raises(ConfigError):
        schema.apply_ruleset(conninfo, str(tmp_path / "missing.toml"))


def test_install_ruleset_without_its_source_is_refused(db: psycopg.Connection[Any], unchanged: Any) -> None:
    definition = load_ruleset("winstory-flows").definition()
    with unchanged(), pytest.raises(psycopg.Error) as refused:
        db.execute("SELECT * FROM pyxp.install_ruleset(definition => %s, source => NULL)", (Jsonb(definition),))
    assert refused.value.sqlstate == "PX024"


# Found by a hostile test (2026-11-27): what the compiler accepted, the database must take, and
# what it cannot take, the compiler refuses with the line.

def test_a_formula_dividing_by_three_is_stored_to_twenty_decimals(conninfo: str, db: psycopg.Connection[Any],
                                                                  tmp_path: Path) -> None:
    """PRICE_COMPLETION / 3 compiled to 28 significant digits, which pyxp.install_ruleset refused
    (PX024, no line named)."""
    text = winstory_text().replace('earn_xp = "100 + PRICE_COMPLETION"', 'earn_xp = "100 + PRICE_COMPLETION / 3"')
    assert text != winstory_text()
    compiled = load_ruleset(write(tmp_path, text))
    paid = next(r for r in compiled.definition()["rules"] if r["coefficients"])
    assert paid["coefficients"] == {"PRICE_COMPLETION": "0.33333333333333333333"}
    schema.apply_ruleset(conninfo, compiled)
    row = db.execute("SELECT xp_amount FROM pyxp.award('0xthird', %s, 'third-1', '{\"PRICE_COMPLETION\": 300}')",
                     (paid["action"],)).fetchone()
    assert row == (200,)


@pytest.mark.parametrize(("change", "line", "what"), [
    (("thresholds = [0, 100, 250, 500, 1000, 2000, 4000]",
      "thresholds = [0, 100, 250, 500, 1000, 2000, 1000000000000000000]"), 23, "10^18"),
    (('description = "Winstory XP:', 'description = "\\u0000 Winstory XP:'), 16, "U+0000"),
])
def test_what_the_database_cannot_store_is_refused_with_its_line(tmp_path: Path, change: tuple[str, str],
                                                                  line: int, what: str) -> None:
    text = winstory_text()
    assert text.count(change[0]) == 1, change[0]
    with pytest.raises(ConfigError) as refused:
        load_ruleset(write(tmp_path, text.replace(change[0], change[1])))
    assert what in str(refused.value) and refused.value.line == line, refused.value
