"""The ASGI app driven in-process against a fake upstream: what goes up, what comes back."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import msgspec
import pytest

from fastproxy.app import FastProxy
from fastproxy.core.records import RequestRecord
from fastproxy.core.settings import load_settings
from tests.asgi import Result, lifespan, request
from tests.fakes import FakeResponse, FakeUpstream

SSE = [(b"content-type", b"text/event-stream")]
JSON = [(b"content-type", b"application/json")]
CHAT = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}'


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
async def app(upstream: FakeUpstream) -> AsyncIterator[FastProxy]:
    settings = load_settings(
        environ={
            "FASTPROXY_UPSTREAM_URL": "http://up.test/v1/",
            "FASTPROXY_UPSTREAM_API_KEY": "sk-up-0000000000001111",
            "FASTPROXY_MAX_BODY_BYTES": "4096",
            "FASTPROXY_ACCESS_LOG": "false",
            # The proxy core alone: keys are tested in test_key_auth and the key end-to-end tests.
            "FASTPROXY_AUTH": "none",
            "FASTPROXY_DATABASE_URL": "",
        }
    )
    proxy = FastProxy(settings, upstream_factory=upstream.factory)
    async with lifespan(proxy):
        yield proxy
    assert upstream.closed


def records(app: FastProxy) -> list[RequestRecord]:
    """Capture records with one more observer (State is frozen: swap in a copy that has it)."""
    seen: list[RequestRecord] = []
    assert app.state is not None
    app.state = dataclasses.replace(app.state, observers=(*app.state.observers, seen.append))
    return seen


async def test_forwarded_request(app: FastProxy, upstream: FakeUpstream) -> None:
    upstream.queue(FakeResponse(200, [*JSON, (b"x-request-id", b"upstream-id")], [b'{"usage":{"total_tokens":3}}']))
    headers = [
        (b"authorization", b"Bearer sk-fp-client"),
        (b"connection", b"keep-alive"),
        (b"accept-encoding", b"gzip"),
        (b"openai-organization", b"org-1"),
        (b"x-request-id", b"client-rid"),
    ]
    res = await request(app, "POST", "/v1/chat/completions", b'{"model":"m"}', headers, query=b"api-version=1")
    method, url, sent, body = upstream.sent[0]
    assert (method, url, body) == ("POST", "http://up.test/v1/chat/completions?api-version=1", b'{"model":"m"}')
    names = {k for k, _ in sent}
    assert ("authorization", "Bearer sk-up-0000000000001111") in sent
    assert ("openai-organization", "org-1") in sent
    assert ("accept-encoding", "identity") in sent
    assert "connection" not in names
    assert ("x-request-id", "client-rid") in sent
    assert res.status == 200
    assert res.headers[b"x-request-id"] == b"client-rid"
    assert res.body == b'{"usage":{"total_tokens":3}}'


async def test_include_usage_spliced_and_undone(app: FastProxy, upstream: FakeUpstream) -> None:
    seen = records(app)
    upstream.queue(
        FakeResponse(
            200,
            SSE,
            [
                b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n',
                b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3}}\n\n',
                b"data: [DONE]\n\n",
            ],
        )
    )
    res = await request(app, "POST", "/v1/chat/completions", CHAT)
    sent_body = upstream.sent[0][3]
    assert msgspec.json.decode(sent_body)["stream_options"] == {"include_usage": True}
    assert sent_body.endswith(CHAT[1:])  # the client's bytes follow the splice untouched
    assert res.body == b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: [DONE]\n\n'
    assert res.headers[b"x-accel-buffering"] == b"no"
    assert seen[0].usage is not None
    assert seen[0].usage.total == 3


async def test_client_asking_usage_gets_it(app: FastProxy, upstream: FakeUpstream) -> None:
    chunks = [b'data: {"choices":[],"usage":{"total_tokens":3}}\n\n', b"data: [DONE]\n\n"]
    upstream.queue(FakeResponse(200, SSE, chunks))
    body = CHAT[:-1] + b',"stream_options":{"include_usage":true}}'
    res = await request(app, "POST", "/v1/chat/completions", body)
    assert upstream.sent[0][3] == body
    assert res.chunks == chunks


async def test_stream_options_without_include_usage(app: FastProxy, upstream: FakeUpstream) -> None:
    upstream.queue(FakeResponse(200, SSE, [b"data: [DONE]\n\n"]))
    body = CHAT[:-1] + b',"stream_options":{"include_usage":false}}'
    await request(app, "POST", "/v1/chat/completions", body)
    assert msgspec.json.decode(upstream.sent[0][3])["stream_options"] == {"include_usage": True}


async def test_disconnect_aborts_upstream(app: FastProxy, upstream: FakeUpstream) -> None:
    seen = records(app)
    resp = upstream.queue(FakeResponse(200, SSE, [b'data: {"choices":[]}\n\n'] * 1000, gap=0.001))
    res = await request(app, "POST", "/v1/chat/completions", CHAT, disconnect_after_chunks=3)
    assert resp.aborted
    assert not resp.released
    assert 3 <= len(res.chunks) < 1000
    assert seen[0].disconnected
    assert seen[0].status == 499


async def test_streamed_body_over_limit(app: FastProxy, upstream: FakeUpstream) -> None:
    res = await request(app, "POST", "/v1/chat/completions", [b"x" * 3000, b"x" * 3000, b"x"])
    assert_error(res, 413, "request_too_large")
    assert upstream.sent == []


async def test_declared_length_over_limit(app: FastProxy, upstream: FakeUpstream) -> None:
    res = await request(app, "POST", "/v1/embeddings", b"{}", [(b"content-length", b"999999")])
    assert_error(res, 413, "request_too_large")


async def test_bad_content_length(app: FastProxy) -> None:
    res = await request(app, "POST", "/v1/embeddings", b"{}", [(b"content-length", b"-5")])
    assert_error(res, 400, None)


async def test_upstream_unreachable(app: FastProxy, upstream: FakeUpstream) -> None:
    upstream.unreachable = True
    res = await request(app, "POST", "/v1/embeddings", b'{"model":"e","input":"x"}')
    assert_error(res, 502, "upstream_unreachable")


async def test_unexpected_error_is_a_generic_500(app: FastProxy, upstream: FakeUpstream) -> None:
    # No response queued: the fake raises IndexError, standing in for a bug.
    res = await request(app, "POST", "/v1/embeddings", b'{"model":"e","input":"x"}')
    assert_error(res, 500, None)
    assert b"IndexError" not in res.body
    assert b"Traceback" not in res.body


def assert_error(res: Result, status: int, code: str | None) -> None:
    assert res.status == status
    error = msgspec.json.decode(res.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
