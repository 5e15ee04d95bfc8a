"""Caps (SPEC 12, issue 13): a gain is cut to what is left of the wallet's allowance in the period.

Every test runs a variant of the default rules with caps (conftest.install_variant) and ends with a
clean audit(), which recomputes every allowance from the ledger.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from conftest import called_behind_holder, install_variant
from pyxp.ruleset_config import load_ruleset

VOTE_CAPS = {"MODERATION_VALIDATED_BY_MODERATOR": (5, "day", "moderation"),
             "Completion_Moderation_Validated": (5, "day", "moderation"),
             "MODERATION_REFUSED_BY_MODERATOR": (5, "day", "moderation"),
             "CAMPAIGN_APPROVED": (250, "week", None)}


@pytest.fixture(autouse=True)
def capped_rules(db: psycopg.Connection[Any]) -> None:
    install_variant(db, "capped", timezone="Europe/Paris", caps=VOTE_CAPS)


def award(db: psycopg.Connection[Any], wallet: str, key: str, action: str = "CAMPAIGN_APPROVED") -> tuple[Any, ...]:
    row = db.execute("SELECT transaction_id, xp_amount, xp_requested, total_xp, replayed "
                     "FROM pyxp.award(%s, %s, %s)", (wallet, action, key)).fetchone()
    assert row is not None
    return tuple(row)


def clean_audit(db: psycopg.Connection[Any]) -> None:
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_a_gain_is_cut_to_what_is_left_and_rows_cut_to_zero_are_written(db: psycopg.Connection[Any]) -> None:
    got = [award(db, "0xc", f"k{i}")[1:] for i in range(4)]
    assert got == [(100, None, 100, False), (100, None, 200, False), (50, 100, 250, False), (0, 100, 250, False)]
    assert db.execute("SELECT count(*), sum(xp_amount) FROM pyxp.xp_transactions WHERE user_wallet = '0xc'"
                      ).fetchone() == (4, 250)
    assert db.execute("SELECT allowance, used_xp FROM pyxp.xp_cap_usage").fetchall() == [("rule:CAMPAIGN_APPROVED", 250)]
    # Another wallet has its own allowance; a replay returns the original row, cut as it was.
    assert award(db, "0xd", "d1")[1:3] == (100, None)
    first = db.execute("SELECT id FROM pyxp.xp_transactions WHERE idempotency_key = 'k2'").fetchone()
    assert award(db, "0xc", "k2") == (first[0], 50, 100, 250, True)  # type: ignore[index]
    clean_audit(db)


def test_a_group_shares_one_allowance_across_flows(db: psycopg.Connection[Any]) -> None:
    amounts = []
    for i in range(2):
        rows = db.execute("SELECT xp_amount, xp_requested FROM pyxp.award_moderation_vote('0xmod', %s, 'VALID', 'B2C')",
                          (f"camp{i}",)).fetchall()
        amounts += rows
    rows = db.execute("SELECT xp_amount, xp_requested FROM pyxp.award_completion_moderation("
                      "'0xmod', 'camp9', 'comp1', 'VALID', 'B2C')").fetchall()
    amounts += rows
    rows = db.execute("SELECT xp_amount, xp_requested FROM pyxp.award_completion_moderation("
                      "'0xmod', 'camp9', 'comp2', 'VALID', 'B2C')").fetchall()
    amounts += rows
    assert amounts == [(2, None), (2, None), (1, 2), (0, 2)]
    # Votes still count in total_moderations, capped or not.
    assert db.execute("SELECT total_xp, total_moderations FROM pyxp.xp_balances WHERE user_wallet = '0xmod'"
                      ).fetchone() == (5, 4)
    clean_audit(db)


def test_penalties_are_never_cut_and_free_nothing(db: psycopg.Connection[Any]) -> None:
    for i in range(3):
        db.execute("SELECT * FROM pyxp.award_moderation_vote('0xm', %s, 'VALID', 'B2C')", (f"v{i}",))
    for i in range(7):  # -1 each, in the same capped group
        row = db.execute("SELECT xp_amount, xp_requested FROM pyxp.award_moderation_vote('0xm', %s, 'REFUSE', 'B2C')",
                         (f"r{i}",)).fetchone()
        assert row == (-1, None)
    row = db.execute("SELECT xp_amount, xp_requested FROM pyxp.award_moderation_vote('0xm', 'v9', 'VALID', 'B2C')"
                     ).fetchone()
    assert row == (0, 2)
    assert db.execute("SELECT used_xp FROM pyxp.xp_cap_usage WHERE user_wallet = '0xm'").fetchone() == (5,)
    clean_audit(db)


def test_reversing_a_capped_gain_frees_what_it_applied(db: psycopg.Connection[Any]) -> None:
    ids = [award(db, "0xr", f"r{i}")[0] for i in range(3)]  # 100, 100, 50
    db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'mistake')", (ids[2],))      # frees 50
    db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'mistake')", (ids[0],))      # frees 100
    assert db.execute("SELECT used_xp FROM pyxp.xp_cap_usage").fetchone() == (100,)
    assert award(db, "0xr", "r3")[1:3] == (100, None)
    assert award(db, "0xr", "r4")[1:3] == (50, 100)
    # A row cut to 0 frees nothing when reversed; replaying a reversal changes nothing.
    zero = award(db, "0xr", "r5")
    assert zero[1] == 0
    db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'mistake')", (zero[0],))
    db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'mistake')", (ids[0],))
    assert db.execute("SELECT used_xp FROM pyxp.xp_cap_usage").fetchone() == (250,)
    clean_audit(db)


def test_a_reversal_frees_the_period_of_the_gain(db: psycopg.Connection[Any]) -> None:
    """Reversed next week, a gain of last week frees last week's allowance, not this week's."""
    old = [award(db, "0xw", f"w{i}")[0] for i in range(3)]
    redate(db, old, "created_at - interval '7 days'")
    clean_audit(db)
    assert award(db, "0xw", "this-week-1")[1] == 100
    db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'late')", (old[0],))
    assert award(db, "0xw", "this-week-2")[1] == 100
    assert award(db, "0xw", "this-week-3")[1:3] == (50, 100)
    assert db.execute("SELECT used_xp FROM pyxp.xp_cap_usage ORDER BY period_start").fetchall() == [(150,), (250,)]
    clean_audit(db)


def test_a_batch_cuts_its_events_in_order(db: psycopg.Connection[Any]) -> None:
    events = [{"wallet": "0xb", "action": "CAMPAIGN_APPROVED", "idempotency_key": f"b{i}"} for i in range(4)]
    events.insert(2, {"wallet": "0xb2", "action": "CAMPAIGN_APPROVED", "idempotency_key": "other"})
    events.append({"wallet": "0xb", "action": "CAMPAIGN_APPROVED", "idempotency_key": "b0"})  # a repeat
    rows = db.execute("SELECT user_wallet, xp_amount, xp_requested, replayed FROM pyxp.award_many(%s)",
                      (Jsonb(events),)).fetchall()
    assert rows == [("0xb", 100, None, False), ("0xb", 100, None, False), ("0xb2", 100, None, False),
                    ("0xb", 50, 100, False), ("0xb", 0, 100, False), ("0xb", 100, None, True)]
    again = db.execute("SELECT user_wallet, xp_amount, xp_requested, replayed FROM pyxp.award_many(%s)",
                       (Jsonb(events),)).fetchall()
    assert again == [(w, a, r, True) for w, a, r, _ in rows]
    clean_audit(db)


def test_sixteen_connections_never_exceed_an_allowance(conninfo: str, db: psycopg.Connection[Any]) -> None:
    """16 connections race on one capped wallet (+2 per vote, 5 per day in the group)."""
    start = threading.Barrier(16)
    errors: list[BaseException] = []

    def vote(worker: int) -> None:
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                start.wait()
                for i in range(5):
                    conn.execute("SELECT * FROM pyxp.award_moderation_vote('0xrace', %s, 'VALID', 'B2C')",
                                 (f"c{worker}-{i}",))
                    conn.execute("SELECT * FROM pyxp.award('0xrace', 'CAMPAIGN_APPROVED', %s)", (f"a{worker}-{i}",))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=vote, args=(w,)) for w in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    got = db.execute("SELECT transaction_type, count(*), sum(xp_amount), sum(coalesce(xp_requested, xp_amount)) "
                     "FROM pyxp.xp_transactions GROUP BY 1 ORDER BY 1").fetchall()
    assert got == [("CAMPAIGN_APPROVED", 80, 250, 8000), ("MODERATION_VALIDATED_BY_MODERATOR", 80, 5, 160)]
    assert db.execute("SELECT total_xp, total_moderations FROM pyxp.xp_balances").fetchall() == [(255, 80)]
    clean_audit(db)


def test_audit_reports_an_exceeded_allowance_and_a_wrong_usage(db: psycopg.Connection[Any]) -> None:
    award(db, "0xa", "a1")
    db.execute("UPDATE pyxp.xp_cap_usage SET used_xp = 7")
    assert [r[0] for r in db.execute("SELECT * FROM pyxp.audit()").fetchall()] == ["cap_usage_mismatch"]
    db.execute("UPDATE pyxp.xp_cap_usage SET used_xp = 100")
    db.execute("UPDATE pyxp.rules SET cap_max_xp = 60 WHERE action = 'CAMPAIGN_APPROVED' AND cap_max_xp IS NOT NULL")
    found = db.execute("SELECT check_name, user_wallet, detail FROM pyxp.audit()").fetchall()
    # (the rule edited in place is not its ruleset's definition either: 0029)
    assert {(c, w) for c, w, _ in found} == {("cap_exceeded", "0xa"), ("ruleset_mismatch", None)}
    exceeded = [d for c, _, d in found if c == "cap_exceeded"][0]
    assert "100 XP" in exceeded and "cap 60" in exceeded


def capped_definition(**rule_changes: Any) -> dict[str, Any]:
    definition = load_ruleset("winstory").definition()
    definition["name"] = "bad-caps"
    definition["rules"][0].update(rule_changes)
    return definition


@pytest.mark.parametrize(("definition", "problem"), [
    (capped_definition(cap={"max_xp": 0, "per": "day"}), "cap must be"),
    (capped_definition(cap={"max_xp": 5, "per": "fortnight"}), "cap must be"),
    (capped_definition(cap={"max_xp": 5, "per": "day", "extra": 1}), "cap must be"),
    (capped_definition(cap={"max_xp": "5", "per": "day"}), "cap must be"),
    (capped_definition(cap=None), "cap must be"),
    (capped_definition(group="moderation"), "needs a cap"),
    (capped_definition(cap={"max_xp": 5, "per": "day"}, group="Bad Group"), "group must match"),
    ({**capped_definition(), "timezone": "Mars/Olympus"}, "IANA"),
])
def test_malformed_caps_and_zones_are_refused_by_the_database(db: psycopg.Connection[Any], unchanged: Any,
                                                              definition: dict[str, Any], problem: str) -> None:
    with unchanged(), pytest.raises(psycopg.Error) as raised:
        db.execute("SELECT * FROM pyxp.install_ruleset(%s, 'x')", (Jsonb(definition),))
    assert raised.value.sqlstate == "PX024" and problem in str(raised.value)


def test_disagreeing_caps_in_a_group_are_refused_by_the_database(db: psycopg.Connection[Any], unchanged: Any) -> None:
    definition = capped_definition(cap={"max_xp": 5, "per": "day"}, group="g")
    definition["rules"][1].update(cap={"max_xp": 6, "per": "day"}, group="g")
    with unchanged(), pytest.raises(psycopg.Error) as raised:
        db.execute("SELECT * FROM pyxp.install_ruleset(%s, 'x')", (Jsonb(definition),))
    assert raised.value.sqlstate == "PX024" and "group g carry different caps" in str(raised.value)


def test_a_ruleset_without_caps_leaves_usage_alone(db: psycopg.Connection[Any]) -> None:
    """After switching to rules without caps, gains are not cut; reversing an old capped gain still frees it."""
    first = award(db, "0xs", "s1")[0]
    install_variant(db, "uncapped")
    assert [award(db, "0xs", f"s{i}")[1] for i in range(2, 6)] == [100, 100, 100, 100]
    db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'x')", (first,))
    assert db.execute("SELECT used_xp FROM pyxp.xp_cap_usage").fetchone() == (0,)
    clean_audit(db)
    now = datetime.now(timezone.utc)
    assert db.execute("SELECT pyxp.period_xp('0xs', 'week', %s)", (now,)).fetchone() == (400,)
    assert db.execute("SELECT pyxp.period_xp('0xs', 'week', %s)", (now - timedelta(days=8),)).fetchone() == (0,)


def test_a_penalty_in_the_same_call_as_a_cut_gain_respects_the_floor(db: psycopg.Connection[Any]) -> None:
    """Review finding: the floor sizes a penalty from what the gains before it applied, after their cut."""
    definition = load_ruleset("winstory").definition()
    definition.update(name="floor-and-cap", balance_floor=0)
    for rule in definition["rules"]:
        if rule["action"] == "MODERATION_VALIDATED_BY_MODERATOR":
            rule["cap"] = {"max_xp": 2, "per": "day"}
    db.execute("SELECT * FROM pyxp.install_ruleset(%s, 'x')", (Jsonb(definition),))
    db.execute("SELECT * FROM pyxp.award('0xf', 'MODERATION_VALIDATED_BY_MODERATOR', 'f1')")   # +2
    db.execute("SELECT * FROM pyxp.award('0xf', 'Completion_Refused_B2C', 'f2')")              # -50 cut to -2
    events = [{"wallet": "0xf", "action": "MODERATION_VALIDATED_BY_MODERATOR", "idempotency_key": "f3"},
              {"wallet": "0xf", "action": "Completion_Refused_B2C", "idempotency_key": "f4"}]
    rows = db.execute("SELECT xp_amount, xp_requested, total_xp FROM pyxp.award_many(%s)", (Jsonb(events),)).fetchall()
    assert rows == [(0, 2, 0), (0, -50, 0)]
    assert db.execute("SELECT total_xp FROM pyxp.xp_balances WHERE user_wallet = '0xf'").fetchone() == (0,)
    clean_audit(db)


def test_a_capped_award_waiting_for_its_wallet_sees_what_the_holder_used(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """A single call locks its wallet in the statement that reads the allowance's usage (0021),
    whose snapshot predates the holder's commit: it sees it waited (the version it locked is not
    its snapshot's) and reads again. It sees the 50 XP the holder took, and is cut to 0."""
    award(db, "0xwait", "w1")
    award(db, "0xwait", "w2")  # 200 of the week's 250
    outcome = called_behind_holder(
        conninfo, db, "SELECT * FROM pyxp.award('0xwait', 'CAMPAIGN_APPROVED', 'w3')",
        lambda conn: conn.execute("SELECT xp_amount, xp_requested, total_xp "
                                  "FROM pyxp.award('0xwait', 'CAMPAIGN_APPROVED', 'w4')").fetchall())
    assert outcome == {"result": [(0, 100, 250)]}
    assert db.execute("SELECT sum(used_xp) FROM pyxp.xp_cap_usage WHERE user_wallet = '0xwait'"
                      ).fetchone() == (250,)
    clean_audit(db)


