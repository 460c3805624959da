"""Providers, routes and fallback end to end: a Granian proxy in front of two real mock providers, driven
by the `openai` SDK. Failures are chosen per request by the model name the route sends to the primary
(`mock-model~status=500`...: fastproxy/mock/modes.py); every mock counts what reached it.

Each scenario has its own provider names (same mocks), so one scenario's breakers never touch another's.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.integration.servers import Server, start_mock, start_proxy
from tests.services import free_port

pytestmark = pytest.mark.timeout(180)

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "Hello there"}]
MODEL = "mock-model"


@pytest.fixture(scope="module")
def mocks() -> Iterator[tuple[Server, Server]]:
    a, b = start_mock(MOCK_REJECT_KEYS="sk-bad-key-0000"), start_mock()
    yield a, b
    a.stop()
    b.stop()


def _config(a: Server, b: Server) -> tuple[dict[str, Any], dict[str, Any]]:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connections are refused
    providers: dict[str, Any] = {"b": {"base_url": b.url + "/v1", "api_key": "sk-b-key-1111"}}
    routes: dict[str, Any] = {}

    def scenario(name: str, primary: str, base_url: str | None = None, **provider: Any) -> None:
        providers["a_" + name] = {"base_url": base_url or a.url + "/v1", "api_key": "sk-a-key-2222", **provider}
        routes[name] = {"targets": [{"provider": "a_" + name, "model": primary}, {"provider": "b", "model": MODEL}]}

    scenario("refused", MODEL, base_url=dead)
    scenario("s500", MODEL + "~status=500")
    scenario("s503", MODEL + "~status=503")
    scenario("s529", MODEL + "~status=529")
    scenario("hang", MODEL + "~hang", first_token_timeout=1)
    scenario("slow", MODEL + "~first_token_ms=3000", first_token_timeout=1)
    scenario("ratelimited", MODEL + "~status=429,retry_after=2")
    scenario("context", MODEL + "~status=400,code=context_length_exceeded")
    routes["context"]["context_fallback"] = "b/" + MODEL
    routes["context"]["targets"] = routes["context"]["targets"][:1]
    scenario("client400", MODEL + "~status=400")
    scenario("cut_late", MODEL + "~cut_after=3")
    scenario("stall_late", MODEL + "~stall_after=3", stream_idle_timeout=1)
    scenario("error_late", MODEL + "~error_event_after=3")
    scenario("cut_early", MODEL + "~cut_after=0")
    scenario("error_early", MODEL + "~error_event_after=0")
    scenario("stall_early", MODEL + "~stall_after=0", first_token_timeout=1)
    scenario("breaker", MODEL + "~status=500")
    # 401 on one key: the key rests, the next key of the same provider serves.
    providers["keys401"] = {
        "base_url": a.url + "/v1",
        "api_keys": [{"key": "sk-bad-key-0000", "weight": 1000}, {"key": "sk-good-key-3333", "weight": 1}],
    }
    routes["keys401"] = {"targets": [{"provider": "keys401", "model": "k401-model"}]}
    providers["pool"] = {
        "base_url": a.url + "/v1",
        "api_keys": [{"key": "sk-pool-one-4444", "weight": 1}, {"key": "sk-pool-two-5555", "weight": 1}],
    }
    routes["pool"] = {"targets": [{"provider": "pool", "model": "pool-model"}]}
    providers["split_a"] = {"base_url": a.url + "/v1"}
    routes["split"] = {
        "targets": [
            {"provider": "split_a", "model": "split-model", "priority": 0, "weight": 3},
            {"provider": "b", "model": "split-model", "priority": 0, "weight": 1},
        ]
    }
    providers["down_a"] = {"base_url": a.url + "/v1"}
    providers["down_b"] = {"base_url": b.url + "/v1"}
    routes["alldown"] = {
        "targets": [
            {"provider": "down_a", "model": "storm-model~status=503"},
            {"provider": "down_b", "model": "storm-model~status=503"},
        ]
    }
    return providers, routes


@pytest.fixture(scope="module")
def routed(mocks: tuple[Server, Server], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    a, b = mocks
    providers, routes = _config(a, b)
    db = tmp_path_factory.mktemp("failover") / "usage.db"
    proxy = start_proxy(
        b.url + "/v1",
        FASTPROXY_PROVIDERS=json.dumps(providers),
        FASTPROXY_ROUTES=json.dumps(routes),
        FASTPROXY_DATABASE_URL=f"sqlite:///{db}",
        FASTPROXY_USAGE_FLUSH_INTERVAL="0.2",
        FASTPROXY_USAGE_JOURNAL_DIR=str(db.parent / "journal"),
        FASTPROXY_BREAKER_FAILURES="3",
        FASTPROXY_BREAKER_COOLDOWN="2",
        # The fleet retry budget has a test of its own (below); here every scenario may fail over.
        FASTPROXY_RETRY_BUDGET_MIN="10000",
    )
    yield proxy, db
    proxy.stop()


@pytest.fixture
async def client(routed: tuple[Server, Path]) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=routed[0].url + "/v1", api_key="x", max_retries=0) as sdk:
        yield sdk


async def _stats(http: httpx.AsyncClient, mock: Server) -> dict[str, Any]:
    stats: dict[str, Any] = (await http.get(mock.url + "/_mock/stats")).json()
    return stats


async def _count(http: httpx.AsyncClient, mock: Server, model: str) -> int:
    return int((await _stats(http, mock))["models"].get(model, 0))


async def _usage_row(db: Path, request_id: str) -> dict[str, Any]:
    for _ in range(50):
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM usage WHERE client_request_id = ?", (request_id,)).fetchone()
        if row is not None:
            return dict(row)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no usage row for {request_id}")


@pytest.mark.parametrize(
    ("route", "primary"),
    [
        ("refused", None),
        ("s500", MODEL + "~status=500"),
        ("s503", MODEL + "~status=503"),
        ("s529", MODEL + "~status=529"),
        ("hang", MODEL + "~hang"),
        ("slow", MODEL + "~first_token_ms=3000"),
        ("context", MODEL + "~status=400,code=context_length_exceeded"),
    ],
)
async def test_the_next_target_answers(
    route: str,
    primary: str | None,
    client: openai.AsyncOpenAI,
    mocks: tuple[Server, Server],
    routed: tuple[Server, Path],
    http: httpx.AsyncClient,
) -> None:
    a, b = mocks
    served_before = await _count(http, b, MODEL)
    resp = await client.chat.completions.create(
        model=route, messages=MESSAGES, extra_headers={"x-request-id": f"fo-{route}"}
    )
    assert resp.choices[0].message.content == "The quick brown fox jumps over the lazy dog."
    assert resp.model == MODEL  # the answering target's own model, passed through
    assert await _count(http, b, MODEL) == served_before + 1
    if primary is not None:
        assert await _count(http, a, primary) >= 1
    row = await _usage_row(routed[1], f"fo-{route}")
    assert (row["provider"], row["upstream_model"], row["attempts"], row["status"]) == ("b", MODEL, 2, 200)


async def test_streams_fall_back_before_their_first_delta_byte_for_byte(
    routed: tuple[Server, Path], mocks: tuple[Server, Server], http: httpx.AsyncClient
) -> None:
    a, b = mocks
    body = {"messages": MESSAGES, "stream": True}
    own = await http.post(b.url + "/v1/chat/completions", json={**body, "model": MODEL})
    for route, primary in (
        ("cut_early", "cut_after"),
        ("error_early", "error_event_after"),
        ("stall_early", "stall_after"),
    ):
        resp = await http.post(routed[0].url + "/v1/chat/completions", json={**body, "model": route})
        assert resp.status_code == 200
        assert resp.content == own.content, route
        assert await _count(http, a, f"{MODEL}~{primary}=0") == 1
    assert own.content.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("route", ["cut_late", "stall_late", "error_late"])
async def test_a_stream_broken_after_its_first_delta_ends_with_an_error_event(
    route: str, routed: tuple[Server, Path], mocks: tuple[Server, Server], http: httpx.AsyncClient
) -> None:
    _, b = mocks
    served_before = await _count(http, b, MODEL)
    request_id = f"late-{route}"
    resp = await http.post(
        routed[0].url + "/v1/chat/completions",
        json={"model": route, "messages": MESSAGES, "stream": True},
        headers={"x-request-id": request_id},
    )
    events = [e for e in resp.content.split(b"\n\n") if e]
    assert resp.status_code == 200
    assert b"[DONE]" not in resp.content
    contents = [json.loads(e[6:]) for e in events]
    assert sum(1 for c in contents if c.get("choices") and c["choices"][0]["delta"].get("content")) == 3
    if route != "error_late":
        error = contents[-1]["error"]
        assert error["type"] == "server_error" and error["code"] in ("upstream_stream_cut", "upstream_stream_idle")
    else:
        assert "error" in contents[-1]  # the upstream's own error event, forwarded
    assert await _count(http, b, MODEL) == served_before  # never switched after the commit
    row = await _usage_row(routed[1], request_id)
    assert row["attempts"] == 1
    if route != "error_late":
        assert row["partial"] == 1 and row["error"] in ("upstream_stream_cut", "upstream_stream_idle")


async def test_a_stream_without_include_usage_still_gets_it_stripped(
    routed: tuple[Server, Path], mocks: tuple[Server, Server], http: httpx.AsyncClient
) -> None:
    _, b = mocks
    body = {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    own = await http.post(b.url + "/v1/chat/completions", json={**body, "model": MODEL})
    resp = await http.post(routed[0].url + "/v1/chat/completions", json={**body, "model": "cut_early"})
    assert resp.content == own.content
    assert b'"usage":{' in resp.content


async def test_a_client_error_is_returned_unchanged_after_one_attempt(
    client: openai.AsyncOpenAI, mocks: tuple[Server, Server], http: httpx.AsyncClient
) -> None:
    a, b = mocks
    served_before = await _count(http, b, MODEL)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="client400", messages=MESSAGES)
    assert caught.value.status_code == 400
    assert await _count(http, a, MODEL + "~status=400") == 1
    assert await _count(http, b, MODEL) == served_before


async def test_429_rests_the_key_for_its_retry_after(
    client: openai.AsyncOpenAI, mocks: tuple[Server, Server], http: httpx.AsyncClient
) -> None:
    a, _ = mocks
    limited = MODEL + "~status=429,retry_after=2"
    for _ in range(3):
        resp = await client.chat.completions.create(model="ratelimited", messages=MESSAGES)
        assert resp.choices[0].finish_reason == "stop"
    assert await _count(http, a, limited) == 1  # the key rested: the next two went straight to b
    await asyncio.sleep(2.2)
    await client.chat.completions.create(model="ratelimited", messages=MESSAGES)
    assert await _count(http, a, limited) == 2


async def test_401_on_one_key_the_next_key_serves(
    client: openai.AsyncOpenAI, mocks: tuple[Server, Server], http: httpx.AsyncClient
) -> None:
    a, _ = mocks
    # Counted from here: /v1/models' catalog lists each provider's models with its first key at startup.
    before = (await _stats(http, a))["auth"]
    for _ in range(5):
        await client.chat.completions.create(model="keys401", messages=MESSAGES)
    auth = (await _stats(http, a))["auth"]
    bad, good = "Bearer sk-bad-key-0000", "Bearer sk-good-key-3333"
    assert auth.get(bad, 0) - before.get(bad, 0) == 1  # refused once, then resting
    assert auth.get(good, 0) - before.get(good, 0) == 5


async def test_a_key_pool_shares_the_traffic(
    mocks: tuple[Server, Server], routed: tuple[Server, Path], http: httpx.AsyncClient
) -> None:
    a, _ = mocks
    before = (await _stats(http, a))["auth"]
    for _ in range(60):
        resp = await http.post(routed[0].url + "/v1/chat/completions", json={"model": "pool", "messages": MESSAGES})
        assert resp.status_code == 200
    after = (await _stats(http, a))["auth"]
    one = after.get("Bearer sk-pool-one-4444", 0) - before.get("Bearer sk-pool-one-4444", 0)
    two = after.get("Bearer sk-pool-two-5555", 0) - before.get("Bearer sk-pool-two-5555", 0)
    assert one + two == 60 and one >= 10 and two >= 10


async def test_weighted_split_within_five_percent(
    mocks: tuple[Server, Server], routed: tuple[Server, Path], http: httpx.AsyncClient
) -> None:
    a, b = mocks
    body = {"model": "split", "input": "x"}
    sem = asyncio.Semaphore(8)

    async def one() -> None:
        async with sem:
            assert (await http.post(routed[0].url + "/v1/embeddings", json=body)).status_code == 200

    await asyncio.gather(*(one() for _ in range(2000)))
    to_a, to_b = await _count(http, a, "split-model"), await _count(http, b, "split-model")
    assert to_a + to_b == 2000
    assert abs(to_a / 2000 - 0.75) <= 0.05, (to_a, to_b)


async def test_breaker_keeps_a_dead_target_out_during_its_cooldown(
    mocks: tuple[Server, Server], routed: tuple[Server, Path], http: httpx.AsyncClient
) -> None:
    a, _ = mocks
    dead = MODEL + "~status=500"
    base = await _count(http, a, dead)
    url = routed[0].url + "/v1/chat/completions"
    for _ in range(10):
        assert (await http.post(url, json={"model": "breaker", "messages": MESSAGES})).status_code == 200
    assert await _count(http, a, dead) - base == 3  # opened after 3 failures: 0 requests since
    await asyncio.sleep(2.2)  # cooldown over: one probe, which fails and reopens it (4 s now)
    for _ in range(10):
        assert (await http.post(url, json={"model": "breaker", "messages": MESSAGES})).status_code == 200
    assert await _count(http, a, dead) - base == 4


async def test_every_target_down_stays_within_the_budgets(
    mocks: tuple[Server, Server], http: httpx.AsyncClient
) -> None:
    a, b = mocks
    providers, routes = _config(a, b)
    proxy = start_proxy(
        b.url + "/v1",
        FASTPROXY_PROVIDERS=json.dumps(providers),
        FASTPROXY_ROUTES=json.dumps(routes),
        FASTPROXY_RETRY_BUDGET_MIN="5",
        # The retry budget alone holds the line here: no breaker opens (neither rule can trigger).
        FASTPROXY_BREAKER_FAILURES="1000",
        FASTPROXY_BREAKER_MIN_REQUESTS="1000",
    )
    failing = "storm-model~status=503"
    requests = 100
    try:
        before = await _count(http, a, failing) + await _count(http, b, failing)
        for _ in range(requests):
            resp = await http.post(proxy.url + "/v1/chat/completions", json={"model": "alldown", "messages": MESSAGES})
            assert resp.status_code == 503
            assert resp.json()["error"]["type"] == "server_error"
        attempts = await _count(http, a, failing) + await _count(http, b, failing) - before
    finally:
        proxy.stop()
    # A retry storm would be 3 attempts per request (max_attempts); the worker's retry budget allows
    # retries of 20 % of its requests over 10 s, plus 5.
    assert requests < attempts <= requests * 1.2 + 5, attempts


async def test_a_breaker_opened_by_one_instance_keeps_the_other_off_and_one_probe_crosses(
    mocks: tuple[Server, Server], http: httpx.AsyncClient, redis_url: str, redis_prefix: str
) -> None:
    a, b = mocks
    dead = "shared-model~status=500"
    providers = {"shared_a": {"base_url": a.url + "/v1"}, "b": {"base_url": b.url + "/v1"}}
    routes = {"shared": {"targets": [{"provider": "shared_a", "model": dead}, {"provider": "b", "model": MODEL}]}}
    env = {
        "FASTPROXY_PROVIDERS": json.dumps(providers),
        "FASTPROXY_ROUTES": json.dumps(routes),
        "FASTPROXY_REDIS_URL": redis_url,
        "FASTPROXY_REDIS_PREFIX": redis_prefix,
        "FASTPROXY_BREAKER_FAILURES": "3",
        "FASTPROXY_BREAKER_COOLDOWN": "3",
        "FASTPROXY_RETRY_BUDGET_MIN": "10000",
    }
    first, second = start_proxy(b.url + "/v1", **env), start_proxy(b.url + "/v1", **env)
    body = {"model": "shared", "messages": MESSAGES}
    try:
        base = await _count(http, a, dead)
        for _ in range(3):  # A's breaker opens
            assert (await http.post(first.url + "/v1/chat/completions", json=body)).status_code == 200
        assert await _count(http, a, dead) - base == 3
        await asyncio.sleep(1.0)  # within a second, B has heard of it
        for _ in range(10):
            assert (await http.post(second.url + "/v1/chat/completions", json=body)).status_code == 200
        assert await _count(http, a, dead) - base == 3  # B never sent it to the dead target
        await asyncio.sleep(2.5)  # both breakers' cooldowns are over: one probe in all

        async def burst(server: Server) -> None:
            for _ in range(5):
                assert (await http.post(server.url + "/v1/chat/completions", json=body)).status_code == 200

        await asyncio.gather(burst(first), burst(second))
        assert await _count(http, a, dead) - base == 4
    finally:
        first.stop()
        second.stop()


async def test_models_lists_routes_and_provider_models_and_skips_a_dead_provider(client: openai.AsyncOpenAI) -> None:
    ids = [m.id async for m in client.models.list()]
    assert {"s500", "cut_late", "split"} <= set(ids)  # the routes
    assert "mock-model" in ids  # the default provider's own models keep their ids
    assert "b/mock-model" in ids and "a_s500/mock-model" in ids
    assert not any(i.startswith("a_refused/") for i in ids)  # nothing listens there: left out, list intact
    assert (await client.models.retrieve("b/gpt-4o-mini")).owned_by == "b"
    assert (await client.models.retrieve("s500")).owned_by == "fastproxy"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")
