"""Periods (SPEC 12, issue 13): boards by day, ISO week, month and year in the ruleset's timezone.

Ledger rows get created_at = now() of their transaction, so a test cannot award "last week".
History is made by awarding now, then moving the rows' created_at as the owner (append-only
trigger disabled for that one UPDATE, as a superuser can) and re-deriving what the writer keeps
from them (pyxp.rebuild_period_columns, xp_cap_usage). The writer's own bookkeeping is then
exercised by awards made after such a move: a wallet whose latest period is in the past, in the
future, or the current one. Every board is checked against a model computed here with zoneinfo,
independently of PostgreSQL's time zone code, and audit() must stay clean.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from click.testing import CliRunner

from pyxp import XP
from pyxp.cli import cli
from pyxp.errors import XPError
from conftest import install_variant

KINDS = ("day", "week", "month", "year")


def install_zone(db: psycopg.Connection[Any], zone: str | None) -> None:
    """Activates the default rules with ``timezone = zone`` (None: no key, UTC)."""
    install_variant(db, "periods-test", timezone=zone)


def award(db: psycopg.Connection[Any], wallet: str, key: str, action: str = "CAMPAIGN_APPROVED") -> int:
    row = db.execute("SELECT transaction_id FROM pyxp.award(%s, %s, %s)", (wallet, action, key)).fetchone()
    assert row is not None
    return int(row[0])


def place(db: psycopg.Connection[Any], moves: dict[int, datetime]) -> None:
    """Sets created_at of the given rows (owner's operation), then re-derives the kept columns."""
    with db.transaction():
        db.execute("ALTER TABLE pyxp.xp_transactions DISABLE TRIGGER xp_transactions_append_only")
        for transaction_id, at in moves.items():
            db.execute("UPDATE pyxp.xp_transactions SET created_at = %s WHERE id = %s", (at, transaction_id))
        db.execute("ALTER TABLE pyxp.xp_transactions ENABLE ALWAYS TRIGGER xp_transactions_append_only")
        # A generic award's claim says where its row is (its partition, by created_at).
        db.execute("UPDATE pyxp.xp_award_claims c SET created_at = t.created_at FROM pyxp.xp_transactions t "
                   "WHERE t.id = c.transaction_id")
        db.execute("SELECT pyxp.rebuild_period_columns((SELECT timezone FROM pyxp.rulesets WHERE is_active))")
        db.execute("DELETE FROM pyxp.xp_cap_usage")
        db.execute("INSERT INTO pyxp.xp_cap_usage SELECT user_wallet, allowance, period_start, used_xp "
                   "FROM pyxp.ledger_cap_usage()")


def period_key(kind: str, at: datetime, zone: ZoneInfo) -> tuple[int, ...]:
    local = at.astimezone(zone)
    if kind == "day":
        return (local.year, local.month, local.day)
    if kind == "week":
        iso = local.isocalendar()
        return (iso.year, iso.week)
    if kind == "month":
        return (local.year, local.month)
    return (local.year,)


def model_board(db: psycopg.Connection[Any], kind: str, at: datetime, zone: str) -> list[tuple[str, int]]:
    """(wallet, period XP) by XP desc, wallet: from the ledger rows, periods computed with zoneinfo."""
    tz = ZoneInfo(zone)
    rows = db.execute("SELECT t.user_wallet, t.xp_amount, coalesce(o.created_at, t.created_at) "
                      "FROM pyxp.xp_transactions t LEFT JOIN pyxp.xp_transactions o ON o.id = t.reverses").fetchall()
    totals: dict[str, int] = defaultdict(int)
    for wallet, amount, effective in rows:
        if period_key(kind, effective, tz) == period_key(kind, at, tz):
            totals[wallet] += amount
    return sorted(totals.items(), key=lambda item: (-item[1], item[0]))


def board(db: psycopg.Connection[Any], kind: str, at: datetime) -> list[tuple[str, int]]:
    rows = db.execute("SELECT rank, user_wallet, period_xp FROM pyxp.leaderboard(1000, 0, %s, %s)",
                      (kind, at)).fetchall()
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    return [(r[1], r[2]) for r in rows]


def check_boards(db: psycopg.Connection[Any], zone: str, instants: Iterable[datetime]) -> None:
    """Every kind of board at every instant equals the model; ranks and period_xp agree with it."""
    for at in instants:
        for kind in KINDS:
            expected = model_board(db, kind, at, zone)
            assert board(db, kind, at) == expected, (kind, at)
            for rank, (wallet, xp) in enumerate(expected, start=1):
                assert db.execute("SELECT pyxp.wallet_rank(%s, %s, %s), pyxp.period_xp(%s, %s, %s)",
                                  (wallet, kind, at, wallet, kind, at)).fetchone() == (rank, xp), (kind, at, wallet)
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


# --------------------------------------------------------------------------- period bounds


@pytest.mark.parametrize(("zone", "at", "hours"), [
    ("Europe/Paris", "2026-03-29 12:00+02", 23),     # clocks go forward: 02:00 -> 03:00
    ("Europe/Paris", "2026-10-25 12:00+01", 25),     # clocks go back: 03:00 -> 02:00
    ("Europe/Paris", "2026-10-26 12:00+01", 24),
    ("Pacific/Auckland", "2026-09-27 12:00+13", 23),  # NZ summer time starts
    ("Pacific/Auckland", "2026-04-05 12:00+12", 25),  # and ends
    ("UTC", "2026-03-29 12:00+00", 24),
])
def test_a_day_lasts_23_or_25_hours_across_a_dst_change(db: psycopg.Connection[Any], zone: str, at: str,
                                                        hours: int) -> None:
    start, end = db.execute("SELECT period_start, period_end FROM pyxp.period_bounds('day', %s, %s)",
                            (at, zone)).fetchone()  # type: ignore[misc]
    tz = ZoneInfo(zone)
    local = datetime.fromisoformat(at.replace(" ", "T") + ":00").astimezone(tz)
    assert start == datetime(local.year, local.month, local.day, tzinfo=tz)
    assert end - start == timedelta(hours=hours)


def test_weeks_start_on_monday_months_and_years_on_the_first(db: psycopg.Connection[Any]) -> None:
    zone = "Europe/Paris"
    tz = ZoneInfo(zone)
    at = datetime(2026, 3, 29, 12, tzinfo=tz)  # a Sunday, the day of the spring change
    got = {kind: db.execute("SELECT period_start, period_end FROM pyxp.period_bounds(%s, %s, %s)",
                            (kind, at, zone)).fetchone() for kind in KINDS}
    assert got["week"] == (datetime(2026, 3, 23, tzinfo=tz), datetime(2026, 3, 30, tzinfo=tz))
    assert got["week"][1] - got["week"][0] == timedelta(hours=7 * 24 - 1)
    assert got["month"] == (datetime(2026, 3, 1, tzinfo=tz), datetime(2026, 4, 1, tzinfo=tz))
    assert got["year"] == (datetime(2026, 1, 1, tzinfo=tz), datetime(2027, 1, 1, tzinfo=tz))
    # ISO week 1 of 2027 starts on Monday 4 January 2027; 1-3 January belong to week 53 of 2026.
    assert db.execute("SELECT period_start FROM pyxp.period_bounds('week', '2027-01-02 12:00+01', %s)",
                      (zone,)).fetchone() == (datetime(2026, 12, 28, tzinfo=tz),)


# --------------------------------------------------------------------------- boards against the model


def zone_instants(zone: str) -> list[datetime]:
    """Instants just before and after local midnights around DST changes, week and month ends."""
    tz = ZoneInfo(zone)
    days = [date(2026, 3, 28), date(2026, 3, 29), date(2026, 3, 30), date(2026, 3, 31), date(2026, 4, 1),
            date(2026, 4, 5), date(2026, 9, 27), date(2026, 10, 25), date(2026, 10, 26), date(2026, 11, 1),
            date(2026, 11, 2), date(2026, 12, 31), date(2027, 1, 1)]
    instants: list[datetime] = []
    for day in days:
        midnight = datetime(day.year, day.month, day.day, tzinfo=tz)
        instants += [midnight - timedelta(minutes=1), midnight, midnight + timedelta(hours=2, minutes=30),
                     midnight + timedelta(hours=23, minutes=30)]
    return instants


# Atlantic/Azores (25 October 2026) and America/Havana (1 November 2026, a month's first day)
# put their clocks back from 01:00 to 00:00: local midnight happens twice, and date_trunc gives
# the second. Before 0024 a past board counted the hour between the two in the day before too.
@pytest.mark.parametrize("zone", ["Europe/Paris", "Pacific/Auckland", "Atlantic/Azores", "America/Havana", None])
def test_boards_count_each_row_in_its_local_period(db: psycopg.Connection[Any], zone: str | None) -> None:
    install_zone(db, zone)
    name = zone or "UTC"
    instants = zone_instants(name)
    moves: dict[int, datetime] = {}
    for i, at in enumerate(instants):
        for wallet in (f"0xw{i % 5}", f"0xw{(i * 3) % 7}"):
            moves[award(db, wallet, f"row-{i}-{wallet}")] = at
    place(db, moves)
    probes = sorted({at + delta for at in instants[::3] for delta in (timedelta(0), timedelta(seconds=-1))})
    check_boards(db, name, probes)


def test_a_reversal_counts_in_the_period_of_the_row_it_reverses(db: psycopg.Connection[Any]) -> None:
    install_zone(db, "Europe/Paris")
    tz = ZoneInfo("Europe/Paris")
    last_week = datetime.now(tz) - timedelta(days=7)
    earned = award(db, "0xrev", "earned-last-week")
    award(db, "0xother", "other-last-week")
    place(db, {earned: last_week, earned + 1: last_week})
    # Reversed this week: the award leaves last week's board, this week's board does not see it.
    db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'fraud')", (earned,))
    assert board(db, "week", last_week) == [("0xother", 100), ("0xrev", 0)]
    assert board(db, "week", datetime.now(tz)) == []
    assert db.execute("SELECT pyxp.period_xp('0xrev', 'week', %s), pyxp.period_xp('0xrev', 'week')",
                      (last_week,)).fetchone() == (0, 0)
    assert db.execute("SELECT pyxp.wallet_rank('0xrev', 'week')").fetchone() == (None,)
    check_boards(db, "Europe/Paris", [last_week, datetime.now(tz)])


