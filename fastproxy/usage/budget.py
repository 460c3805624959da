"""Spend per key and per user, and the gate that enforces `max_budget_usd` before a request goes upstream.

Spend is charged when a usage row is made (the writer's listener: a dict update, no I/O) and read by the
gate from the same in-process dicts, so enforcement costs no I/O on the request path.

With Redis, a sync task pushes this worker's new spend with INCRBYFLOAT on `<prefix>spend:key:<id>` /
`<prefix>spend:user:<id>` every `interval` seconds and reads back the totals of every key and user the
gate has seen with a budget, so all workers and instances converge on one figure. Without Redis each
worker knows the database total at its start plus its own spend (one worker per budgeted key, or Redis,
for an exact cut-off).

Overshoot bound: a request is admitted while spent < budget and charged when it ends, so requests in
flight when the budget is crossed each add their own cost; with Redis, spend of other workers shows up
at most two sync intervals late (it is pushed from the row, not from the database), so the overshoot is
also bounded by what they spend in that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fastproxy.core.errors import QuotaExceeded, ServiceUnavailable
from fastproxy.core.limits import Admission, Limiter
from fastproxy.core.schemas import BucketLevel, Principal, TokenUsage
from fastproxy.core.tasks import stop_task
from fastproxy.usage.row import UsageRow

log = logging.getLogger("fastproxy.usage")

# Sets the counter to the database total unless it already holds more (another instance charged since).
_AT_LEAST = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
"""
# The openai SDK honours x-should-retry: a spent budget does not come back by retrying.
_NO_RETRY = [(b"x-should-retry", b"false")]
_RETRY_SOON = [(b"retry-after", b"1")]


class SpendTracker:
    def __init__(
        self,
        redis: aioredis.Redis | aioredis.RedisCluster | None = None,
        prefix: str = "fastproxy:",
        interval: float = 0.5,
    ) -> None:
        self._redis = redis
        self._prefix = prefix + "spend:"
        self._interval = interval
        # "key:<id>" / "user:<id>" -> USD: the best known total (Redis total + not yet pushed).
        self._spent: dict[str, float] = {}
        self._pending: dict[str, float] = {}
        # Ids read back from Redis at every sync: the ones the gate has seen with a budget.
        self._watched: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def charge(self, row: UsageRow) -> None:
        """A listener of the usage writer: add the row's cost to its key and user. No I/O."""
        cost = row.cost_usd
        if cost <= 0:
            return
        for name in (row.key_id and "key:" + row.key_id, row.user_id and "user:" + row.user_id):
            if name:
                self._spent[name] = self._spent.get(name, 0.0) + cost
                if self._redis is not None:
                    self._pending[name] = self._pending.get(name, 0.0) + cost

    def spent(self, name: str) -> float:
        """Known spend of "key:<id>" or "user:<id>"; the name is then kept in sync with Redis."""
        if name not in self._watched:
            self._watched.add(name)
        return self._spent.get(name, 0.0)

    async def rebuild(self, read_totals: Callable[[], Awaitable[tuple[dict[str, float], dict[str, float]]]]) -> None:
        """Initial figures at startup: from Redis when it already holds them, else from the database.

        The database aggregate (SUM(cost) per key and per user over the whole usage table) runs once per
        Redis lifetime, not once per worker start: the first instance sets `<prefix>spend:rebuilt` after
        raising the counters; later ones read the counters back instead. Without Redis it runs in every
        worker. Raises StoreError when the database is needed and fails.
        """
        if self._redis is not None:
            try:
                if await self._redis.exists(self._prefix + "rebuilt"):
                    await self._read_all()
                    return
            except RedisError as exc:
                log.warning("could not read spend counters from Redis, reading the database: %s", exc)
        await self.load(*await read_totals())
        if self._redis is not None:
            with contextlib.suppress(RedisError):
                await self._redis.set(self._prefix + "rebuilt", "1")

    async def _read_all(self) -> None:
        redis = self._redis
        assert redis is not None
        names: list[str] = []
        async for raw in redis.scan_iter(match=self._prefix + "*", count=1000):
            name = raw.decode()[len(self._prefix) :]
            if name != "rebuilt":
                names.append(name)
        for i in range(0, len(names), 1000):
            chunk = names[i : i + 1000]
            # One GET per name: a multi-key MGET would span hash slots on a Redis Cluster.
            async with redis.pipeline(transaction=False) as pipe:
                for n in chunk:
                    pipe.get(self._prefix + n)
                values = await pipe.execute()
            for name, value in zip(chunk, values, strict=True):
                if value is not None:
                    self._spent[name] = max(self._spent.get(name, 0.0), float(value))

    async def load(self, keys: dict[str, float], users: dict[str, float]) -> None:
        """Start from the database totals (per key id, per user id); raise the Redis counters to them."""
        totals = {"key:" + k: v for k, v in keys.items()} | {"user:" + u: v for u, v in users.items()}
        for name, value in totals.items():
            self._spent[name] = max(self._spent.get(name, 0.0), value)
        if self._redis is None or not totals:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for name, value in totals.items():
                    # EVAL, not a registered script: a cluster pipeline routes it by its one key.
                    pipe.eval(_AT_LEAST, 1, self._prefix + name, repr(value))
                await pipe.execute()
        except RedisError as exc:
            log.warning("could not rebuild spend counters in Redis: %s", exc)

    def start(self) -> None:
        if self._redis is not None:
            self._task = asyncio.create_task(self._run(), name="spend-sync")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
            await self.sync()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.sync()

    async def sync(self) -> None:
        """Push pending spend, read back the watched totals. On a Redis error the spend stays pending."""
        if self._redis is None:
            return
        pending, self._pending = self._pending, {}
        names = list(pending) + [n for n in self._watched if n not in pending]
        if not names:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in pending:
                    pipe.incrbyfloat(self._prefix + name, pending[name])
                watched = names[len(pending) :]
                for name in watched:  # GET each: an MGET would span hash slots on a Redis Cluster
                    pipe.get(self._prefix + name)
                results = await pipe.execute()
        except RedisError as exc:
            for name, value in pending.items():
                self._pending[name] = self._pending.get(name, 0.0) + value
            if not self._failing:
                log.warning("spend sync with Redis failed (budgets use this worker's figures): %s", exc)
            self._failing = True
            return
        self._failing = False
        totals = [float(v) for v in results[: len(pending)]]
        totals += [float(v) if v is not None else 0.0 for v in results[len(pending) :]]
        for name, total in zip(names, totals, strict=True):
            # Charges made while the pipeline ran are pending again: count them on top.
            self._spent[name] = total + self._pending.get(name, 0.0)


