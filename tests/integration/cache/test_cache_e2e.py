"""The response cache end to end: real Granian proxies sharing PostgreSQL and Redis, a mock upstream of
their own (its request counter says whether the upstream was reached), the openai SDK as the client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.integration.servers import Server, start_mock, start_proxy

ADMIN_KEY = "admin-cache-secret-0019"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
EMBED_MODEL = "text-embedding-3-small"


@pytest.fixture
def upstream() -> Iterator[Server]:
    server = start_mock()
    yield server
    server.stop()


@pytest.fixture
def pair(
    upstream: Server, postgres_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> Iterator[list[Server]]:
    """Two instances sharing the key store and the cache's Redis."""
    env = {
        "FASTPROXY_AUTH": "keys",
        "FASTPROXY_DATABASE_URL": postgres_dsn,
        "FASTPROXY_REDIS_URL": redis_url,
        "FASTPROXY_REDIS_PREFIX": redis_prefix,
        "FASTPROXY_ADMIN_KEY": ADMIN_KEY,
        "FASTPROXY_CACHE": "true",
        "FASTPROXY_USAGE_FLUSH_INTERVAL": "0.1",
        "FASTPROXY_USAGE_JOURNAL_DIR": str(tmp_path / "journal"),
    }
    servers = [start_proxy(upstream.url + "/v1", **env) for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


async def upstream_requests(http: httpx.AsyncClient, upstream: Server) -> int:
    stats: dict[str, int] = (await http.get(upstream.url + "/_mock/stats")).json()
    return stats["requests"]


async def new_key(http: httpx.AsyncClient, server: Server, user_id: str) -> dict[str, Any]:
    resp = await http.post(server.url + "/admin/keys", json={"name": "k", "user_id": user_id}, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    created: dict[str, Any] = resp.json()
    return created


async def new_user(http: httpx.AsyncClient, server: Server) -> str:
    user_id: str = (await http.post(server.url + "/admin/users", json={"name": "u"}, headers=ADMIN)).json()["id"]
    return user_id


def sdk(server: Server, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


async def embed(client: openai.AsyncOpenAI, text: str, **headers: str) -> tuple[str, str | None, list[float]]:
    """(x-fastproxy-cache, Age, the vector) of one embeddings request."""
    raw = await client.embeddings.with_raw_response.create(model=EMBED_MODEL, input=text, extra_headers=headers)
    parsed = raw.parse()
    return raw.headers["x-fastproxy-cache"], raw.headers.get("age"), parsed.data[0].embedding


async def test_embeddings_hit_across_instances_scoped_per_user_with_usage_rows(
    pair: list[Server], upstream: Server, http: httpx.AsyncClient
) -> None:
    a, b = pair
    alice, bob = await new_user(http, a), await new_user(http, a)
    k1, k2, k3 = await new_key(http, a, alice), await new_key(http, a, alice), await new_key(http, a, bob)
    base = await upstream_requests(http, upstream)
    async with sdk(a, k1["key"]) as a1, sdk(b, k2["key"]) as b2, sdk(a, k3["key"]) as a3:
        first = await embed(a1, "the same text")
        assert first[0] == "miss" and await upstream_requests(http, upstream) == base + 1
        again = await embed(a1, "the same text")
        assert again[0] == "hit" and again[1] is not None and again[2] == first[2]
        assert await upstream_requests(http, upstream) == base + 1
        # Another key of the same user, on the other instance: the shared Redis answers.
        other_instance = await embed(b2, "the same text")
        assert other_instance[0] == "hit" and other_instance[2] == first[2]
        assert await upstream_requests(http, upstream) == base + 1
        # Another user: never the first user's entry.
        other_user = await embed(a3, "the same text")
        assert other_user[0] == "miss"
        assert await upstream_requests(http, upstream) == base + 2
    # The hit leaves a usage row: the original tokens, cost 0, the cost saved.
    deadline = time.monotonic() + 10
    rows: list[dict[str, Any]] = []
    while len(rows) < 2:
        assert time.monotonic() < deadline, f"usage rows missing: {rows}"
        await asyncio.sleep(0.2)
        resp = await http.get(a.url + f"/admin/usage?key_id={k1['id']}", headers=ADMIN)
        rows = resp.json()["data"]
    miss, hit = sorted(rows, key=lambda r: r["cache_hit"])
    assert (miss["cache_hit"], hit["cache_hit"]) == (False, True)
    assert miss["cost_usd"] > 0 and miss["cost_saved_usd"] == 0
    assert hit["cost_usd"] == 0 and hit["cost_saved_usd"] == pytest.approx(miss["cost_usd"])
    assert hit["prompt_tokens"] == miss["prompt_tokens"] > 0
    # Purge the first user's scope: the next request goes upstream again.
    purged = await http.delete(a.url + f"/admin/cache/users/{alice}", headers=ADMIN)
    assert purged.status_code == 200 and purged.json()["deleted"] == 1
    async with sdk(a, k1["key"]) as a1:
        assert (await embed(a1, "the same text"))[0] == "miss"
    assert await upstream_requests(http, upstream) == base + 3


async def test_cache_control_no_store_no_cache_and_max_age(
    pair: list[Server], upstream: Server, http: httpx.AsyncClient
) -> None:
    a = pair[0]
    key = await new_key(http, a, await new_user(http, a))
    async with sdk(a, key["key"]) as client:
        base = await upstream_requests(http, upstream)
        steps = [
            ({"Cache-Control": "no-store"}, "bypass", 1),  # neither read nor written
            ({}, "miss", 1),  # so this one goes upstream, and is stored
            ({}, "hit", 0),
            ({"Cache-Control": "no-store"}, "bypass", 1),  # not read either
            ({"Cache-Control": "no-cache"}, "miss", 1),  # not read; refreshes the entry
            ({}, "hit", 0),
            ({"Cache-Control": "max-age=3600"}, "hit", 0),
        ]
        for headers, outcome, upstream_calls in steps:
            got = (await embed(client, "cache-control text", **headers))[0]
            now = await upstream_requests(http, upstream)
            assert (got, now - base) == (outcome, upstream_calls), headers
            base = now
            await asyncio.sleep(0.05)  # the write queue reaches Redis
        await asyncio.sleep(1.1)
        assert (await embed(client, "cache-control text", **{"Cache-Control": "max-age=0"}))[0] == "miss"
        assert await upstream_requests(http, upstream) == base + 1


async def raw_stream(http: httpx.AsyncClient, server: Server, key: str, body: dict[str, Any]) -> tuple[str, bytes]:
    headers = {"Authorization": f"Bearer {key}"}
    async with http.stream("POST", server.url + "/v1/chat/completions", json=body, headers=headers) as resp:
        assert resp.status_code == 200
        data = b"".join([chunk async for chunk in resp.aiter_raw()])
        return resp.headers["x-fastproxy-cache"], data


async def test_a_cached_stream_replays_byte_identical_with_and_without_include_usage(
    pair: list[Server], upstream: Server, http: httpx.AsyncClient
) -> None:
    a, b = pair
    key = (await new_key(http, a, await new_user(http, a)))["key"]
    base = await upstream_requests(http, upstream)
    plain = {"model": "mock-model", "messages": [{"role": "user", "content": "Hi"}], "stream": True, "temperature": 0}
    with_usage = {**plain, "stream_options": {"include_usage": True}}
    for n, body in enumerate((plain, with_usage), start=1):
        outcome, original = await raw_stream(http, a, key, body)
        assert outcome == "miss" and await upstream_requests(http, upstream) == base + n
        await asyncio.sleep(0.05)
        for server in (a, b):
            outcome, replayed = await raw_stream(http, server, key, body)
            assert outcome == "hit" and replayed == original
        assert await upstream_requests(http, upstream) == base + n
        assert original.endswith(b"data: [DONE]\n\n")
        assert (b'"usage":{' in original) == (body is with_usage)
        assert (b'"usage":null' in original) == (body is with_usage)
    # The SDK reads a replayed stream as it reads a live one (its own body bytes: its own entry).
    texts = []
    async with sdk(b, key) as client:
        for _ in range(2):
            stream = await client.chat.completions.create(
                model="mock-model", messages=[{"role": "user", "content": "Hi"}], stream=True, temperature=0
            )
            texts.append("".join([c.choices[0].delta.content or "" async for c in stream if c.choices]))
            await asyncio.sleep(0.05)
    assert texts[0] == texts[1] and texts[0].startswith("The quick brown fox")
    assert await upstream_requests(http, upstream) == base + 3


async def test_a_non_deterministic_chat_is_never_cached_a_seeded_one_is(
    pair: list[Server], upstream: Server, http: httpx.AsyncClient
) -> None:
    a = pair[0]
    key = (await new_key(http, a, await new_user(http, a)))["key"]
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "Be creative"}]
    async with sdk(a, key) as client:
        base = await upstream_requests(http, upstream)
        for _ in range(3):
            raw = await client.chat.completions.with_raw_response.create(
                model="mock-model", messages=messages, temperature=0.7
            )
            assert raw.headers["x-fastproxy-cache"] == "bypass"
            await asyncio.sleep(0.05)
        assert await upstream_requests(http, upstream) == base + 3
        outcomes = []
        for _ in range(2):
            raw = await client.chat.completions.with_raw_response.create(
                model="mock-model", messages=messages, temperature=0.7, seed=7
            )
            outcomes.append(raw.headers["x-fastproxy-cache"])
            await asyncio.sleep(0.05)
        assert outcomes == ["miss", "hit"]
        assert await upstream_requests(http, upstream) == base + 4


async def test_fifty_concurrent_identical_requests_reach_upstream_once(
    pair: list[Server], upstream: Server, http: httpx.AsyncClient
) -> None:
    a = pair[0]
    key = (await new_key(http, a, await new_user(http, a)))["key"]
    base = await upstream_requests(http, upstream)
    async with sdk(a, key) as client:
        # The upstream takes 300 ms, so all 50 are in flight together (one worker).
        results = await asyncio.gather(
            *(embed(client, "fan-out text", **{"x-mock-sleep-ms": "300"}) for _ in range(50))
        )
    assert await upstream_requests(http, upstream) == base + 1
    assert sorted(r[0] for r in results).count("miss") == 1
    assert all(r[2] == results[0][2] for r in results)
    # Streams too: the followers get the leader's events as they arrive.
    body = {"model": "mock-model", "messages": [{"role": "user", "content": "fan"}], "stream": True, "seed": 1}

    async def one() -> tuple[str, bytes]:
        async with http.stream(
            "POST",
            a.url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}", "x-mock-delay-ms": "20"},
        ) as resp:
            return resp.headers["x-fastproxy-cache"], b"".join([c async for c in resp.aiter_raw()])

    streams = await asyncio.gather(*(one() for _ in range(20)))
    assert await upstream_requests(http, upstream) == base + 2
    assert [s[0] for s in streams].count("miss") == 1
    assert len({s[1] for s in streams}) == 1 and streams[0][1].endswith(b"data: [DONE]\n\n")


