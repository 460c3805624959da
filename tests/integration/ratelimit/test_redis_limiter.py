"""RedisLimiter against a real Redis: exact under concurrency, refill, reconciliation, outages."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from fastproxy.core.errors import RateLimited, ServiceUnavailable
from fastproxy.core.limits import Admission
from fastproxy.core.schemas import ANONYMOUS, Limits, Principal, TokenUsage
from fastproxy.ratelimit.buckets import Planner
from fastproxy.ratelimit.redis_limiter import RedisLimiter, connect
from tests.integration.ratelimit.conftest import Limiters
from tests.own_redis import OwnRedis


def key(key_id: str = "k1", user_limits: Limits | None = None, **limits: int) -> Principal:
    return Principal(key_id=key_id, user_id="u1", key_hint="abcd", key_limits=Limits(**limits), user_limits=user_limits)


async def count_admitted(lims: list[RedisLimiter], principal: Principal, m: int, estimate: int = 0) -> int:
    """Fire m admits at once, spread over the limiters; every outcome must be an admission or a 429."""
    calls = [lims[i % len(lims)].admit(principal, estimate, "10.1.1.1") for i in range(m)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    for r in results:
        assert isinstance(r, Admission | RateLimited), repr(r)
    return sum(isinstance(r, Admission) for r in results)


async def redis_time(client: Redis) -> float:
    sec, usec = await client.time()
    return sec + usec / 1_000_000


async def test_exactly_n_of_m_concurrent_admits_across_limiters(limiters: Limiters) -> None:
    # Three limiters with their own connections stand for three proxy instances.
    lims = [limiters(), limiters(), limiters()]
    assert await count_admitted(lims, key(rpm=17), 60) == 17
    assert await count_admitted(lims, key("k2", user_limits=Limits(rpd=5), rpm=100), 30) == 5
    assert all(lim.fallbacks == 0 for lim in lims)


async def test_all_or_nothing_across_subjects(limiters: Limiters) -> None:
    lim = limiters(global_limits=Limits(rpd=50))
    assert await count_admitted([lim], key(rpm=2), 10) == 2
    # The 8 refusals took nothing from the global bucket.
    assert await count_admitted([lim], ANONYMOUS, 100) == 48


async def test_refill_admits_at_the_configured_rate(limiters: Limiters, redis_client: Redis) -> None:
    lim = limiters()
    p = key(rpm=600)  # 10 per second
    t0 = await redis_time(redis_client)
    burst = await count_admitted([lim], p, 650)
    before = await redis_time(redis_client)
    # The full bucket, plus whatever refilled while the burst was being served on this loaded machine.
    assert 600 <= burst <= 600 + (before - t0) * 10  # the bucket is empty from here (nothing refills past < 1)
    await asyncio.sleep(0.5)
    start = await redis_time(redis_client)
    admitted = 0
    while True:
        try:
            await lim.admit(p, 0, None)
        except RateLimited:
            break
        admitted += 1
    end = await redis_time(redis_client)
    # Whatever the scheduler did to our sleep, Redis's own clock bounds what may have refilled.
    assert int((start - before) * 10) - 1 <= admitted <= (end - before) * 10 + 1
    assert admitted >= 4


@pytest.mark.parametrize("settle_interval", [0.0, 0.05])
async def test_reservation_and_reconciliation_are_exact(limiters: Limiters, settle_interval: float) -> None:
    lim = limiters(settle_interval=settle_interval)
    p = key(max_tokens_total=100_000, tpd=5_000_000)
    real: list[int | None] = [30, 1500, None, 0, 64, 999]
    estimate = 700
    admissions = [await lim.admit(p, estimate, None) for _ in real]
    await asyncio.gather(
        *(lim.settle(a, None if t is None else TokenUsage(total=t)) for a, t in zip(admissions, real, strict=True))
    )
    levels = {lvl.period: lvl for lvl in await lim.levels(p)}
    used = 30 + 1500 + estimate + 0 + 64 + 999
    assert levels[0].remaining == 100_000 - used  # the lifetime quota: no refill, so exact
    assert 5_000_000 - used <= levels[86_400].remaining < 5_000_000 - used + 1000  # refilling at 58/s


async def test_settles_are_coalesced_and_drained_on_close(own_redis: OwnRedis) -> None:
    p = key(max_tokens_total=1_000_000)
    lim = RedisLimiter(Planner("t:", None, None), connect(own_redis.url, 2.0), settle_interval=60)
    reader = RedisLimiter(Planner("t:", None, None), connect(own_redis.url, 2.0))
    try:
        await lim.admit(p, 0, None)  # loads the script
        await reader.store.client.config_resetstat()
        for i in range(50):
            await lim.settle(await lim.admit(p, 100, None), TokenUsage(total=i))
        stats = await reader.store.client.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 50  # the admits; the 50 settles are still pending
        (level,) = await reader.levels(p)
        assert level.remaining == 1_000_000 - 50 * 100  # other instances see the reservations at once
        await lim.close()  # drains: the pending differences reach Redis
        (level,) = await reader.levels(p)
        assert level.remaining == 1_000_000 - sum(range(50))
        stats = await reader.store.client.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 50 + 1 + 2  # + one flush + the reader's two peeks
    finally:
        await lim.close()
        await reader.close()


@pytest.mark.parametrize(("pipeline", "most_calls"), [(1, 4), (4, 10)])
async def test_concurrent_admits_share_a_script_call_and_stay_exact(
    own_redis: OwnRedis, pipeline: int, most_calls: int
) -> None:
    lim = RedisLimiter(
        Planner("t:", Limits(max_tokens_total=1_000_000), None), connect(own_redis.url, 2.0), pipeline=pipeline
    )
    try:
        await lim.admit(ANONYMOUS, 0, None)  # loads the script
        await lim.store.client.config_resetstat()
        assert await count_admitted([lim], key(rpm=150), 200, estimate=10) == 150
        stats = await lim.store.client.info("commandstats")
        # 200 admits in a handful of round trips (`pipeline` calls out, each carrying what queued
        # meanwhile), each still all or nothing: the 50 refused by the key's rpm took nothing from the
        # global quota.
        assert stats["cmdstat_evalsha"]["calls"] <= most_calls
        (quota,) = [b for b in await lim.levels(key(rpm=150)) if b.kind == "tokens"]
        assert quota.remaining == 1_000_000 - 150 * 10
    finally:
        await lim.close()


async def test_levels_do_not_consume(limiters: Limiters) -> None:
    lim = limiters()
    p = key(rpm=5, max_tokens_total=10)
    first = await lim.levels(p)
    second = await lim.levels(p)
    assert [x.remaining for x in first] == [x.remaining for x in second] == [5, 10]
    assert [x.name for x in first] == [
        "requests per minute for key sk-fp-...abcd",
        "total tokens (lifetime quota) for key sk-fp-...abcd",
    ]


async def test_keys_expire_when_full_and_quotas_never(
    limiters: Limiters, redis_client: Redis, redis_prefix: str
) -> None:
    lim = limiters()
    await lim.admit(key(rpm=60, max_tokens_total=1000), 10, None)
    ttl = await redis_client.pttl(redis_prefix + "{fp:key:k1}:rl1:rpm")
    assert 0 < ttl <= 1001  # one request refills in a second
    assert await redis_client.pttl(redis_prefix + "{fp:key:k1}:rl1:total") == -1


async def test_clock_step_back_refills_nothing(limiters: Limiters, redis_client: Redis, redis_prefix: str) -> None:
    """A bucket stamped in the future (a failover to a Redis whose clock is behind) waits for it."""
    lim = limiters()
    now_us = int(await redis_time(redis_client) * 1_000_000)
    bucket = redis_prefix + "{fp:key:k1}:rl1:rpm"
    await redis_client.hset(bucket, mapping={"l": "0", "t": str(now_us + 5_000_000)})
    with pytest.raises(RateLimited) as info:
        await lim.admit(key(rpm=60), 0, None)
    retry_ms = int(dict(info.value.headers)[b"retry-after-ms"])
    assert 5000 < retry_ms <= 6000  # one token (1 s) after the stamp, never before it


@pytest.mark.parametrize("pipeline", [1, 4])
async def test_script_survives_script_flush(own_redis: OwnRedis, pipeline: int) -> None:
    client = connect(own_redis.url, 2.0)
    lim = RedisLimiter(Planner("t:", None, None), client, pipeline=pipeline)
    try:
        p = key(rpm=5)
        await lim.admit(p, 0, None)
        assert await client.script_exists(lim.store._sha) == [True]
        await client.script_flush()
        assert await client.script_exists(lim.store._sha) == [False]
        # NOSCRIPT (for every call out at once) reloaded it; the state was kept.
        assert await count_admitted([lim], p, 10) == 4
        assert await client.script_exists(lim.store._sha) == [True]
        assert lim.fallbacks == 0
    finally:
        await lim.close()


@pytest.mark.parametrize("pipeline", [1, 4])
async def test_redis_restart_fails_open_and_recovers(own_redis: OwnRedis, pipeline: int) -> None:
    client = connect(own_redis.url, 0.2)
    lim = RedisLimiter(Planner("t:", None, None), client, retry_interval=0.2, pipeline=pipeline)
    p = key(rpm=1000)
    try:
        await lim.admit(p, 0, None)
        own_redis.stop()
        # No exception and no hang: wait_for is only a guard, the calls fail fast.
        results = await asyncio.wait_for(asyncio.gather(*(lim.admit(p, 0, None) for _ in range(50))), 20)
        assert len(results) == 50 and lim.fallbacks == 50
        await lim.settle(results[0], TokenUsage(total=5))  # never raises
        with pytest.raises(ServiceUnavailable):
            await lim.levels(p)
        own_redis.start()
        await asyncio.sleep(0.3)  # past retry_interval: the next request tries Redis again
        await lim.admit(p, 0, None)
        assert lim.fallbacks == 50
        (level,) = await lim.levels(p)
        assert 998 <= level.remaining < 1000  # the restarted (empty) Redis holds this request again
    finally:
        await lim.close()


async def test_redis_down_fails_closed_with_503(own_redis: OwnRedis) -> None:
    client = connect(own_redis.url, 0.2)
    lim = RedisLimiter(Planner("t:", None, None), client, fail_open=False, retry_interval=0.2)
    p = key(rpm=1000)
    try:
        own_redis.stop()
        for _ in range(3):
            with pytest.raises(ServiceUnavailable) as info:
                await asyncio.wait_for(lim.admit(p, 0, None), 20)
            assert info.value.status == 503
        # Nothing configured for this principal: no bucket, no Redis, no 503.
        await lim.admit(ANONYMOUS, 0, None)
        own_redis.start()
        await asyncio.sleep(0.3)
        await lim.admit(p, 0, None)
    finally:
        await lim.close()
