"""Unit tests of the ruleset config compiler (pure Python, no database)."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxp.ruleset_config import (
    Cap,
    ConfigError,
    LevelRow,
    LinearForm,
    compile_formula,
    generate_levels,
    load_ruleset,
    parse_ruleset,
    shipped_rulesets,
)

D = Decimal

# Every action code of SPEC section 2, in table order.
SPEC_ACTIONS = [
    "B2C_MINT",
    "AGENCY_B2C_MINT",
    "OPTION_WINSTORY_VIDEO",
    "OPTION_NO_REWARDS",
    "CAMPAIGN_APPROVED",
    "MODERATION_VALIDATED_BY_MODERATOR",
    "MODERATION_REFUSED_BY_MODERATOR",
    "Completion_Submit_B2C_Free",
    "Completion_Submit_B2C_Paid",
    "Completion_Validated_B2C",
    "Completion_Refused_B2C",
    "Completion_Submit_Agency_Free",
    "Completion_Submit_Agency_Paid",
    "Completion_Validated_Agency",
    "Completion_Refused_Agency",
    "Completion_Submit_Individual",
    "Completion_Validated_Individual",
    "Completion_Refused_Individual",
    "Completion_Moderation_Validated",
    "Completion_Moderation_Refused",
    "B2C_CLIENT_ONBOARDED",
]


def ruleset_text(rule_body: str, head: str = "") -> str:
    """A small valid file; the rule under test is rule 2, whose header is on line 9."""
    return (
        'name = "t"\n'  # 1
        f"{head}"
        "\n"  # 2
        "[[rules]]\n"  # 3
        'action = "A"\n'  # 4
        'event = "campaign.created"\n'  # 5
        "earn_xp = 1\n"  # 6
        "\n"  # 7
        "# rule under test\n"  # 8
        "[[rules]]\n"  # 9
        'action = "B"\n'  # 10
        f"{rule_body}\n"  # 11...
    )


def config_error(text: str, path: str | None = "r.toml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_ruleset(text, path)
    return info.value


# --------------------------------------------------------------------------- formulas


def test_seed_formulas_compile_to_linear_forms() -> None:
    paid = compile_formula("100 + PRICE_COMPLETION")
    assert paid.constant == 100
    assert dict(paid.coefficients) == {"PRICE_COMPLETION": D(1)}

    mint = compile_formula("MINT_VALUE_$WINC")
    assert mint.constant == 0
    assert dict(mint.coefficients) == {"MINT_VALUE_WINC": D(1)}

    half = compile_formula("MINT_VALUE_$WINC / 2")
    assert dict(half.coefficients) == {"MINT_VALUE_WINC": D("0.5")}
    assert half.inputs() == ("MINT_VALUE_WINC",)


def test_distribution_and_nesting() -> None:
    form = compile_formula("2 * (PRICE_COMPLETION + 50)")
    assert form.constant == 100
    assert dict(form.coefficients) == {"PRICE_COMPLETION": D(2)}

    form = compile_formula("-(MINT_VALUE - 10) * 3 / 4 + +1")
    assert form.constant == D("8.5")
    assert dict(form.coefficients) == {"MINT_VALUE": D("-0.75")}


def test_decimal_literals_come_from_source_text_not_float() -> None:
    form = compile_formula("0.1 * PRICE_COMPLETION + 0.2")
    assert form.constant == D("0.2")  # a float would give 0.2000000000000000111...
    assert form.coefficients["PRICE_COMPLETION"] == D("0.1")
    assert compile_formula("1_000 + 1e3").constant == 2000


def test_input_names_are_normalised_and_zero_terms_dropped() -> None:
    form = compile_formula("mint_value_$winc + PRICE_COMPLETION - PRICE_COMPLETION")
    assert dict(form.coefficients) == {"MINT_VALUE_WINC": D(1)}
    assert compile_formula("MY_INPUT * 3", inputs=["MY_INPUT"]).coefficients == {"MY_INPUT": 3}


@pytest.mark.parametrize(
    ("formula", "reason"),
    [
        ("PRICE_COMPLETION * MINT_VALUE", "multiplies two inputs"),
        ("(PRICE_COMPLETION + 1) * (MINT_VALUE + 1)", "multiplies two inputs"),
        ("MINT_VALUE ** 2", "**"),
        ("MINT_VALUE % 3", "%"),
        ("MINT_VALUE // 2", "//"),
        ("100 / MINT_VALUE", "divides by an input"),
        ("MINT_VALUE / 0", "divides by zero"),
        ("MINT_VALUE / (1 - 1)", "divides by zero"),
        ("UNKNOWN_INPUT + 1", "unknown input"),
        ("abs(MINT_VALUE)", "function calls"),
        ("__import__('os')", "function calls"),
        ("MINT_VALUE > 2", "comparisons"),
        ("'100'", "not a number"),
        ("True + 1", "not a number"),
        ("", "empty"),
        ("   ", "empty"),
        ("100 +", "not a valid expression"),
        ("MINT_VALUE if 1 else 2", "not accepted"),
        ("1e16", "out of range"),
        ("1j", "not a number"),
    ],
)
def test_non_linear_or_unknown_formulas_are_refused(formula: str, reason: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        compile_formula(formula)
    assert reason in str(info.value)
    assert not isinstance(info.value, ConfigError)  # the parser adds file and line

    # In a file, the error names the file, the line of the key, the formula and what is
    # accepted (the formula's key is on line 12, after the event on line 11).
    text = ruleset_text(f'event = "campaign.approved"\nlose_xp = {json.dumps(formula)}')
    error = config_error(text)
    assert error.path == "r.toml"
    assert error.line == 12
    assert str(error).startswith("r.toml:12: ")
    assert repr(formula) in str(error)
    assert "PRICE_COMPLETION" in error.accepted and "/ by a non-zero constant" in error.accepted


@given(
    a=st.integers(-1000, 1000),
    b=st.integers(-1000, 1000),
    c=st.integers(-(10**6), 10**6),
    divisor=st.sampled_from([1, 2, 4, 5, 8, 10, 20]),
    price=st.integers(0, 10**6),
    mint=st.integers(0, 10**6),
)
@settings(max_examples=200, deadline=None)
def test_compiled_forms_evaluate_like_the_arithmetic(
    a: int, b: int, c: int, divisor: int, price: int, mint: int
) -> None:
    form = compile_formula(f"({a} * PRICE_COMPLETION - MINT_VALUE_$WINC * {b} + {c}) / {divisor}")
    expected = (D(a) * price - D(b) * mint + c) / divisor
    value = form.constant + sum(
        coefficient * {"PRICE_COMPLETION": price, "MINT_VALUE_WINC": mint}[name]
        for name, coefficient in form.coefficients.items()
    )
    assert value == expected


def test_halving_compiles_to_an_exact_half_coefficient() -> None:
    refused = -compile_formula("MINT_VALUE_$WINC / 2")
    assert refused.constant == 0 and dict(refused.coefficients) == {"MINT_VALUE_WINC": D("-0.5")}


# --------------------------------------------------------------------------- level curve

# The default curve, computed by hand (SPEC 3): levels 1..7 from the seeds' table,
# then increments x1.35 rounded half up: 2000*1.35 = 2700, 2700*1.35 = 3645,
# 3645*1.35 = 4920.75 -> 4921; then x1.10: 4921*1.1 = 5413.1 -> 5413,
# 5413*1.1 = 5954.3 -> 5954.
DEFAULT_1_TO_12 = [0, 100, 250, 500, 1000, 2000, 4000, 6700, 10345, 15266, 20679, 26633]


def test_default_curve_levels_1_to_12() -> None:
    levels = load_ruleset("winstory").levels
    assert [row.threshold for row in levels[:12]] == DEFAULT_1_TO_12
    assert [row.level for row in levels[:12]] == list(range(1, 13))
    assert levels[6] == LevelRow(level=7, threshold=4000, increment=2700, is_last=False)


def test_default_curve_to_level_50_then_constant() -> None:
    levels = load_ruleset("winstory").levels
    assert len(levels) == 50
    thresholds = [row.threshold for row in levels]
    assert all(a < b for a, b in zip(thresholds, thresholds[1:]))
    for row, following in zip(levels, levels[1:]):
        assert row.increment == following.threshold - row.threshold
        assert not row.is_last
    last = levels[-1]
    assert last.level == 50 and last.is_last
    assert last.increment == levels[-1].threshold - levels[-2].threshold
    # Tiers: increments up to level 30 grow ~10 %, from 30 to 50 ~5 %.
    increments = [row.increment for row in levels]
    assert increments[20] / increments[19] == pytest.approx(1.10, abs=0.001)  # 21->22 / 20->21
    assert increments[40] / increments[39] == pytest.approx(1.05, abs=0.001)  # 41->42 / 40->41


def test_levels_without_growth_end_at_the_last_threshold() -> None:
    rows = generate_levels([0, 10, 30])
    assert rows == (
        LevelRow(1, 0, 10, False),
        LevelRow(2, 10, 20, False),
        LevelRow(3, 30, 20, True),
    )


@given(
    thresholds=st.lists(st.integers(1, 10**6), min_size=1, max_size=8).map(
        lambda steps: [sum(steps[:i]) for i in range(len(steps) + 1)]
    ),
    factors=st.lists(st.decimals("1", "2", places=2), max_size=3),
)
@settings(max_examples=100, deadline=None)
def test_generated_curves_are_strictly_increasing(
    thresholds: list[int], factors: list[Decimal]
) -> None:
    growth = [(len(thresholds) + 5 * (i + 1), f) for i, f in enumerate(factors)]
    rows = generate_levels(thresholds, growth)
    assert [r.threshold for r in rows[: len(thresholds)]] == thresholds
    assert all(a.threshold < b.threshold for a, b in zip(rows, rows[1:]))
    assert [r.is_last for r in rows].count(True) == 1 and rows[-1].is_last
    assert len(rows) == (growth[-1][0] if growth else len(thresholds))


# --------------------------------------------------------------------------- shipped rulesets


def test_shipped_rulesets_are_listed() -> None:
    assert shipped_rulesets() == ["winstory", "winstory-flows"]


def test_winstory_has_every_spec_action_in_order() -> None:
    ruleset = load_ruleset("winstory")
    assert ruleset.name == "winstory"
    assert ruleset.balance_floor is None
    assert [rule.action for rule in ruleset.rules] == SPEC_ACTIONS
    assert ruleset.path is not None and ruleset.path.endswith("winstory.toml")
    assert "[[rules]]" in ruleset.source


def test_winstory_amounts_match_spec_table() -> None:
    ruleset = load_ruleset("winstory")

    def amount(action: str, **inputs: int) -> int:
        # The compiled linear form applied to sample inputs (rounding is SQL's job;
        # every amount here is a whole number).
        form = ruleset.rule(action).xp
        value = form.constant + sum(c * inputs[name] for name, c in form.coefficients.items())
        assert value == value.to_integral_value()
        return int(value)

    assert amount("B2C_MINT") == 1000
    assert amount("AGENCY_B2C_MINT") == 1000
    assert amount("OPTION_WINSTORY_VIDEO") == 500
    assert amount("OPTION_NO_REWARDS") == 1000
    assert amount("CAMPAIGN_APPROVED") == 100
    assert amount("MODERATION_VALIDATED_BY_MODERATOR") == 2
    assert amount("MODERATION_REFUSED_BY_MODERATOR") == -1
    assert amount("Completion_Submit_B2C_Free") == 100
    assert amount("Completion_Submit_B2C_Paid", PRICE_COMPLETION=500) == 600  # example 2
    assert amount("Completion_Validated_B2C") == 100
    assert amount("Completion_Refused_B2C") == -50
    assert amount("Completion_Submit_Agency_Paid", PRICE_COMPLETION=300) == 400
    assert amount("Completion_Refused_Agency") == -50
    assert amount("Completion_Submit_Individual", MINT_VALUE_WINC=2000) == 2000  # example 5
    assert amount("Completion_Refused_Individual", MINT_VALUE_WINC=5000) == -2500
    assert amount("Completion_Moderation_Validated") == 2
    assert amount("Completion_Moderation_Refused") == -1
    assert amount("B2C_CLIENT_ONBOARDED") == 1000

    video = ruleset.rule("OPTION_WINSTORY_VIDEO")
    assert (video.event, video.campaign_types, video.condition) == (
        "campaign.created",
        ("B2C", "AGENCY_B2C"),
        "winstory_creates_video",
    )
    assert ruleset.rule("CAMPAIGN_APPROVED").campaign_types is None
    vote = ruleset.rule("MODERATION_REFUSED_BY_MODERATOR")
    assert (vote.event, vote.campaign_types, vote.condition) == ("campaign.vote", None, "REFUSE")
    onboard = ruleset.rule("B2C_CLIENT_ONBOARDED")
    assert (onboard.event, onboard.campaign_types) == ("client.onboarded", ("AGENCY_B2C",))
    individual = ruleset.rule("Completion_Submit_Individual")
    assert (individual.campaign_types, individual.condition) == (("INDIVIDUAL",), None)
    # No XP for creating an INDIVIDUAL campaign.
    assert not [
        r
        for r in ruleset.rules
        if r.event == "campaign.created"
        and (r.campaign_types is None or "INDIVIDUAL" in r.campaign_types)
    ]


def test_winstory_flows_completions() -> None:
    flows = load_ruleset("winstory-flows")
    actions = [rule.action for rule in flows.rules]
    assert "COMPLETION_SUBMITTED" in actions and "COMPLETION_100_VALIDATED" in actions
    assert not [a for a in actions if "Refused_" in a or a.startswith("Completion_Submit")]
    submitted = flows.rule("COMPLETION_SUBMITTED")
    assert (submitted.event, submitted.campaign_types, submitted.condition) == (
        "completion.submitted",
        None,
        None,
    )
    assert submitted.xp == LinearForm(D(10))
    assert flows.rule("COMPLETION_100_VALIDATED").xp == LinearForm(D(100))
    assert flows.rule("COMPLETION_100_VALIDATED").event == "completion.validated"
    assert flows.rule("Completion_Moderation_Refused").xp == LinearForm(D(-1))
    # Same non-completion rules and curve as winstory.
    winstory = load_ruleset("winstory")
    for action in SPEC_ACTIONS[:7] + SPEC_ACTIONS[-3:]:
        assert flows.rule(action) == winstory.rule(action)
    assert flows.levels == winstory.levels


def test_definition_is_json_ready_with_canonical_decimals() -> None:
    definition = load_ruleset("winstory").definition()
    assert json.loads(json.dumps(definition)) == definition
    assert set(definition) == {"name", "description", "balance_floor", "levels", "rules"}
    assert definition["levels"][0] == {
        "level": 1,
        "threshold": 0,
        "increment": 100,
        "is_last": False,
    }
    assert definition["levels"][-1]["is_last"] is True
    rules = {rule["action"]: rule for rule in definition["rules"]}
    assert rules["Completion_Submit_B2C_Paid"] == {
        "action": "Completion_Submit_B2C_Paid",
        "event": "completion.submitted",
        "campaign_types": ["B2C"],
        "condition": "paid",
        "formula": "100 + PRICE_COMPLETION",
        "constant": "100",
        "coefficients": {"PRICE_COMPLETION": "1"},
        "description": rules["Completion_Submit_B2C_Paid"]["description"],
    }
    refused = rules["Completion_Refused_Individual"]
    assert refused["formula"] == "-(MINT_VALUE_$WINC / 2)"
    assert (refused["constant"], refused["coefficients"]) == ("0", {"MINT_VALUE_WINC": "-0.5"})
    assert rules["Completion_Refused_B2C"]["constant"] == "-50"
    assert rules["Completion_Refused_B2C"]["formula"] == "-50"
    assert rules["CAMPAIGN_APPROVED"]["campaign_types"] is None


def test_formula_text_for_earn_and_lose() -> None:
    ruleset = parse_ruleset(ruleset_text('earn_xp = "1e3"\nlose_xp = "MINT_VALUE / 2"'))
    rule = ruleset.rule("B")
    assert rule.formula == "1e3 - (MINT_VALUE / 2)"
    assert rule.xp.to_json() == {"constant": "1000", "coefficients": {"MINT_VALUE": "-0.5"}}
    # The seeds' `lose_xp: 0` beside earn_xp leaves the formula alone.
    assert parse_ruleset(ruleset_text("earn_xp = 2.50\nlose_xp = 0")).rule("B").formula == "2.5"


def test_custom_events_inputs_and_floor() -> None:
    text = (
        'name = "shop-1"\n'
        "balance_floor = 0\n"
        'inputs = ["basket_$total"]\n'
        "[[rules]]\n"
        'action = "SHOP_PURCHASE"\n'
        'event = "shop.purchase"\n'
        'condition = "Big_Basket"\n'
        'campaign_types = ["for_b2c", "Individual"]\n'
        'earn_xp = "BASKET_$TOTAL / 10"\n'
        "[[rules]]\n"
        'action = "MANUAL_BONUS"\n'
        "earn_xp = 5\n"
    )
    ruleset = parse_ruleset(text)
    assert ruleset.balance_floor == 0
    shop = ruleset.rule("SHOP_PURCHASE")
    assert (shop.event, shop.condition, shop.campaign_types) == (
        "shop.purchase",
        "Big_Basket",
        ("B2C", "INDIVIDUAL"),
    )
    assert dict(shop.xp.coefficients) == {"BASKET_TOTAL": D("0.1")}
    manual = ruleset.rule("MANUAL_BONUS")
    assert (manual.event, manual.condition, manual.campaign_types) == (None, None, None)
    # Without [levels], the default curve.
    assert [row.threshold for row in ruleset.levels[:12]] == DEFAULT_1_TO_12


def test_known_condition_is_stored_in_canonical_spelling() -> None:
    rule = parse_ruleset(
        ruleset_text('event = "completion.vote"\ncondition = "valid"\nearn_xp = 2')
    )
    assert rule.rule("B").condition == "VALID"


# --------------------------------------------------------------------------- config errors


def test_unknown_keys_are_named_with_their_line() -> None:
    error = config_error(ruleset_text("earn_xp = 1\ncolour = 2"))
    assert (error.line, "'colour'" in str(error)) == (12, True)
    assert "earn_xp" in error.accepted

    error = config_error('name = "t"\nversion = 3\n[[rules]]\naction = "A"\nearn_xp = 1\n')
    assert error.line == 2 and "'version'" in str(error)

    error = config_error(
        'name = "t"\n[levels]\nthresholds = [0, 1]\nshape = "log"\n[[rules]]\naction = "A"\nearn_xp = 1\n'
    )
    assert error.line == 4 and "'shape'" in str(error)

    error = config_error(
        'name = "t"\n[levels]\nthresholds = [0, 1]\ngrowth = [\n  { up_to_level = 5, factor = 1.1 },\n'
        '  { up_to_level = 9, factor = 1.1, cap = 3 },\n]\n[[rules]]\naction = "A"\nearn_xp = 1\n'
    )
    assert error.line == 6 and "'cap'" in str(error)


def test_duplicate_action() -> None:
    error = config_error(ruleset_text('action = "A"\nearn_xp = 1').replace('action = "B"\n', ""))
    assert error.line == 10 and "duplicate action 'A'" in str(error)
    error = config_error(ruleset_text("earn_xp = 1").replace('action = "B"', 'action = "a"'))
    assert error.line == 10 and "duplicate" in str(error)


@pytest.mark.parametrize("value", ['["B2B"]', '["b2c", "FOR_B2C"]', "[]", '"B2C"', "[1]"])
def test_bad_campaign_types(value: str) -> None:
    error = config_error(ruleset_text(f"campaign_types = {value}\nearn_xp = 1"))
    assert error.line == 11
    assert "AGENCY_B2C" in error.accepted and "FOR_B2C" in error.accepted


@pytest.mark.parametrize(
    "event", ['"campaign"', '"Campaign.Created"', '"campaign."', '"shop..x"', "3", '"a.b c"']
)
def test_bad_events(event: str) -> None:
    error = config_error(ruleset_text(f"event = {event}\nearn_xp = 1"))
    assert error.line == 11 and "invalid event" in str(error)
    assert "completion.submitted" in error.accepted


@pytest.mark.parametrize(
    ("event", "condition"),
    [
        ("campaign.vote", "free"),
        ("completion.submitted", "VALID"),
        ("campaign.created", "video"),
        ("campaign.approved", "VALID"),
        ("client.onboarded", "x"),
        ("shop.purchase", "not ok!"),
    ],
)
def test_bad_condition_for_event(event: str, condition: str) -> None:
    error = config_error(
        ruleset_text(f'event = "{event}"\ncondition = "{condition}"\nearn_xp = 1')
    )
    assert error.line == 12 and "condition" in str(error)


def test_condition_without_event() -> None:
    error = config_error(ruleset_text('condition = "VALID"\nearn_xp = 1'))
    assert error.line == 11


@pytest.mark.parametrize(
    "thresholds",
    [
        "[0]",
        "[]",
        "[5, 10]",
        "[0, 100, 100]",
        "[0, 200, 100]",
        "[0, 1.5]",
        "[0, true]",
        '"0, 100"',
        "[0, 9223372036854775808]",
    ],
)
def test_bad_threshold_lists(thresholds: str) -> None:
    text = f'name = "t"\n\n[levels]\nthresholds = {thresholds}\n[[rules]]\naction = "A"\nearn_xp = 1\n'
    error = config_error(text)
    assert error.line == 4
    assert "starting at 0" in error.accepted and "strictly increasing" in error.accepted


@pytest.mark.parametrize(
    "growth",
    [
        "[{ up_to_level = 2, factor = 1.1 }]",  # not past the last threshold's level (2)
        "[{ up_to_level = 10, factor = 1.1 }, { up_to_level = 10, factor = 1.1 }]",
        "[{ up_to_level = 10, factor = 0.9 }]",
        "[{ up_to_level = 10, factor = nan }]",
        "[{ up_to_level = 10, factor = inf }]",
        "[{ up_to_level = 10, factor = true }]",
        "[{ up_to_level = 10 }]",
        "[{ factor = 1.1 }]",
        "[{ up_to_level = 100000000, factor = 1 }]",
    ],
)
def test_bad_growth_tiers(growth: str) -> None:
    text = f'name = "t"\n[levels]\nthresholds = [0, 1]\ngrowth = {growth}\n[[rules]]\naction = "A"\nearn_xp = 1\n'
    error = config_error(text)
    assert error.line == 4 and "up_to_level" in error.accepted


def test_curve_overflowing_bigint() -> None:
    text = (
        'name = "t"\n[levels]\nthresholds = [0, 400000000000000000]\n'
        'growth = [{ up_to_level = 3, factor = 2 }]\n[[rules]]\naction = "A"\nearn_xp = 1\n'
    )
    error = config_error(text)
    assert error.line == 4 and "10^18" in str(error)


@pytest.mark.parametrize("key", ["earn_xp", "lose_xp"])
def test_bool_is_not_a_number(key: str) -> None:
    error = config_error(ruleset_text(f"{key} = true"))
    assert error.line == 11 and "boolean" in str(error)


@pytest.mark.parametrize(
    "value",
    [
        "1000000000000001",
        "-1000000000000001",
        "1e16",
        "inf",
        "nan",
        '"1000000000000001"',
        '"PRICE_COMPLETION * 1e16"',
    ],
)
def test_huge_or_non_finite_numbers(value: str) -> None:
    error = config_error(ruleset_text(f"earn_xp = {value}"))
    assert error.line == 11
    assert "10^15" in error.accepted or "PRICE_COMPLETION" in error.accepted


def test_limits_are_inclusive() -> None:
    rule = parse_ruleset(ruleset_text("earn_xp = 1000000000000000")).rule("B")
    assert rule.xp.constant == 10**15
    assert parse_ruleset(ruleset_text("lose_xp = 0.5")).rule("B").xp.constant == D("-0.5")


def test_missing_earn_and_lose() -> None:
    error = config_error(ruleset_text('description = "nothing"'))
    assert error.line == 9 and "missing earn_xp or lose_xp" in str(error)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('description = "no name"\n[[rules]]\naction = "A"\nearn_xp = 1\n', 1),
        ('name = "Bad Name"\n[[rules]]\naction = "A"\nearn_xp = 1\n', 1),
        ('name = "t"\n', None),
        ('name = "t"\nbalance_floor = 10\n[[rules]]\naction = "A"\nearn_xp = 1\n', 2),
        ('name = "t"\nbalance_floor = 1.5\n[[rules]]\naction = "A"\nearn_xp = 1\n', 2),
        ('name = "t"\ninputs = ["bad-name"]\n[[rules]]\naction = "A"\nearn_xp = 1\n', 2),
        ('name = "t"\n[[rules]]\naction = "1A"\nearn_xp = 1\n', 3),
        ('name = "t"\n[[rules]]\nearn_xp = 1\n', 2),
        ('name = "t"\n[[rules]]\naction = "A"\nearn_xp = 1\ndescription = 5\n', 5),
        ('name = "t"\n[[rules]\n', 2),
    ],
)
def test_other_config_errors(text: str, line: int | None) -> None:
    error = config_error(text)
    assert error.line == line
    assert error.accepted


def test_error_message_format() -> None:
    error = ConfigError("bad thing", path="f.toml", line=3, accepted="good things")
    assert str(error) == "f.toml:3: bad thing; accepted: good things"
    assert isinstance(error, ValueError)
    assert str(ConfigError("bad", accepted="x")) == "bad; accepted: x"
    assert str(ConfigError("bad", path="f.toml")) == "f.toml: bad"
    error = config_error('name = "t"\n[[rules]]\naction = "A"\nearn_xp = "A * 2"\n', path=None)
    assert str(error).startswith("line 4: ") and error.path is None


def test_load_ruleset_from_a_path_and_unknown_names(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        'name = "mine"\n[[rules]]\naction = "X"\nearn_xp = "MINT_VALUE * PRICE_COMPLETION"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_ruleset(str(path))
    assert info.value.path == str(path) and info.value.line == 4
    path.write_text('name = "mine"\n[[rules]]\naction = "X"\nearn_xp = 3\n')
    assert load_ruleset(str(path)).name == "mine"
    with pytest.raises(ConfigError) as info:
        load_ruleset("no-such-ruleset")
    assert "winstory-flows" in info.value.accepted


# --------------------------------------------------------------------------- timezone and caps (SPEC 12)

README = Path(__file__).resolve().parents[1] / "README.md"
# The keys of a rule's compiled form without cap and group (every shipped rule).
PLAIN_RULE_KEYS = {
    "action",
    "event",
    "campaign_types",
    "condition",
    "formula",
    "constant",
    "coefficients",
    "description",
}


@pytest.mark.parametrize("zone", ["Europe/Paris", "UTC", "Pacific/Auckland", "America/New_York"])
def test_timezone_is_kept_and_compiled(zone: str) -> None:
    ruleset = parse_ruleset(ruleset_text("earn_xp = 1", head=f'timezone = "{zone}"\n'))
    assert ruleset.timezone == zone and ruleset.effective_timezone == zone
    assert ruleset.definition()["timezone"] == zone


def test_absent_timezone_is_utc_and_not_compiled() -> None:
    ruleset = parse_ruleset(ruleset_text("earn_xp = 1"))
    assert ruleset.timezone is None and ruleset.effective_timezone == "UTC"
    assert "timezone" not in ruleset.definition()


@pytest.mark.parametrize(
    "value", ['"europe/paris"', '"utc"', '"Mars/Olympus"', '"Europe/Paris "', '""', "1", "true", '["UTC"]',
              '"localtime"', '"Factory"']  # (the host's setting, a placeholder: zoneinfo lists both; 0034)
)
def test_bad_timezones(value: str) -> None:
    error = config_error(ruleset_text("earn_xp = 1", head=f"timezone = {value}\n"))
    assert error.line == 2 and "timezone" in str(error) and "IANA" in str(error)
    assert "Europe/Paris" in error.accepted and "UTC" in error.accepted


@pytest.mark.parametrize("name", ["winstory", "winstory-flows"])
def test_shipped_rulesets_compile_without_timezone_caps_or_groups(name: str) -> None:
    """Unchanged compiled form (and content hash) for rulesets that use none of SPEC 12's keys."""
    ruleset = load_ruleset(name)
    assert not any(key in ruleset.source for key in ("timezone", "cap =", "group ="))
    assert ruleset.timezone is None
    assert all(rule.cap is None and rule.group is None for rule in ruleset.rules)
    definition = ruleset.definition()
    assert set(definition) == {"name", "description", "balance_floor", "levels", "rules"}
    assert all(set(rule) == PLAIN_RULE_KEYS for rule in definition["rules"])


