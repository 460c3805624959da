"""The limiter on a real Redis Cluster: exact across subjects in different slots, give-back on refusal,
the failure policy while a master is down, exact again after its replica took over."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from redis.crc import key_slot

from fastproxy.core.errors import RateLimited
from fastproxy.core.limits import Admission
from fastproxy.core.schemas import ANONYMOUS, Limits, Principal
from fastproxy.ratelimit.buckets import Planner
from fastproxy.ratelimit.cluster import ClusterStore
from fastproxy.ratelimit.redis_limiter import RedisLimiter
from fastproxy.server.redis import open_client
from tests.redis_cluster import RedisCluster

MakeLimiter = Callable[..., RedisLimiter]


@pytest.fixture
async def limiters(redis_cluster: RedisCluster, redis_prefix: str) -> AsyncIterator[MakeLimiter]:
    made: list[RedisLimiter] = []

    def make(global_limits: Limits | None = None, timeout: float = 0.25) -> RedisLimiter:
        client = open_client(redis_cluster.url, timeout=timeout, max_connections=4, retries=False)
        lim = RedisLimiter(Planner(redis_prefix, global_limits, None), client, retry_interval=0.2)
        made.append(lim)
        return lim

    yield make
    for lim in made:
        await lim.close()


def key(key_id: str, user_id: str = "u1", user_limits: Limits | None = None, **limits: int) -> Principal:
    return Principal(
        key_id=key_id, user_id=user_id, key_hint="abcd", key_limits=Limits(**limits), user_limits=user_limits
    )


async def count_admitted(lims: list[RedisLimiter], principal: Principal, m: int) -> int:
    results = await asyncio.gather(
        *(lims[i % len(lims)].admit(principal, 0, None) for i in range(m)), return_exceptions=True
    )
    for r in results:
        assert isinstance(r, Admission | RateLimited), repr(r)
    return sum(isinstance(r, Admission) for r in results)


async def test_buckets_of_one_request_span_slots_and_stay_exact(limiters: MakeLimiter, redis_prefix: str) -> None:
    lims = [limiters(Limits(rpm=40)), limiters(Limits(rpm=40)), limiters(Limits(rpm=40))]
    assert isinstance(lims[0].store, ClusterStore)
    slots = {key_slot(f"{redis_prefix}{{fp:{s}}}:x".encode()) for s in ("key:k1", "user:u1", "global")}
    assert len(slots) == 3  # the three subjects really live in three slots
    # Key k1 allows 7 of 30 concurrent requests over three limiters.
    assert await count_admitted(lims, key("k1", user_limits=Limits(rpm=10), rpm=7), 30) == 7
    # User u1 (rpm 10) has 3 left after k1's 7: k2 gets exactly those, whatever its own limit.
    assert await count_admitted(lims, key("k2", user_limits=Limits(rpm=10), rpm=100), 30) == 3
    # The global bucket (40) lost only what was admitted (10): every refused take was given back.
    assert await count_admitted(lims, ANONYMOUS, 60) == 30
    assert all(lim.fallbacks == 0 for lim in lims)


async def test_master_killed_failure_policy_then_exact_again(
    limiters: MakeLimiter, redis_cluster: RedisCluster, redis_prefix: str
) -> None:
    lim = limiters()
    principal = key("kf", rpm=1000)
    assert await count_admitted([lim], principal, 5) == 5
    victim = redis_cluster.master_of(f"{redis_prefix}{{fp:key:kf}}:rl1:rpm")
    redis_cluster.kill(victim)
    started = time.monotonic()
    outcomes: list[str] = []
    # During the failover every call is answered: by Redis, or by the failure policy (fail_open here).
    while time.monotonic() - started < 15:
        try:
            await lim.admit(principal, 0, None)
            outcomes.append("admitted")
        except RateLimited:
            outcomes.append("refused")
        if lim.fallbacks and len(outcomes) > 5 and not lim._degraded:
            break
        await asyncio.sleep(0.02)
    assert "refused" not in outcomes
    assert lim.fallbacks > 0  # the failure policy applied while the slot had no master
    recovered = time.monotonic() - started
    # After the replica's promotion the limits are exact again, without any restart.
    fresh = key("kf2", rpm=9)
    assert await count_admitted([lim], fresh, 25) == 9
    print(f"master killed: {lim.fallbacks} calls by the failure policy, back on Redis after {recovered:.2f} s")
    redis_cluster.start_node(victim)  # it rejoins as a replica of the promoted node
    redis_cluster.wait_ok()
