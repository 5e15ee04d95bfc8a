"""Levels on the database (SPEC section 3): the curve lookup ``pyxp.level_for``, the
levels reported by awards, and ``pyxp.recalculate_levels`` after a curve change."""

from __future__ import annotations

import re
from decimal import Decimal
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import balance_updates
from psycopg.types.json import Jsonb

from pyxp import XP, schema
from pyxp.ruleset_config import load_ruleset

BIGINT_MIN = -(2**63)
BIGINT_MAX = 2**63 - 1

# SPEC section 3: the seeds' example table, then x1.35 per level up to level 10 and
# x1.10 after it (4000 + 2700 = 6700; + 3645 = 10345; + 4921 = 15266; + 5413 = 20679;
# + 5954 = 26633).
THRESHOLDS = {
    1: 0, 2: 100, 3: 250, 4: 500, 5: 1000, 6: 2000, 7: 4000,
    8: 6700, 9: 10345, 10: 15266, 11: 20679, 12: 26633,
}

# Growth tiers of SPEC section 3: the factor applied to the increment that leads to
# level L (from L-1), for 8 <= L <= 50; past level 50 increments stay constant.
def growth_factor(level: int) -> Decimal:
    if level <= 10:
        return Decimal("1.35")
    if level <= 30:
        return Decimal("1.10")
    return Decimal("1.05")


def level_row(db: psycopg.Connection[Any], total_xp: int) -> tuple[int, int, int, int]:
    """(level, level_start_xp, next_level_xp, xp_to_next_level) through the SQL API."""
    row = db.execute("SELECT * FROM pyxp.level_for(total_xp => %s::bigint)", (total_xp,)).fetchone()
    assert row is not None
    level, start, next_xp, to_next = row
    return int(level), int(start), int(next_xp), int(to_next)


def curve_thresholds(db: psycopg.Connection[Any], levels: int) -> list[int]:
    """Thresholds of levels 1..levels, found by walking level_for from 0: each level's
    next_level_xp must be where level_for reports the following level."""
    thresholds = []
    total = 0
    for expected_level in range(1, levels + 1):
        level, start, next_xp, _ = level_row(db, total)
        assert (level, start) == (expected_level, total)
        thresholds.append(start)
        total = next_xp
    return thresholds


def award(db: psycopg.Connection[Any], wallet: str, action: str, key: str,
          params: str = "{}") -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT transaction_type, xp_amount, total_xp, previous_level, current_level, xp_to_next_level"
        "  FROM pyxp.award(wallet => %s, action => %s, idempotency_key => %s, params => %s::jsonb)",
        (wallet, action, key, params)).fetchall()


# --------------------------------------------------------------------------- level_for


@pytest.mark.parametrize(("level", "threshold"), sorted(THRESHOLDS.items()))
def test_level_starts_exactly_at_its_threshold(xp: XP, level: int, threshold: int) -> None:
    """SPEC 3: levels 1..7 from the seeds' table, 8..12 from the growth tiers."""
    found = xp.level_for(threshold)
    assert found.level == level
    assert found.level_start_xp == threshold
    assert found.next_level_xp == THRESHOLDS.get(level + 1, found.next_level_xp)


@pytest.mark.parametrize(("total", "level"), [
    (99, 1), (100, 2), (249, 2), (250, 3), (499, 3), (500, 4),
    (999, 4), (1000, 5), (1999, 5), (2000, 6), (3999, 6), (4000, 7),
    (6699, 7), (6700, 8),
])
def test_level_boundaries(db: psycopg.Connection[Any], total: int, level: int) -> None:
    assert level_row(db, total)[0] == level


def test_xp_to_next_level_of_a_wallet_at_2_xp_is_98(db: psycopg.Connection[Any], xp: XP) -> None:
    """SPEC 3: "a wallet at 2 XP has 98 to go" — in level_for, the award result and the balance."""
    assert level_row(db, 2) == (1, 0, 100, 98)
    result = xp.award("0x_moderator", "MODERATION_VALIDATED_BY_MODERATOR", "vote-1")
    assert (result.total_xp, result.level_after, result.xp_to_next_level) == (2, 1, 98)
    balance = xp.balance("0x_moderator")
    assert (balance.total_xp, balance.current_level, balance.xp_to_next_level) == (2, 1, 98)