@pytest.mark.parametrize(
    ("per", "expected"),
    [("day", "day"), ("DAY", "day"), ("Week", "week"), ("month", "month"), ("YeAr", "year")],
)
def test_cap_period_in_any_case_is_normalised(per: str, expected: str) -> None:
    ruleset = parse_ruleset(ruleset_text(f'earn_xp = 2\ncap = {{ max_xp = 20, per = "{per}" }}'))
    rule = ruleset.rule("B")
    assert rule.cap == Cap(max_xp=20, per=expected) and rule.group is None
    compiled = {r["action"]: r for r in ruleset.definition()["rules"]}
    assert compiled["B"]["cap"] == {"max_xp": 20, "per": expected}
    assert "group" not in compiled["B"]
    assert set(compiled["A"]) == PLAIN_RULE_KEYS  # the uncapped rule as before


def test_cap_limits_are_inclusive() -> None:
    for max_xp in (1, 10**15):
        text = ruleset_text(f'earn_xp = 1\ncap = {{ max_xp = {max_xp}, per = "year" }}')
        assert parse_ruleset(text).rule("B").cap == Cap(max_xp, "year")


@pytest.mark.parametrize(
    ("cap", "what"),
    [
        ('{ max_xp = 0, per = "day" }', "max_xp 0"),
        ('{ max_xp = -5, per = "day" }', "max_xp -5"),
        ('{ max_xp = true, per = "day" }', "max_xp True"),
        ('{ max_xp = 1.5, per = "day" }', "max_xp 1.5"),
        ('{ max_xp = 20.0, per = "day" }', "max_xp 20.0"),
        ('{ max_xp = 1000000000000001, per = "day" }', "max_xp 1000000000000001"),
        ('{ max_xp = "20", per = "day" }', "max_xp '20'"),
        ('{ per = "day" }', "missing key 'max_xp'"),
        ('{ max_xp = 20, per = "hour" }', "per 'hour'"),
        ('{ max_xp = 20, per = "days" }', "per 'days'"),
        ('{ max_xp = 20, per = "all" }', "per 'all'"),
        ("{ max_xp = 20, per = 1 }", "per 1"),
        ("{ max_xp = 20 }", "missing key 'per'"),
        ('{ max_xp = 20, per = "day", group = "x" }', "unknown key 'group' in cap"),
        ("{}", "missing key 'max_xp'"),
        ("20", "cap must be a table"),
        ('"20 per day"', "cap must be a table"),
        ('[20, "day"]', "cap must be a table"),
    ],
)
def test_bad_caps(cap: str, what: str) -> None:
    error = config_error(ruleset_text(f"earn_xp = 1\ncap = {cap}"))
    assert error.line == 12, str(error)
    assert str(error).startswith("r.toml:12: rule B: ") and what in str(error)
    assert "max_xp" in error.accepted and '"week"' in error.accepted


