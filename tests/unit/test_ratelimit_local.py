"""The in-process limiter, driven by an injected clock (so refill is exact, not timed)."""

from __future__ import annotations

import asyncio

import pytest

from fastproxy.core.errors import RateLimited
from fastproxy.core.limits import Admission
from fastproxy.core.schemas import ANONYMOUS, Limits, Principal, TokenUsage
from fastproxy.ratelimit.buckets import Planner
from fastproxy.ratelimit.local import LocalLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(**limits: int) -> Principal:
    return Principal(key_id="k1", key_hint="abcd", key_limits=Limits(**limits))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def limiter(clock: FakeClock, global_limits: Limits | None = None, ip_limits: Limits | None = None) -> LocalLimiter:
    return LocalLimiter(Planner("", global_limits, ip_limits), clock)


async def admitted(lim: LocalLimiter, principal: Principal, n: int, estimate: int = 0, ip: str = "1.1.1.1") -> int:
    results = await asyncio.gather(*(lim.admit(principal, estimate, ip) for _ in range(n)), return_exceptions=True)
    for r in results:
        assert isinstance(r, Admission | RateLimited), r
    return sum(isinstance(r, Admission) for r in results)


async def test_exactly_rpm_of_concurrent_requests(clock: FakeClock) -> None:
    lim = limiter(clock)
    assert await admitted(lim, key(rpm=7), 20) == 7


async def test_refill_admits_at_the_configured_rate(clock: FakeClock) -> None:
    lim = limiter(clock)
    p = key(rpm=480)  # 8 per second (steps exact in binary, so the float clock adds no rounding)
    assert await admitted(lim, p, 700) == 480
    clock.now += 0.5
    assert await admitted(lim, p, 100) == 4
    clock.now += 0.0625
    assert await admitted(lim, p, 100) == 0
    clock.now += 0.0625
    assert await admitted(lim, p, 100) == 1
    clock.now += 2
    assert await admitted(lim, p, 100) == 16


async def test_refill_never_exceeds_capacity(clock: FakeClock) -> None:
    lim = limiter(clock)
    p = key(rpm=3)
    assert await admitted(lim, p, 3) == 3
    clock.now += 3600
    assert await admitted(lim, p, 10) == 3


async def test_clock_stepping_back_refills_nothing(clock: FakeClock) -> None:
    lim = limiter(clock)
    p = key(rpm=60)
    assert await admitted(lim, p, 60) == 60
    clock.now -= 30
    assert await admitted(lim, p, 5) == 0
    clock.now += 30  # back where it was: still nothing has refilled
    assert await admitted(lim, p, 5) == 0
    clock.now += 2
    assert await admitted(lim, p, 5) == 2


async def test_all_or_nothing_across_buckets(clock: FakeClock) -> None:
    lim = limiter(clock, global_limits=Limits(rpm=100))
    tight = key(rpm=2)
    assert await admitted(lim, tight, 5) == 2
    # The 3 refusals took nothing from the global bucket: 98 remain for everyone else.
    assert await admitted(lim, ANONYMOUS, 200) == 98


async def test_429_names_the_limit_and_says_when(clock: FakeClock) -> None:
    lim = limiter(clock)
    p = key(rpm=60)
    for _ in range(60):
        await lim.admit(p, 0, None)
    with pytest.raises(RateLimited) as info:
        await lim.admit(p, 0, None)
    err = info.value
    assert err.type == "requests" and err.code == "rate_limit_exceeded"
    assert "requests per minute for key sk-fp-...abcd" in err.message
    assert dict(err.headers) == {
        b"retry-after": b"1",
        b"retry-after-ms": b"1000",
        b"x-ratelimit-limit-requests": b"60",
        b"x-ratelimit-remaining-requests": b"0",
        b"x-ratelimit-reset-requests": b"1m0s",
    }


async def test_estimate_larger_than_capacity_is_refused_at_once(clock: FakeClock) -> None:
    lim = limiter(clock)
    with pytest.raises(RateLimited) as info:
        await lim.admit(key(tpm=100), 101, None)
    assert info.value.type == "tokens"
    assert info.value.message.startswith("Request too large for tokens per minute for key sk-fp-...abcd: Limit 100")
    assert not info.value.headers  # waiting would not help
    # Nothing was taken.
    (level,) = await lim.levels(key(tpm=100))
    assert level.remaining == 100


async def test_zero_limit_refuses_everything(clock: FakeClock) -> None:
    lim = limiter(clock)
    with pytest.raises(RateLimited) as info:
        await lim.admit(key(rpm=0), 0, None)
    assert info.value.message == "No requests are allowed: the limit of requests per minute for key sk-fp-...abcd is 0."


async def test_settle_reconciles_to_the_real_usage(clock: FakeClock) -> None:
    lim = limiter(clock)
    p = key(max_tokens_total=10_000)
    real = [30, 150, None, 0, 64]
    estimate = 100
    for total in real:
        adm = await lim.admit(p, estimate, None)
        await lim.settle(adm, None if total is None else TokenUsage(total=total))
    (level,) = await lim.levels(p)
    # None: the estimate stands. Refunds and extra charges are exact.
    assert level.remaining == 10_000 - (30 + 150 + 100 + 0 + 64)
    assert level.reset_ms == -1


async def test_lifetime_quota_exhausted_is_insufficient_quota(clock: FakeClock) -> None:
    lim = limiter(clock)
    p = key(max_tokens_total=100)
    adm = await lim.admit(p, 60, None)
    await lim.settle(adm, TokenUsage(total=90))
    clock.now += 10 * 86_400
    with pytest.raises(RateLimited) as info:
        await lim.admit(p, 20, None)
    assert info.value.code == "insufficient_quota" and info.value.type == "tokens"
    assert "does not refill" in info.value.message and not info.value.headers


async def test_debt_from_overuse_blocks_until_repaid(clock: FakeClock) -> None:
    lim = limiter(clock)
    p = key(tpm=600)  # 10 tokens per second
    adm = await lim.admit(p, 100, None)
    await lim.settle(adm, TokenUsage(total=800))  # 200 tokens in debt
    with pytest.raises(RateLimited) as info:
        await lim.admit(p, 10, None)
    assert dict(info.value.headers)[b"retry-after-ms"] == b"21000"
    clock.now += 21
    await lim.admit(p, 10, None)


async def test_success_headers(clock: FakeClock) -> None:
    lim = limiter(clock)
    adm = await lim.admit(key(rpm=10, tpm=1000), 250, None)
    assert dict(adm.headers) == {
        b"x-ratelimit-limit-requests": b"10",
        b"x-ratelimit-remaining-requests": b"9",
        b"x-ratelimit-reset-requests": b"6s",
        b"x-ratelimit-limit-tokens": b"1000",
        b"x-ratelimit-remaining-tokens": b"750",
        b"x-ratelimit-reset-tokens": b"15s",
    }


async def test_no_limits_costs_no_state(clock: FakeClock) -> None:
    lim = limiter(clock)
    adm = await lim.admit(ANONYMOUS, 500, "1.2.3.4")
    assert adm.headers == []
    await lim.settle(adm, TokenUsage(total=5))
    assert lim.store._state == {}


async def test_full_buckets_are_dropped(clock: FakeClock) -> None:
    lim = limiter(clock, ip_limits=Limits(rpm=60))
    for i in range(5000):
        await lim.admit(ANONYMOUS, 0, f"10.0.{i // 256}.{i % 256}")
        clock.now += 0.01
    # Each IP bucket is full again a second after its request: only the last ~100 are still held.
    assert 0 < len(lim.store._state) <= 5000 - 4096 + 101