@pytest.mark.parametrize("wallet_before", ["new-wallet", "balance-without-usage"])
def test_a_capped_award_waiting_for_the_holder_that_opened_the_allowance_is_cut(
        conninfo: str, db: psycopg.Connection[Any], wallet_before: str) -> None:
    """The holder's gains are the period's first on the allowance: its xp_cap_usage row, like a
    new wallet's balance row, is not in the waiter's first snapshot at all. Read as of that
    snapshot the waiter would get its 100 XP (300 of 250); read again after the holder's commit
    it gets the 50 left. balance-without-usage guards 0021's reread (it got 100 without it);
    new-wallet guards the reread of a wallet created meanwhile (no balance row in the snapshot)."""
    if wallet_before == "balance-without-usage":
        award(db, "0xopen", "o0", action="Completion_Submit_B2C_Free")  # uncapped: a balance, no usage
    outcome = called_behind_holder(
        conninfo, db, "SELECT * FROM pyxp.award('0xopen', 'CAMPAIGN_APPROVED', 'o1');"
                      "SELECT * FROM pyxp.award('0xopen', 'CAMPAIGN_APPROVED', 'o2')",
        lambda conn: conn.execute("SELECT xp_amount, xp_requested "
                                  "FROM pyxp.award('0xopen', 'CAMPAIGN_APPROVED', 'o3')").fetchall())
    assert outcome == {"result": [(50, 100)]}
    assert db.execute("SELECT used_xp FROM pyxp.xp_cap_usage WHERE user_wallet = '0xopen'"
                      ).fetchall() == [(250,)]
    assert db.execute("SELECT count(*) FROM pyxp.xp_balances WHERE user_wallet = '0xopen'").fetchone() == (1,)
    clean_audit(db)