def test_cap_as_a_sub_table() -> None:
    text = (
        'name = "t"\n'  # 1
        "[[rules]]\n"  # 2
        'action = "A"\n'  # 3
        "earn_xp = 1\n"  # 4
        "[rules.cap]\n"  # 5
        "max_xp = 20\n"  # 6
        'per = "Day"\n'  # 7
        "[[rules]]\n"  # 8
        'action = "B"\n'  # 9
        "earn_xp = 1\n"  # 10
        "[rules.cap]\n"  # 11
        'per = "day"\n'  # 12
        "max_xp = 0\n"  # 13
    )
    error = config_error(text)
    assert error.line == 13 and "max_xp 0" in str(error)  # the key's line in the second sub-table
    error = config_error(text.replace("max_xp = 0", 'max_xp = 5\ncolour = "red"'))
    assert error.line == 14 and "'colour'" in str(error)
    ruleset = parse_ruleset(text.replace("max_xp = 0", "max_xp = 5"))
    assert [rule.cap for rule in ruleset.rules] == [Cap(20, "day"), Cap(5, "day")]
    # A disagreement in a group: the line of the disagreeing rule's [rules.cap].
    grouped = text.replace('action = "A"\n', 'action = "A"\ngroup = "g"\n')
    grouped = grouped.replace('action = "B"\n', 'action = "B"\ngroup = "g"\n')
    error = config_error(grouped.replace("max_xp = 0", "max_xp = 5"))
    assert error.line == 13 and "disagrees with group g's cap" in str(error)


