"""Conformance: OpenAI chat clients on an `anthropic` provider, replayed from recorded transcripts.

Each file in chat_to_anthropic/ holds one exchange:
    request            what the OpenAI client sends to /v1/chat/completions
    upstream_request   the Messages request the proxy must send (null: none may be sent)
    upstream           Anthropic's answer: status, and either `body` or `events` (each {"event", "data"}, or
                       {"raw": "..."} for bytes sent as they are)
    client             what the client must get: status, and `body` or `events` (each a JSON document, or "[DONE]")
    usage              the usage the proxy records (prompt, completion, cached), or null
    partial            (optional) the stream broke after its first content: recorded as partial

Every transcript goes through the whole app (the real request path, with a fake upstream seam), and each
stream also through the translator alone, whole and split at every byte boundary (SSE framing).
`"created": "<created>"` stands for the proxy's own clock.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fastproxy.app import FastProxy
from fastproxy.core.records import RequestRecord
from fastproxy.core.settings import load_settings
from fastproxy.translate.messages_stream import MessagesToChatStream
from fastproxy.upstream import HeaderList, UpstreamResponse
from tests.asgi import lifespan, request
from tests.fakes import FakeResponse, FakeUpstream

HERE = Path(__file__).parent / "chat_to_anthropic"
CASES = sorted(HERE.glob("*.json"))
SSE = [(b"content-type", b"text/event-stream; charset=utf-8")]
JSON = [(b"content-type", b"application/json")]
PROVIDER = {"anth": {"type": "anthropic", "base_url": "http://anthropic.test", "api_key": "sk-ant-test-0001"}}
# One attempt: each transcript is one exchange (fallback has its own end-to-end tests).
ROUTE = {"claude": {"targets": [{"provider": "anth", "model": "claude-sonnet-4-5"}], "max_attempts": 1}}


def _load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def upstream_bytes(events: list[dict[str, Any]]) -> list[bytes]:
    out = []
    for e in events:
        if "raw" in e:
            out.append(e["raw"].encode())
        else:
            out.append(f"event: {e['event']}\ndata: {json.dumps(e['data'], separators=(',', ':'))}\n\n".encode())
    return out


def client_events(body: bytes) -> list[Any]:
    """The client's SSE body as JSON documents (and "[DONE]"); every event must be `data: ...` alone."""
    events: list[Any] = []
    text = body.decode()
    assert text.endswith("\n\n"), text[-200:]
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: ") and "\n" not in block, block
        payload = block[6:]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def normalise(doc: Any, created: set[int]) -> Any:
    """Replace the proxy's clock (`created`) by the transcripts' placeholder, remembering the values seen."""
    if isinstance(doc, dict):
        out = {k: normalise(v, created) for k, v in doc.items()}
        if isinstance(out.get("created"), int) and out.get("object", "").startswith("chat.completion"):
            created.add(out["created"])
            out["created"] = "<created>"
        return out
    if isinstance(doc, list):
        return [normalise(v, created) for v in doc]
    return doc


class Upstream(FakeUpstream):
    """The fake seam, answering the model catalog's background `GET .../models` itself (never from the queue)."""

    async def send(
        self, method: str, url: str, headers: HeaderList, body: bytes, *, stream: bool = False
    ) -> UpstreamResponse:
        if method == "GET":
            return FakeResponse(200, JSON, [b'{"data":[]}'])
        return await super().send(method, url, headers, body, stream=stream)


@pytest.fixture
def upstream() -> FakeUpstream:
    return Upstream()


@pytest.fixture
async def app(upstream: FakeUpstream) -> AsyncIterator[FastProxy]:
    settings = load_settings(
        environ={
            "FASTPROXY_UPSTREAM_URL": "http://openai.test/v1",
            "FASTPROXY_ACCESS_LOG": "false",
            "FASTPROXY_AUTH": "none",
            "FASTPROXY_DATABASE_URL": "",
            "FASTPROXY_PROVIDERS": json.dumps(PROVIDER),
            "FASTPROXY_ROUTES": json.dumps(ROUTE),
            "FASTPROXY_DEFAULT_MAX_TOKENS": "1024",
        }
    )
    proxy = FastProxy(settings, upstream_factory=upstream.factory)
    async with lifespan(proxy):
        yield proxy


def _records(app: FastProxy) -> list[RequestRecord]:
    seen: list[RequestRecord] = []
    assert app.state is not None
    app.state = dataclasses.replace(app.state, observers=(*app.state.observers, seen.append))
    return seen


