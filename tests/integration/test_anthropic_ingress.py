"""Anthropic SDK clients on fastproxy, end to end: `POST /v1/messages` and `/v1/messages/count_tokens` under
Granian, driven by the official `anthropic` SDK, in front of the mock provider speaking both dialects.

- an OpenAI-compatible provider (the mock's chat completions): the request translated, the answer and its stream
  translated back; the SDK's final message equals what the upstream produced (asked directly, same request);
- an `anthropic` provider (the mock's Messages API): byte for byte, streamed or not;
- keys in `x-api-key` or `Authorization: Bearer`, limits, budgets, usage rows, fallback across dialects, and every
  error in Anthropic's format.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.integration.servers import Server, start_mock, start_proxy

pytestmark = pytest.mark.timeout(120)

ADMIN_KEY = "admin-anthropic-ingress-0001"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
WEATHER: Any = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIME: Any = {"name": "get_time", "description": "Local time", "input_schema": {"type": "object", "properties": {}}}
HELLO: Any = [{"role": "user", "content": "Hello there"}]
VERSION = {"anthropic-version": "2023-06-01"}


class Env:
    def __init__(self, mock: Server, proxy: Server, db: Path, keys: dict[str, str]) -> None:
        self.mock, self.proxy, self.db, self.keys = mock, proxy, db, keys

    def client(self, key: str = "plain", **kw: Any) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.proxy.url, api_key=self.keys[key], max_retries=0, **kw)


@pytest.fixture(scope="module")
def mock() -> Iterator[Server]:
    server = start_mock()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def env(mock: Server, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("anth-in")
    db = tmp / "usage.db"
    providers = {"claude": {"type": "anthropic", "base_url": mock.url, "api_key": "sk-ant-upstream-7777"}}
    routes = {
        "claude-sonnet": {"targets": [{"provider": "claude", "model": "claude-mock"}]},
        # The primary fails before answering; the other dialect's target serves, once.
        "oai-then-claude": {
            "targets": [
                {"provider": "default", "model": "mock-model~status=500"},
                {"provider": "claude", "model": "claude-mock"},
            ]
        },
        "claude-then-oai": {
            "targets": [
                {"provider": "claude", "model": "claude-mock~status=529"},
                {"provider": "default", "model": "mock-model"},
            ]
        },
        "malformed": {"targets": [{"provider": "default", "model": "mock-model~malformed_after=3"}]},
        "midstream": {"targets": [{"provider": "default", "model": "mock-model~error_event_after=3"}]},
        "cached": {"targets": [{"provider": "default", "model": "mock-model~cache_read=100"}]},
        "claude-malformed": {"targets": [{"provider": "claude", "model": "claude-mock~malformed_after=2"}]},
    }
    proxy = start_proxy(
        mock.url + "/v1",
        FASTPROXY_AUTH="keys",
        FASTPROXY_DATABASE_URL=f"sqlite:///{db}",
        FASTPROXY_ADMIN_KEY=ADMIN_KEY,
        FASTPROXY_USAGE_JOURNAL_DIR=str(tmp),
        FASTPROXY_USAGE_FLUSH_INTERVAL="0.1",
        FASTPROXY_MAX_BODY_BYTES="200000",
        FASTPROXY_PROVIDERS=json.dumps(providers),
        FASTPROXY_ROUTES=json.dumps(routes),
    )
    keys: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=30) as http:
        for name, limits in (("plain", {}), ("tpm", {"tpm": 50}), ("budget", {"max_budget_usd": 1e-9})):
            made = await http.post(proxy.url + "/admin/keys", json={"name": name, "limits": limits}, headers=ADMIN)
            assert made.status_code in (200, 201), made.text
            keys[name] = made.json()["key"]
    yield Env(mock, proxy, db, keys)
    proxy.stop()


async def _direct_chat(env: Env, **request: Any) -> openai.types.chat.ChatCompletion:
    """What the OpenAI-compatible upstream itself answers to a chat request."""
    async with openai.AsyncOpenAI(base_url=env.mock.url + "/v1", api_key="x", max_retries=0) as sdk:
        answer: openai.types.chat.ChatCompletion = await sdk.chat.completions.create(**request)
        return answer


async def _usage_row(env: Env, request_id: str) -> dict[str, Any]:
    """The usage row of a request (rows are written in batches: wait for it, bounded)."""
    for _ in range(100):
        with sqlite3.connect(env.db) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM usage WHERE request_id = ?", (request_id,)).fetchone()
        if row is not None:
            return dict(row)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no usage row for {request_id}")


# --- an OpenAI-compatible provider ----------------------------------------------------------------------


async def test_create_text_translated(env: Env) -> None:
    direct = await _direct_chat(env, model="mock-model", messages=HELLO, max_tokens=100)
    async with env.client() as client:
        raw = await client.messages.with_raw_response.create(model="mock-model", max_tokens=100, messages=HELLO)
    message = await raw.parse()
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == direct.choices[0].message.content  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.model == "mock-model"
    assert direct.usage is not None
    assert message.usage.input_tokens == direct.usage.prompt_tokens
    assert message.usage.output_tokens == direct.usage.completion_tokens
    row = await _usage_row(env, raw.headers["x-request-id"])
    assert (row["endpoint"], row["provider"], row["upstream_model"], row["status"]) == (
        "messages",
        "openai",  # the default provider's name in usage rows (FASTPROXY_PROVIDER_NAME)
        "mock-model",
        200,
    )
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        direct.usage.prompt_tokens,
        direct.usage.completion_tokens,
    )


@pytest.mark.parametrize("streamed", [False, True])
async def test_tool_use_translated_equals_the_upstream_answer(env: Env, streamed: bool) -> None:
    tools = [
        {"type": "function", "function": {"name": t["name"], "parameters": t["input_schema"]}} for t in (WEATHER, TIME)
    ]
    direct = await _direct_chat(env, model="mock-model", messages=HELLO, max_tokens=100, tools=tools)
    message: anthropic.types.Message
    async with env.client() as client:
        if streamed:
            async with client.messages.stream(
                model="mock-model", max_tokens=100, messages=HELLO, tools=[WEATHER, TIME]
            ) as s:
                message = await s.get_final_message()
        else:
            message = await client.messages.create(
                model="mock-model", max_tokens=100, messages=HELLO, tools=[WEATHER, TIME]
            )
    upstream = direct.choices[0].message
    assert upstream.tool_calls is not None and len(upstream.tool_calls) == 2
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[0].text == upstream.content  # type: ignore[union-attr]
    got = [(b.id, b.name, b.input) for b in message.content if b.type == "tool_use"]
    expected = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in upstream.tool_calls]  # type: ignore[union-attr]
    assert got == expected
    assert direct.usage is not None and message.usage.output_tokens == direct.usage.completion_tokens
    assert message.usage.input_tokens == direct.usage.prompt_tokens

    # The tool results fed back: the upstream sees them as tool messages and says how many it got.
    follow = [
        *HELLO,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": i, "content": "ok"} for i, _, _ in got]},
    ]
    async with env.client() as client:
        answer = await client.messages.create(
            model="mock-model", max_tokens=100, messages=follow, tools=[WEATHER, TIME]
        )
    assert answer.content[0].text == "Got 2 tool results."  # type: ignore[union-attr]
    assert answer.stop_reason == "end_turn"


async def test_stream_text_translated_message_start_has_input_tokens(env: Env) -> None:
    async with env.client() as client, client.messages.stream(model="mock-model", max_tokens=100, messages=HELLO) as s:
        events = [e async for e in s]
        final = await s.get_final_message()
    start = next(e for e in events if e.type == "message_start")
    assert start.message.usage.input_tokens > 0  # the proxy's estimate until the upstream's count arrives
    direct = await _direct_chat(env, model="mock-model", messages=HELLO, max_tokens=100)
    assert direct.usage is not None
    assert final.content[0].text == direct.choices[0].message.content  # type: ignore[union-attr]
    assert final.usage.input_tokens == direct.usage.prompt_tokens  # message_delta's exact count won
    assert [e.type for e in events][-1] == "message_stop"


async def test_image_stop_sequence_length_and_cached_tokens(env: Env) -> None:
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    image: Any = [
        {
            "role": "user",
            "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
                {"type": "text", "text": "What is this?"},
            ],
        }
    ]
    async with env.client() as client:
        seen = await client.messages.create(model="mock-model", max_tokens=100, messages=image)
        assert seen.stop_reason == "end_turn"
        async with httpx.AsyncClient() as http:
            last = (await http.get(env.mock.url + "/_mock/last")).json()
        sent = json.loads(base64.b64decode(last["body"]))
        assert sent["messages"][0]["content"][0] == {
            "type": "image_url",
            "image_url": {"url": f"data:image/png;base64,{png}"},
        }
        stopped = await client.messages.create(
            model="mock-model", max_tokens=100, messages=HELLO, stop_sequences=["fox"]
        )
        assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "fox"
        assert stopped.content[0].text == "The quick brown "  # type: ignore[union-attr]
        cut = await client.messages.create(model="mock-model", max_tokens=3, messages=HELLO)
        assert cut.stop_reason == "max_tokens" and cut.content[0].text == "The quick brown"  # type: ignore[union-attr]
        async with client.messages.stream(model="cached", max_tokens=100, messages=HELLO) as s:
            cached = await s.get_final_message()
    direct = await _direct_chat(env, model="mock-model~cache_read=100", messages=HELLO, max_tokens=100)
    assert direct.usage is not None
    assert cached.usage.cache_read_input_tokens == 100
    assert cached.usage.input_tokens + 100 == direct.usage.prompt_tokens  # counted once


async def test_malformed_and_error_events_end_the_stream_with_an_error(env: Env) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        for model in ("malformed", "midstream"):
            body = {"model": model, "max_tokens": 100, "stream": True, "messages": HELLO}
            # Paced (the mock's x-mock-delay-ms, forwarded), so the bad event comes after the commit point: in
            # the same read as the first delta it would fail before it, and fall back (or 502) instead.
            headers = {"x-api-key": env.keys["plain"], "x-mock-delay-ms": "30", **VERSION}
            resp = await http.post(env.proxy.url + "/v1/messages", json=body, headers=headers)
            assert resp.status_code == 200
            names = [line[7:] for line in resp.text.split("\n") if line.startswith("event: ")]
            assert names[0] == "message_start" and "content_block_delta" in names
            assert names[-1] == "error" and names.count("error") == 1 and "message_stop" not in names
            error = json.loads(resp.text.rstrip("\n").rsplit("\n", 1)[-1][6:])
            assert error["type"] == "error" and error["error"]["type"] in ("api_error", "overloaded_error")
    paced = {"x-mock-delay-ms": "30"}
    async with (
        env.client() as client,
        client.messages.stream(model="malformed", max_tokens=100, messages=HELLO, extra_headers=paced) as s,
    ):
        with pytest.raises(anthropic.APIStatusError):
            await s.get_final_message()


# --- an anthropic provider ------------------------------------------------------------------------------


async def test_anthropic_provider_malformed_event_then_an_error_event(env: Env) -> None:
    """Passed through as it came, the bad event; then, the stream having no message_stop, the proxy's error."""
    body = {"model": "claude-malformed", "max_tokens": 100, "stream": True, "messages": HELLO}
    headers = {"x-api-key": env.keys["plain"], "x-mock-delay-ms": "30", **VERSION}
    async with httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(env.proxy.url + "/v1/messages", json=body, headers=headers)
    assert resp.status_code == 200
    names = [line[7:] for line in resp.text.split("\n") if line.startswith("event: ")]
    assert names[0] == "message_start" and names[-1] == "error" and "message_stop" not in names
    row = await _usage_row(env, resp.headers["x-request-id"])
    assert row["partial"] and row["error"] == "upstream_stream_cut"