@pytest.mark.parametrize("group", ["moderation", "m", "mod-2_votes", "a" * 63])
def test_good_group_names(group: str) -> None:
    text = ruleset_text(f'earn_xp = 1\ncap = {{ max_xp = 20, per = "day" }}\ngroup = "{group}"')
    assert parse_ruleset(text).rule("B").group == group


@pytest.mark.parametrize(
    "group",
    ['"Moderation"', '"1mod"', '"-mod"', '"_mod"', '"mod eration"', '"mod.x"', '""', "1", "true"]
    + [f'"{"a" * 64}"'],
)
def test_bad_group_names(group: str) -> None:
    text = ruleset_text(f'earn_xp = 1\ncap = {{ max_xp = 20, per = "day" }}\ngroup = {group}')
    error = config_error(text)
    assert error.line == 13 and "invalid group" in str(error)
    assert error.accepted == "[a-z][a-z0-9_-]{0,62}"


def test_group_needs_a_cap() -> None:
    error = config_error(ruleset_text('earn_xp = 1\ngroup = "moderation"'))
    assert error.line == 9  # the rule's [[rules]] header
    assert "rule B: group moderation needs a cap: every rule of a group carries the same cap" in str(error)
    assert "max_xp" in error.accepted


def grouped_text(cap_a: str, cap_b: str, group_b: str = "moderation") -> str:
    return (
        'name = "t"\n'  # 1
        "[[rules]]\n"  # 2
        'action = "A"\n'  # 3
        "earn_xp = 2\n"  # 4
        f"cap = {cap_a}\n"  # 5
        'group = "moderation"\n'  # 6
        "[[rules]]\n"  # 7
        'action = "Other"\n'  # 8
        "earn_xp = 5\n"  # 9
        'cap = { max_xp = 1, per = "year" }\n'  # 10: capped alone, no group
        "[[rules]]\n"  # 11
        'action = "B"\n'  # 12
        f'group = "{group_b}"\n'  # 13
        "lose_xp = 1\n"  # 14
        f"cap = {cap_b}\n"  # 15
    )