async def test_fifty_concurrent_identical_requests_over_two_instances_reach_upstream_once_per_instance(
    pair: list[Server], upstream: Server, http: httpx.AsyncClient
) -> None:
    """Cross-instance coalescing is not built (README, "Response cache"): the figure it would improve. Each
    instance coalesces its own share; a burst that arrives once the answer is stored is all hits."""
    a, b = pair
    key = (await new_key(http, a, await new_user(http, a)))["key"]
    base = await upstream_requests(http, upstream)
    async with sdk(a, key) as on_a, sdk(b, key) as on_b:
        results = await asyncio.gather(
            *(embed(on_a if i % 2 else on_b, "two-instance burst", **{"x-mock-sleep-ms": "300"}) for i in range(50))
        )
        calls = await upstream_requests(http, upstream) - base
        print(f"50 concurrent identical requests over two instances: {calls} upstream calls")
        assert calls == 2 and [r[0] for r in results].count("miss") == 2
        later = await asyncio.gather(*(embed(on_a if i % 2 else on_b, "two-instance burst") for i in range(50)))
    assert all(r[0] == "hit" for r in later) and await upstream_requests(http, upstream) - base == 2
    assert len({tuple(r[2]) for r in [*results, *later]}) == 1


async def test_errors_and_cut_streams_are_never_stored(
    pair: list[Server], upstream: Server, http: httpx.AsyncClient
) -> None:
    a = pair[0]
    key = (await new_key(http, a, await new_user(http, a)))["key"]
    async with sdk(a, key) as client:
        with pytest.raises(openai.InternalServerError):
            await embed(client, "flaky", **{"x-mock-status": "500"})
        await asyncio.sleep(0.05)
        assert (await embed(client, "flaky"))[0] == "miss"
    body = {"model": "mock-model", "messages": [{"role": "user", "content": "cut"}], "stream": True, "temperature": 0}
    headers = {"Authorization": f"Bearer {key}", "x-mock-delay-ms": "50"}
    async with http.stream("POST", a.url + "/v1/chat/completions", json=body, headers=headers) as resp:
        async for _ in resp.aiter_raw():
            break  # the client leaves after the first event
    await asyncio.sleep(0.3)
    outcome, data = await raw_stream(http, a, key, body)
    assert outcome == "miss" and data.endswith(b"data: [DONE]\n\n")