@pytest.mark.parametrize("streamed", [False, True])
async def test_anthropic_provider_byte_for_byte(env: Env, streamed: bool) -> None:
    body = {"model": "claude-mock", "max_tokens": 100, "stream": streamed, "messages": HELLO, "tools": [WEATHER, TIME]}
    async with httpx.AsyncClient(timeout=30) as http:
        direct = await http.post(env.mock.url + "/v1/messages", json=body, headers=VERSION)
        body["model"] = "claude/claude-mock"
        via = await http.post(
            env.proxy.url + "/v1/messages", json=body, headers={"x-api-key": env.keys["plain"], **VERSION}
        )
    assert via.status_code == direct.status_code == 200
    assert via.content == direct.content
    row = await _usage_row(env, via.headers["x-request-id"])
    assert (row["provider"], row["upstream_model"]) == ("claude", "claude-mock")
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0


async def test_anthropic_provider_through_the_sdk(env: Env) -> None:
    async with env.client() as client:
        made = await client.messages.create(
            model="claude-sonnet", max_tokens=100, messages=HELLO, tools=[WEATHER, TIME]
        )
        async with client.messages.stream(
            model="claude-sonnet", max_tokens=100, messages=HELLO, tools=[WEATHER, TIME]
        ) as s:
            streamed = await s.get_final_message()
    assert made.stop_reason == streamed.stop_reason == "tool_use"
    assert [b.model_dump() for b in made.content] == [b.model_dump() for b in streamed.content]


