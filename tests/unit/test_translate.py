"""fastproxy/translate on its own: the edges the conformance transcripts do not walk through."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fastproxy.core.errors import InvalidRequest
from fastproxy.translate.anthropic_chat import for_attempt
from fastproxy.translate.chat_to_messages import chat_to_messages
from fastproxy.translate.messages_stream import MessagesToChatStream
from fastproxy.translate.messages_to_chat import MalformedAnswer, message_to_chat, openai_error

USER = [{"role": "user", "content": "hi"}]


def translate(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(chat_to_messages(json.dumps({"model": "m", **fields}).encode(), "claude-x", 500))
    return doc


def refused(body: bytes | dict[str, Any]) -> InvalidRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(InvalidRequest) as caught:
        chat_to_messages(raw, "claude-x", 500)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": "hi"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
        ({"messages": USER, "presence_penalty": 0.5}, "presence_penalty"),
        ({"messages": USER, "frequency_penalty": -1}, "frequency_penalty"),
        ({"messages": USER, "logit_bias": {"50256": -100}}, "logit_bias"),
        ({"messages": USER, "response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
        ({"messages": USER, "modalities": ["text", "audio"]}, "modalities"),
        ({"messages": USER, "functions": [{"name": "f"}]}, "functions"),
        ({"messages": USER, "reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"messages": USER, "reasoning_effort": "high", "max_tokens": 800}, "max_completion_tokens"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"messages": USER, "tools": [{"type": "web_search"}]}, "tools[0].type"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]},
            "messages[0].content[0].image_url.url",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:text/plain,hi"}}]}
                ]
            },
            "messages[0].content[0].image_url.url",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
    ],
)
def test_what_cannot_be_expressed_is_a_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    assert refused(body).param == param


def test_not_json_is_a_400() -> None:
    assert "JSON" in refused(b"{nope").message


def test_what_changes_nothing_passes() -> None:
    doc = translate(
        messages=USER, n=1, seed=7, store=True, response_format={"type": "text"}, logprobs=False, tool_choice="auto"
    )
    assert doc == {"model": "claude-x", "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]}


def test_reasoning_effort_without_a_limit_adds_its_budget_and_minimal_means_none() -> None:
    assert translate(messages=USER, reasoning_effort="medium")["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert translate(messages=USER, reasoning_effort="medium")["max_tokens"] == 500 + 4096
    assert (
        translate(messages=USER, reasoning_effort="high", max_completion_tokens=5000)["thinking"]["budget_tokens"]
        == 4999
    )
    assert "thinking" not in translate(messages=USER, reasoning_effort="minimal")


def test_turns_of_one_role_merge_and_empty_ones_vanish() -> None:
    doc = translate(
        messages=[
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}]},
            {"role": "assistant", "content": None},
            {"role": "assistant", "content": [{"type": "text", "text": "c"}]},
            {"role": "user", "content": "d"},
        ],
        tools=[{"type": "function", "function": {"name": "f"}}],
        tool_choice="none",
        stop=[],
    )
    assert doc["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "c"}]},
        {"role": "user", "content": "d"},
    ]
    assert doc["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]
    assert doc["tool_choice"] == {"type": "none"} and "stop_sequences" not in doc


def test_endpoints_without_an_anthropic_equivalent_are_refused() -> None:
    with pytest.raises(InvalidRequest) as caught:
        for_attempt("/embeddings", b"{}", "m", False, False, 10)
    assert caught.value.code == "unsupported_endpoint"
    assert for_attempt("/messages", b"{}", "m", False, False, 10) is None  # Anthropic's own: as it is
    chat = for_attempt("/chat/completions", json.dumps({"messages": USER}).encode(), "m", True, True, 10)
    assert chat is not None and not chat.include_usage  # the proxy asked for usage, not the client


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            529,
            b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
            (503, "server_error", "overloaded"),
        ),
        (
            401,
            b'{"type":"error","error":{"type":"authentication_error","message":"bad key"}}',
            (401, "invalid_request_error", "invalid_api_key"),
        ),
        (
            404,
            b'{"type":"error","error":{"type":"not_found_error","message":"model: x"}}',
            (404, "invalid_request_error", "not_found"),
        ),
        (502, b"<html>bad gateway</html>", (502, "server_error", None)),
        (418, b'{"type":"error","error":{"type":"teapot_error","message":"?"}}', (418, "invalid_request_error", None)),
    ],
)
def test_errors_in_openai_shape(status: int, body: bytes, expected: tuple[int, str, str | None]) -> None:
    out_status, out = openai_error(status, body)
    error = json.loads(out)["error"]
    assert (out_status, error["type"], error["code"]) == expected
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


def test_an_unreadable_message_is_malformed() -> None:
    with pytest.raises(MalformedAnswer):
        message_to_chat(b'{"content": "not a list"}', 1)
    with pytest.raises(MalformedAnswer):
        message_to_chat(b"<html>", 1)


def _sse(*docs: dict[str, Any]) -> list[bytes]:
    return [f"event: {d['type']}\ndata: {json.dumps(d)}\n\n".encode() for d in docs]


def test_a_stream_ends_once_and_reads_a_last_event_without_its_blank_line() -> None:
    translator = MessagesToChatStream(False, 1)
    start = {"type": "message_start", "message": {"id": "msg_1", "model": "c", "usage": {"input_tokens": 5}}}
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}
    out = b"".join(translator.feed(c) for c in _sse(start, delta, {"type": "message_stop"}))
    assert out.endswith(b"data: [DONE]\n\n") and translator.ended
    assert translator.feed(_sse(delta)[0]) == b""  # nothing after [DONE]
    late = MessagesToChatStream(False, 1)
    for chunk in _sse(start, delta):
        late.feed(chunk)
    assert late.feed(b'event: message_stop\ndata: {"type":"message_stop"}') == b""
    assert late.finish().endswith(b"data: [DONE]\n\n") and late.ended
    assert late.usage is not None and late.usage.prompt == 5


def test_tool_input_for_a_block_never_started_is_malformed() -> None:
    translator = MessagesToChatStream(False, 1)
    stray = {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "{"}}
    out = translator.feed(_sse(stray)[0])
    assert json.loads(out[6:])["error"]["code"] == "upstream_malformed_event"
    assert translator.failure == "upstream_malformed_event" and not translator.ended


def test_server_tool_blocks_are_not_tool_calls() -> None:
    translator = MessagesToChatStream(False, 1)
    events = _sse(
        {"type": "message_start", "message": {"id": "m", "model": "c"}},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "server_tool_use", "id": "s", "name": "web_search"},
        },
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"q":1}'}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t", "name": "f"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}},
        {"type": "message_stop"},
    )
    out = b"".join(translator.feed(e) for e in events).decode()
    docs = [json.loads(line[6:]) for line in out.split("\n\n") if line.startswith("data: {")]
    calls = [c for d in docs for c in d["choices"][0]["delta"].get("tool_calls", [])]
    assert calls == [
        {"index": 0, "id": "t", "type": "function", "function": {"name": "f", "arguments": ""}},
        {"index": 0, "function": {"arguments": "{}"}},
    ]
    assert docs[-1]["choices"][0]["finish_reason"] == "tool_calls" and translator.ended