def test_a_capped_award_waiting_for_the_same_award_replays_it(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """Read again after the holder's commit, the claim it made is there: the waiter replays it
    (without 0021's reread, step 3's skipped claim INSERT would send it to the replay too)."""
    award(db, "0xsame", "s0")
    outcome = called_behind_holder(
        conninfo, db, "SELECT * FROM pyxp.award('0xsame', 'CAMPAIGN_APPROVED', 's1')",
        lambda conn: conn.execute("SELECT transaction_id, xp_amount, replayed "
                                  "FROM pyxp.award('0xsame', 'CAMPAIGN_APPROVED', 's1')").fetchall())
    first = db.execute("SELECT id FROM pyxp.xp_transactions WHERE idempotency_key = 's1'").fetchall()
    assert outcome == {"result": [(first[0][0], 100, True)]}
    assert db.execute("SELECT used_xp FROM pyxp.xp_cap_usage WHERE user_wallet = '0xsame'"
                      ).fetchall() == [(200,)]
    clean_audit(db)


# A switch of the allowance's period (another timezone, or another `per`) in the middle of one:
# the new period's allowance starts from what its capped gains already used (0025). Before,
# it started from nothing (found by a hostile test, 2026-11-27).
DAILY = {"CAMPAIGN_APPROVED": (250, "day", None)}


def usage(db: psycopg.Connection[Any], wallet: str) -> list[tuple[Any, ...]]:
    return db.execute("SELECT used_xp, seeded_xp, seeded_per, seeded_zone FROM pyxp.xp_cap_usage "
                      "WHERE user_wallet = %s ORDER BY seeded_zone NULLS FIRST", (wallet,)).fetchall()


def test_after_a_switch_of_timezone_an_allowance_counts_what_its_period_used(db: psycopg.Connection[Any]) -> None:
    """250 of a 250-per-day allowance used under UTC, then the same rules in New York: the New
    York day holds those gains (its midnight, 05:00 or 04:00 UTC, is hours from UTC's), so
    nothing more is granted today. Before 0025 the next award got 100 (350 in that day)."""
    install_variant(db, "daily-utc", timezone="UTC", caps=DAILY)
    assert [award(db, "0xtz", f"z{i}")[1] for i in range(3)] == [100, 100, 50]
    install_variant(db, "daily-ny", timezone="America/New_York", caps=DAILY)
    assert award(db, "0xtz", "z3")[1:3] == (0, 100)
    assert usage(db, "0xtz") == [(250, 0, None, None), (250, 250, "day", "America/New_York")]
    clean_audit(db)


def test_a_reversal_after_a_switch_frees_its_gain_in_both_periods(db: psycopg.Connection[Any]) -> None:
    install_variant(db, "daily-utc", timezone="UTC", caps=DAILY)
    ids = [award(db, "0xtr", f"r{i}")[0] for i in range(3)]  # 100, 100, 50
    install_variant(db, "daily-ny", timezone="America/New_York", caps=DAILY)
    db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'mistake')", (ids[1],))
    assert usage(db, "0xtr") == [(150, 0, None, None), (150, 150, "day", "America/New_York")]
    assert award(db, "0xtr", "r3")[1:3] == (100, None)
    assert award(db, "0xtr", "r4")[1:3] == (0, 100)
    clean_audit(db)


def test_switching_back_counts_what_the_other_zone_granted(db: psycopg.Connection[Any]) -> None:
    """UTC, New York, UTC again the same day: UTC's allowance now holds New York's gains too."""
    install_variant(db, "daily-utc", timezone="UTC", caps=DAILY)
    award(db, "0xtb", "b0")  # 100
    install_variant(db, "daily-ny", timezone="America/New_York", caps=DAILY)
    assert award(db, "0xtb", "b1")[1] == 100  # 200 in New York's day
    install_variant(db, "daily-utc", timezone="UTC", caps=DAILY)  # version 1 again
    assert award(db, "0xtb", "b2")[1:3] == (50, 100)
    assert usage(db, "0xtb") == [(200, 100, "day", "America/New_York"), (250, 100, "day", "UTC")]
    clean_audit(db)


def test_a_weekly_cap_after_a_daily_one_counts_this_weeks_gains(db: psycopg.Connection[Any]) -> None:
    """250 per day, then 300 per week in the same zone: the week already holds today's 250."""
    install_variant(db, "daily-utc", timezone="UTC", caps=DAILY)
    assert [award(db, "0xpw", f"p{i}")[1] for i in range(3)] == [100, 100, 50]
    install_variant(db, "weekly-utc", timezone="UTC", caps={"CAMPAIGN_APPROVED": (300, "week", None)})
    assert award(db, "0xpw", "p3")[1:3] == (50, 100)
    clean_audit(db)