async def test_count_tokens(env: Env) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        body = {"model": "claude-mock", "messages": HELLO}
        direct = (await http.post(env.mock.url + "/v1/messages/count_tokens", json=body, headers=VERSION)).json()
    async with env.client() as client:
        passed = await client.messages.count_tokens(model="claude-sonnet", messages=HELLO)
        addressed = await client.messages.count_tokens(model="claude/claude-mock", messages=HELLO)
        # A model only an OpenAI-compatible provider serves: the proxy's own estimate, never 0.
        estimated = await client.messages.count_tokens(model="mock-model", messages=HELLO, tools=[WEATHER])
    assert passed.input_tokens == addressed.input_tokens == direct["input_tokens"]
    assert estimated.input_tokens > 0


# --- the same guarantees --------------------------------------------------------------------------------


async def test_fallback_across_dialects(env: Env) -> None:
    async with env.client() as client:
        a = await client.messages.with_raw_response.create(model="oai-then-claude", max_tokens=100, messages=HELLO)
        b = await client.messages.with_raw_response.create(model="claude-then-oai", max_tokens=100, messages=HELLO)
    first, second = await a.parse(), await b.parse()
    assert first.model == "claude-mock" and second.model == "mock-model"
    assert first.content[0].text == second.content[0].text  # type: ignore[union-attr]
    row_a = await _usage_row(env, a.headers["x-request-id"])
    row_b = await _usage_row(env, b.headers["x-request-id"])
    assert (row_a["provider"], row_a["attempts"]) == ("claude", 2)
    assert (row_b["provider"], row_b["attempts"]) == ("openai", 2)


