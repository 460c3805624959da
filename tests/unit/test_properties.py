"""Hypothesis properties of the byte-level parts of the request path.

- Any split of an upstream SSE stream into chunks gives the client the same bytes and the proxy the same
  usage (proxy/sse.py), whatever the stream's events hold and however they end their lines.
- The include_usage splice (proxy/body.py) and its undoing (proxy/sse.py) give the client exactly the bytes
  of the stream it would have had without the proxy.
- Arbitrary bytes as a request body, in any chunks, with any Content-Length, never raise out of the handler:
  every answer is an OpenAI-format error or the upstream's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastproxy.app import FastProxy
from fastproxy.core.schemas import TokenUsage
from fastproxy.core.settings import load_settings
from fastproxy.proxy.body import decode_view, with_include_usage
from fastproxy.proxy.sse import SSEWatcher
from tests.asgi import lifespan, request
from tests.fakes import FakeResponse, FakeUpstream

# Content deltas with what could confuse a byte-level watcher: quotes, backslashes, the members it looks for
# spelled inside strings, blank lines and CRs (escaped in JSON, so never a real event boundary), any Unicode.
TRICKY = st.sampled_from(['"usage":null', ',"usage":null}', '"usage":{"total_tokens":1}', "\n\n", "\r\n", "\\", '"'])
TEXT = st.lists(st.one_of(TRICKY, st.text(max_size=12)), max_size=4).map("".join)
USAGE = st.builds(
    TokenUsage,
    prompt=st.integers(0, 10**6),
    completion=st.integers(0, 10**6),
    total=st.integers(0, 2 * 10**6),
    cached=st.integers(0, 10**6),
    reasoning=st.integers(0, 10**6),
)
CHAT_CHUNK = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    parts, last = [], 0
    for p in points:
        parts.append(data[last:p])
        last = p
    parts.append(data[last:])
    return [p for p in parts if p]


def _watch(chunks: list[bytes], strip: bool) -> tuple[bytes, TokenUsage | None, bool]:
    watcher = SSEWatcher(strip)
    out = b"".join(watcher.feed(c) for c in chunks) + watcher.finish()
    return out, watcher.usage, watcher.ended


def _usage_doc(u: TokenUsage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.prompt,
        "completion_tokens": u.completion,
        "total_tokens": u.total,
        "prompt_tokens_details": {"cached_tokens": u.cached},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning},
    }


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[bytes], list[bytes], TokenUsage]:
    """(events the client asked for, the same events as upstream sends them when include_usage was added,
    the usage). Each event is `data: <json>` and its boundary (LF LF, CRLF CRLF or CR CR)."""
    texts = draw(st.lists(TEXT, min_size=0, max_size=6))
    usage = draw(USAGE)
    sep = draw(st.sampled_from([b"\n\n", b"\r\n\r\n", b"\r\r"]))
    # Where upstream writes `"usage":null`: last (OpenAI), first, or with spaces around the colon.
    spelling = draw(st.sampled_from(["last", "first", "spaced"]))
    plain: list[bytes] = []
    upstream: list[bytes] = []
    for text in texts:
        doc = {**CHAT_CHUNK, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        body = msgspec.json.encode(doc)
        if spelling == "last":
            with_null = body[:-1] + b',"usage":null}'
        elif spelling == "first":
            with_null = b'{"usage":null,' + body[1:]
        else:
            with_null = body[:-1] + b', "usage" : null}'
        plain.append(b"data: " + body + sep)
        upstream.append(b"data: " + with_null + sep)
    final = msgspec.json.encode({**CHAT_CHUNK, "choices": [], "usage": _usage_doc(usage)})
    upstream.append(b"data: " + final + sep)
    plain.append(b"data: [DONE]" + sep)
    upstream.append(b"data: [DONE]" + sep)
    return plain, upstream, usage


CUTS = st.lists(st.integers(0, 10**6), max_size=12)


@given(streams(), CUTS)
@settings(max_examples=300, deadline=None)
def test_any_split_of_a_stream_gives_the_same_bytes_and_usage(stream: Any, cuts: list[int]) -> None:
    _plain, upstream, usage = stream
    whole = b"".join(upstream)
    for strip in (False, True):
        one_event_a_chunk = _watch(upstream, strip)
        split = _watch(_splits(whole, cuts), strip)
        byte_by_byte = _watch([whole[i : i + 1] for i in range(len(whole))], strip) if len(whole) < 2000 else split
        assert split == one_event_a_chunk == byte_by_byte
        assert split[1] == usage and split[2] is True
    # Passed through untouched when the client asked for usage itself.
    assert _watch(_splits(whole, cuts), False)[0] == whole


@given(streams(), CUTS)
@settings(max_examples=300, deadline=None)
def test_undoing_include_usage_gives_back_the_clients_stream(stream: Any, cuts: list[int]) -> None:
    plain, upstream, usage = stream
    out, seen, ended = _watch(_splits(b"".join(upstream), cuts), strip=True)
    assert out == b"".join(plain)
    assert seen == usage and ended


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def chat_bodies(draw: st.DrawFn) -> bytes:
    """A streamed chat request as some client serialises it: members in any order, any spacing."""
    members = draw(st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=5))
    members = {k: v for k, v in members.items() if k not in ("model", "stream", "stream_options", "n", "max_tokens",
               "max_completion_tokens", "max_output_tokens", "temperature", "seed")}  # fmt: skip
    members["model"] = draw(st.text(min_size=1, max_size=10))
    members["stream"] = True
    if draw(st.booleans()):
        members["stream_options"] = {"include_usage": False} if draw(st.booleans()) else {}
    items = list(members.items())
    order = draw(st.permutations(items))
    indent = draw(st.sampled_from([None, 1]))
    text = json.dumps(dict(order), indent=indent, ensure_ascii=draw(st.booleans()))
    return (draw(st.sampled_from(["", " ", "\n"])) + text).encode()


@given(chat_bodies())
@settings(max_examples=300, deadline=None)
def test_the_splice_adds_include_usage_and_changes_nothing_else(body: bytes) -> None:
    view = decode_view(body)
    spliced = with_include_usage(body, view)
    before, after = json.loads(body), json.loads(spliced)
    assert after.pop("stream_options") == {**before.pop("stream_options", {}), "include_usage": True}
    assert after == before
    if view.stream_options is None:
        # The usual case: the bytes of every member are kept as sent, only the option is inserted.
        assert spliced.replace(b'"stream_options":{"include_usage":true},', b"", 1) == body


@pytest.fixture(scope="module")
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture(scope="module")
async def app(upstream: FakeUpstream) -> AsyncIterator[FastProxy]:
    settings = load_settings(
        environ={
            "FASTPROXY_UPSTREAM_URL": "http://up.test/v1/",
            "FASTPROXY_MAX_BODY_BYTES": "4096",
            "FASTPROXY_ACCESS_LOG": "false",
            "FASTPROXY_AUTH": "none",
            "FASTPROXY_DATABASE_URL": "",
            "FASTPROXY_METRICS": "false",
        }
    )
    proxy = FastProxy(settings, upstream_factory=upstream.factory)
    async with lifespan(proxy):
        yield proxy


BODIES = st.one_of(
    st.binary(max_size=300),
    chat_bodies(),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.binary(min_size=4000, max_size=5000),
)
PATHS = st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"])


@given(body=BODIES, cuts=CUTS, path=PATHS, length=st.one_of(st.none(), st.just("exact"), st.text(max_size=6)))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
async def test_arbitrary_bytes_never_raise_out_of_the_handler(
    app: FastProxy, upstream: FakeUpstream, body: bytes, cuts: list[int], path: str, length: str | None
) -> None:
    upstream.responses.clear()
    upstream.queue(FakeResponse(200, [(b"content-type", b"application/json")], [b'{"id":"x","usage":null}']))
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
    if length is not None:
        value = str(len(body)) if length == "exact" else length
        headers.append((b"content-length", value.encode("utf-8", "surrogateescape")))
    res = await request(app, "POST", path, _splits(body, cuts) or [b""], headers)
    assert res.status in (200, 400, 413), (res.status, res.body)
    if res.status != 200:
        error = json.loads(res.body)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
