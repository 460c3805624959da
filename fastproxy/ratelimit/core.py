"""The limiter logic shared by every bucket store: plan, check, take, reconcile.

A store only has to implement three atomic operations over a list of buckets (`take`: all or
nothing; `force`: unconditional, negative costs refund; `peek`: read without changing), with the
semantics documented in ratelimit.lua. `LocalLimiter` and `RedisLimiter` are the two stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from fastproxy.core.limits import Admission
from fastproxy.core.schemas import BucketLevel, Principal, TokenUsage
from fastproxy.core.types import RawHeaders
from fastproxy.ratelimit import replies
from fastproxy.ratelimit.buckets import EMPTY_PLAN, Bucket, Plan, Planner
from fastproxy.ratelimit.replies import Taken


class BucketStore(Protocol):
    async def take(self, buckets: Sequence[Bucket], costs: Sequence[int]) -> Taken:
        """Take costs[i] from buckets[i] for all i, or from none of them. Raises StoreUnavailable."""
        ...

    async def force(self, buckets: Sequence[Bucket], costs: Sequence[int]) -> None:
        """Take (or, when negative, give back) the costs unconditionally. Raises StoreUnavailable."""
        ...

    async def peek(self, buckets: Sequence[Bucket]) -> list[tuple[float, int]]:
        """(level, ms until full) of each bucket, without changing anything. Raises StoreUnavailable."""
        ...


class StoreUnavailable(Exception):
    """The shared store could not answer in time; the limiter applies its failure policy."""


class BucketAdmission(Admission):
    """An admission that remembers its token buckets, and which store took them, for settle()."""

    __slots__ = ("store", "tokens")

    def __init__(
        self, principal: Principal, estimate: int, headers: RawHeaders, tokens: tuple[Bucket, ...], store: object
    ) -> None:
        super().__init__(principal, estimate, headers)
        self.tokens = tokens
        self.store = store


def check_sizes(plan: Plan, estimate: int) -> None:
    """Refuse at once what no wait would admit: a request larger than a bucket's capacity."""
    for bucket in plan.requests:
        if bucket.capacity < 1:
            raise replies.too_large(bucket, 1)
    for bucket in plan.tokens:
        if estimate > bucket.capacity:
            raise replies.too_large(bucket, estimate)


def costs_of(plan: Plan, estimate: int) -> list[int]:
    return [1] * len(plan.requests) + [estimate] * len(plan.tokens)


def admitted(principal: Principal, estimate: int, plan: Plan, taken: Taken, store: object) -> Admission:
    """The Admission for a successful take, or the 429 for a refused one."""
    if not taken.ok:
        buckets = plan.buckets
        bucket = buckets[taken.refused]
        requested = estimate if bucket.tokens else 1
        err = replies.refused(bucket, bucket.capacity - taken.level, requested, taken.retry_ms)
        err.headers.extend(replies.headers(plan, taken))  # OpenAI sends x-ratelimit-* on a 429 too
        raise err
    return BucketAdmission(principal, estimate, replies.headers(plan, taken), plan.tokens, store)


def settlement(admission: Admission, usage: TokenUsage | None) -> tuple[tuple[Bucket, ...], int] | None:
    """The token buckets to correct and by how much (the real total minus the estimate), if anything."""
    if usage is None or not isinstance(admission, BucketAdmission) or not admission.tokens:
        return None
    delta = usage.total - admission.estimate
    if delta == 0:
        return None
    return admission.tokens, delta


async def levels_of(
    store: BucketStore, planner: Planner, principal: Principal, client_ip: str | None
) -> list[BucketLevel]:
    plan = planner.plan(principal, client_ip)
    if plan is EMPTY_PLAN:
        return []
    buckets = plan.buckets
    seen = await store.peek(buckets)
    return [
        BucketLevel(
            name=b.name,
            kind="tokens" if b.tokens else "requests",
            capacity=b.capacity,
            period=b.period,
            remaining=level,
            reset_ms=reset_ms,
        )
        for b, (level, reset_ms) in zip(buckets, seen, strict=True)
    ]