async def test_bearer_key_works_too(env: Env) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=env.proxy.url, auth_token=env.keys["plain"], api_key=None, max_retries=0
    ) as client:
        message = await client.messages.create(model="mock-model", max_tokens=100, messages=HELLO)
    assert message.content


async def test_errors_are_anthropic_shaped(env: Env) -> None:
    async with env.client() as client:
        with pytest.raises(anthropic.BadRequestError) as bad:
            await client.messages.create(model="mock-model", max_tokens=100, messages=HELLO, extra_body={"top_k": 3})
        assert bad.value.body == {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "'top_k' is not supported when this model is served by an OpenAI-compatible provider.",
            },
        }
        # The same field goes to an anthropic provider as it came.
        assert (
            await client.messages.create(model="claude-sonnet", max_tokens=10, messages=HELLO, extra_body={"top_k": 3})
        ).content
    async with anthropic.AsyncAnthropic(base_url=env.proxy.url, api_key="sk-fp-" + "x" * 43, max_retries=0) as wrong:
        with pytest.raises(anthropic.AuthenticationError) as auth:
            await wrong.messages.create(model="mock-model", max_tokens=10, messages=HELLO)
    assert auth.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    async with env.client("tpm") as limited:
        # 50 tokens a minute: the first request's estimate fits, the second's no longer does until refill.
        await limited.messages.create(model="mock-model", max_tokens=20, messages=HELLO)
        with pytest.raises(anthropic.RateLimitError) as limit:
            await limited.messages.create(model="mock-model", max_tokens=20, messages=HELLO)
    assert limit.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert limit.value.response.headers.get("retry-after")
    async with env.client("budget") as broke:
        await broke.messages.create(model="mock-model", max_tokens=10, messages=HELLO)
        refused: anthropic.RateLimitError | None = None
        for _ in range(50):  # spend reaches the budget once the first request's usage is recorded
            try:
                await broke.messages.create(model="mock-model", max_tokens=10, messages=HELLO)
            except anthropic.RateLimitError as exc:
                refused = exc
                break
            await asyncio.sleep(0.05)
    assert refused is not None, "the budget never cut the key off"
    assert refused.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert "budget" in refused.body["error"]["message"]  # type: ignore[index]
    async with httpx.AsyncClient(timeout=30) as http:
        headers = {"x-api-key": env.keys["plain"], **VERSION}
        big = await http.post(env.proxy.url + "/v1/messages", content=b"{" + b" " * 300_000 + b"}", headers=headers)
        not_json = await http.post(env.proxy.url + "/v1/messages", content=b"{nope", headers=headers)
        no_model = await http.post(
            env.proxy.url + "/v1/messages", json={"max_tokens": 1, "messages": HELLO}, headers=headers
        )
    assert big.status_code == 413 and big.json()["error"]["type"] == "request_too_large"
    assert not_json.status_code == 400 and not_json.json()["error"]["type"] == "invalid_request_error"
    assert no_model.status_code == 400 and no_model.json()["type"] == "error"