def test_the_writer_keeps_the_current_periods_when_time_moves(db: psycopg.Connection[Any]) -> None:
    """Its three cases: the wallet's latest period is older (reset), the same (add), newer (left to the ledger)."""
    install_zone(db, "Pacific/Auckland")
    now = datetime.now(timezone.utc)
    old = award(db, "0xold", "old-1")          # will be last year's
    future = award(db, "0xfuture", "future-1")  # a transaction that began before the period turned, seen from later
    place(db, {old: now - timedelta(days=400), future: now + timedelta(days=400)})
    award(db, "0xold", "old-2")                 # older latest period: reset to this one
    award(db, "0xnow", "now-1")
    award(db, "0xnow", "now-2")                 # same period: added
    award(db, "0xfuture", "future-2")           # its latest periods are ahead: this one only in the ledger
    kept = db.execute("SELECT user_wallet, day_xp, week_xp, month_xp, year_xp FROM pyxp.xp_balances "
                      "ORDER BY user_wallet").fetchall()
    assert kept == [("0xfuture", 100, 100, 100, 100), ("0xnow", 200, 200, 200, 200),
                    ("0xold", 100, 100, 100, 100)]
    # A board of now while a wallet already moved past it comes from the ledger, and stays exact.
    check_boards(db, "Pacific/Auckland", [now, now - timedelta(days=400), now + timedelta(days=400)])