@pytest.mark.parametrize("total", [0, 1, 99, 100, 2500, 4000, 26632, 26633, 10**6, 10**12])
def test_xp_to_next_level_is_next_threshold_minus_total(db: psycopg.Connection[Any], total: int) -> None:
    _, start, next_xp, to_next = level_row(db, total)
    assert start <= total < next_xp
    assert to_next == next_xp - total


def test_thresholds_strictly_increase_for_levels_1_to_200(db: psycopg.Connection[Any]) -> None:
    thresholds = curve_thresholds(db, 200)
    assert thresholds[:12] == [THRESHOLDS[level] for level in range(1, 13)]
    assert all(a < b for a, b in pairwise(thresholds))
    # One XP below a threshold is still the previous level.
    for level, threshold in enumerate(thresholds[1:], start=2):
        assert level_row(db, threshold - 1)[0] == level - 1


def test_increments_follow_the_growth_tiers_up_to_level_50(db: psycopg.Connection[Any]) -> None:
    """SPEC 3: past level 7, x1.35 up to level 10, x1.10 to 30, x1.05 to 50 (whole numbers)."""
    thresholds = curve_thresholds(db, 51)
    increment = {level: thresholds[level - 1] - thresholds[level - 2] for level in range(2, 52)}
    for level in range(8, 51):
        expected = increment[level - 1] * growth_factor(level)
        assert abs(increment[level] - expected) <= Decimal("0.5"), level
        assert increment[level] > increment[level - 1]


def test_increments_are_constant_past_level_50(db: psycopg.Connection[Any]) -> None:
    """SPEC 3: past level 50 the increment stays constant, forever."""
    thresholds = curve_thresholds(db, 200)
    tail = {thresholds[i] - thresholds[i - 1] for i in range(49, 200)}  # levels 50..200
    assert len(tail) == 1
    (step,) = tail
    assert step > thresholds[48] - thresholds[47]  # the growth stopped at 50, not before
    # Far along the tail, a level is still the level-50 threshold plus whole steps.
    level_50 = thresholds[49]
    for steps in (1000, 10**9):
        total = level_50 + steps * step
        assert level_row(db, total)[:3] == (50 + steps, total, total + step)
        assert level_row(db, total - 1)[0] == 50 + steps - 1


@pytest.mark.parametrize("total", [-1, -99, -100, -2500, -(10**15)])
def test_negative_totals_are_level_1(db: psycopg.Connection[Any], total: int) -> None:
    """A balance may go below zero (SPEC 4); below 0 is still level 1, 100 - total to go."""
    assert level_row(db, total) == (1, 0, 100, 100 - total)


@pytest.mark.parametrize("total", [BIGINT_MIN, BIGINT_MIN + 1, BIGINT_MAX - 1, BIGINT_MAX])
def test_every_bigint_total_has_a_level(db: psycopg.Connection[Any], xp: XP, total: int) -> None:
    """SPEC 3: every bigint total has a level, nothing overflows."""
    level, start, next_xp, to_next = level_row(db, total)
    assert level >= 1
    assert next_xp - total == to_next
    if total >= 0:
        assert start <= total < next_xp
    else:
        assert (level, start, next_xp) == (1, 0, 100)
    # The Python client returns the same figures as plain ints.
    found = xp.level_for(total)
    assert (found.level, found.level_start_xp, found.next_level_xp, found.xp_to_next_level) == (
        level, start, next_xp, to_next)


def test_level_at_bigint_max_is_beyond_int_range(db: psycopg.Connection[Any]) -> None:
    """SPEC 5: levels are bigint — near the bigint limit a level exceeds 2^31."""
    assert level_row(db, BIGINT_MAX)[0] > 2**31


# --------------------------------------------------------------------------- levels in awards


