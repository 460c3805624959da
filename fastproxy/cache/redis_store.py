"""The Redis backend: binary values with a TTL, shared by every instance, and a failure policy that can
never fail a request.

Keys are `{prefix}cache:{scope tag}:{route tag}:{digest}` and every command names one key (GET, SET PX,
UNLINK; purges SCAN every master, then UNLINK key by key), so the layout works unchanged on Redis Cluster.

GET and SET go over the project's lean pipelined connection (server/wire.py, corked: the commands of
one turn of the loop leave in one write), not through redis-py: a GET there cost more CPU than the
whole request it was saving (bench/RESULTS.md, "Response cache"). A SET is written at once and its
reply handed to a callback, so the response never waits for Redis and no task is made per write. On a
Redis Cluster, GET and SET go through redis-py's cluster client (it knows the slot map), SETs through
one owned writer task; purges always go through redis-py (SCAN reaches every master there).

Failure policy (the only one a cache may have): a call that errs or takes longer than `timeout` makes
the store "down" for `retry_interval`; meanwhile every lookup is a bypass without any I/O, and the
request goes upstream. The outage is logged once when it starts and once when Redis answers again. A
write that cannot be sent (Redis down, the writer's queue full) is dropped and counted. A value that
does not decode (corrupt, another format version) is a miss.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection
from redis.exceptions import RedisError

from fastproxy.cache.entry import CacheKey, Entry, decode, encode, tag
from fastproxy.core.tasks import stop_task
from fastproxy.server.wire import ChannelError, ReplyError, ScriptChannel, bulk

log = logging.getLogger("fastproxy.cache")


class Unavailable:
    """The lookup could not ask the backend (down, slow, erring): a bypass, not a miss."""


UNAVAILABLE = Unavailable()
_QUEUE = 1024
_SCAN_BATCH = 500
_TAGS = 4096
_GET = b"*2\r\n" + bulk("GET")
_SET = b"*5\r\n" + bulk("SET")
_PX = bulk("PX")


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
        # redis-py: purges always; GET and SET too on a cluster (a standalone server gets the channel).
        self._client = client
        self._channel: ScriptChannel | None = None
        if isinstance(client, aioredis.Redis):
            pool = client.connection_pool
            tls = issubclass(pool.connection_class, SSLConnection)
            self._channel = ScriptChannel(pool.connection_kwargs, timeout, tls=tls, cork=True)
        self._prefix = prefix + "cache:"
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._clock = clock
        self._down_until = 0.0
        self._down = False
        # Scope and route tags (a SHA-256 each), computed once per name rather than per request.
        self._tags: dict[str, str] = {}
        self._queue: asyncio.Queue[tuple[str, bytes, int]] = asyncio.Queue(_QUEUE)
        self._task: asyncio.Task[None] | None = None
        # Counters read by the metrics (only this object changes them).
        self.failures = 0
        self.dropped_writes = 0
        self.bytes_written = 0

    def _tag(self, value: str) -> str:
        found = self._tags.get(value)
        if found is None:
            if len(self._tags) >= _TAGS:
                self._tags.clear()
            found = self._tags[value] = tag(value)
        return found

    def key(self, key: CacheKey) -> str:
        return f"{self._prefix}{self._tag(key.scope)}:{self._tag(key.model)}:{key.digest.hex()}"

    @property
    def available(self) -> bool:
        return not self._down or self._clock() >= self._down_until

    async def get(self, key: CacheKey) -> Entry | Unavailable | None:
        if not self.available:
            return UNAVAILABLE
        name = self.key(key)
        try:
            if self._channel is not None:
                data = await self._channel.send(_GET + bulk(name))
            else:
                async with asyncio.timeout(self._timeout):
                    data = await self._client.get(name)
        except (ChannelError, ReplyError, RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return UNAVAILABLE
        self._recovered()
        # Not bytes (a client built with decode_responses, say) cannot be an entry: a miss.
        return decode(data) if isinstance(data, bytes) else None

    def put(self, key: CacheKey, entry: Entry, ttl: float) -> None:
        """Send the write (or queue it for the writer task); never waits, never raises."""
        if not self.available:
            self.dropped_writes += 1
            return
        name, value, ttl_ms = self.key(key), encode(entry), max(1, int(ttl * 1000))
        channel = self._channel
        if channel is not None:
            packed = b"".join((_SET, bulk(name), bulk(value), _PX, bulk(ttl_ms)))
            if channel.submit(packed, functools.partial(self._written, len(value))):
                return
        try:
            self._queue.put_nowait((name, value, ttl_ms))
        except asyncio.QueueFull:
            self.dropped_writes += 1

    def _written(self, size: int, reply: Any) -> None:
        """A SET's reply, from the channel's data_received."""
        if isinstance(reply, (ChannelError, ReplyError)):
            self._failed(reply)
            self.dropped_writes += 1
        else:
            self.bytes_written += size

    async def purge(self, scope: str | None = None, model: str | None = None) -> int:
        """Delete the entries of a scope and/or route (both None: all); raises RedisError/OSError when down.

        On a cluster redis-py's SCAN asks every master, and each UNLINK goes to its key's own node."""
        scope_part = self._tag(scope) if scope else "*"
        pattern = f"{self._prefix}{scope_part}:{self._tag(model) if model else '*'}:*"
        removed = 0
        async for name in self._client.scan_iter(match=pattern, count=_SCAN_BATCH):
            removed += int(await self._client.unlink(name))
        return removed

    # -- the writer task: a cluster's writes, and a standalone's when its connection is not open ----------
    def start(self) -> None:
        self._task = asyncio.create_task(self._write())

    async def stop(self) -> None:
        """Stop the writer and close the connection; writes still queued are dropped (a cache may forget)."""
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        if self._channel is not None:
            self._channel.close()

    async def _write(self) -> None:
        while True:
            name, value, ttl_ms = await self._queue.get()
            if not self.available:
                self.dropped_writes += 1
                continue
            try:
                if self._channel is not None:
                    packed = b"".join((_SET, bulk(name), bulk(value), _PX, bulk(ttl_ms)))
                    await self._channel.send(packed)
                else:
                    async with asyncio.timeout(self._timeout * 4):
                        await self._client.set(name, value, px=ttl_ms)
            except (ChannelError, ReplyError, RedisError, OSError, TimeoutError) as exc:
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