async def test_cache_settings_on_keys_through_the_admin_api(
    pair: list[Server], upstream: Server, http: httpx.AsyncClient
) -> None:
    a = pair[0]
    user = await new_user(http, a)
    shared = await new_key(http, a, user)
    resp = await http.post(
        a.url + "/admin/keys", json={"name": "own", "user_id": user, "cache": {"scope": "key"}}, headers=ADMIN
    )
    assert resp.status_code == 201 and resp.json()["cache"] == {"scope": "key"}
    own = resp.json()
    bad = await http.post(a.url + "/admin/keys", json={"name": "x", "cache": {"scope": "tenant"}}, headers=ADMIN)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    async with sdk(a, shared["key"]) as s, sdk(a, own["key"]) as o:
        assert (await embed(s, "per-key text"))[0] == "miss"
        await asyncio.sleep(0.05)
        # Same user, but this key's scope is its own: the user's entry is not its.
        assert (await embed(o, "per-key text"))[0] == "miss"
        await asyncio.sleep(0.05)
        assert (await embed(o, "per-key text"))[0] == "hit"
        patched = await http.patch(
            a.url + f"/admin/keys/{own['id']}", json={"cache": {"enabled": False}}, headers=ADMIN
        )
        assert patched.status_code == 200 and patched.json()["cache"] == {"enabled": False}
        base = await upstream_requests(http, upstream)
        deadline = time.monotonic() + 5
        while (await embed(o, "per-key text"))[0] != "bypass":  # the auth cache learns of the change
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert await upstream_requests(http, upstream) > base