def test_a_new_timezone_rederives_the_kept_periods(db: psycopg.Connection[Any]) -> None:
    install_zone(db, "Europe/Paris")
    tz = ZoneInfo("Pacific/Auckland")
    # 20:00 UTC is already tomorrow in Auckland.
    evening = datetime.now(timezone.utc).replace(hour=20, minute=0, second=0, microsecond=0) - timedelta(days=1)
    place(db, {award(db, "0xz", "zone-1"): evening})
    install_zone(db, "Pacific/Auckland")
    assert db.execute("SELECT day_start FROM pyxp.xp_balances WHERE user_wallet = '0xz'").fetchone() == (
        datetime.combine(evening.astimezone(tz).date(), datetime.min.time(), tz),)
    check_boards(db, "Pacific/Auckland", [evening, datetime.now(timezone.utc)])


# --------------------------------------------------------------------------- API shape


def test_existing_calls_keep_working_and_all_is_the_total(db: psycopg.Connection[Any]) -> None:
    award(db, "0xa", "a-1")
    award(db, "0xb", "b-1")
    award(db, "0xb", "b-2")
    assert db.execute("SELECT * FROM pyxp.leaderboard(10, 0)").fetchall() == [
        (1, "0xb", 200, 2, 200), (2, "0xa", 100, 2, 100)]
    assert db.execute("SELECT * FROM pyxp.leaderboard()").fetchall() == db.execute(
        "SELECT * FROM pyxp.leaderboard(period => 'ALL', at => '2000-01-01')").fetchall()
    # The all-time board does not read its `at` (README "Periods"): NULL and infinite ones too.
    assert db.execute("SELECT * FROM pyxp.leaderboard()").fetchall() == db.execute(
        "SELECT * FROM pyxp.leaderboard(10, 0, 'all', NULL)").fetchall() == db.execute(
        "SELECT * FROM pyxp.leaderboard(10, 0, 'all', 'infinity')").fetchall()
    assert db.execute("SELECT pyxp.wallet_rank('0xa', 'all', '-infinity'), pyxp.period_xp('0xa', 'all', NULL)"
                      ).fetchone() == (2, 100)
    assert db.execute("SELECT pyxp.wallet_rank('0xa'), pyxp.wallet_rank('0xa', 'all'), "
                      "pyxp.period_xp('0xa', 'All'), pyxp.period_xp('0xnobody', 'week'), "
                      "pyxp.wallet_rank('0xnobody', 'Week')").fetchone() == (2, 2, 100, 0, None)
    assert db.execute("SELECT * FROM pyxp.leaderboard(10, 1, 'WeEk')").fetchall() == [(2, "0xa", 100, 2, 100)]