def test_award_reports_level_before_and_after_a_level_up(db: psycopg.Connection[Any]) -> None:
    """SPEC 3: every award reports the level before and after."""
    rows = award(db, "0x_creator", "B2C_MINT", "mint-1")
    assert rows == [("B2C_MINT", 1000, 1000, 1, 5, 1000)]
    rows = award(db, "0x_creator", "OPTION_NO_REWARDS", "opt-1")
    assert rows == [("OPTION_NO_REWARDS", 1000, 2000, 5, 6, 2000)]


def test_award_without_level_change_reports_same_level(db: psycopg.Connection[Any]) -> None:
    award(db, "0x_completer", "Completion_Submit_B2C_Free", "c-1")
    rows = award(db, "0x_completer", "Completion_Moderation_Validated", "v-1")
    assert rows == [("Completion_Moderation_Validated", 2, 102, 2, 2, 148)]


def test_client_award_exposes_level_up(xp: XP) -> None:
    result = xp.award("0x_creator", "B2C_MINT", "mint-1")
    assert (result.level_before, result.level_after, result.leveled_up) == (1, 5, True)
    result = xp.award("0x_creator", "CAMPAIGN_APPROVED", "approval-1")
    assert (result.level_before, result.level_after, result.leveled_up) == (5, 5, False)


def test_penalty_takes_the_level_down(db: psycopg.Connection[Any], xp: XP) -> None:
    """SPEC 3: current_level can go down after a penalty."""
    award(db, "0x_completer", "Completion_Submit_B2C_Free", "c-1")
    assert xp.balance("0x_completer").current_level == 2
    rows = award(db, "0x_completer", "Completion_Refused_B2C", "c-1-refused")
    assert rows == [("Completion_Refused_B2C", -50, 50, 2, 1, 50)]
    balance = xp.balance("0x_completer")
    assert (balance.total_xp, balance.current_level, balance.xp_to_next_level) == (50, 1, 50)


def test_negative_balance_is_level_1_with_more_to_go(db: psycopg.Connection[Any], xp: XP) -> None:
    rows = award(db, "0x_moderator", "MODERATION_REFUSED_BY_MODERATOR", "refuse-1")
    assert rows == [("MODERATION_REFUSED_BY_MODERATOR", -1, -1, 1, 1, 101)]
    balance = xp.balance("0x_moderator")
    assert (balance.total_xp, balance.current_level, balance.xp_to_next_level) == (-1, 1, 101)


# --------------------------------------------------------------------------- recalculation

STEEP_LEVELS = """[levels]
thresholds = [0, 10, 20, 40]
"""


def steep_level(total: int) -> tuple[int, int]:
    """(level, xp_to_next) on the curve 0, 10, 20, 40, then +20 per level."""
    if total < 10:
        return 1, 10 - total
    if total < 20:
        return 2, 20 - total
    if total < 40:
        return 3, 40 - total
    steps = (total - 40) // 20
    return 4 + steps, 40 + (steps + 1) * 20 - total


def winstory_with_levels(tmp_path: Path, levels: str) -> str:
    """The shipped winstory.toml with its [levels] table replaced: a new version of it."""
    text = (resources.files("pyxp") / "rulesets" / "winstory.toml").read_text(encoding="utf-8")
    changed, count = re.subn(r"^\[levels\]\n.*?(?=^# -{10})", levels + "\n", text,
                             flags=re.DOTALL | re.MULTILINE)
    assert count == 1
    path = tmp_path / "winstory.toml"
    path.write_text(changed, encoding="utf-8")
    return str(path)


WALLETS = {  # wallet -> actions awarded, and the resulting total
    "0x_a": (["MODERATION_REFUSED_BY_MODERATOR"], -1),
    "0x_b": (["MODERATION_VALIDATED_BY_MODERATOR"], 2),
    "0x_c": (["Completion_Submit_B2C_Free", "Completion_Refused_B2C"], 50),
    "0x_d": (["Completion_Submit_B2C_Free"], 100),
    "0x_e": (["B2C_MINT", "OPTION_WINSTORY_VIDEO"], 1500),
    "0x_f": (["B2C_MINT", "OPTION_NO_REWARDS", "OPTION_WINSTORY_VIDEO", "CAMPAIGN_APPROVED"], 2600),
}


