"""Redis stopped mid-run: every request is still answered (a bypass, counted), and the cache is used again
once Redis is back. Uses a redis-server of its own (tests/own_redis.py), never the shared one."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.integration.servers import Server, start_mock, start_proxy
from tests.own_redis import OwnRedis


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    server.start()
    yield server
    server.close()


@pytest.fixture
def upstream() -> Iterator[Server]:
    server = start_mock()
    yield server
    server.stop()


@pytest.fixture
def proxy(upstream: Server, own_redis: OwnRedis, redis_prefix: str) -> Iterator[Server]:
    server = start_proxy(
        upstream.url + "/v1",
        FASTPROXY_CACHE="true",
        FASTPROXY_CACHE_REDIS_URL=own_redis.url,
        FASTPROXY_REDIS_PREFIX=redis_prefix,
        FASTPROXY_REDIS_RETRY_INTERVAL="0.2",
    )
    yield server
    server.stop()


async def outcome(client: openai.AsyncOpenAI, text: str) -> str:
    raw = await client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=text)
    assert raw.http_response.status_code == 200 and raw.parse().data[0].embedding
    return raw.headers["x-fastproxy-cache"]


async def bypasses(http: httpx.AsyncClient, proxy: Server) -> float:
    text = (await http.get(proxy.url + "/metrics")).text
    m = re.search(r'fastproxy_cache_requests_total\{outcome="bypass",reason="unavailable"\} ([0-9.e+]+)', text)
    return float(m.group(1)) if m else 0.0


async def test_redis_stopped_mid_run_every_request_answered_then_cache_used_again(
    proxy: Server, own_redis: OwnRedis, http: httpx.AsyncClient
) -> None:
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="none", max_retries=0) as client:
        assert await outcome(client, "before") == "miss"
        await asyncio.sleep(0.05)
        assert await outcome(client, "before") == "hit"
        own_redis.stop()
        seen = [await outcome(client, f"during {i % 3}") for i in range(30)]
        assert seen == ["bypass"] * 30
        deadline = time.monotonic() + 5
        while await bypasses(http, proxy) < 1:
            assert time.monotonic() < deadline, "bypasses not counted"
            await asyncio.sleep(0.2)
        own_redis.start()  # empty: nothing was saved
        deadline = time.monotonic() + 5
        while (got := await outcome(client, "after")) != "hit":
            assert got in ("bypass", "miss")
            assert time.monotonic() < deadline, "the cache was not used again after Redis came back"
            await asyncio.sleep(0.1)