@pytest.mark.parametrize("call", [
    "SELECT * FROM pyxp.leaderboard(10, 0, 'fortnight')",
    "SELECT * FROM pyxp.leaderboard(10, 0, NULL)",
    "SELECT * FROM pyxp.leaderboard(10, 0, 'week', NULL)",
    "SELECT * FROM pyxp.leaderboard(10, 0, 'week', 'infinity')",
    "SELECT pyxp.wallet_rank('0xa', 'days')",
    "SELECT pyxp.period_xp('0xa', repeat('week', 10000000))",
    "SELECT pyxp.period_xp('0xa', 'week', '-infinity')",
])
def test_bad_periods_are_refused(db: psycopg.Connection[Any], unchanged: Any, call: str) -> None:
    with unchanged(), pytest.raises(psycopg.Error) as raised:
        db.execute(call)
    assert raised.value.sqlstate == "PX026"


def test_python_and_cli_read_the_period_boards(xp: XP, conninfo: str, db: psycopg.Connection[Any]) -> None:
    xp.award("0xp1", "CAMPAIGN_APPROVED", "p-1")
    xp.award("0xp2", "CAMPAIGN_APPROVED", "p-2")
    xp.award("0xp2", "MODERATION_VALIDATED_BY_MODERATOR", "p-3")
    week = xp.leaderboard(period="week")
    assert [(r.rank, r.user_wallet, r.period_xp) for r in week] == [(1, "0xp2", 102), (2, "0xp1", 100)]
    assert xp.rank("0xp1", "week") == 2 and xp.period_xp("0xp2", "month") == 102
    assert xp.leaderboard(period="week", at=datetime(2001, 1, 1, tzinfo=timezone.utc)) == []
    assert xp.period_xp("0xp2", "day", at=datetime.now(timezone.utc) - timedelta(days=2)) == 0
    with pytest.raises(XPError) as raised:
        xp.leaderboard(period="decade")
    assert raised.value.code == "PX026"

    result = CliRunner().invoke(cli, ["--database-url", conninfo, "leaderboard", "--period", "WEEK"])
    assert result.exit_code == 0, result.output
    assert "week XP" in result.output and result.output.index("0xp2") < result.output.index("0xp1")
    result = CliRunner().invoke(cli, ["--database-url", conninfo, "leaderboard", "--period", "week",
                                      "--at", "2001-01-01"])
    assert result.exit_code == 0 and "nobody earned XP in that week" in result.output
    result = CliRunner().invoke(cli, ["--database-url", conninfo, "leaderboard", "--period", "week",
                                      "--at", "last tuesday"])
    assert result.exit_code != 0 and "ISO 8601" in result.output