@pytest.mark.parametrize(
    "cap_b",
    ['{ max_xp = 10, per = "week" }', '{ max_xp = 10, per = "day" }', '{ max_xp = 20, per = "month" }'],
)
def test_caps_of_a_group_must_agree(cap_b: str) -> None:
    error = config_error(grouped_text('{ max_xp = 20, per = "day" }', cap_b))
    assert error.line == 15  # the disagreeing rule's cap
    shown = cap_b.replace("{ ", "{").replace(" }", "}")
    assert str(error).startswith(
        f"r.toml:15: rule B: cap {shown} disagrees with group moderation's cap "
        '{max_xp = 20, per = "day"} (rule A)'
    )
    assert error.accepted == "the same cap on every rule of a group"
    # Another group name: no disagreement.
    ruleset = parse_ruleset(grouped_text('{ max_xp = 20, per = "day" }', cap_b, group_b="other"))
    assert ruleset.rule("B").group == "other"


def test_a_group_whose_caps_agree_compiles() -> None:
    ruleset = parse_ruleset(grouped_text('{ max_xp = 20, per = "day" }', '{ per = "DAY", max_xp = 20 }'))
    assert ruleset.rule("A").cap == ruleset.rule("B").cap == Cap(20, "day")
    rules = {rule["action"]: rule for rule in ruleset.definition()["rules"]}
    assert rules["A"] == {
        "action": "A",
        "event": None,
        "campaign_types": None,
        "condition": None,
        "formula": "2",
        "constant": "2",
        "coefficients": {},
        "description": None,
        "cap": {"max_xp": 20, "per": "day"},
        "group": "moderation",
    }
    assert (rules["B"]["cap"], rules["B"]["group"], rules["B"]["constant"]) == (
        {"max_xp": 20, "per": "day"},
        "moderation",
        "-1",  # a penalty may carry its group's cap (penalties are never cut)
    )
    assert rules["Other"]["cap"] == {"max_xp": 1, "per": "year"} and "group" not in rules["Other"]
    assert json.loads(json.dumps(ruleset.definition())) == ruleset.definition()


