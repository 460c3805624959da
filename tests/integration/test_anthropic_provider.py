"""OpenAI clients on an `anthropic` provider, end to end: the official `openai` SDK against a Granian proxy
whose routes go to the mock provider's Anthropic dialect (fastproxy/mock/anthropic.py), and back out to
an OpenAI-compatible target when the Anthropic one is overloaded. The mock's own answers, read with the
official `anthropic` SDK, are the reference: what the OpenAI SDK assembles must equal them."""

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

USER: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "Hello there"}]
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}},
    },
}
TIME: Any = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
ANT_KEY = "sk-ant-e2e-key-0001"


@pytest.fixture(scope="module")
def mock() -> Iterator[Server]:
    server = start_mock()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def routed(mock: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    def anth(model: str) -> dict[str, Any]:
        return {"targets": [{"provider": "anth", "model": model}], "max_attempts": 1}

    providers = {
        "anth": {"type": "anthropic", "base_url": mock.url, "api_key": ANT_KEY, "anthropic_beta": "e2e-beta"},
        "anth_busy": {"type": "anthropic", "base_url": mock.url, "api_key": ANT_KEY},
        "oai": {"base_url": mock.url + "/v1", "api_key": "sk-oai-e2e-0002"},
    }
    routes = {
        # Priced in the shipped table (mock-model), so the rows carry a cost.
        "mock-model": anth("claude-mock"),
        "claude-cached": anth("claude-mock~cache_read=30,cache_creation=7"),
        "claude-error-late": anth("claude-mock~error_event_after=2"),
        "claude-malformed": anth("claude-mock~malformed_after=2"),
        "fallback": {
            "targets": [
                {"provider": "anth_busy", "model": "claude-mock~status=529"},
                {"provider": "oai", "model": "mock-model"},
            ]
        },
        "fallback-early-error": {
            "targets": [
                {"provider": "anth_busy", "model": "claude-mock~error_event_after=0"},
                {"provider": "oai", "model": "mock-model"},
            ]
        },
    }
    db = tmp_path_factory.mktemp("anthropic") / "usage.db"
    proxy = start_proxy(
        mock.url + "/v1",
        FASTPROXY_PROVIDERS=json.dumps(providers),
        FASTPROXY_ROUTES=json.dumps(routes),
        FASTPROXY_DATABASE_URL=f"sqlite:///{db}",
        FASTPROXY_USAGE_FLUSH_INTERVAL="0.1",
        FASTPROXY_USAGE_JOURNAL_DIR=str(db.parent / "journal"),
        FASTPROXY_RETRY_BUDGET_MIN="10000",
    )
    yield proxy, db
    proxy.stop()


@pytest.fixture
async def sdk(routed: tuple[Server, Path]) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=routed[0].url + "/v1", api_key="x", max_retries=0) as client:
        yield client


@pytest.fixture
async def direct(mock: Server) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The mock's Anthropic dialect, straight: the reference answers."""
    async with anthropic.AsyncAnthropic(base_url=mock.url, api_key=ANT_KEY, max_retries=0) as client:
        yield client


async def _row(db: Path, request_id: str) -> dict[str, Any]:
    """The usage row of a request (by the client's x-request-id), once the writer has flushed it."""
    for _ in range(100):
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            found = conn.execute("SELECT * FROM usage WHERE client_request_id = ?", (request_id,)).fetchall()
        if found:
            assert len(found) == 1
            return dict(found[0])
        await asyncio.sleep(0.05)
    raise AssertionError(f"no usage row for {request_id}")


def _cost(prompt: int, cached: int, completion: int) -> float:
    # mock-model in the shipped price table: $1 input, $0.50 cached input, $2 output per million tokens.
    return ((prompt - cached) * 1.0 + cached * 0.5 + completion * 2.0) / 1e6


