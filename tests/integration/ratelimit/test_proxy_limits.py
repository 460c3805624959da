"""Rate limits end to end: fastproxy under Granian, real Redis, the mock provider, httpx and the openai SDK."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import openai
import pytest

from fastproxy.core.schemas import ANONYMOUS, Limits
from fastproxy.ratelimit.buckets import Planner
from fastproxy.ratelimit.redis_limiter import RedisLimiter, connect
from tests.integration.servers import Server, start_proxy
from tests.own_redis import OwnRedis
from tests.services import free_port

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "Hello"}]}
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")


class Proxies:
    def __init__(self) -> None:
        self.started: list[Server] = []

    def __call__(self, upstream: Server | str, **env: str) -> Server:
        url = upstream if isinstance(upstream, str) else upstream.url + "/v1"
        server = start_proxy(url, FASTPROXY_ACCESS_LOG="false", **env)
        self.started.append(server)
        return server


@pytest.fixture
def proxies() -> Iterator[Proxies]:
    made = Proxies()
    yield made
    for server in made.started:
        server.stop()


def redis_env(url: str, prefix: str, **limits: str) -> dict[str, str]:
    # A generous timeout: these tests are about exactness, and a loaded CI machine must not fail over.
    return {"FASTPROXY_REDIS_URL": url, "FASTPROXY_REDIS_PREFIX": prefix, "FASTPROXY_REDIS_TIMEOUT": "2", **limits}


async def fire(
    http: httpx.AsyncClient, servers: list[Server], m: int, headers: dict[str, str] | None = None
) -> Counter[int]:
    calls = [
        http.post(servers[i % len(servers)].url + "/v1/chat/completions", json=CHAT, headers=headers) for i in range(m)
    ]
    return Counter(r.status_code for r in await asyncio.gather(*calls))


async def test_exactly_n_of_m_through_the_proxy(
    proxies: Proxies,
    mock_upstream: Server,
    http: httpx.AsyncClient,
    redis_url: str,
    redis_prefix: str,
    redis_client: Any,
) -> None:
    proxy = proxies(mock_upstream, **redis_env(redis_url, redis_prefix, FASTPROXY_GLOBAL_LIMITS='{"rpm": 7}'))
    assert await fire(http, [proxy], 25) == {200: 7, 429: 18}
    assert "Redis unavailable" not in proxy.log()


async def test_three_proxies_share_one_redis(
    proxies: Proxies,
    mock_upstream: Server,
    http: httpx.AsyncClient,
    redis_url: str,
    redis_prefix: str,
    redis_client: Any,
) -> None:
    env = redis_env(redis_url, redis_prefix, FASTPROXY_IP_LIMITS='{"rpm": 10}')
    servers = [proxies(mock_upstream, **env) for _ in range(3)]
    assert await fire(http, servers, 45) == {200: 10, 429: 35}
    # Each instance alone would have let 10 through: the limit is global, not per replica.
    assert all("Redis unavailable" not in s.log() for s in servers)


async def test_embedded_limiter_without_redis(proxies: Proxies, mock_upstream: Server, http: httpx.AsyncClient) -> None:
    proxy = proxies(mock_upstream, FASTPROXY_IP_LIMITS='{"rpm": 4}')
    assert await fire(http, [proxy], 12) == {200: 4, 429: 8}


async def test_429_and_headers_through_the_openai_sdk(
    proxies: Proxies, mock_upstream: Server, redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    env = redis_env(redis_url, redis_prefix, FASTPROXY_GLOBAL_LIMITS='{"rpm": 2, "tpm": 100000}')
    proxy = proxies(mock_upstream, **env)
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-fp-client", max_retries=0) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(model="mock-model", messages=[CHAT["messages"][0]])  # type: ignore[list-item]
        h = raw.headers
        assert h["x-ratelimit-limit-requests"] == "2" and h["x-ratelimit-remaining-requests"] == "1"
        assert h["x-ratelimit-limit-tokens"] == "100000"
        # The reservation: the prompt's bytes / 4 plus default_max_tokens (1024).
        assert 100_000 - 1024 - 100 < int(h["x-ratelimit-remaining-tokens"]) <= 100_000 - 1024
        assert GO_DURATION.match(h["x-ratelimit-reset-requests"]) and GO_DURATION.match(h["x-ratelimit-reset-tokens"])
        assert raw.parse().choices[0].message.content

        await sdk.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": "Hi"}])
        with pytest.raises(openai.RateLimitError) as info:
            await sdk.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": "Hi"}])
        err = info.value
        assert err.status_code == 429 and err.code == "rate_limit_exceeded" and err.type == "requests"
        assert "requests per minute for all clients (global)" in err.message
        assert 1 <= int(err.response.headers["retry-after"]) <= 30
        assert int(err.response.headers["retry-after-ms"]) <= 30_000
        assert err.response.headers["x-request-id"]
        assert err.response.headers["x-ratelimit-limit-requests"] == "2"
        assert err.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert GO_DURATION.match(err.response.headers["x-ratelimit-reset-requests"])

        with pytest.raises(openai.RateLimitError) as info:
            await sdk.chat.completions.create(
                model="mock-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=200_000
            )
        assert info.value.type == "tokens" and "Request too large for tokens per minute" in info.value.message


def _sse_usage(text: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for line in text.splitlines():
        if line.startswith("data: {"):
            doc = msgspec.json.decode(line[6:])
            usage = doc.get("usage") or (doc.get("response") or {}).get("usage")
            if usage:
                found = usage
    return found


async def test_reconciliation_leaves_exactly_the_real_usage(
    proxies: Proxies,
    mock_upstream: Server,
    http: httpx.AsyncClient,
    redis_url: str,
    redis_prefix: str,
    redis_client: Any,
) -> None:
    quota = 1_000_000
    limits = f'{{"max_tokens_total": {quota}}}'
    proxy = proxies(mock_upstream, **redis_env(redis_url, redis_prefix, FASTPROXY_GLOBAL_LIMITS=limits))
    chat_stream = {**CHAT, "stream": True}
    cases: list[tuple[str, dict[str, Any], int]] = [
        ("/v1/chat/completions", CHAT, 3),
        ("/v1/chat/completions", {**chat_stream, "stream_options": {"include_usage": True}}, 5),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 50}, 8),
        ("/v1/completions", {"model": "mock-model", "prompt": "Say hi", "stream": True}, 4),
        ("/v1/responses", {"model": "mock-model", "input": "Hello"}, 6),
        ("/v1/responses", {"model": "mock-model", "input": "Hello there", "stream": True}, 2),
        ("/v1/chat/completions", {**CHAT, "n": 2}, 11),
    ]
    used = 0
    for path, body, chunks in cases:
        resp = await http.post(proxy.url + path, json=body, headers={"x-mock-chunks": str(chunks)})
        assert resp.status_code == 200, resp.text
        usage = _sse_usage(resp.text) if body.get("stream") else resp.json()["usage"]
        if not usage:
            # The proxy asked for usage on the client's behalf and stripped it: ask the mock directly.
            direct = await http.post(
                mock_upstream.url + path, json={**body, "stream": False}, headers={"x-mock-chunks": str(chunks)}
            )
            usage = direct.json()["usage"]
        assert usage["total_tokens"] > 0
        used += usage["total_tokens"]

    checker = RedisLimiter(Planner(redis_prefix, Limits(max_tokens_total=quota), None), connect(redis_url, 2.0))
    try:
        remaining = -1.0
        for _ in range(100):  # settle runs just after the last byte is sent: give it a moment
            (level,) = await checker.levels(ANONYMOUS)
            remaining = level.remaining
            if remaining == quota - used:
                break
            await asyncio.sleep(0.05)
        assert remaining == quota - used
    finally:
        await checker.close()


async def test_failed_requests_give_their_reservation_back(
    proxies: Proxies,
    mock_upstream: Server,
    http: httpx.AsyncClient,
    redis_url: str,
    redis_prefix: str,
    redis_client: Any,
) -> None:
    quota = 50_000
    limits = f'{{"max_tokens_total": {quota}}}'
    env = redis_env(redis_url, redis_prefix, FASTPROXY_GLOBAL_LIMITS=limits)
    proxy = proxies(mock_upstream, **env)
    for status in ("400", "429", "500"):
        resp = await http.post(proxy.url + "/v1/chat/completions", json=CHAT, headers={"x-mock-status": status})
        assert resp.status_code == int(status)
    nowhere = proxies(f"http://127.0.0.1:{free_port()}/v1", **env)
    resp = await http.post(nowhere.url + "/v1/chat/completions", json=CHAT)
    assert resp.status_code == 502
    ok = await http.post(proxy.url + "/v1/chat/completions", json=CHAT)
    expected = quota - ok.json()["usage"]["total_tokens"]
    checker = RedisLimiter(Planner(redis_prefix, Limits(max_tokens_total=quota), None), connect(redis_url, 2.0))
    try:
        remaining = -1.0
        for _ in range(100):
            (level,) = await checker.levels(ANONYMOUS)
            remaining = level.remaining
            if remaining == expected:
                break
            await asyncio.sleep(0.05)
        # Four reservations of ~1030 tokens each were given back; the one success cost its real usage.
        assert remaining == expected
    finally:
        await checker.close()


async def test_shutdown_drains_pending_reconciliations(
    proxies: Proxies,
    mock_upstream: Server,
    http: httpx.AsyncClient,
    redis_url: str,
    redis_prefix: str,
    redis_client: Any,
) -> None:
    quota = 100_000
    env = redis_env(redis_url, redis_prefix, FASTPROXY_GLOBAL_LIMITS=f'{{"max_tokens_total": {quota}}}')
    # Reconciliations wait a minute: only the flush at shutdown can deliver them in this test.
    proxy = proxies(mock_upstream, FASTPROXY_RATELIMIT_SETTLE_INTERVAL="60", **env)
    used = 0
    for chunks in (1, 2, 3):
        resp = await http.post(proxy.url + "/v1/chat/completions", json=CHAT, headers={"x-mock-chunks": str(chunks)})
        used += resp.json()["usage"]["total_tokens"]
    checker = RedisLimiter(Planner(redis_prefix, Limits(max_tokens_total=quota), None), connect(redis_url, 2.0))
    try:
        (level,) = await checker.levels(ANONYMOUS)
        assert level.remaining < quota - used  # the reservations (~1030 tokens each) are still held
        proxy.stop()
        (level,) = await checker.levels(ANONYMOUS)
        assert level.remaining == quota - used
    finally:
        await checker.close()


async def test_streamed_responses_carry_the_headers(
    proxies: Proxies, mock_upstream: Server, http: httpx.AsyncClient
) -> None:
    proxy = proxies(mock_upstream, FASTPROXY_GLOBAL_LIMITS='{"rpm": 50, "tpd": 1000000}')
    async with http.stream("POST", proxy.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
        body = b"".join([chunk async for chunk in resp.aiter_bytes()])
    assert resp.status_code == 200 and body.endswith(b"data: [DONE]\n\n")
    assert resp.headers["x-ratelimit-limit-requests"] == "50"
    assert resp.headers["x-ratelimit-remaining-requests"] == "49"
    assert resp.headers["x-ratelimit-limit-tokens"] == "1000000"


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
async def test_redis_restart_mid_run(
    proxies: Proxies, mock_upstream: Server, http: httpx.AsyncClient, own_redis: OwnRedis, policy: str
) -> None:
    env = {
        "FASTPROXY_REDIS_URL": own_redis.url,
        # Generous for this loaded machine: a stopped server refuses connections at once anyway.
        "FASTPROXY_REDIS_TIMEOUT": "0.5",
        "FASTPROXY_REDIS_RETRY_INTERVAL": "0.2",
        "FASTPROXY_RATELIMIT_FAILURE": policy,
        "FASTPROXY_GLOBAL_LIMITS": '{"rpd": 100000}',
        "FASTPROXY_REDIS_PREFIX": "restart:",
    }
    proxy = proxies(mock_upstream, **env)
    statuses: Counter[int] = Counter()
    assert await fire(http, [proxy], 10) == {200: 10}
    own_redis.stop()
    down = await fire(http, [proxy], 20)
    own_redis.start()
    await asyncio.sleep(0.5)
    after = await fire(http, [proxy], 10)
    statuses = down + after
    assert after == {200: 10}, proxy.log()
    assert down == ({200: 20} if policy == "fail_open" else {503: 20}), proxy.log()
    assert 500 not in statuses
    log = proxy.log()
    assert log.count("Redis unavailable for rate limits") == 1 and "Redis is back" in log
    outcome = "allowed" if policy == "fail_open" else "rejected"
    exposition = (await http.get(proxy.url + "/metrics")).text
    assert f'fastproxy_limiter_fallbacks_total{{outcome="{outcome}"}} 20.0' in exposition, exposition
    # Back on Redis: the restarted server holds the global bucket again.
    probe = connect(own_redis.url, 2.0)
    try:
        assert await probe.exists("restart:{fp:global}:rl1:rpd") == 1
    finally:
        await probe.aclose()