def test_the_suite_covers_what_the_issue_names() -> None:
    names = {p.stem for p in CASES}
    for needed in (
        "text",
        "tools_parallel",
        "tool_results",
        "image",
        "thinking",
        "stop_sequence",
        "max_tokens",
        "cache",
        "error_mid_stream",
        "pings",
        "malformed",
    ):
        assert any(needed in n for n in names), needed


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
async def test_transcript_through_the_app(path: Path, app: FastProxy, upstream: FakeUpstream) -> None:
    case = _load(path)
    seen = _records(app)
    answer = case["upstream"]
    if "events" in answer:
        upstream.queue(FakeResponse(answer["status"], SSE, upstream_bytes(answer["events"])))
    else:
        body = json.dumps(answer["body"]).encode()
        headers = JSON + [(k.encode(), v.encode()) for k, v in answer.get("headers", {}).items()]
        upstream.queue(FakeResponse(answer["status"], headers, [body]))
    result = await request(app, "POST", "/v1/chat/completions", json.dumps(case["request"]).encode())

    if case["upstream_request"] is None:
        assert upstream.sent == []
    else:
        method, url, headers, sent = upstream.sent[0]
        assert (method, url) == ("POST", "http://anthropic.test/v1/messages")
        assert ("x-api-key", "sk-ant-test-0001") in headers and ("anthropic-version", "2023-06-01") in headers
        assert json.loads(sent) == case["upstream_request"]
    expected = case["client"]
    assert result.status == expected["status"], result.body
    for name, value in expected.get("headers", {}).items():
        assert result.headers[name.encode()] == value.encode()
    created: set[int] = set()
    if "events" in expected:
        assert result.headers[b"content-type"].startswith(b"text/event-stream")
        assert normalise(client_events(result.body), created) == expected["events"]
    else:
        assert normalise(json.loads(result.body), created) == expected["body"]
    assert len(created) <= 1  # one clock reading per answer

    record = seen[0]
    usage = case["usage"]
    if usage is None:
        assert record.usage is None or record.usage.total == 0
    else:
        assert record.usage is not None
        got = {"prompt": record.usage.prompt, "completion": record.usage.completion, "cached": record.usage.cached}
        assert got == usage
        assert record.usage.total == usage["prompt"] + usage["completion"]
    assert record.partial is case.get("partial", False)
    if case.get("partial"):
        assert record.error in ("upstream_error_event", "upstream_malformed_event")


STREAMS = [p for p in CASES if "events" in _load(p)["upstream"]]


@pytest.mark.parametrize("path", STREAMS, ids=[p.stem for p in STREAMS])
def test_stream_translation_does_not_depend_on_chunking(path: Path) -> None:
    case = _load(path)
    data = b"".join(upstream_bytes(case["upstream"]["events"]))
    include_usage = bool((case["request"].get("stream_options") or {}).get("include_usage"))

    def run(chunks: list[bytes]) -> bytes:
        translator = MessagesToChatStream(include_usage, 1_700_000_000)
        return b"".join(translator.feed(c) for c in chunks) + translator.finish()

    whole = run([data])
    assert run([data[i : i + 1] for i in range(len(data))]) == whole
    assert run(upstream_bytes(case["upstream"]["events"])) == whole
    crlf = data.replace(b"\n", b"\r\n")
    assert run([crlf[i : i + 7] for i in range(0, len(crlf), 7)]) == whole


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_tool_call_fragments_reassemble_to_json(path: Path) -> None:
    """What an OpenAI SDK does with the deltas: per index, id and name once, then arguments appended."""
    case = _load(path)
    expected = case["client"]
    if "events" not in expected:
        calls = ((expected.get("body") or {}).get("choices") or [{}])[0].get("message", {}).get("tool_calls") or []
        for call in calls:
            assert isinstance(json.loads(call["function"]["arguments"]), dict)
        return
    calls_by_index: dict[int, dict[str, str]] = {}
    for event in expected["events"]:
        if event == "[DONE]" or "error" in event:
            continue
        for choice in event["choices"]:
            for delta in choice["delta"].get("tool_calls") or []:
                call = calls_by_index.setdefault(delta["index"], {"id": "", "name": "", "arguments": ""})
                if "id" in delta:
                    assert not call["id"], "id sent twice for one index"
                    call["id"], call["name"] = delta["id"], delta["function"]["name"]
                call["arguments"] += delta["function"].get("arguments", "")
    for call in calls_by_index.values():
        assert call["id"] and call["name"]
        assert isinstance(json.loads(call["arguments"]), dict)
    if calls_by_index:
        finish = [c["finish_reason"] for e in expected["events"] if e != "[DONE]" for c in e.get("choices", [])]
        assert [f for f in finish if f] == ["tool_calls"]