def test_readme_cap_example_compiles() -> None:
    blocks = re.findall(r"^```toml\n(.*?)^```", README.read_text(), re.DOTALL | re.MULTILINE)
    (example,) = [block for block in blocks if "group =" in block]
    ruleset = parse_ruleset(example, "README.md")
    assert ruleset.timezone == "Europe/Paris"
    assert {rule.group for rule in ruleset.rules} == {"moderation"}
    assert {rule.cap for rule in ruleset.rules} == {Cap(max_xp=20, per="day")}


@pytest.mark.parametrize("action", ["REVERSAL", "Rules_Adjustment"])
def test_reserved_actions_are_refused_at_their_line(action: str) -> None:
    text = f'name = "x"\n[levels]\nthresholds = [0, 100]\n\n[[rules]]\naction = "{action}"\nearn_xp = 1\n'
    with pytest.raises(ConfigError) as refused:
        parse_ruleset(text, "x.toml")
    assert refused.value.line == 6 and "reserved" in str(refused.value)


# Found by a hostile test (2026-11-27): errors name the right line, and never a traceback.

def test_a_line_separator_inside_a_string_does_not_shift_the_lines() -> None:
    """U+2028 ends a line for str.splitlines(), not for TOML: every later line was off by one."""
    error = config_error(ruleset_text("earn_xp = true", head='description = "a\u2028b"\n'))
    assert error.line == 12 and "boolean" in str(error)


