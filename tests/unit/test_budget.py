"""Spend tracking (in process and on a real Redis) and the max_budget_usd gate."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from fastproxy.core.errors import QuotaExceeded, ServiceUnavailable
from fastproxy.core.limits import NoLimits
from fastproxy.core.schemas import Limits, Principal
from fastproxy.usage.budget import SpendTracker, UsageGate
from fastproxy.usage.row import UsageRow


def row(cost: float, key: str | None = "k1", user: str | None = "u1") -> UsageRow:
    return UsageRow(
        request_id="r",
        ts=0.0,
        key_id=key,
        user_id=user,
        model="m",
        upstream_model="m",
        provider="p",
        endpoint="chat.completions",
        streamed=False,
        status=200,
        prompt_tokens=1,
        completion_tokens=1,
        total_tokens=2,
        cached_tokens=0,
        reasoning_tokens=0,
        cost_usd=cost,
        latency_ms=1.0,
        ttfb_ms=None,
        client_ip=None,
        error=None,
        estimated=False,
    )


class Open:
    accepting = True


def principal(key_budget: float | None = None, user_budget: float | None = None) -> Principal:
    return Principal(
        key_id="k1",
        user_id="u1",
        key_limits=Limits(max_budget_usd=key_budget),
        user_limits=Limits(max_budget_usd=user_budget),
    )


async def test_gate_cuts_off_once_the_key_budget_is_spent() -> None:
    spend = SpendTracker()
    gate = UsageGate(NoLimits(), spend, Open())
    await spend.load({"k1": 0.5}, {})
    await gate.admit(principal(key_budget=1.0), 1, None)
    spend.charge(row(0.4))
    await gate.admit(principal(key_budget=1.0), 1, None)  # 0.9 < 1.0
    spend.charge(row(0.1))
    with pytest.raises(QuotaExceeded) as info:
        await gate.admit(principal(key_budget=1.0), 1, None)
    assert (info.value.status, info.value.code, info.value.type) == (429, "insufficient_quota", "insufficient_quota")
    assert "API key" in info.value.message and (b"x-should-retry", b"false") in info.value.headers
    # The user has no budget, another key of the same user is not affected.
    other = Principal(key_id="k2", user_id="u1", key_limits=Limits(max_budget_usd=1.0))
    await gate.admit(other, 1, None)


async def test_user_budget_counts_every_key_of_the_user() -> None:
    spend = SpendTracker()
    gate = UsageGate(NoLimits(), spend, Open())
    spend.charge(row(0.6, key="k1"))
    spend.charge(row(0.6, key="k2"))
    with pytest.raises(QuotaExceeded, match="user"):
        await gate.admit(principal(user_budget=1.0), 1, None)


async def test_gate_refuses_with_503_when_the_writer_cannot_take_more() -> None:
    class Full:
        accepting = False

    with pytest.raises(ServiceUnavailable):
        await UsageGate(NoLimits(), SpendTracker(), Full()).admit(principal(), 1, None)


async def test_spend_is_shared_through_redis(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    a = SpendTracker(redis_client, redis_prefix)
    b = SpendTracker(redis_client, redis_prefix)
    # Rebuilt from the database: raises the counter, never lowers it.
    await a.load({"k1": 2.0}, {"u1": 3.0})
    await b.load({"k1": 1.0}, {})
    assert await redis_client.get(redis_prefix + "spend:key:k1") == b"2.0"
    assert b.spent("key:k1") == 1.0  # b has not synced yet
    a.charge(row(0.25))
    await a.sync()
    await b.sync()
    assert b.spent("key:k1") == pytest.approx(2.25)
    b.charge(row(0.5))
    assert b.spent("key:k1") == pytest.approx(2.75)  # its own spend counts at once
    await b.sync()
    # Only counters the gate has read (budgeted keys and users) are read back from Redis.
    assert a.spent("user:u1") == pytest.approx(3.25) and a.spent("key:k1") == pytest.approx(2.25)
    await a.sync()
    assert a.spent("key:k1") == pytest.approx(2.75) and a.spent("user:u1") == pytest.approx(3.75)


async def test_redis_down_keeps_spend_pending(redis_prefix: str) -> None:
    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        tracker = SpendTracker(dead, redis_prefix)
        tracker.charge(row(0.3))
        await tracker.sync()
        assert tracker.spent("key:k1") == pytest.approx(0.3)
        tracker.charge(row(0.2))
        await tracker.sync()
        assert tracker.spent("key:k1") == pytest.approx(0.5)
        assert tracker._pending["key:k1"] == pytest.approx(0.5)
    finally:
        await dead.aclose()


async def test_rebuild_reads_the_database_once_per_redis_lifetime(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    calls = 0

    async def totals() -> tuple[dict[str, float], dict[str, float]]:
        nonlocal calls
        calls += 1
        return {"k1": 1.5}, {"u1": 4.0}

    first = SpendTracker(redis_client, redis_prefix)
    await first.rebuild(totals)
    first.charge(row(0.5))
    await first.sync()
    second = SpendTracker(redis_client, redis_prefix)
    await second.rebuild(totals)
    assert calls == 1
    # Known at once, before any sync: the first request of a budgeted key is checked against it.
    assert second.spent("key:k1") == pytest.approx(2.0) and second.spent("user:u1") == pytest.approx(4.5)
    # Redis lost its data: the next start reads the database again.
    async for key in redis_client.scan_iter(match=redis_prefix + "*"):
        await redis_client.delete(key)
    third = SpendTracker(redis_client, redis_prefix)
    await third.rebuild(totals)
    assert calls == 2 and third.spent("key:k1") == pytest.approx(1.5)


async def test_rebuild_without_redis_reads_the_database() -> None:
    async def totals() -> tuple[dict[str, float], dict[str, float]]:
        return {"k1": 0.75}, {}

    tracker = SpendTracker()
    await tracker.rebuild(totals)
    assert tracker.spent("key:k1") == pytest.approx(0.75)
