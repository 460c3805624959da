"""The Redis backend: binary values with a TTL, shared by every instance, and a failure policy that can
never fail a request.

Keys are `{prefix}cache:{scope tag}:{route tag}:{digest}` and every command names one key (GET, SET PX,
UNLINK; purges SCAN then UNLINK key by key), so the layout works unchanged on Redis Cluster.

Failure policy (the only one a cache may have): a call that errs or takes longer than `timeout` makes
the store "down" for `retry_interval`; meanwhile every lookup is a bypass without any I/O, and the
request goes upstream. The outage is logged once when it starts and once when Redis answers again.
Writes go through a bounded queue drained by one owned task (started and stopped in lifespan), so the
response never waits for Redis; when the queue is full or Redis is down a write is dropped and counted.
A value that does not decode (corrupt, another format version) is a miss.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fastproxy.cache.entry import CacheKey, Entry, decode, encode, tag
from fastproxy.core.tasks import stop_task

log = logging.getLogger("fastproxy.cache")


class Unavailable:
    """The lookup could not ask the backend (down, slow, erring): a bypass, not a miss."""


UNAVAILABLE = Unavailable()
_QUEUE = 1024
_SCAN_BATCH = 500


class RedisStore:
    def __init__(
        self,
        client: aioredis.Redis | aioredis.RedisCluster,
        prefix: str,
        *,
        timeout: float,
        retry_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._prefix = prefix + "cache:"
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._clock = clock
        self._down_until = 0.0
        self._down = False
        self._queue: asyncio.Queue[tuple[str, bytes, int]] = asyncio.Queue(_QUEUE)
        self._task: asyncio.Task[None] | None = None
        # Counters read by the metrics (only this object changes them).
        self.failures = 0
        self.dropped_writes = 0
        self.bytes_written = 0

    def key(self, key: CacheKey) -> str:
        return f"{self._prefix}{tag(key.scope)}:{tag(key.model)}:{key.digest.hex()}"

    @property
    def available(self) -> bool:
        return not self._down or self._clock() >= self._down_until

    async def get(self, key: CacheKey) -> Entry | Unavailable | None:
        if not self.available:
            return UNAVAILABLE
        try:
            async with asyncio.timeout(self._timeout):
                data = await self._client.get(self.key(key))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return UNAVAILABLE
        self._recovered()
        # Not bytes (a client built with decode_responses, say) cannot be an entry: a miss.
        return decode(data) if isinstance(data, bytes) else None

    def put(self, key: CacheKey, entry: Entry, ttl: float) -> None:
        """Queue the write; never waits, never raises."""
        if not self.available:
            self.dropped_writes += 1
            return
        try:
            self._queue.put_nowait((self.key(key), encode(entry), max(1, int(ttl * 1000))))
        except asyncio.QueueFull:
            self.dropped_writes += 1

    async def purge(self, scope: str | None = None, model: str | None = None) -> int:
        """Delete the entries of a scope and/or route (both None: all); raises RedisError/OSError when down."""
        pattern = f"{self._prefix}{tag(scope) if scope else '*'}:{tag(model) if model else '*'}:*"
        removed = 0
        async for name in self._client.scan_iter(match=pattern, count=_SCAN_BATCH):
            removed += int(await self._client.unlink(name))
        return removed

    # -- the writer task ------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._write())

    async def stop(self) -> None:
        """Stop the writer; writes still queued are dropped (a cache may forget)."""
        if self._task is not None:
            await stop_task(self._task)
            self._task = None

    async def _write(self) -> None:
        while True:
            name, value, ttl_ms = await self._queue.get()
            if not self.available:
                self.dropped_writes += 1
                continue
            try:
                async with asyncio.timeout(self._timeout * 4):
                    await self._client.set(name, value, px=ttl_ms)
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(exc)
                self.dropped_writes += 1
            else:
                self._recovered()
                self.bytes_written += len(value)

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self._down_until = self._clock() + self._retry_interval
        if not self._down:
            self._down = True
            log.warning("cache: Redis unavailable (%s); requests bypass the cache until it answers", type(exc).__name__)

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            log.info("cache: Redis answers again; the cache is used again")
