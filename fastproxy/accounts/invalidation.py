"""Key and user changes reach every instance's auth cache within a second, over Redis pub/sub.

Admin changes call `Invalidator.key_changed` / `user_changed`: the local cache is evicted at once
and, when Redis is configured, a message is published on `<prefix>auth-invalidate`. Each worker
runs a `Subscriber` (owned by lifespan) that evicts on every message. If the subscription breaks,
messages may have been missed, so the whole cache is cleared when it is re-established. Without
Redis, the cache TTL (a few seconds) bounds how long a change takes to reach other processes.

On a Redis Cluster the same code works through redis-py's RedisCluster: a classic PUBLISH reaches
subscribers on every node (the cluster bus carries it), so one subscription per worker on any node
is enough; when that node fails the subscription breaks and is re-joined (cache cleared) on another.

Messages are `key:<id>`, `user:<id>` or `all`: ids only, never keys or hashes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fastproxy.core.tasks import stop_task

log = logging.getLogger("fastproxy.invalidation")

CHANNEL = "auth-invalidate"
_RETRY_MAX_S = 5.0


class Evictable(Protocol):
    def evict_key(self, key_id: str) -> None: ...

    def evict_user(self, user_id: str) -> None: ...

    def clear(self) -> None: ...


def channel_name(prefix: str) -> str:
    return prefix + CHANNEL


class Invalidator:
    """Announces changes; publishing failures are logged, not raised (the TTL still bounds staleness)."""

    def __init__(
        self, cache: Evictable | None, redis: aioredis.Redis | aioredis.RedisCluster | None, channel: str
    ) -> None:
        self._cache = cache
        self._redis = redis
        self._channel = channel

    async def key_changed(self, key_id: str) -> None:
        if self._cache is not None:
            self._cache.evict_key(key_id)
        await self._publish(f"key:{key_id}")

    async def user_changed(self, user_id: str) -> None:
        if self._cache is not None:
            self._cache.evict_user(user_id)
        await self._publish(f"user:{user_id}")

    async def _publish(self, message: str) -> None:
        if self._redis is None:
            return
        try:
            await self._redis.publish(self._channel, message)
        except (RedisError, OSError) as exc:
            log.warning("could not publish a cache invalidation (%s); other instances catch up by TTL", exc)


def apply(cache: Evictable, message: bytes) -> None:
    kind, _, ident = message.decode("utf-8", "replace").partition(":")
    if kind == "key" and ident:
        cache.evict_key(ident)
    elif kind == "user" and ident:
        cache.evict_user(ident)
    else:
        cache.clear()


class Subscriber:
    """Listens on the channel until `stop()`; reconnects with backoff, clearing the cache on each (re)join."""

    def __init__(self, cache: Evictable, redis: aioredis.Redis | aioredis.RedisCluster, channel: str) -> None:
        self._cache = cache
        self._redis = redis
        self._channel = channel
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="auth-invalidation-subscriber")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def _run(self) -> None:
        delay = 0.1
        first = True
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._channel)
                    if not first:
                        self._cache.clear()
                        log.info("auth invalidation channel re-joined; cache cleared")
                    first, delay = False, 0.1
                    self.subscribed.set()
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            apply(self._cache, message["data"])
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                first = False
                log.warning("auth invalidation channel lost (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
