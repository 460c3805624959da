"""The limiter's own Redis connection (fastproxy.server.wire) against a real Redis, and against a
server that never answers (the timeout path)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from fastproxy.ratelimit.buckets import Bucket
from fastproxy.ratelimit.core import StoreUnavailable
from fastproxy.ratelimit.redis_limiter import RedisStore, connect
from fastproxy.server.wire import ChannelError, ReplyError, ScriptChannel, pack_evalsha
from tests.own_redis import OwnRedis


@pytest.fixture
async def channel(redis_url: str) -> AsyncIterator[ScriptChannel]:
    client = connect(redis_url, 2.0)
    ch = ScriptChannel(client.connection_pool.connection_kwargs, 2.0)
    yield ch
    ch.close()
    await client.aclose()


async def test_concurrent_calls_get_their_own_replies(
    channel: ScriptChannel, redis_client: Redis, redis_prefix: str
) -> None:
    keys = [f"{redis_prefix}n{i}" for i in range(50)]
    replies = await asyncio.gather(*(channel.call("INCRBY", k, i) for i, k in enumerate(keys)))
    assert replies == list(range(50))
    assert await redis_client.mget(keys) == [str(i).encode() for i in range(50)]


async def test_error_reply_raises_and_the_connection_stays_usable(channel: ScriptChannel, redis_prefix: str) -> None:
    key = redis_prefix + "h"
    await channel.call("HSET", key, "f", "v")
    with pytest.raises(ReplyError, match="WRONGTYPE"):
        await channel.call("INCR", key)
    assert await channel.call("HGET", key, "f") == b"v"


async def test_connects_to_the_database_of_the_url() -> None:
    server = OwnRedis()
    server.start()
    try:
        client, db0 = connect(server.url + "/3", 2.0), connect(server.url + "/0", 2.0)
        ch = ScriptChannel(client.connection_pool.connection_kwargs, 2.0)
        await ch.call("SET", "where", "db3")
        assert await client.get("where") == b"db3"  # the redis-py client of the same URL: db 3
        assert await db0.get("where") is None
        ch.close()
        await client.aclose()
        await db0.aclose()
    finally:
        server.close()


async def test_authenticates_with_the_password_of_the_url() -> None:
    server = OwnRedis("--requirepass", "s3cret")
    server.start()
    base = f"127.0.0.1:{server.port}/2"
    good, bad = connect(f"redis://:s3cret@{base}", 2.0), connect(f"redis://:wrong@{base}", 2.0)
    channels = [ScriptChannel(c.connection_pool.connection_kwargs, 2.0) for c in (good, bad)]
    try:
        await channels[0].call("SET", "who", "me")
        assert await good.get("who") == b"me"  # AUTH, then SELECT 2: the same place as redis-py
        with pytest.raises(ChannelError, match="cannot connect"):
            await channels[1].call("GET", "who")
    finally:
        for ch in channels:
            ch.close()
        await good.aclose()
        await bad.aclose()
        server.close()


async def test_evalsha_loads_an_unknown_script(channel: ScriptChannel, redis_client: Redis) -> None:
    source = "return 'loaded-" + channel.__class__.__name__ + "'"
    sha = redis_client.register_script(source).sha
    await redis_client.script_flush()
    assert await channel.evalsha(pack_evalsha(sha, [], []), source) == b"loaded-ScriptChannel"


async def test_timeout_drops_the_connection_and_the_next_call_reconnects() -> None:
    answer = asyncio.Event()
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while await reader.read(4096):
            if answer.is_set():
                writer.write(b"+PONG\r\n")
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ch = ScriptChannel({"host": "127.0.0.1", "port": port}, 0.1)
    try:
        calls = [asyncio.ensure_future(ch.call("PING")) for _ in range(3)]
        for call in calls:  # every caller waiting on the silent connection hears of it, none hangs
            with pytest.raises(ChannelError, match="no reply"):
                await asyncio.wait_for(call, 5)
        answer.set()
        assert await asyncio.wait_for(ch.call("PING"), 5) == b"PONG"
        assert connections == 2
    finally:
        ch.close()
        server.close()
        await server.wait_closed()


async def test_nothing_listening_is_a_channel_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    ch = ScriptChannel({"host": "127.0.0.1", "port": port}, 1.0)
    with pytest.raises(ChannelError, match="cannot connect"):
        await ch.call("PING")


async def test_an_unexpected_script_reply_fails_its_waiters(redis_url: str, redis_prefix: str) -> None:
    store = RedisStore(connect(redis_url, 2.0), "return 1")  # not ratelimit.lua: one integer, not a list
    bucket = Bucket(key=redis_prefix + "b", name="test", tokens=False, capacity=5, period=60)
    try:
        with pytest.raises(StoreUnavailable, match="unexpected reply"):
            await asyncio.wait_for(store.take([bucket], [1]), 5)
    finally:
        await store.close()