def fill_wallets(db: psycopg.Connection[Any]) -> None:
    for wallet, (actions, _) in WALLETS.items():
        for n, action in enumerate(actions):
            award(db, wallet, action, f"{wallet}-{n}")


def balances(db: psycopg.Connection[Any]) -> dict[str, tuple[int, int, int]]:
    return {wallet: (total, level, to_next) for wallet, total, level, to_next in db.execute(
        "SELECT user_wallet, total_xp, current_level, xp_to_next_level FROM pyxp.xp_balances")}


def test_new_curve_rederives_every_balance_in_one_call(
        conninfo: str, db: psycopg.Connection[Any], xp: XP, tmp_path: Path) -> None:
    """SPEC 3: a new curve (new ruleset version) is applied to every balance by one
    set-based recalculation; activation reports how many balances changed."""
    fill_wallets(db)
    before = balances(db)
    assert before == {w: (total, level_row(db, total)[0], level_row(db, total)[3])
                      for w, (_, total) in WALLETS.items()}

    result = schema.apply_ruleset(conninfo, winstory_with_levels(tmp_path, STEEP_LEVELS))
    assert (result.created, result.activated) == (True, True)

    after = balances(db)
    expected = {w: (total, *steep_level(total)) for w, (_, total) in WALLETS.items()}
    assert after == expected
    assert result.balances_changed == sum(1 for w in expected if expected[w] != before[w])
    assert result.balances_changed == len(WALLETS)
    # level_for follows the new curve too, and nothing is left to re-derive.
    assert level_row(db, 2600)[0] == steep_level(2600)[0] == 132
    assert xp.recalculate_levels() == 0
    assert xp.audit() == []


def test_a_new_curve_updates_full_pages_of_balances_without_an_index_entry(
        db: psycopg.Connection[Any], tmp_path: Path) -> None:
    """0022: xp_balances keeps half of each page free, so the recalculation of a new curve (every
    balance's level columns, none of them indexed) is a HOT update of every row: no entry in the
    table's seven indexes. With full pages (fillfactor 100, up to 0021) most of these updates put
    their version on another page and wrote an entry in each index: 77-101 s against 7-9 s at 1M
    balances. 3,000 wallets from three batches fill the pages the way awards do."""
    wallets = [f"0x{n:040x}" for n in range(1, 3001)]
    for start in range(0, len(wallets), 1000):
        events = [{"wallet": w, "action": "CAMPAIGN_APPROVED", "idempotency_key": f"fill-{w}"}
                  for w in wallets[start:start + 1000]]
        db.execute("SELECT count(*) FROM pyxp.award_many(%s)", (Jsonb(events),))
    db.execute("VACUUM pyxp.xp_balances")  # as autovacuum would, after the batches' updates
    pages = db.execute("SELECT pg_relation_size('pyxp.xp_balances') / 8192").fetchone()[0]
    assert pages >= 3000 * 200 // 8192  # a few dozen pages, not one page with room for all
    steep = load_ruleset(winstory_with_levels(tmp_path, STEEP_LEVELS))
    with db.transaction():
        updated_before, hot_before = balance_updates(db)
        changed = db.execute("SELECT balances_changed FROM pyxp.install_ruleset(%s, %s)",
                             (Jsonb(steep.definition()), steep.source)).fetchone()[0]
        updated, hot = balance_updates(db)
        updated, hot = updated - updated_before, hot - hot_before
    assert changed == updated == 3000
    # All but a few (rows the batches left on a page with more than half of it live): at 0021, 26.
    assert hot >= 0.95 * updated
    assert db.execute("SELECT count(*) FROM pyxp.audit()").fetchone() == (0,)