async def test_chat_and_streamed_chat_with_usage_rows(
    sdk: openai.AsyncOpenAI, direct: anthropic.AsyncAnthropic, routed: tuple[Server, Path], mock: Server
) -> None:
    reference = await direct.messages.create(
        model="claude-mock", max_tokens=1024, messages=[{"role": "user", "content": "Hello there"}]
    )
    assert reference.content[0].type == "text"
    chat = await sdk.chat.completions.create(
        model="mock-model", messages=USER, extra_headers={"x-request-id": "anth-plain"}
    )
    assert chat.choices[0].message.content == reference.content[0].text
    assert chat.choices[0].finish_reason == "stop" and chat.model == "claude-mock"
    assert chat.usage is not None and chat.usage.completion_tokens == reference.usage.output_tokens
    sent = httpx.get(mock.url + "/_mock/last").json()
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == ANT_KEY and sent["headers"]["anthropic-beta"] == "e2e-beta"
    assert "authorization" not in sent["headers"]

    stream = await sdk.chat.completions.create(
        model="mock-model",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-request-id": "anth-stream"},
    )
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == reference.content[0].text and finish == "stop"
    assert usage is not None and usage.completion_tokens == reference.usage.output_tokens

    db = routed[1]
    for request_id, got in (("anth-plain", chat.usage), ("anth-stream", usage)):
        row = await _row(db, request_id)
        assert (row["provider"], row["upstream_model"], row["status"]) == ("anth", "claude-mock", 200)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (got.prompt_tokens, got.completion_tokens)
        assert row["cost_usd"] == pytest.approx(_cost(got.prompt_tokens, 0, got.completion_tokens))


async def test_the_anthropic_provider_models_are_listed(sdk: openai.AsyncOpenAI) -> None:
    for _ in range(100):  # the catalog is fetched in the background at startup
        ids = [m.id async for m in sdk.models.list()]
        if "anth/gpt-4o-mini" in ids:
            break
        await asyncio.sleep(0.05)
    assert "mock-model" in ids and "anth/gpt-4o-mini" in ids  # the route, and the provider's own list


async def test_cache_tokens_are_counted_once_and_priced_as_cached(
    sdk: openai.AsyncOpenAI, routed: tuple[Server, Path]
) -> None:
    chat = await sdk.chat.completions.create(
        model="claude-cached", messages=USER, extra_headers={"x-request-id": "anth-cache"}
    )
    assert chat.usage is not None and chat.usage.prompt_tokens_details is not None
    assert chat.usage.prompt_tokens_details.cached_tokens == 30
    row = await _row(routed[1], "anth-cache")
    assert row["prompt_tokens"] == chat.usage.prompt_tokens and row["cached_tokens"] == 30
    # input_tokens (the rest) + 30 read + 7 written, each once.
    assert row["prompt_tokens"] - 37 > 0 and row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]


async def test_tools_streamed_and_not_equal_the_mock_calls(
    sdk: openai.AsyncOpenAI, direct: anthropic.AsyncAnthropic
) -> None:
    reference = await direct.messages.create(
        model="claude-mock",
        max_tokens=1024,
        messages=[{"role": "user", "content": "Hello there"}],
        tools=[
            {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]},
            {"name": "get_time", "input_schema": TIME["function"]["parameters"]},
        ],
    )
    expected = [(b.id, b.name, b.input) for b in reference.content if b.type == "tool_use"]
    assert len(expected) == 2

    plain = await sdk.chat.completions.create(model="mock-model", messages=USER, tools=[WEATHER, TIME])
    calls = plain.choices[0].message.tool_calls or []
    assert plain.choices[0].finish_reason == "tool_calls"
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == expected  # type: ignore[union-attr]

    async with sdk.chat.completions.stream(model="mock-model", messages=USER, tools=[WEATHER, TIME]) as stream:
        final = await stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls or []
    assert final.choices[0].finish_reason == "tool_calls"
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in streamed] == expected
    assert final.choices[0].message.content == "I'll use the tools."

    # The results fed back: one user turn of tool_result blocks reaches the mock, which counts them.
    follow_up: Any = [
        *USER,
        plain.choices[0].message.model_dump(exclude_none=True),
        *[{"role": "tool", "tool_call_id": c.id, "content": "done"} for c in calls],
    ]
    answer = await sdk.chat.completions.create(model="mock-model", messages=follow_up, tools=[WEATHER, TIME])
    assert answer.choices[0].message.content == "Got 2 tool results." and answer.choices[0].finish_reason == "stop"