def test_a_comment_holding_triple_quotes_does_not_hide_the_rest() -> None:
    error = config_error(ruleset_text('# not """ a string\nearn_xp = true'))
    assert error.line == 12 and "boolean" in str(error)


@pytest.mark.parametrize("number", ["1" * 5000, "0x" + "f" * 5000])
def test_an_integer_too_long_to_read_is_a_config_error(number: str) -> None:
    error = config_error(ruleset_text(f"earn_xp = {number}"))
    assert "digits" in str(error)


@pytest.mark.parametrize(("event", "body", "key_line", "what"), [
    ("campaign.vote", 'earn_xp = "PRICE_COMPLETION"', 12, "passes no input PRICE_COMPLETION"),
    ("campaign.approved", 'earn_xp = "100 + MINT_VALUE"', 12, "passes no input MINT_VALUE"),
    ("campaign.created", 'earn_xp = "PRICE_COMPLETION"', 12, "passes no input PRICE_COMPLETION"),
    ("completion.submitted", 'condition = "free"\nearn_xp = "100 + PRICE_COMPLETION"', 13,
     "passes no input PRICE_COMPLETION"),
    ("client.onboarded", 'campaign_types = ["B2C"]\nearn_xp = 1000', 12, "always passes campaign type AGENCY_B2C"),
])
def test_a_flow_rule_that_could_never_apply_is_refused(event: str, body: str, key_line: int, what: str) -> None:
    """A hostile test (2026-11-27): accepted, such a rule made every vote fail (PX018, with a hint
    the vote cannot follow), or an onboarding use up the client's key and grant nothing."""
    error = config_error(ruleset_text(f'event = "{event}"\n{body}'))
    assert what in str(error) and error.line == key_line, (error.line, str(error))


