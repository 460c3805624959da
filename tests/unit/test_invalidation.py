"""Pub/sub invalidation against real Redis: messages evict, and a lost subscription clears the cache."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from fastproxy.accounts.invalidation import Invalidator, Subscriber, channel_name
from tests.services import free_port, wait_for_port


class Cache:
    def __init__(self) -> None:
        self.events: list[str] = []

    def evict_key(self, key_id: str) -> None:
        self.events.append("key:" + key_id)

    def evict_user(self, user_id: str) -> None:
        self.events.append("user:" + user_id)

    def clear(self) -> None:
        self.events.append("clear")


async def until(predicate: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_messages_evict_on_every_subscriber(redis_url: str, redis_prefix: str) -> None:
    client = aioredis.from_url(redis_url)
    channel = channel_name(redis_prefix)
    caches = [Cache(), Cache()]
    subs = [Subscriber(c, client, channel) for c in caches]
    for s in subs:
        s.start()
    try:
        for s in subs:
            await asyncio.wait_for(s.subscribed.wait(), 5)
        local = Cache()
        await Invalidator(local, client, channel).key_changed("key_1")
        await Invalidator(None, client, channel).user_changed("user_2")
        assert local.events == ["key:key_1"]
        for c in caches:
            await until(lambda c=c: len(c.events) == 2)
            assert c.events == ["key:key_1", "user:user_2"]
    finally:
        for s in subs:
            await s.stop()
        await client.aclose()


@contextlib.contextmanager
def private_redis(port: int) -> Iterator[subprocess.Popen[bytes]]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary for a private instance")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for_port("127.0.0.1", port)
            yield proc
        finally:
            proc.terminate()
            proc.wait(10)


async def test_lost_subscription_clears_the_cache_when_rejoined() -> None:
    # A private Redis: this test stops it, which must never happen to the shared one.
    port = free_port()
    client = aioredis.from_url(f"redis://127.0.0.1:{port}/0")
    cache = Cache()
    sub = Subscriber(cache, client, channel_name("fptest:"))
    try:
        with private_redis(port):
            sub.start()
            await asyncio.wait_for(sub.subscribed.wait(), 5)
        await until(lambda: not sub.subscribed.is_set())
        assert cache.events == []
        with private_redis(port):
            await asyncio.wait_for(sub.subscribed.wait(), 15)
            assert cache.events == ["clear"]  # messages may have been missed while away
            await client.publish(channel_name("fptest:"), "key:key_9")
            await until(lambda: cache.events == ["clear", "key:key_9"])
    finally:
        await sub.stop()
        await client.aclose()
