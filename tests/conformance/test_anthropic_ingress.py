"""Conformance of the Anthropic ingress translation (an Anthropic client, an OpenAI-compatible provider):
recorded transcripts, each a client request, the OpenAI request it must become, the upstream's chunks
(as OpenAI / vLLM send them) and the Anthropic events the client must get, plus the non-streamed body.

Every transcript is also checked for the properties the most reported gateway bugs break, independently of
its frozen expectations: blocks never overlap, one tool_use block per tool call with its argument fragments
reassembling to the call's JSON, stop_reason tool_use after tool calls, input usage never 0 in message_start,
cached tokens counted once, and an upstream error ending the stream with an error event and no message_stop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fastproxy.translate.ingress_request import UnsupportedField, decode_request, encode_chat, to_chat
from fastproxy.translate.ingress_response import MalformedUpstream, to_message
from fastproxy.translate.ingress_stream import ChatToMessagesStream

HERE = Path(__file__).parent / "anthropic_ingress"
TRANSCRIPTS = sorted(HERE.glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def _events(raw: bytes) -> list[dict[str, Any]]:
    """Parse Anthropic SSE bytes strictly: each event is `event: NAME` then one `data:` line, named as its type."""
    out = []
    text = raw.decode()
    assert text.endswith("\n\n") or not text
    for block in text.split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        data = json.loads(data_line[6:])
        assert data["type"] == name_line[7:]
        out.append({"event": name_line[7:], "data": data})
    return out


def _translate(doc: dict[str, Any], size: int | None) -> tuple[list[dict[str, Any]], ChatToMessagesStream]:
    request = decode_request(json.dumps(doc["request"]).encode())
    stream = ChatToMessagesStream(request.stop_sequences, doc["input_estimate"])
    raw = "".join(doc["upstream_chunks"]).encode()
    if size is None:  # one event per chunk, as providers send them
        pieces = [c.encode() for c in doc["upstream_chunks"]]
    else:  # split anywhere, as a client may read them
        pieces = [raw[i : i + size] for i in range(0, len(raw), size)]
    out = b"".join(stream.feed(p) for p in pieces) + stream.finish()
    return _events(out), stream


@pytest.fixture(params=TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def transcript(request: pytest.FixtureRequest) -> dict[str, Any]:
    return _load(request.param)


def test_the_suite_covers_the_cases() -> None:
    names = {p.stem for p in TRANSCRIPTS}
    assert {
        "plain_text",
        "parallel_tool_calls",
        "tool_results",
        "image_input",
        "stop_sequence",
        "max_tokens",
        "cached_tokens",
        "mid_stream_error",
    } <= names


def test_request_translation(transcript: dict[str, Any]) -> None:
    request = decode_request(json.dumps(transcript["request"]).encode())
    assert json.loads(encode_chat(to_chat(request))) == transcript["upstream_request"]


@pytest.mark.parametrize("size", [None, 1, 7, 64])
def test_stream_translation(transcript: dict[str, Any], size: int | None) -> None:
    """The same events whether the upstream sends one event per chunk or splits them anywhere."""
    events, stream = _translate(transcript, size)
    assert events == transcript["expected_events"]
    assert stream.ended is transcript["ended"]
    assert (stream.failure is not None) is transcript["errored"]


def test_stream_properties(transcript: dict[str, Any]) -> None:
    events, _ = _translate(transcript, None)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "message_start"
    assert events[0]["data"]["message"]["usage"]["input_tokens"] > 0
    open_block: int | None = None
    blocks: dict[int, dict[str, Any]] = {}
    for e in events[1:]:
        data = e["data"]
        if e["event"] == "content_block_start":
            assert open_block is None, "blocks never overlap"
            assert data["index"] == len(blocks)
            open_block = data["index"]
            blocks[open_block] = {**data["content_block"], "json": ""}
        elif e["event"] == "content_block_delta":
            assert open_block is not None and data["index"] == open_block
            delta = data["delta"]
            block = blocks[open_block]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "input_json_delta":
                block["json"] += delta["partial_json"]
        elif e["event"] == "content_block_stop":
            assert data["index"] == open_block
            open_block = None
    assert open_block is None or transcript["errored"]
    upstream_calls = [
        json.loads(part[6:])["choices"][0]["delta"]["tool_calls"][0]
        for part in transcript["upstream_chunks"]
        if '"tool_calls":[' in part
    ]
    call_ids = [c["id"] for c in upstream_calls if "id" in c]
    tool_blocks = [b for b in blocks.values() if b["type"] == "tool_use"]
    assert [b["id"] for b in tool_blocks] == call_ids, "one tool_use block per tool call, ids kept"
    for block in tool_blocks:
        assert isinstance(json.loads(block["json"]), dict)
    if transcript["errored"]:
        assert kinds[-1] == "error" and "message_stop" not in kinds
        return
    assert kinds[-2:] == ["message_delta", "message_stop"]
    delta = events[-2]["data"]
    if tool_blocks:
        assert delta["delta"]["stop_reason"] == "tool_use"
    usage = json.loads(transcript["upstream_chunks"][-2][6:])["usage"]
    counted = delta["usage"]["input_tokens"] + delta["usage"]["cache_read_input_tokens"]
    assert counted == usage["prompt_tokens"], "each prompt token counted once"
    assert delta["usage"]["cache_read_input_tokens"] == usage["prompt_tokens_details"]["cached_tokens"]
    text = "".join(b.get("text", "") for b in blocks.values())
    if "expected_body" in transcript:
        body = transcript["expected_body"]
        assert text == "".join(b.get("text", "") for b in body["content"])
        assert delta["delta"]["stop_reason"] == body["stop_reason"]
        assert [json.loads(b["json"]) for b in tool_blocks] == [
            b["input"] for b in body["content"] if b["type"] == "tool_use"
        ]


def test_body_translation(transcript: dict[str, Any]) -> None:
    if "upstream_body" not in transcript:
        pytest.skip("stream-only transcript")
    stop = transcript["request"].get("stop_sequences")
    body, usage = to_message(json.dumps(transcript["upstream_body"]).encode(), stop)
    assert json.loads(body) == transcript["expected_body"]
    assert usage is not None and usage.prompt_tokens == transcript["upstream_body"]["usage"]["prompt_tokens"]


# --- bad upstream answers -------------------------------------------------------------------------------


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    doc = {"id": "c", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def test_malformed_chunk_raises() -> None:
    stream = ChatToMessagesStream(None, 10)
    assert stream.feed(_chunk({"content": "Hi"}))
    with pytest.raises(MalformedUpstream):
        stream.feed(b'data: {"id":"c","choices":[{"delta":{"content":\n\n')
    assert not stream.ended


def test_interleaved_tool_fragments_raise() -> None:
    stream = ChatToMessagesStream(None, 10)
    call = {"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    stream.feed(_chunk({"tool_calls": [call]}))
    stream.feed(_chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}]}))
    with pytest.raises(MalformedUpstream):  # a fragment for a block already stopped can't be delivered
        stream.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": " "}}]}))


def test_tool_arguments_that_are_not_json_raise_at_the_block_end() -> None:
    stream = ChatToMessagesStream(None, 10)
    call = {"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1'}}
    stream.feed(_chunk({"tool_calls": [call]}))
    with pytest.raises(MalformedUpstream):
        stream.feed(_chunk({}, "tool_calls"))


def test_whole_tool_calls_in_one_chunk_each_get_a_block() -> None:
    """Ollama sends every call whole, several in one chunk, and says finish_reason "stop"."""
    stream = ChatToMessagesStream(None, 10)
    calls = [
        {"id": "a", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"id": "b", "function": {"name": "g", "arguments": '{"y": 2}'}},
    ]
    raw = (
        stream.feed(_chunk({"tool_calls": calls})) + stream.feed(_chunk({}, "stop")) + stream.feed(b"data: [DONE]\n\n")
    )
    events = _events(raw)
    starts = [e["data"]["content_block"] for e in events if e["event"] == "content_block_start"]
    assert [(s["id"], s["name"]) for s in starts] == [("a", "f"), ("b", "g")]
    assert events[-2]["data"]["delta"]["stop_reason"] == "tool_use"


def test_non_streamed_bad_bodies_raise() -> None:
    with pytest.raises(MalformedUpstream):
        to_message(b"not json", None)
    bad_args = {"choices": [{"message": {"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{"}}]}}]}
    with pytest.raises(MalformedUpstream):
        to_message(json.dumps(bad_args).encode(), None)


# --- requests that can't be served as asked --------------------------------------------------------------

_BASE: dict[str, Any] = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"top_k": 5}, "top_k"),
        ({"frobnicate": True}, "frobnicate"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "document", "source": {"type": "text", "data": "x"}}]}
                ]
            },
            "messages[0].content[0].type",
        ),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "{"}]}, "messages[1]"),
        ({"max_tokens": None}, "max_tokens"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
        ({"max_tokens": "ten"}, "max_tokens"),
    ],
)
def test_unsupported_fields_are_named(change: dict[str, Any], param: str) -> None:
    doc = {**_BASE, **change}
    doc = {k: v for k, v in doc.items() if v is not None}
    with pytest.raises(UnsupportedField) as caught:
        to_chat(decode_request(json.dumps(doc).encode()))
    assert caught.value.param == param
    assert param in caught.value.message


def test_thinking_becomes_reasoning_effort_and_user_id_becomes_user() -> None:
    doc = {**_BASE, "thinking": {"type": "enabled", "budget_tokens": 8000}, "metadata": {"user_id": "u-1"}}
    chat = json.loads(encode_chat(to_chat(decode_request(json.dumps(doc).encode()))))
    assert chat["reasoning_effort"] == "medium" and chat["user"] == "u-1"
