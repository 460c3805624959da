"""The Redis backend against a real Redis: values, TTL, purges, corrupt entries, the near tier."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from redis.asyncio import Redis

from fastproxy.cache.entry import FORMAT, Entry, derive
from fastproxy.cache.memory import MemoryStore
from fastproxy.cache.redis_store import UNAVAILABLE, RedisStore
from fastproxy.cache.service import CacheConfig, Lookup, ResponseCache
from fastproxy.core.schemas import Principal

JSON = [(b"content-type", b"application/json")]


def entry(body: bytes, created: float) -> Entry:
    return Entry(FORMAT, created, 200, False, JSON, [body], (3, 0, 3, 0, 0))


async def settle(store: RedisStore) -> None:
    for _ in range(50):
        await asyncio.sleep(0.01)
        if store.bytes_written:
            return


async def test_values_ttl_purge_and_corrupt_entries(redis_client: Redis, redis_prefix: str) -> None:
    store = RedisStore(redis_client, redis_prefix, timeout=0.5, retry_interval=0.2)
    store.start()
    try:
        a = derive("user:a", "embeddings", "http://up/v1", "m", b'{"input":"x"}')
        b = derive("user:b", "embeddings", "http://up/v1", "m", b'{"input":"x"}')
        assert await store.get(a) is None
        store.put(a, entry(b"A", 1.0), ttl=60)
        store.put(b, entry(b"B", 1.0), ttl=0.2)
        await settle(store)
        assert await store.get(a) == entry(b"A", 1.0)
        name = store.key(a)
        assert name.startswith(redis_prefix + "cache:") and name.count(":") >= 4
        assert 0 < await redis_client.pttl(store.key(b)) <= 200
        await redis_client.set(name, b"\x93not an entry")
        assert await store.get(a) is None  # corrupt: a miss, never an error
        store.put(a, entry(b"A", 1.0), ttl=60)
        await asyncio.sleep(0.1)
        assert await store.purge(scope="user:a") == 1 and await store.get(a) is None
    finally:
        await store.stop()


async def test_an_unreachable_redis_is_a_bypass_without_waiting(redis_prefix: str) -> None:
    client = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)  # nothing listens on port 1
    store = RedisStore(client, redis_prefix, timeout=0.5, retry_interval=60)
    try:
        key = derive("s", "embeddings", "u", "m", b"{}")
        assert await store.get(key) is UNAVAILABLE
        assert not store.available and store.failures == 1
        assert await store.get(key) is UNAVAILABLE and store.failures == 1  # no second attempt meanwhile
        store.put(key, entry(b"x", 0.0), ttl=60)
        assert store.dropped_writes == 1
    finally:
        await client.aclose()


async def test_the_near_tier_answers_repeated_hits_without_redis(redis_client: Redis, redis_prefix: str) -> None:
    store = RedisStore(redis_client, redis_prefix, timeout=0.5, retry_interval=0.2)
    store.start()
    near = MemoryStore(1 << 20)
    cache = ResponseCache(CacheConfig(local_ttl=5), memory=near, redis=store)
    try:
        principal = Principal(key_id="k", user_id="u")

        def look(c: ResponseCache) -> Coroutine[Any, Any, Lookup]:
            return c.lookup([], "embeddings", principal, None, None, "http://up/v1", "m", b'{"input":"near"}')

        first = await look(cache)
        assert first.tees and first.entry is None
        first.start(200, list(JSON), False)
        first.chunk(b'{"data":[]}')
        first.end(None)
        await settle(store)
        assert len(near) == 1
        # Another worker (an empty near tier) reads Redis and keeps the entry.
        other = ResponseCache(CacheConfig(local_ttl=5), memory=MemoryStore(1 << 20), redis=store)
        assert (await look(other)).entry is not None
        assert other.memory is not None and len(other.memory) == 1
        await store.purge()
        # Purged in Redis: this worker's near tier still answers until local_ttl (documented).
        assert (await look(other)).entry is not None
        assert await cache.purge() == 0 and len(near) == 0
    finally:
        await store.stop()
