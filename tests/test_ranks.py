"""Exact all-time ranks from the rank buckets (sql/07_ranks.sql, migration 0009).

pyxp.wallet_rank('all') and leaderboard's deep pages read xp_rank_counts
instead of counting every balance above a wallet. Each test compares them
with the rank a plain count gives (``naive_ranks``), after awards of every
kind, re-cuts, 16 racing connections, and checks that pyxp.audit() holds the
counts to the balances.
"""

from __future__ import annotations

import random
import re
import subprocess
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from conftest import PYXP, naive_period_ranks
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from pyxp import XP, schema

GAINS = ("MODERATION_VALIDATED_BY_MODERATOR", "Completion_Submit_B2C_Free", "CAMPAIGN_APPROVED")
PENALTY = "MODERATION_REFUSED_BY_MODERATOR"  # -1: some totals go negative
NAIVE = """SELECT b.user_wallet, row_number() OVER (ORDER BY b.total_xp DESC, b.user_wallet COLLATE "C")
             FROM pyxp.xp_balances b"""


def naive_ranks(db: psycopg.Connection[Any]) -> dict[str, int]:
    return dict(db.execute(NAIVE).fetchall())


def bucket_ranks(db: psycopg.Connection[Any]) -> dict[str, int]:
    return dict(db.execute("SELECT b.user_wallet, pyxp.wallet_rank(b.user_wallet) FROM pyxp.xp_balances b")
                .fetchall())


def rank_findings(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute("SELECT * FROM pyxp.audit() WHERE check_name = 'rank_count_mismatch'").fetchall()


def buckets(db: psycopg.Connection[Any]) -> int:
    return db.execute("SELECT count(*) FROM pyxp.rank_buckets()").fetchone()[0]


def rebalance(db: psycopg.Connection[Any], size: int = 16, full: bool = False) -> tuple[int, int]:
    return db.execute("SELECT * FROM pyxp.rebalance_rank_buckets(%s, %s)", (size, full)).fetchone()


def award_many(db: psycopg.Connection[Any], events: list[dict[str, Any]]) -> None:
    db.execute("SELECT count(*) FROM pyxp.award_many(%s::jsonb)", (Jsonb(events),))


def random_events(rng: random.Random, count: int, wallets: int, prefix: str) -> list[dict[str, Any]]:
    return [{"wallet": f"w{rng.randrange(wallets):04d}", "idempotency_key": f"{prefix}:{i}",
             "action": rng.choice(GAINS + (PENALTY, PENALTY))} for i in range(count)]


PERIODS = ("day", "week", "month", "year")


def period_ranks(db: psycopg.Connection[Any], period: str) -> dict[str, int]:
    """Ranks as pyxp.wallet_rank reads them (xp_period_rank_counts, migration 0014)."""
    return dict(db.execute("SELECT r.* FROM (SELECT b.user_wallet, pyxp.wallet_rank(b.user_wallet, %s) AS rank "
                           "FROM pyxp.xp_balances b) r WHERE r.rank IS NOT NULL", (period,)).fetchall())


def assert_exact(db: psycopg.Connection[Any]) -> None:
    assert bucket_ranks(db) == naive_ranks(db)
    for period in PERIODS:
        assert period_ranks(db, period) == naive_period_ranks(db, period), period
    assert rank_findings(db) == []


def test_ranks_stay_exact_through_every_kind_of_write_and_re_cut(db: psycopg.Connection[Any]) -> None:
    rng = random.Random(7)
    award_many(db, random_events(rng, 400, 120, "a"))
    assert buckets(db) == 1  # nothing re-cut yet: one bucket, the whole board
    assert_exact(db)
    assert rebalance(db, 16, True)[0] > 5
    assert_exact(db)
    # Single awards, a flow, a reversal, new wallets, penalties: wallets move between buckets.
    for i in range(150):
        db.execute("SELECT * FROM pyxp.award(%s, %s, %s)",
                   (f"w{rng.randrange(160):04d}", rng.choice(GAINS + (PENALTY,)), f"b:{i}"))
    db.execute("SELECT * FROM pyxp.award_campaign_creation('w0001', 'camp_r', 'B2C')")
    (row,) = db.execute("SELECT id FROM pyxp.xp_transactions WHERE xp_amount > 50 ORDER BY id LIMIT 1").fetchall()
    db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'test')", row)
    award_many(db, random_events(rng, 300, 200, "c"))
    assert_exact(db)
    grown = db.execute("SELECT count(*) FROM pyxp.rank_buckets() WHERE wallets > 32").fetchone()[0]
    total, recut = rebalance(db, 16)
    assert recut == grown
    assert db.execute("SELECT max(wallets) FROM pyxp.rank_buckets()").fetchone()[0] <= 32
    assert_exact(db)


def test_ties_are_ordered_byte_by_byte_on_every_board(fresh_database: Callable[[], str],
                                                      conninfo: str) -> None:
    """Ties by wallet compare bytes (COLLATE "C"), whatever the database's collation: here an
    ICU en-US database, where 'alpha' < 'beta' < 'Zed' but bytes put 'Zed' first."""
    name = f"pyxp_icu_{random.randrange(16**8):08x}"
    admin = make_conninfo(conninfo, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
                             "LOCALE 'C.UTF-8'").format(sql.Identifier(name)))
    url = make_conninfo(conninfo, dbname=name)
    try:
        schema.upgrade(url)
        with psycopg.connect(url, autocommit=True) as icu:
            assert icu.execute("SELECT 'alpha' < 'Zed'").fetchone() == (True,)  # the database's own order
            for wallet in ("beta", "Zed", "alpha", "émile"):
                icu.execute("SELECT * FROM pyxp.award(%s, 'CAMPAIGN_APPROVED', %s)", (wallet, "k:" + wallet))
            expected = ["Zed", "alpha", "beta", "émile"]
            for period in ("all", "week"):
                board = icu.execute("SELECT user_wallet FROM pyxp.leaderboard(period => %s)", (period,)).fetchall()
                assert [w for (w,) in board] == expected
                ranks = [icu.execute("SELECT pyxp.wallet_rank(%s, %s)", (w, period)).fetchone()[0] for w in expected]
                assert ranks == [1, 2, 3, 4]
            # A tie group of 5,000 mixed-case wallets cut into buckets of 16: deep pages start from
            # bucket starts inside it, which must be ordered byte by byte too.
            rng = random.Random(17)
            letters = "aAbBzZ"
            award_many(icu, [{"wallet": "".join(rng.choice(letters) for _ in range(12)) + str(i),
                              "action": "CAMPAIGN_APPROVED", "idempotency_key": f"tie:{i}"} for i in range(5000)])
            icu.execute("SELECT pyxp.rebalance_rank_buckets(16, true)")
            naive = """SELECT user_wallet FROM pyxp.xp_balances
                        ORDER BY total_xp DESC, user_wallet COLLATE "C" OFFSET %s LIMIT 30"""
            for offset in (4096, 4321, 4990):
                page = icu.execute("SELECT user_wallet FROM pyxp.leaderboard(30, %s)", (offset,)).fetchall()
                assert page == icu.execute(naive, (offset,)).fetchall()
            assert bucket_ranks(icu) == naive_ranks(icu)
            assert icu.execute("SELECT * FROM pyxp.audit()").fetchall() == []
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_deep_leaderboard_pages_start_from_a_bucket(db: psycopg.Connection[Any]) -> None:
    """Pages from offset 4096 on start at the bucket holding their first position."""
    rng = random.Random(11)
    for part in range(3):
        award_many(db, random_events(rng, 3000, 6000, f"d{part}"))
    rebalance(db, 64, True)
    award_many(db, random_events(rng, 500, 6500, "e"))  # counts moved since the cut
    count = db.execute("SELECT count(*) FROM pyxp.xp_balances").fetchone()[0]
    assert count > 4200
    naive = """SELECT user_wallet, total_xp FROM pyxp.xp_balances
                ORDER BY total_xp DESC, user_wallet COLLATE "C" OFFSET %s LIMIT %s"""
    for offset in (4095, 4096, 4097, 4200, count - 10, count):
        got = db.execute("SELECT rank, user_wallet, total_xp FROM pyxp.leaderboard(50, %s)", (offset,)).fetchall()
        expected = db.execute(naive, (offset, 50)).fetchall()
        assert [(w, x) for _, w, x in got] == expected
        assert [r for r, _, _ in got] == list(range(offset + 1, offset + 1 + len(expected)))


def test_sixteen_connections_moving_wallets_keep_the_counts_exact(conninfo: str,
                                                                  db: psycopg.Connection[Any]) -> None:
    """16 connections (in every writer slot) award and batch across the same buckets at once;
    one more re-cuts the buckets in the middle of it. Counts and ranks stay exact."""
    rng = random.Random(3)
    award_many(db, random_events(rng, 600, 300, "seed"))
    rebalance(db, 16, True)
    barrier = threading.Barrier(17)
    errors: list[BaseException] = []

    def racer(index: int) -> None:
        local = random.Random(index)
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                barrier.wait(timeout=60)
                for i in range(30):
                    if i % 10 == 9:
                        award_many(conn, random_events(local, 20, 320, f"r{index}:{i}"))
                    else:
                        conn.execute("SELECT * FROM pyxp.award(%s, %s, %s)",
                                     (f"w{local.randrange(320):04d}", local.choice(GAINS + (PENALTY,)),
                                      f"s{index}:{i}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    racing = threading.Event()
    rebalances: list[tuple[int, int]] = []

    def rebalancer() -> None:
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                barrier.wait(timeout=60)
                while racing.is_set():
                    try:
                        rebalances.append(rebalance(conn, 16))
                    except psycopg.errors.LockNotAvailable:  # 1 s behind an award in flight: next run
                        continue
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    racing.set()
    racers = [threading.Thread(target=racer, args=(i,)) for i in range(16)]
    balancer = threading.Thread(target=rebalancer)
    for thread in [*racers, balancer]:
        thread.start()
    for thread in racers:
        thread.join(timeout=300)
    racing.clear()
    balancer.join(timeout=60)
    assert errors == []
    assert rebalances, "the rebalance never ran during the race"
    assert_exact(db)
    rebalance(db, 16)  # folds every backend's slot: one row per bucket (and period XP) again
    assert db.execute("SELECT count(*) FROM pyxp.xp_rank_counts WHERE slot <> 0").fetchone() == (0,)
    assert db.execute("SELECT count(*) FILTER (WHERE slot <> 0), count(*) FILTER (WHERE wallets = 0) "
                      "FROM pyxp.xp_period_rank_counts").fetchone() == (0, 0)
    assert_exact(db)


def test_audit_finds_counts_that_do_not_match_the_balances(db: psycopg.Connection[Any]) -> None:
    award_many(db, random_events(random.Random(5), 200, 80, "t"))
    rebalance(db, 16, True)
    assert rank_findings(db) == []
    db.execute("""UPDATE pyxp.xp_rank_counts SET wallets = wallets + 1
                   WHERE (neg_xp, wallet) = (SELECT neg_xp, wallet FROM pyxp.rank_buckets() ORDER BY 1, 2 OFFSET 2 LIMIT 1)
                     AND slot = 0""")
    (finding,) = rank_findings(db)
    assert "counts" in finding[3] and "holds" in finding[3]
    # Ranks are read from the counts: every wallet after the tampered bucket is one place lower.
    naive, read = naive_ranks(db), bucket_ranks(db)
    assert {read[w] - naive[w] for w in naive} == {0, 1}
    rebalance(db, 16, True)  # the owner's repair: cut afresh from the balances
    assert rank_findings(db) == []
    db.execute("DELETE FROM pyxp.xp_rank_counts WHERE neg_xp = -9223372036854775807")
    assert any("starts before every balance" in f[3] for f in rank_findings(db))
    award_many(db, random_events(random.Random(6), 50, 100, "lost"))  # counted nowhere meanwhile
    rebalance(db, 16)  # a missing first bucket makes the rebalance cut afresh
    assert_exact(db)


def test_period_ranks_are_read_from_their_counts_and_audited(db: psycopg.Connection[Any]) -> None:
    """Migration 0014: a rank on a current period's board is 1 + the wallets counted at a higher
    XP there (xp_period_rank_counts) + its tie group before it. A count that does not match the
    balances is reported by audit() and moves the ranks below it; a whole cut repairs it."""
    award_many(db, random_events(random.Random(8), 300, 90, "p"))
    assert_exact(db)
    week = naive_period_ranks(db, "week")
    top = db.execute("SELECT max(week_xp) FROM pyxp.xp_balances").fetchone()[0]
    db.execute("UPDATE pyxp.xp_period_rank_counts SET wallets = wallets + 1 "
               "WHERE period = 'week' AND period_xp = %s AND slot = (SELECT min(slot) FROM pyxp.xp_period_rank_counts "
               "WHERE period = 'week' AND period_xp = %s)", (top, top))
    (finding,) = rank_findings(db)
    assert finding[3].startswith("week board from ") and f"bucket of {top} XP from '' counts" in finding[3]
    leaders = {w for w, x in db.execute("SELECT user_wallet, week_xp FROM pyxp.xp_balances").fetchall() if x == top}
    read = period_ranks(db, "week")
    assert {w: read[w] - week[w] for w in week} == {w: 0 if w in leaders else 1 for w in week}
    assert period_ranks(db, "day") == naive_period_ranks(db, "day")  # another board: untouched
    rebalance(db, 16, True)
    assert_exact(db)


PERIOD_FINDING = re.compile(r"^(\w+) board from .+: bucket of (-?\d+) XP from '(.*)' counts (\d+) wallets, holds (\d+)$")


def period_count_findings(db: psycopg.Connection[Any]) -> Counter[tuple[str, int, str, int, int]]:
    """The period boards' findings of audit(): (period, XP, bucket start, counted, held)."""
    found: Counter[tuple[str, int, str, int, int]] = Counter()
    for *_, detail in rank_findings(db):
        if " board from " not in detail:
            continue  # an all-time bucket or an uncounted balance
        match = PERIOD_FINDING.match(detail)
        assert match, detail
        period, xp, start, counted, held = match.groups()
        found[(period, int(xp), start, int(counted), int(held))] += 1
    return found


def expected_period_count_findings(db: psycopg.Connection[Any]) -> Counter[tuple[str, int, str, int, int]]:
    """The same, computed here from the tables the slow way: each ranked balance placed, on each
    of its latest periods' boards, in the last bucket start (slot 0) of its XP value at or before
    its wallet, byte by byte ('' when none, as pyxp.period_bucket_of places it), against each
    (value, start) counted over its slots."""
    starts: dict[tuple[Any, ...], list[bytes]] = defaultdict(list)
    for period, start, xp, wallet_start in db.execute(
            "SELECT period, period_start, period_xp, wallet_start FROM pyxp.xp_period_rank_counts WHERE slot = 0"):
        starts[(period, start, xp)].append(wallet_start.encode())
    held: Counter[tuple[Any, ...]] = Counter()
    for wallet, *columns in db.execute("SELECT user_wallet, day_start, day_xp, week_start, week_xp, month_start, "
                                       "month_xp, year_start, year_xp FROM pyxp.xp_balances WHERE ranked"):
        for i, period in enumerate(PERIODS):
            start, xp = columns[2 * i], columns[2 * i + 1]
            if start is not None:
                before = [s for s in starts.get((period, start, xp), []) if s <= wallet.encode()]
                held[(period, start, xp, max(before).decode() if before else "")] += 1
    counted: Counter[tuple[Any, ...]] = Counter()
    for period, start, xp, wallet_start, wallets in db.execute(
            "SELECT period, period_start, period_xp, wallet_start, sum(wallets) FROM pyxp.xp_period_rank_counts "
            "GROUP BY 1, 2, 3, 4"):
        counted[(period, start, xp, wallet_start)] = int(wallets)
    return Counter((k[0], k[2], k[3], counted[k], held[k]) for k in set(held) | set(counted) if counted[k] != held[k])


# Ways to make the period boards' counts differ from the balances, each on a value cut into
# several buckets (or its holders): the audit must report exactly what the slow model reports.
CUT_VALUE = """SELECT period, period_start, period_xp FROM pyxp.xp_period_rank_counts
                WHERE slot = 0 AND wallet_start <> '' GROUP BY 1, 2, 3 ORDER BY count(*) DESC, 1, 2, 3 LIMIT 1"""
TAMPERINGS = {
    "a cut bucket counts one more": """UPDATE pyxp.xp_period_rank_counts c SET wallets = c.wallets + 1
        FROM (SELECT * FROM pyxp.xp_period_rank_counts WHERE slot = 0 AND wallet_start <> ''
              ORDER BY period, period_start, period_xp, wallet_start LIMIT 1) k
        WHERE (c.period, c.period_start, c.period_xp, c.wallet_start, c.slot)
            = (k.period, k.period_start, k.period_xp, k.wallet_start, 0)""",
    "a bucket start moved": """UPDATE pyxp.xp_period_rank_counts c SET wallet_start = c.wallet_start || '0'
        FROM (SELECT * FROM pyxp.xp_period_rank_counts WHERE slot = 0 AND wallet_start <> ''
              ORDER BY period, period_start, period_xp, wallet_start DESC LIMIT 1) k
        WHERE (c.period, c.period_start, c.period_xp, c.wallet_start) = (k.period, k.period_start, k.period_xp,
                                                                         k.wallet_start)""",
    "a cut value's first bucket gone": f"""DELETE FROM pyxp.xp_period_rank_counts c USING ({CUT_VALUE}) v
        WHERE (c.period, c.period_start, c.period_xp, c.wallet_start) = (v.period, v.period_start, v.period_xp, '')""",
    "a start only a writer's slot holds": f"""INSERT INTO pyxp.xp_period_rank_counts
        SELECT v.period, v.period_start, v.period_xp, 'w0005x', 7, 3 FROM ({CUT_VALUE}) v""",
    "a cut bucket's start dropped": """DELETE FROM pyxp.xp_period_rank_counts c
        USING (SELECT * FROM pyxp.xp_period_rank_counts WHERE slot = 0 AND wallet_start <> ''
               ORDER BY period, period_start, period_xp, wallet_start LIMIT 1) k
        WHERE (c.period, c.period_start, c.period_xp, c.wallet_start) = (k.period, k.period_start, k.period_xp,
                                                                         k.wallet_start)""",
    "holders of a cut value left uncounted": f"""UPDATE pyxp.xp_balances b SET ranked = false
        FROM ({CUT_VALUE}) v, pyxp.period_board_entries() e
        WHERE (e.period, e.period_start, e.period_xp) = (v.period, v.period_start, v.period_xp)
          AND e.user_wallet = b.user_wallet AND b.user_wallet COLLATE "C" >= 'w0130'""",
    "a holder moved to another value": f"""UPDATE pyxp.xp_balances b
        SET day_xp = b.day_xp + (v.period = 'day')::int, week_xp = b.week_xp + (v.period = 'week')::int,
            month_xp = b.month_xp + (v.period = 'month')::int, year_xp = b.year_xp + (v.period = 'year')::int
        FROM ({CUT_VALUE}) v
        WHERE b.user_wallet = (SELECT min(e.user_wallet COLLATE "C") FROM pyxp.period_board_entries() e
                                WHERE (e.period, e.period_start, e.period_xp) = (v.period, v.period_start, v.period_xp))""",
}


@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
def test_period_board_counts_are_audited_by_bucket_as_placed(db: psycopg.Connection[Any], tampering: str) -> None:
    """Migration 0017: the period boards' counts are checked per bucket, a value cut into
    several buckets by index ranges of its board (pyxp.period_board_range) instead of a probe per
    balance. The findings are exactly those of a slow model that places every balance as
    pyxp.period_bucket_of does, whatever was tampered with."""
    award_many(db, random_events(random.Random(21), 600, 260, "c"))
    rebalance(db, 16, True)
    assert db.execute(f"SELECT count(*) FROM ({CUT_VALUE}) v").fetchone() == (1,), "no value was cut"
    assert period_count_findings(db) == Counter() == expected_period_count_findings(db)
    db.execute(TAMPERINGS[tampering])
    expected = expected_period_count_findings(db)
    assert expected, "the tampering changed nothing the check could see"
    assert period_count_findings(db) == expected
    rebalance(db, 16, True)
    assert period_count_findings(db) == Counter()


def test_a_balance_inserted_around_the_writer_is_counted_by_the_rebalance(db: psycopg.Connection[Any]) -> None:
    """The owner may insert a balance (ranked = false); the rebalance counts it on every board."""
    award_many(db, random_events(random.Random(4), 100, 40, "q"))
    rebalance(db, 16, True)
    db.execute("""INSERT INTO pyxp.xp_balances (user_wallet, total_xp, xp_to_next_level, week_start, week_xp)
                  VALUES ('w9999', 0, 100, date_trunc('week', now(), 'UTC'), 0)""")
    (finding,) = rank_findings(db)
    assert finding[1] == "w9999" and "not counted" in finding[3]
    before = db.execute("SELECT coalesce(sum(wallets), 0) FROM pyxp.xp_period_rank_counts "
                        "WHERE period = 'week' AND period_xp = 0").fetchone()[0]
    rebalance(db, 16)
    assert db.execute("SELECT sum(wallets) FROM pyxp.xp_period_rank_counts "
                      "WHERE period = 'week' AND period_xp = 0").fetchone()[0] == before + 1
    assert_exact(db)


def test_rebalance_is_the_owners_and_refuses_bad_sizes(db: psycopg.Connection[Any], unchanged: Any,
                                                       login_role: Callable[..., str],
                                                       connect_as: Callable[[str], Any]) -> None:
    award_many(db, random_events(random.Random(9), 100, 60, "o"))
    for size in (None, 0, 15, 1_000_001):
        with unchanged(), pytest.raises(psycopg.Error) as refused:
            db.execute("SELECT * FROM pyxp.rebalance_rank_buckets(%s)", (size,))
        assert refused.value.sqlstate == "PX023"
    for role in ("pyxp_writer", "pyxp_reader"):
        other = connect_as(login_role(role))
        with unchanged(), pytest.raises(psycopg.errors.InsufficientPrivilege):
            other.execute("SELECT * FROM pyxp.rebalance_rank_buckets(16, true)")
    reader = connect_as(login_role("pyxp_reader"))
    assert (reader.execute("SELECT sum(wallets) FROM pyxp.xp_rank_counts").fetchone()
            == reader.execute("SELECT count(*) FROM pyxp.xp_balances").fetchone())


def test_python_and_cli_rebalance(conninfo: str, db: psycopg.Connection[Any], unchanged: Any) -> None:
    award_many(db, random_events(random.Random(13), 300, 150, "p"))
    with XP(conninfo) as xp:
        result = xp.rebalance_rank_buckets(bucket_size=16, full_rebuild=True)
        assert result.buckets == buckets(db) > 1 and result.recut_buckets == 1
        wallet = db.execute("SELECT user_wallet FROM pyxp.xp_balances ORDER BY 1 LIMIT 1").fetchone()[0]
        assert xp.rank(wallet) == naive_ranks(db)[wallet]
    shown = subprocess.run([PYXP, "--database-url", conninfo, "db", "rebalance-ranks", "--bucket-size", "16"],
                           capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == f"0 rank buckets re-cut, {buckets(db)} in all"
    with unchanged():
        refused = subprocess.run([PYXP, "--database-url", conninfo, "db", "rebalance-ranks", "--bucket-size", "8"],
                                 capture_output=True, text=True)
    assert refused.returncode == 2 and "16" in refused.stderr


def test_rebalance_waits_one_second_for_an_award_left_open_then_gives_up(conninfo: str,
                                                                         db: psycopg.Connection[Any],
                                                                         unchanged: Any) -> None:
    """An award transaction left open holds off the rebalance's lock: it fails with 55P03 after
    its 1 s lock_timeout (new awards would queue behind it meanwhile), writing nothing."""
    award_many(db, random_events(random.Random(21), 100, 60, "held"))
    with psycopg.connect(conninfo) as open_award:
        open_award.execute("SELECT * FROM pyxp.award('w0001', %s, 'held:open')", (GAINS[0],))
        with unchanged(), pytest.raises(psycopg.errors.LockNotAvailable):
            db.execute("SELECT * FROM pyxp.rebalance_rank_buckets(16, true)")
        open_award.commit()
    assert rebalance(db, 16, True)[0] > 1
    assert_exact(db)


def test_a_transaction_left_open_blocks_no_other_award_on_its_buckets(conninfo: str,
                                                                      db: psycopg.Connection[Any]) -> None:
    """Each backend counts in its own slot: an open transaction that moved a wallet into a bucket
    holds no lock another award moving a wallet into that bucket needs."""
    award_many(db, [{"wallet": f"a{i:02d}", "action": GAINS[0], "idempotency_key": f"tie:{i}"} for i in range(40)])
    rebalance(db, 16, True)  # one tie group of 40: buckets start at positions 1, 17 ('a16'), 33 ('a32')
    with psycopg.connect(conninfo) as first, psycopg.connect(conninfo, autocommit=True) as second:
        first.execute("SELECT * FROM pyxp.award('a20', %s, 'open:1')", (GAINS[0],))  # bucket 'a16' -> the first
        second.execute("SET lock_timeout = '200ms'")
        second.execute("SELECT * FROM pyxp.award('a21', %s, 'open:2')", (GAINS[0],))  # the same move: no wait
        pids = {first.info.backend_pid, second.info.backend_pid}
        assert {s for (s,) in db.execute("SELECT DISTINCT slot FROM pyxp.xp_rank_counts WHERE slot <> 0")} <= pids
        first.commit()
    assert_exact(db)


def test_the_writer_probes_the_buckets_by_an_index(db: psycopg.Connection[Any]) -> None:
    """Migration 0013: the writer's two bucket probes per moved balance read an index of
    xp_rank_counts (its primary key; since 0014 the index of its bucket starts). Planned on statistics that saw the table small (one bucket, before the
    re-cut), each probe read the whole table and sorted it (58 us against 2.6 us at a few
    thousand count rows); the rebalance now gives the table fresh statistics."""
    rng = random.Random(13)
    award_many(db, [{"wallet": f"p{i:05d}", "idempotency_key": f"p:{i}", "action": rng.choice(GAINS)}
                    for i in range(6000)])
    db.execute("ANALYZE pyxp.xp_rank_counts")  # statistics of the board before its re-cut: one bucket
    assert rebalance(db, 16, True)[0] > 300  # which gives them afresh
    plans: list[str] = []
    db.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
    db.execute("LOAD 'auto_explain'")
    db.execute("SET auto_explain.log_min_duration = 0")
    db.execute("SET auto_explain.log_nested_statements = on")
    db.execute("SET client_min_messages = log")
    db.execute("SELECT * FROM pyxp.award('p00042', %s, 'p:probe')", (GAINS[0],))
    db.execute("SELECT pyxp.wallet_rank('p00042')")
    db.execute("RESET client_min_messages")
    probes = "\n".join(plan for plan in plans if "xp_rank_counts" in plan)
    # The writer's old and new bucket, then the rank read's bucket; never a sort of the table
    # for its top row (the sum of the buckets before a wallet may read the table: it sums it).
    assert len(re.findall(r"Index Only Scan Backward using xp_rank_counts_(pkey|starts)", probes)) >= 3
    assert not re.search(r"Sort Key: c(_\d+)?\.neg_xp DESC", probes)
    assert rank_findings(db) == []  # counts exact (assert_exact's 30,000 rank reads would take a minute here)


def test_a_value_many_wallets_share_is_cut_by_wallet_on_the_period_boards(db: psycopg.Connection[Any]) -> None:
    """A rank within a tie group counts its bucket's balances before it: a value held by 300
    wallets is cut into buckets of 16 consecutive wallets by the rebalance; the writer then puts
    wallets joining or leaving that value in the bucket of their wallet, and the ranks stay exact."""
    tied = [f"t{i:04d}" for i in range(0, 600, 2)]  # gaps: later wallets land inside buckets
    award_many(db, [{"wallet": w, "idempotency_key": f"tie:{w}", "action": "CAMPAIGN_APPROVED"} for w in tied])
    award_many(db, random_events(random.Random(12), 100, 40, "spread"))
    assert_exact(db)
    week_value = "SELECT count(*) FROM pyxp.xp_period_rank_counts WHERE period = 'week' AND period_xp = 100"
    assert db.execute(week_value).fetchone() == (1,)  # one bucket per value until the rebalance
    rebalance(db, 16)
    assert db.execute(week_value).fetchone()[0] >= 300 // 16
    assert_exact(db)
    # Joining the tie inside its buckets (new wallets between the tied ones), leaving it, and a
    # reversal bringing one back: each move is counted in the bucket of its wallet.
    award_many(db, [{"wallet": f"t{i:04d}", "idempotency_key": f"join:{i}", "action": "CAMPAIGN_APPROVED"}
                    for i in range(1, 600, 25)])
    moved = [db.execute("SELECT transaction_id FROM pyxp.award(%s, 'CAMPAIGN_APPROVED', %s)",
                        (w, f"leave:{w}")).fetchone()[0] for w in tied[::20]]
    db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'test')", (moved[3],))
    assert_exact(db)
    rebalance(db, 16, True)  # a whole cut: counted afresh, then every value past 16 wallets cut by 16
    (held,) = db.execute("SELECT count(*) FROM pyxp.xp_balances WHERE week_xp = 100").fetchone()
    assert db.execute(week_value).fetchone() == (-(-held // 16),)
    assert_exact(db)