def test_recalculate_levels_repairs_levels_and_returns_rows_changed(
        db: psycopg.Connection[Any], xp: XP) -> None:
    fill_wallets(db)
    expected = balances(db)
    # Levels out of step with the curve (as if the curve had changed under them).
    db.execute("UPDATE pyxp.xp_balances SET current_level = 40, xp_to_next_level = 1"
               " WHERE user_wallet IN ('0x_b', '0x_e')")
    assert {(f.check_name, f.user_wallet) for f in xp.audit()} == {
        ("level_mismatch", "0x_b"), ("level_mismatch", "0x_e")}

    assert db.execute("SELECT pyxp.recalculate_levels()").fetchone() == (2,)
    assert balances(db) == expected
    assert xp.audit() == []
    assert db.execute("SELECT pyxp.recalculate_levels()").fetchone() == (0,)


def test_switching_back_to_the_old_curve_restores_levels(
        conninfo: str, db: psycopg.Connection[Any], tmp_path: Path) -> None:
    fill_wallets(db)
    original = balances(db)
    schema.apply_ruleset(conninfo, winstory_with_levels(tmp_path, STEEP_LEVELS))
    assert balances(db) != original
    result = schema.apply_ruleset(conninfo, "winstory")
    assert (result.version, result.created, result.activated) == (1, False, True)
    assert result.balances_changed == len(WALLETS)
    assert balances(db) == original


# --------------------------------------------------------------------------- any whole number (SPEC 5)


def test_level_for_takes_its_own_output_back_even_past_bigint(db: psycopg.Connection[Any]) -> None:
    """Issue 10 item 5: level_for returned next_level_xp as numeric and accepted only bigint, so
    level_for(next_level_xp) did not exist. Now any whole number: the next level, every time."""
    total: Any = 2**63 - 1
    level = None
    for _ in range(3):  # from the largest bigint on, across the bigint limit
        row = db.execute("SELECT * FROM pyxp.level_for(%s)", (total,)).fetchone()
        assert row is not None
        if level is not None:
            assert row[0] == level + 1 and row[1] == total
        level, start, next_xp, to_next = row
        assert start <= total < next_xp and to_next == next_xp - total
        total = next_xp  # a numeric beyond bigint after the first step
    assert total > 2**63
    chained = db.execute("""SELECT n.level - l.level FROM pyxp.level_for(2500) l
                             CROSS JOIN LATERAL pyxp.level_for(l.next_level_xp) n""").fetchone()
    assert chained == (1,)
    assert db.execute("SELECT level FROM pyxp.level_for(2500::numeric)").fetchone() == (6,)
    assert db.execute("SELECT level FROM pyxp.level_for(-10::numeric ^ 25)").fetchone() == (1,)


@pytest.mark.parametrize("total", ["2500.5", "NaN", "Infinity", "-Infinity", "1e31"])
def test_level_for_refuses_what_is_not_a_whole_number_in_range(db: psycopg.Connection[Any], total: str) -> None:
    with pytest.raises(psycopg.Error) as caught:
        db.execute("SELECT * FROM pyxp.level_for(%s::numeric)", (total,)).fetchall()
    assert caught.value.sqlstate == "PX004"


@pytest.mark.parametrize("total_xp, refused", [
    ("810000000000000000000000", False), ("820000000000000000000000", True),
    ("1000000000000000000000000", True), ("999999999999999999999999999999", True),
    ("-99999999999999999999999999999", False),
])
def test_level_for_takes_a_total_whose_level_fits_in_a_bigint(db: psycopg.Connection[Any], unchanged: Any,
                                                              total_xp: str, refused: bool) -> None:
    """README's range: within +-10^30, and a level that fits in a bigint (about 8.1 x 10^23 XP on the
    default curve; a hostile test, 0039, found README saying any total up to 10^30)."""
    call = "SELECT level FROM pyxp.level_for(total_xp => %s::numeric)"
    if not refused:
        assert db.execute(call, (total_xp,)).fetchone() is not None
        return
    with unchanged(), pytest.raises(psycopg.Error) as caught:
        db.execute(call, (total_xp,))
    assert caught.value.sqlstate == "PX004", caught.value
    assert "beyond the last level" in (caught.value.diag.message_primary or "")