def _over(tracker: SpendTracker, kind: str, ident: str | None, budget: float | None) -> float | None:
    if budget is None or ident is None:
        return None
    spent = tracker.spent(kind + ident)
    return spent if spent >= budget else None


class Writable(Protocol):
    """What the gate asks of the usage writer: False while new requests must be refused (503)."""

    @property
    def accepting(self) -> bool: ...


class UsageGate:
    """A Limiter around another: refuses a request before it goes upstream when a budget is spent
    (429 insufficient_quota) or when the usage writer cannot take more rows and the policy is `reject` (503).
    """

    def __init__(self, inner: Limiter, spend: SpendTracker, writer: Writable) -> None:
        self._inner = inner
        self._spend = spend
        self._writer = writer

    async def admit(self, principal: Principal, estimate: int, client_ip: str | None) -> Admission:
        if not self._writer.accepting:
            raise ServiceUnavailable("Usage accounting is unavailable; please retry shortly.", headers=_RETRY_SOON)
        key_limits, user_limits = principal.key_limits, principal.user_limits
        if key_limits is not None and key_limits.max_budget_usd is not None:
            spent = _over(self._spend, "key:", principal.key_id, key_limits.max_budget_usd)
            if spent is not None:
                raise QuotaExceeded(_message("API key", key_limits.max_budget_usd, spent), headers=_NO_RETRY)
        if user_limits is not None and user_limits.max_budget_usd is not None:
            spent = _over(self._spend, "user:", principal.user_id, user_limits.max_budget_usd)
            if spent is not None:
                raise QuotaExceeded(_message("user", user_limits.max_budget_usd, spent), headers=_NO_RETRY)
        return await self._inner.admit(principal, estimate, client_ip)

    async def settle(self, admission: Admission, usage: TokenUsage | None) -> None:
        await self._inner.settle(admission, usage)

    async def levels(self, principal: Principal, client_ip: str | None = None) -> list[BucketLevel]:
        return await self._inner.levels(principal, client_ip)

    async def close(self) -> None:
        await self._inner.close()


def _message(whose: str, budget: float, spent: float) -> str:
    return (
        f"You exceeded your current quota: the budget of this {whose} is ${budget:.2f} "
        f"and ${spent:.4f} has been spent. Ask an administrator to raise max_budget_usd."
    )