def test_a_flow_rule_on_the_inputs_its_flow_passes_compiles() -> None:
    text = ruleset_text('event = "completion.submitted"\ncondition = "paid"\nearn_xp = "PRICE_COMPLETION / 3"')
    assert parse_ruleset(text).rules[1].xp.coefficients == {"PRICE_COMPLETION": D("0.33333333333333333333")}


def test_a_dotted_key_names_its_line() -> None:
    """levels.thresholds as a dotted key: its error named no line (a hostile test)."""
    error = config_error('name = "t"\nlevels.thresholds = [0, 100, 50]\n[[rules]]\naction = "A"\nearn_xp = 1\n')
    assert error.line == 2 and "strictly increasing" in str(error)
    error = config_error(ruleset_text('earn_xp = 1\ncap.max_xp = 5\ncap.per = "fortnight"'))
    assert error.line == 13 and "fortnight" in str(error), (error.line, str(error))


@pytest.mark.parametrize(("rules", "line", "what"), [
    ('rules = [\n  { action = "A", earn_xp = 5 },\n  { action = "B", earn_xp = "FOO * 2" },\n]', 5, "FOO"),
    ('rules = [{ action = "A", earn_xp = 5 }, # a comment with { and "\n'
     '  { action = "B", earn_xp = 1, cap = { max_xp = -1, per = "day" } }]', 4, "max_xp -1"),
    ('rules = [ { action = "A", earn_xp = 5, description = "} {" },\n\n  { action = "B", earn_xp = 1, group = "" } ]', 5, "group"),
    ('rules = [\n  """a string, then""",\n  { action = "A" },\n]', 3, "array of tables"),
])
def test_rules_as_inline_tables_name_their_line(rules: str, line: int, what: str) -> None:
    """Rules written as an array of inline tables got no line in an error (a hostile test)."""
    error = config_error(f'name = "t"\n\n{rules}\n')
    assert error.line == line and what in str(error), (error.line, str(error))


def test_growth_tiers_as_inline_tables_name_their_line() -> None:
    text = ('name = "t"\n[levels]\nthresholds = [0, 100, 250]\n'
            'growth = [\n  { up_to_level = 4, factor = 2 },\n  { up_to_level = 6, factor = 0 },\n]\n'
            '[[rules]]\naction = "A"\nearn_xp = 1\n')
    error = config_error(text)
    assert error.line == 6 and "factor" in str(error), (error.line, str(error))
