"""The mock provider's Anthropic dialect, driven through its ASGI callable and read by the `anthropic` SDK."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import pytest

from fastproxy.mock.server import MockUpstream
from tests.asgi import Result, request

HEADERS = [(b"x-api-key", b"sk-ant-mock"), (b"anthropic-version", b"2023-06-01")]
WEATHER: Any = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}
TIME: Any = {"name": "get_time", "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}}}


def _client(app: MockUpstream) -> anthropic.AsyncAnthropic:
    transport = httpx2.ASGITransport(app=app)
    http = httpx2.AsyncClient(transport=transport, base_url="http://mock")
    return anthropic.AsyncAnthropic(api_key="sk-ant-mock", base_url="http://mock", http_client=http, max_retries=0)


def _body(**fields: Any) -> bytes:
    doc = {"model": "claude-mock", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **fields}
    return json.dumps(doc).encode()


def _events(result: Result) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in result.body.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


async def test_text_streamed_and_not_agree_and_follow_the_documented_order() -> None:
    app = MockUpstream(chunks=5)
    client = _client(app)
    plain = await client.messages.create(
        model="claude-mock", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    async with client.messages.stream(
        model="claude-mock", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        final = await stream.get_final_message()
    assert plain.content[0].type == "text" and plain.content[0].text == "The quick brown fox jumps"
    assert [(b.type, getattr(b, "text", None)) for b in final.content] == [("text", "The quick brown fox jumps")]
    assert final.stop_reason == plain.stop_reason == "end_turn"
    assert final.usage.output_tokens == plain.usage.output_tokens == 6
    raw = _events(await request(app, "POST", "/v1/messages", _body(stream=True), HEADERS))
    kinds = [k for k, _ in raw]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert "ping" in kinds[1:-2]
    assert all(k == doc["type"] for k, doc in raw)
    assert raw[0][1]["message"]["content"] == [] and raw[0][1]["message"]["usage"]["input_tokens"] > 0


async def test_parallel_tool_use_streams_json_in_fragments_that_reassemble() -> None:
    app = MockUpstream()
    body = _body(stream=True, tools=[WEATHER, TIME])
    raw = _events(await request(app, "POST", "/v1/messages", body, HEADERS))
    starts = [d["content_block"] for k, d in raw if k == "content_block_start"]
    assert [b["type"] for b in starts] == ["text", "tool_use", "tool_use"]
    assert [b["name"] for b in starts[1:]] == ["get_weather", "get_time"]
    for index in (1, 2):
        parts = [d["delta"]["partial_json"] for k, d in raw if k == "content_block_delta" and d["index"] == index]
        assert len(parts) > 2 and parts[0] == ""
        assert isinstance(json.loads("".join(parts)), dict)
    assert next(d for k, d in raw if k == "message_delta")["delta"]["stop_reason"] == "tool_use"
    async with _client(app).messages.stream(
        model="claude-mock", max_tokens=100, messages=[{"role": "user", "content": "hi"}], tools=[WEATHER, TIME]
    ) as stream:
        final = await stream.get_final_message()
    calls = [b for b in final.content if b.type == "tool_use"]
    assert [c.input for c in calls] == [{"city": 'city-0 "quoted" é', "days": 1}, {"zone": 'zone-1 "quoted" é'}]


async def test_tool_results_fed_back_and_unanswered_tool_use_refused() -> None:
    app = MockUpstream()
    use = {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_time", "input": {}}]}
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "noon"}]}
    messages = [{"role": "user", "content": "time?"}, use, result]
    answer = await _client(app).messages.create(model="claude-mock", max_tokens=50, messages=messages, tools=[TIME])  # type: ignore[arg-type]
    assert answer.content[0].type == "text" and answer.content[0].text == "Got 1 tool results."
    bad = [messages[0], use, {"role": "user", "content": "no result"}]
    with pytest.raises(anthropic.BadRequestError, match="tool_result"):
        await _client(app).messages.create(model="claude-mock", max_tokens=50, messages=bad)  # type: ignore[arg-type]


async def test_thinking_block_with_signature_then_text() -> None:
    app = MockUpstream(chunks=3)
    async with _client(app).messages.stream(
        model="claude-mock",
        max_tokens=2000,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "hi"}],
    ) as stream:
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].type == "thinking" and final.content[0].signature and final.content[0].thinking


@pytest.mark.parametrize(
    ("fields", "text", "reason", "sequence"),
    [
        ({"max_tokens": 3}, "The quick brown", "max_tokens", None),
        ({"stop_sequences": ["fox", " brown"]}, "The quick", "stop_sequence", " brown"),
    ],
)
async def test_max_tokens_and_stop_sequences(
    fields: dict[str, Any], text: str, reason: str, sequence: str | None
) -> None:
    result = await request(MockUpstream(), "POST", "/v1/messages", _body(**fields), HEADERS)
    doc = json.loads(result.body)
    assert doc["content"][0]["text"] == text and doc["stop_reason"] == reason and doc["stop_sequence"] == sequence


async def test_cache_usage_fields_and_count_tokens() -> None:
    app = MockUpstream()
    result = await request(
        app, "POST", "/v1/messages", _body(model="claude-mock~cache_read=30,cache_creation=7"), HEADERS
    )
    usage = json.loads(result.body)["usage"]
    assert usage["cache_read_input_tokens"] == 30 and usage["cache_creation_input_tokens"] == 7
    counted = await _client(app).messages.count_tokens(
        model="claude-mock", messages=[{"role": "user", "content": "hi"}]
    )
    assert counted.input_tokens > 0


async def test_529_and_errors_in_anthropic_format() -> None:
    app = MockUpstream()
    result = await request(app, "POST", "/v1/messages", _body(model="claude-mock~status=529"), HEADERS)
    assert result.status == 529
    assert json.loads(result.body) == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    limited = await request(app, "POST", "/v1/messages", _body(model="c~status=429,retry_after=2"), HEADERS)
    assert limited.status == 429 and limited.headers[b"retry-after"] == b"2"
    assert json.loads(limited.body)["error"]["type"] == "rate_limit_error"
    missing = await request(app, "POST", "/v1/messages", _body(), HEADERS[:1])
    assert missing.status == 400 and "anthropic-version" in json.loads(missing.body)["error"]["message"]
    no_max = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    assert (await request(app, "POST", "/v1/messages", no_max, HEADERS)).status == 400


async def test_mid_stream_error_event_and_malformed_event() -> None:
    app = MockUpstream()
    result = await request(app, "POST", "/v1/messages", _body(model="c~error_event_after=2", stream=True), HEADERS)
    raw = _events(result)
    assert [k for k, _ in raw].count("content_block_delta") == 2
    assert raw[-1] == ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    bad = await request(app, "POST", "/v1/messages", _body(model="c~malformed_after=1", stream=True), HEADERS)
    assert bad.body.count(b"content_block_delta") == 4  # one whole delta, then the broken one (each named twice)
    with pytest.raises(json.JSONDecodeError):
        _events(bad)