def test_readers_and_writers_may_read_the_period_boards(db: psycopg.Connection[Any], login_role: Any,
                                                        connect_as: Any) -> None:
    award(db, "0xr", "r-1")
    for role in ("pyxp_reader", "pyxp_writer"):
        conn = connect_as(login_role(role))
        assert conn.execute("SELECT pyxp.period_xp('0xr', 'day'), pyxp.wallet_rank('0xr', 'year')").fetchone() == (
            100, 1)
        assert conn.execute("SELECT count(*) FROM pyxp.leaderboard(10, 0, 'month')").fetchone() == (1,)


def test_an_at_beyond_the_last_timestamp_is_refused(db: psycopg.Connection[Any], unchanged: Any) -> None:
    for call in ("SELECT * FROM pyxp.leaderboard(10, 0, 'year', '294276-12-31 23:00+00')",
                 "SELECT pyxp.period_xp('0xa', 'month', '294276-12-31 23:00+00')"):
        with unchanged(), pytest.raises(psycopg.Error) as refused:
            db.execute(call)
        assert refused.value.sqlstate == "PX026"


def test_an_at_in_the_first_week_of_timestamps_is_refused_like_one_at_the_last(
        db: psycopg.Connection[Any], unchanged: Any) -> None:
    """A week of 4714 BC (the first week PostgreSQL represents) was a bare 22008 from the readers'
    scan, which starts a day before the period (a hostile test, 0036): PX026 for every reader, every
    kind of period, as at the other end; the week after the first one answers."""
    award(db, "0xfirst", "first-1")
    for kind in ("day", "week", "month", "year"):
        for call in (f"SELECT count(*) FROM pyxp.leaderboard(10, 0, '{kind}', '4714-11-24 12:00:00+00 BC')",
                     f"SELECT pyxp.wallet_rank('0xfirst', '{kind}', '4714-11-24 12:00:00+00 BC')",
                     f"SELECT pyxp.period_xp('0xfirst', '{kind}', '4714-11-24 12:00:00+00 BC')"):
            with unchanged(), pytest.raises(psycopg.Error) as refused:
                db.execute(call)
            db.rollback()
            assert refused.value.sqlstate == "PX026", (call, refused.value.sqlstate)
            assert "begins before the first timestamp" in str(refused.value)
    assert db.execute("SELECT pyxp.period_xp('0xfirst', 'week', '4714-12-08 00:00:00+00 BC')").fetchone() == (0,)


def test_a_date_without_offset_is_read_in_the_ruleset_zone(db: psycopg.Connection[Any], conninfo: str) -> None:
    """`--at 2026-01-01` means that day in the ruleset's zone: in New York, not the last hours of 2025."""
    install_zone(db, "America/New_York")
    moved = award(db, "0xny", "ny-1")
    place(db, {moved: datetime(2026, 1, 1, 12, tzinfo=ZoneInfo("America/New_York"))})
    result = CliRunner().invoke(cli, ["--database-url", conninfo, "leaderboard", "--period", "year",
                                      "--at", "2026-01-01", "--json"])
    assert result.exit_code == 0, result.output
    assert '"0xny"' in result.output


def local_period_first_instant(kind: str, at: datetime, tz: ZoneInfo) -> datetime:
    """The earliest instant of the calendar period of ``kind`` holding ``at`` in ``tz``, by zoneinfo:
    the local first day of the period at 00:00, its first occurrence (fold 0) when it happens twice."""
    local = at.astimezone(tz).date()
    first = {"day": local, "week": local - timedelta(days=local.weekday()),
             "month": local.replace(day=1), "year": local.replace(month=1, day=1)}[kind]
    return datetime(first.year, first.month, first.day, tzinfo=tz).astimezone(timezone.utc)


@pytest.mark.parametrize("zone", ["Atlantic/Azores", "America/Havana", "Asia/Gaza", "Europe/Paris",
                                  "Pacific/Auckland", "America/Santiago", "UTC"])