def test_audit_reports_a_seed_that_disagrees_with_the_ledger(db: psycopg.Connection[Any]) -> None:
    install_variant(db, "daily-utc", timezone="UTC", caps=DAILY)
    award(db, "0xts", "s0")
    install_variant(db, "daily-ny", timezone="America/New_York", caps=DAILY)
    clean_audit(db)
    db.execute("UPDATE pyxp.xp_cap_usage SET used_xp = used_xp - 40, seeded_xp = seeded_xp - 40 "
               "WHERE seeded_xp > 0")
    found = db.execute("SELECT check_name, user_wallet, detail FROM pyxp.audit()").fetchall()
    assert [(c, w) for c, w, _ in found] == [("cap_usage_mismatch", "0xts")]
    assert "60 XP" in found[0][2] and "ledger 100 XP" in found[0][2], found


def test_audit_reports_an_allowance_exceeded_in_the_zone_that_governed_it(db: psycopg.Connection[Any]) -> None:
    """The seed wiped (a row as 0024 left it): New York's day gets 100 more while its 250 were
    used; the usage rows agree with their own rows, but the day that governed the award did not
    have room for it."""
    install_variant(db, "daily-utc", timezone="UTC", caps=DAILY)
    [award(db, "0xtx", f"x{i}") for i in range(3)]  # 250
    install_variant(db, "daily-ny", timezone="America/New_York", caps=DAILY)
    db.execute("DELETE FROM pyxp.xp_cap_usage WHERE seeded_xp > 0")
    clean_audit(db)  # nothing granted beyond a cap yet
    assert award(db, "0xtx", "x3")[1] == 100
    found = db.execute("SELECT check_name, user_wallet, detail FROM pyxp.audit()").fetchall()
    assert [(c, w) for c, w, _ in found] == [("cap_exceeded", "0xtx")]
    assert "350 XP" in found[0][2] and "cap 250" in found[0][2], found


def test_a_capped_award_begun_before_a_switch_is_dated_at_the_switch(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """A transaction that began before an activation (an application's, or an award queued behind
    the switch's lock) writes under the new rules: its row is dated no earlier than the switch, so
    it counts in the period the switch counted. Dated at its own start, it counted in the new
    zone's day before (when the switch came just after that zone's midnight), which the switch had
    not counted: 100 more over a used 250 (a hostile test, 0025)."""
    install_variant(db, "daily-utc", timezone="UTC", caps=DAILY)
    with psycopg.connect(conninfo) as late:
        began = late.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        install_variant(db, "daily-ny", timezone="America/New_York", caps=DAILY)
        switched = db.execute("SELECT activated_at FROM pyxp.rulesets WHERE is_active").fetchone()[0]  # type: ignore[index]
        assert began < switched
        late.execute("SELECT * FROM pyxp.award('0xlate', 'CAMPAIGN_APPROVED', 'late-1')")
        late.commit()
    assert db.execute("SELECT created_at FROM pyxp.xp_transactions WHERE idempotency_key = 'late-1'"
                      ).fetchone() == (switched,)
    clean_audit(db)


def redate(db: psycopg.Connection[Any], ids: list[int], to: str, usage: bool = True) -> None:
    """Rows dated otherwise, as an earlier week or a server clock that ran ahead would have (``to``:
    an SQL expression of created_at); their claims (a claim says where its row is), the balances'
    periods and (``usage``) the usage follow."""
    with db.transaction():
        db.execute("ALTER TABLE pyxp.xp_transactions DISABLE TRIGGER xp_transactions_append_only")
        db.execute(f"UPDATE pyxp.xp_transactions SET created_at = {to} WHERE id = ANY(%s)", (ids,))
        db.execute("ALTER TABLE pyxp.xp_transactions ENABLE ALWAYS TRIGGER xp_transactions_append_only")
        db.execute("UPDATE pyxp.xp_award_claims c SET created_at = t.created_at FROM pyxp.xp_transactions t "
                   "WHERE t.id = c.transaction_id")
        db.execute("SELECT pyxp.rebuild_period_columns(pyxp.active_timezone())")
        if usage:
            db.execute("DELETE FROM pyxp.xp_cap_usage")
            db.execute("INSERT INTO pyxp.xp_cap_usage (user_wallet, allowance, period_start, used_xp) "
                       "SELECT user_wallet, allowance, period_start, used_xp FROM pyxp.ledger_cap_usage()")


def same_days(*instants: datetime) -> bool:
    """Whether the instants share their UTC and New York days (a test a second from a midnight skips)."""
    from zoneinfo import ZoneInfo
    return all(len({i.astimezone(ZoneInfo(zone)).date() for i in instants}) == 1
               for zone in ("UTC", "America/New_York"))


def test_a_gain_dated_after_the_switch_that_counted_it_is_audited_and_freed(db: psycopg.Connection[Any]) -> None:
    """A gain written while the clock ran ahead, then the clock stepped back and a switch to New
    York's days counted it in its day (it existed): the seed, the audit and a reversal's freeing
    agree that it counts. At 0030 the audit and the freeing took only gains dated before the
    switch: a false cap_usage_mismatch, and after its reversal the day kept its 100 (the next
    awards got 100 and 50, not 100 and 100; a hostile test)."""
    install_variant(db, "daily-utc", timezone="UTC", caps=DAILY)
    gain = award(db, "0xahead", "a0")[0]  # 100
    install_variant(db, "daily-ny", timezone="America/New_York", caps=DAILY)
    switched = db.execute("SELECT activated_at FROM pyxp.rulesets WHERE is_active").fetchone()[0]  # type: ignore[index]
    if not same_days(switched, switched + timedelta(seconds=1)):
        pytest.skip("a second from a midnight")
    redate(db, [gain], "(SELECT activated_at + interval '1 second' FROM pyxp.rulesets WHERE is_active)",
           usage=False)  # (the same periods: the switch's seed stays as it counted it)
    clean_audit(db)
    db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'mistake')", (gain,))
    assert [award(db, "0xahead", f"a{i}")[1:3] for i in (1, 2, 3)] == [(100, None), (100, None), (50, 100)]
    clean_audit(db)


def test_a_switch_counts_the_gains_dated_in_its_later_periods(db: psycopg.Connection[Any]) -> None:
    """Gains written while the clock ran a day ahead, then the clock stepped back and a switch to
    New York's days: their New York day, after the switch's, holds them too (at 0030 only the
    switch's own period was counted: once that day came, the wallet got its 250 again, 500 in one
    day; a hostile test)."""
    install_variant(db, "daily-utc", timezone="UTC", caps=DAILY)
    gains = [award(db, "0xlater", f"l{i}")[0] for i in range(3)]  # 100, 100, 50
    redate(db, gains, "created_at + interval '1 day'")
    clean_audit(db)
    install_variant(db, "daily-ny", timezone="America/New_York", caps=DAILY)
    assert db.execute("SELECT u.used_xp, u.seeded_xp, u.period_start = date_trunc('day', t.created_at, "
                      "'America/New_York') FROM pyxp.xp_cap_usage u, pyxp.xp_transactions t "
                      "WHERE u.user_wallet = '0xlater' AND u.seeded_zone = 'America/New_York' AND t.id = %s",
                      (gains[0],)).fetchall() == [(250, 250, True)]
    clean_audit(db)
    db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'mistake')", (gains[0],))
    assert db.execute("SELECT used_xp, seeded_xp FROM pyxp.xp_cap_usage WHERE user_wallet = '0xlater' "
                      "AND seeded_zone = 'America/New_York'").fetchall() == [(150, 150)]
    clean_audit(db)


@pytest.mark.parametrize(("before", "after"), [
    ({"MODERATION_VALIDATED_BY_MODERATOR": (4, "day", None)},                    # alone, then in a group
     {"MODERATION_VALIDATED_BY_MODERATOR": (4, "day", "moderation"),
      "Completion_Moderation_Validated": (4, "day", "moderation")}),
    ({"MODERATION_VALIDATED_BY_MODERATOR": (4, "day", "moderation"),             # a group renamed
      "Completion_Moderation_Validated": (4, "day", "moderation")},
     {"MODERATION_VALIDATED_BY_MODERATOR": (4, "day", "votes"),
      "Completion_Moderation_Validated": (4, "day", "votes")}),
])
def test_an_action_moved_to_another_allowance_brings_what_it_used(
        db: psycopg.Connection[Any], before: dict[str, tuple[int, str, str | None]],
        after: dict[str, tuple[int, str, str | None]]) -> None:
    """A rule put into a group (or its group renamed) the same day: the group's allowance holds
    the gains its actions were granted under the old name (0025; a hostile test found 4 more XP
    granted over a used 4-per-day allowance, and the audit clean)."""
    install_variant(db, "votes-before", timezone="UTC", caps=before)
    vote = "SELECT xp_amount, xp_requested FROM pyxp.award_moderation_vote('0xgroup', %s, 'VALID', 'B2C')"
    assert [db.execute(vote, (f"c{i}",)).fetchone() for i in range(2)] == [(2, None), (2, None)]
    install_variant(db, "votes-after", timezone="UTC", caps=after)
    assert db.execute(vote, ("c2",)).fetchone() == (0, 2)
    clean_audit(db)
    # The seed wiped: the day's next vote is granted beyond the cap, and the audit says so.
    db.execute("DELETE FROM pyxp.xp_cap_usage WHERE seeded_at IS NOT NULL")
    assert db.execute(vote, ("c3",)).fetchone() == (2, None)
    assert [f[0] for f in db.execute("SELECT * FROM pyxp.audit()").fetchall()] == ["cap_exceeded"]


SEED = {"seeded_xp": 5, "seeded_per": "day", "seeded_zone": "UTC", "seeded_by": 1,
        "seeded_at": datetime(2026, 11, 28, tzinfo=timezone.utc), "seeded_seq": 3}


@pytest.mark.parametrize(("name", "row"), [
    ("seed larger than the usage", {**SEED, "seeded_xp": 11}),
    ("negative seed", {**SEED, "seeded_xp": -1}),
    ("seed without its time", {**SEED, "seeded_at": None}),
    ("seed without its zone", {**SEED, "seeded_zone": None}),
    ("seed without its ruleset", {**SEED, "seeded_by": None}),
    ("seed without its position", {**SEED, "seeded_seq": None}),
    ("seed without its period", {**SEED, "seeded_per": None}),
    ("seeded XP without a seed", {"seeded_xp": 5}),
])
def test_a_usage_row_whose_seed_is_inconsistent_is_refused(db: psycopg.Connection[Any], unchanged: Any,
                                                            name: str, row: dict[str, Any]) -> None:
    """The seed check (a function since 0035, where the expression written out cost each capped award
    about 3 % of its CPU) refuses what the expression refused, for the owner too; nothing written."""
    columns = ["user_wallet", "allowance", "period_start", "used_xp", *row]
    insert = (f"INSERT INTO pyxp.xp_cap_usage ({', '.join(columns)}) "
              f"VALUES ({', '.join(['%s'] * len(columns))})")
    values = ["0xseed", "rule:CAMPAIGN_APPROVED", datetime(2026, 11, 28, tzinfo=timezone.utc), 10, *row.values()]
    with unchanged(), db.transaction(), pytest.raises(psycopg.errors.CheckViolation) as refused:
        db.execute(insert, values)
    assert refused.value.diag.constraint_name == "xp_cap_usage_seed_check", name
    # A whole seed, and no seed, are accepted (rolled back: the audit would report them).
    with db.transaction(force_rollback=True):
        db.execute(f"INSERT INTO pyxp.xp_cap_usage (user_wallet, allowance, period_start, used_xp, {', '.join(SEED)}) "
                   f"VALUES ({', '.join(['%s'] * (4 + len(SEED)))})", values[:4] + list(SEED.values()))
        db.execute("INSERT INTO pyxp.xp_cap_usage (user_wallet, allowance, period_start, used_xp) "
                   "VALUES ('0xplain', 'rule:CAMPAIGN_APPROVED', now(), 0)")
