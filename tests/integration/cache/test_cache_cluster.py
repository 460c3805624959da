"""The cache's Redis backend on a real Redis Cluster (3 masters): entries spread over every master are
read back, and purges by scope, by route and of everything reach all of them."""

from __future__ import annotations

import asyncio

from redis.asyncio import RedisCluster

from fastproxy.cache.entry import FORMAT, CacheKey, Entry, derive
from fastproxy.cache.redis_store import RedisStore
from fastproxy.server.redis import open_client
from tests.redis_cluster import RedisCluster as Cluster

JSON = [(b"content-type", b"application/json")]


def entry(body: bytes) -> Entry:
    return Entry(FORMAT, 1.0, 200, False, JSON, [body], (3, 0, 3, 0, 0))


async def written(store: RedisStore, n: int) -> None:
    for _ in range(200):
        if store.bytes_written >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {store.bytes_written} bytes written")


async def test_purges_reach_every_master(redis_cluster: Cluster, redis_prefix: str) -> None:
    client = open_client(redis_cluster.url, timeout=1.0, max_connections=4, retries=False)
    assert isinstance(client, RedisCluster)
    store = RedisStore(client, redis_prefix, timeout=1.0, retry_interval=0.2)
    store.start()
    try:
        keys: dict[tuple[str, str], list[CacheKey]] = {}
        for scope in ("user:a", "user:b"):
            for model in ("m1", "m2"):
                keys[scope, model] = [derive(scope, "embeddings", "r|0", model, b"%d" % i) for i in range(12)]
        every = [k for ks in keys.values() for k in ks]
        for k in every:
            store.put(k, entry(k.digest), ttl=60)
        await written(store, len(every) * len(entry(b"x" * 32).chunks[0]))
        nodes = [client.get_node_from_key(store.key(k)) for k in every]
        masters = {node.name for node in nodes if node is not None}
        assert len(masters) == 3  # the entries really live on every master
        assert await store.get(keys["user:a", "m1"][0]) == entry(keys["user:a", "m1"][0].digest)

        assert await store.purge(scope="user:a", model="m1") == 12
        assert await store.get(keys["user:a", "m1"][3]) is None
        assert await store.get(keys["user:a", "m2"][3]) is not None
        assert await store.purge(scope="user:a") == 12
        assert await store.purge(model="m2") == 12  # user:b's m2 entries
        assert await store.get(keys["user:b", "m1"][5]) is not None
        assert await store.purge() == 12
        assert all([await store.get(k) is None for k in every])
    finally:
        await store.stop()
        await client.aclose()