def test_a_periods_first_instant_is_its_first_local_midnight(db: psycopg.Connection[Any], zone: str) -> None:
    """pyxp.period_first_instant (0024) against zoneinfo around every offset change of 2019-2027:
    where a local midnight happens twice it is the first, where none exists the change itself."""
    tz = ZoneInfo(zone)
    instants: list[datetime] = []
    hour = datetime(2019, 1, 1, tzinfo=timezone.utc)
    while hour < datetime(2028, 1, 1, tzinfo=timezone.utc):
        if hour.astimezone(tz).utcoffset() != (hour + timedelta(hours=1)).astimezone(tz).utcoffset():
            instants += [hour + timedelta(minutes=m) for m in range(-120, 181, 30)]
        hour += timedelta(hours=1)
    assert len(instants) > 20 or zone == "UTC"
    instants += [datetime(2026, 1, 1, 12, tzinfo=timezone.utc)]
    got = db.execute("""SELECT k, a, pyxp.period_first_instant(k, a, %s)
                          FROM unnest(%s::timestamptz[]) a
                         CROSS JOIN unnest(ARRAY['day', 'week', 'month', 'year']) k""", (zone, instants)).fetchall()
    wrong = [(kind, at, first) for kind, at, first in got if first != local_period_first_instant(kind, at, tz)]
    assert wrong == []


BIG_RULES = """
name = "big-amounts"
[levels]
thresholds = [0, 100]
[[rules]]
action = "BIG"
earn_xp = "PRICE_COMPLETION"
[[rules]]
action = "LOSS"
lose_xp = "PRICE_COMPLETION"
"""
TWO_62 = 2 ** 62
MOST = 10 ** 15  # the largest award


def climb(action: str, total: int, prefix: str) -> list[dict[str, Any]]:
    """Events of `action` on wallet 0xbig adding up to `total`, each at most MOST."""
    amounts = [MOST] * (total // MOST) + ([total % MOST] if total % MOST else [])
    return [{"wallet": "0xbig", "action": action, "idempotency_key": f"{prefix}{i}",
             "params": {"PRICE_COMPLETION": amount}} for i, amount in enumerate(amounts)]


@pytest.fixture
def big_rules(db: psycopg.Connection[Any]) -> None:
    from psycopg.types.json import Jsonb

    from pyxp.ruleset_config import parse_ruleset
    db.execute("SELECT * FROM pyxp.install_ruleset(%s, 'big')", (Jsonb(parse_ruleset(BIG_RULES).definition()),))


def test_a_batch_from_the_lowest_balance_to_the_highest_is_applied(db: psycopg.Connection[Any], big_rules: None) -> None:
    """Its gains sum to 2^63 on one wallet: that sum was cast to bigint, and the valid batch was refused
    with a bare 22003 (a hostile test, 0035). The day's XP, -2^62 + 2^63, fits."""
    xp = XP(db)
    xp.award_many(climb("LOSS", TWO_62, "down"))
    xp.award_many(climb("BIG", 2 * TWO_62, "up"))
    assert db.execute("SELECT total_xp, day_xp FROM pyxp.xp_balances WHERE user_wallet = '0xbig'").fetchone() == (
        TWO_62, TWO_62)
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_a_periods_xp_beyond_bigint_is_refused_with_px019(db: psycopg.Connection[Any], big_rules: None,
                                                         unchanged: Any) -> None:
    """A wallet at -2^62 since last year that climbs to 2^62 today gains 2^63 in the day, which the
    balance's day_xp (bigint) cannot hold: a bare 22003 before 0035, now PX019; nothing written. Up to
    2^63 - 2 it is applied."""
    xp = XP(db)
    xp.award_many(climb("LOSS", TWO_62, "down"))
    last_year = datetime.now(timezone.utc) - timedelta(days=400)
    place(db, {row[0]: last_year for row in db.execute("SELECT id FROM pyxp.xp_transactions")})
    xp.award_many(climb("BIG", 2 * TWO_62 - 2, "up"))
    assert db.execute("SELECT total_xp, day_xp, year_xp FROM pyxp.xp_balances WHERE user_wallet = '0xbig'"
                      ).fetchone() == (TWO_62 - 2, 2 ** 63 - 2, 2 ** 63 - 2)
    with unchanged(), pytest.raises(XPError) as refused:
        xp.award("0xbig", "BIG", "last-two", params={"PRICE_COMPLETION": 2})  # balance 2^62: in range
    assert refused.value.code == "PX019" and "one period" in refused.value.message
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []
