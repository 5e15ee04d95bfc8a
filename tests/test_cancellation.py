"""AsyncXP calls cancelled in the middle (a web handler's timeout, a client that went away):
asyncio.wait_for / asyncio.timeout / task.cancel around calls on one client, each cancelled call
repeated with its key until it answers, as an application should.

A cancelled call raises CancelledError (TimeoutError from wait_for / asyncio.timeout); it may have
committed, so the caller repeats it with the same key: it replays (replayed=True) or applies.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, pool_async

from pyxp import AsyncXP


async def _storm(xp: AsyncXP, calls_per_task: int, tasks: int, action: Any) -> None:
    """``tasks`` tasks making ``calls_per_task`` calls each, every one under a timeout of 0 to 5 ms."""
    async def worker(seed: int) -> None:
        rnd = random.Random(seed)
        for i in range(calls_per_task):
            try:
                await asyncio.wait_for(action(seed, i), rnd.choice([0, 0.0005, 0.001, 0.002, 0.005]))
            except TimeoutError:
                pass
    await asyncio.gather(*(worker(seed) for seed in range(tasks)))


def _out_of_the_pool(pool: AsyncConnectionPool) -> int:
    stats = pool.get_stats()
    return stats.get("pool_size", 0) - stats.get("pool_available", 0)


async def _left_out_of_the_pool(pool: AsyncConnectionPool) -> int:
    """The connections still out of the pool once the returns under way have had 10 s to finish
    (a lost connection never comes back; a loaded host may take a while to return the others)."""
    for _ in range(200):
        if _out_of_the_pool(pool) == 0:
            return 0
        await asyncio.sleep(0.05)
    return _out_of_the_pool(pool)


@pytest.mark.parametrize("pool_of", ["client", "caller"])
def test_a_call_cancelled_while_its_connection_goes_to_a_waiting_call_keeps_the_connection(
        conninfo: str, pool_of: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race of the storms below made certain: the one connection's return to the pool is
    slowed where it is handed to the call waiting for it (the waiting client's lock busy a
    moment), and the call that returns it is cancelled right then. The waiting call must get it."""
    original = pool_async.WaitingClient.set
    handing: list[asyncio.Event] = []

    async def slow_set(self: Any, conn: Any) -> bool:
        handing[0].set()
        await asyncio.sleep(0.2)
        return await original(self, conn)

    async def scenario() -> tuple[Any, int]:
        handing.append(asyncio.Event())
        async with AsyncConnectionPool(conninfo, min_size=1, max_size=1, open=False, timeout=3) as pool:
            xp = AsyncXP(pool) if pool_of == "caller" else await AsyncXP.connect(
                conninfo, max_connections=1, connect_timeout=3)
            try:
                assert xp._pool is not None
                await xp.level_for(1)  # the one connection is open and back in the pool
                monkeypatch.setattr(pool_async.WaitingClient, "set", slow_set)
                first = asyncio.create_task(xp.level_for(100))
                second = asyncio.create_task(xp.level_for(2500))  # waits for first's connection
                await asyncio.wait_for(handing[0].wait(), 5)
                first.cancel()
                try:
                    got = await second
                except Exception as exc:  # noqa: BLE001 - the failure shown by the assertion below
                    got = exc
                return got, await _left_out_of_the_pool(xp._pool)
            finally:
                if pool_of == "client":
                    await xp.close()
    got, out = asyncio.run(scenario())
    assert getattr(got, "level", got) == 6
    assert out == 0


def test_cancelled_calls_give_their_connections_back_to_the_clients_pool(conninfo: str) -> None:
    """psycopg_pool (3.3.3) loses the connection of a task cancelled while its putconn hands that
    connection to a waiting client: the pool ran dry after a burst of timed-out calls and every
    later call waited connect_timeout and raised DatabaseUnavailable ("every connection of the
    client's pool is busy"). The client returns connections in a task of its own."""
    async def scenario() -> tuple[int, int, int]:
        async with await AsyncXP.connect(conninfo, max_connections=10, connect_timeout=3) as xp:
            await _storm(xp, 50, 30, lambda seed, i: xp.level_for(seed * 100))
            assert xp._pool is not None
            out = await _left_out_of_the_pool(xp._pool)
            # every connection serves again: max_connections calls holding one each at once
            held = await asyncio.gather(*(xp.award(f"0xafter{n}", "CAMPAIGN_APPROVED", f"after-{n}")
                                          for n in range(8)))
            return out, len(held), sum(a.xp for a in held)
    out, done, total = asyncio.run(scenario())
    assert out == 0, f"{out} connection(s) never came back to the pool"
    assert (done, total) == (8, 800)


def test_cancelled_calls_give_their_connections_back_to_the_callers_pool(conninfo: str) -> None:
    async def scenario() -> int:
        async with AsyncConnectionPool(conninfo, min_size=10, max_size=10, open=False, timeout=3) as pool:
            xp = AsyncXP(pool)
            await _storm(xp, 50, 30, lambda seed, i: xp.level_for(seed * 100))
            return await _left_out_of_the_pool(pool)
    assert asyncio.run(scenario()) == 0


def test_a_cancelled_award_repeated_with_its_key_is_applied_exactly_once(conninfo: str,
                                                                          db: psycopg.Connection[Any]) -> None:
    """Awards cancelled at random points and repeated until they answer: one ledger row per key,
    every answer for a key the same row (later ones flagged replayed), balances = their rows."""
    answers: dict[str, list[Any]] = {}

    async def scenario() -> None:
        async with await AsyncXP.connect(conninfo, max_connections=4) as xp:
            async def award_until_answered(seed: int) -> None:
                rnd = random.Random(seed)
                for i in range(6):
                    key = f"k{seed}-{i}"
                    for _ in range(50):
                        try:
                            async with asyncio.timeout(rnd.choice([0, 0.001, 0.002, 0.004, 0.05])):
                                answers.setdefault(key, []).append(
                                    await xp.award(f"0xw{seed % 5}", "CAMPAIGN_APPROVED", key))
                                break
                        except TimeoutError:
                            continue
                    else:
                        answers.setdefault(key, []).append(await xp.award(f"0xw{seed % 5}", "CAMPAIGN_APPROVED", key))
            await asyncio.gather(*(award_until_answered(seed) for seed in range(15)))
    asyncio.run(scenario())
    rows = {key: db.execute("SELECT id, xp_amount FROM pyxp.xp_transactions WHERE idempotency_key = %s",
                            (key,)).fetchall() for key in answers}
    for key, got in answers.items():
        assert len(rows[key]) == 1, (key, rows[key])
        assert {(a.rows[0].transaction_id, a.xp) for a in got} == {tuple(rows[key][0])}
        assert sum(not a.replayed for a in got) <= 1
    assert db.execute("SELECT count(*) FROM pyxp.xp_balances b WHERE total_xp <> (SELECT coalesce(sum(xp_amount), 0) "
                      "FROM pyxp.xp_transactions t WHERE t.user_wallet = b.user_wallet)").fetchone() == (0,)
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []
    assert db.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                      "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%%'").fetchone() == (0,)