async def test_an_image_reaches_anthropic_as_image_blocks(sdk: openai.AsyncOpenAI, mock: Server) -> None:
    content: Any = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    chat = await sdk.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": content}])
    assert chat.choices[0].message.content
    sent = json.loads(base64.b64decode(httpx.get(mock.url + "/_mock/last").json()["body"]))
    blocks = sent["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}


async def test_fields_anthropic_cannot_honour_are_named_in_a_400(sdk: openai.AsyncOpenAI, mock: Server) -> None:
    before = httpx.get(mock.url + "/_mock/stats").json()["requests"]
    for extra, param in (
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"temperature": 1.5}, "temperature"),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.chat.completions.create(model="mock-model", messages=USER, **extra)
        body: Any = caught.value.body
        assert caught.value.status_code == 400 and body["param"] == param, body
    with pytest.raises(openai.BadRequestError, match="Messages API"):
        await sdk.embeddings.create(model="mock-model", input="hi")
    assert httpx.get(mock.url + "/_mock/stats").json()["requests"] == before  # nothing went upstream


async def _raw_stream(proxy: Server, model: str, request_id: str) -> list[str]:
    body = {"model": model, "messages": USER, "stream": True}
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream("POST", proxy.url + "/v1/chat/completions", json=body, headers={"x-request-id": request_id}) as r,
    ):
        assert r.status_code == 200
        return [line async for line in r.aiter_lines() if line]


@pytest.mark.parametrize(
    ("model", "code"),
    [("claude-error-late", "overloaded"), ("claude-malformed", "upstream_malformed_event")],
)
async def test_a_stream_breaking_after_its_start_ends_with_one_error_event(
    routed: tuple[Server, Path], sdk: openai.AsyncOpenAI, model: str, code: str
) -> None:
    proxy, db = routed
    lines = await _raw_stream(proxy, model, f"late-{model}")
    events = [json.loads(line.removeprefix("data: ")) for line in lines]
    assert "data: [DONE]" not in lines
    assert [e["choices"][0]["delta"].get("content") for e in events[1:-1]] == ["The", " quick"]
    assert events[-1]["error"]["code"] == code and sum("error" in e for e in events) == 1
    row = await _row(db, f"late-{model}")
    assert row["error"] in ("upstream_error_event", "upstream_malformed_event") and row["status"] == 200
    assert row["partial"] and row["prompt_tokens"] > 0  # the input tokens were known from message_start
    with pytest.raises(openai.APIError):
        async for _ in await sdk.chat.completions.create(model=model, messages=USER, stream=True):
            pass


async def test_an_overloaded_anthropic_target_falls_back_to_an_openai_one(
    sdk: openai.AsyncOpenAI, routed: tuple[Server, Path]
) -> None:
    """529 before anything reached the client: the OpenAI-compatible target answers, whole."""
    headers = {"x-request-id": "fb-plain"}
    chat = await sdk.chat.completions.create(model="fallback", messages=USER, extra_headers=headers)
    assert chat.id == "chatcmpl-mock" and chat.choices[0].message.content  # the OpenAI mock's own answer
    row = await _row(routed[1], "fb-plain")
    assert (row["provider"], row["upstream_model"], row["status"], row["attempts"]) == ("oai", "mock-model", 200, 2)


@pytest.mark.parametrize("model", ["fallback", "fallback-early-error"])
async def test_a_stream_failing_before_its_first_delta_falls_back(
    sdk: openai.AsyncOpenAI, routed: tuple[Server, Path], model: str
) -> None:
    """529, or an `error` event before the first content delta: the client sees one clean stream, the fallback's."""
    stream = await sdk.chat.completions.create(
        model=model, messages=USER, stream=True, extra_headers={"x-request-id": f"fb-{model}"}
    )
    chunks = [c async for c in stream]
    assert {c.id for c in chunks} == {"chatcmpl-mock"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The quick brown fox jumps over the lazy dog."
    row = await _row(routed[1], f"fb-{model}")
    assert (row["provider"], row["upstream_model"], row["status"], row["attempts"]) == ("oai", "mock-model", 200, 2)
