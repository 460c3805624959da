"""The mock provider's failure modes, keys, stats and Azure shape, driven through its ASGI callable."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from fastproxy.mock.modes import ModeError, merge, parse
from fastproxy.mock.server import MockUpstream, StreamCut
from tests.asgi import Result, request

CHAT = "/v1/chat/completions"
DONE = b"data: [DONE]\n\n"
STREAM_ERROR = (
    b'data: {"error": {"message": "mock stream error", "type": "server_error", "param": null, "code": null}}\n\n'
)


def body(model: str, stream: bool = False, **extra: Any) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream, **extra}
    ).encode()


async def chat(
    app: MockUpstream, model: str, stream: bool = False, headers: list[tuple[bytes, bytes]] | None = None, **kw: Any
) -> Result:
    return await request(app, "POST", CHAT, body(model, stream), headers, **kw)


def error(result: Result) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(result.body)["error"]
    assert set(doc) == {"message", "type", "param", "code"}
    return doc


async def stats(app: MockUpstream) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((await request(app, "GET", "/_mock/stats")).body)
    return doc


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (500, "server_error", None),
        (503, "server_error", None),
        (529, "server_error", None),
        (429, "requests", "rate_limit_exceeded"),
        (400, "invalid_request_error", None),
        (401, "invalid_request_error", "invalid_api_key"),
    ],
)
async def test_status_answers_an_openai_error(status: int, kind: str, code: str | None) -> None:
    result = await chat(MockUpstream(), f"gpt-4o~status={status}")
    assert result.status == status
    assert error(result) == {"message": f"mock error {status}", "type": kind, "param": None, "code": code}
    assert b"retry-after" not in result.headers


async def test_context_length_exceeded_reads_like_openai() -> None:
    for model in ("m~status=400,code=context_length_exceeded", "m~code=context_length_exceeded"):
        result = await chat(MockUpstream(), model)
        assert result.status == 400
        doc = error(result)
        assert doc["type"] == "invalid_request_error"
        assert doc["code"] == "context_length_exceeded"
        assert doc["message"].startswith("This model's maximum context length is ")


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_headers_with_429_and_503(status: int) -> None:
    result = await chat(MockUpstream(), f"m~status={status},retry_after=1.25")
    assert result.status == status
    assert result.headers[b"retry-after"] == b"2"
    assert result.headers[b"retry-after-ms"] == b"1250"
    assert b"retry-after" not in (await chat(MockUpstream(), "m~status=500,retry_after=1")).headers


async def test_hang_sends_nothing_and_returns_when_the_client_leaves() -> None:
    app = MockUpstream()
    started = time.monotonic()
    result = await chat(app, "m~hang", disconnect_after_s=0.3)
    assert 0.25 < time.monotonic() - started < 2
    assert result.status == 0
    assert result.chunks == []


@pytest.mark.parametrize("stream", [False, True])
async def test_first_token_ms_delays_the_headers(stream: bool) -> None:
    times: list[float] = []
    app = MockUpstream()

    async def timed_send(message: Any) -> None:
        times.append(time.monotonic())

    started = time.monotonic()
    await app(_scope(), _receive(body("m~first_token_ms=200", stream)), timed_send)
    assert times
    assert times[0] - started >= 0.19


async def test_first_token_ms_gives_up_when_the_client_leaves() -> None:
    result = await chat(MockUpstream(), "m~first_token_ms=5000", disconnect_after_s=0.1)
    assert result.status == 0


async def test_cut_after_sends_k_content_events_then_aborts() -> None:
    app = MockUpstream()
    sent: list[bytes] = []

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            sent.append(b"start")
        elif message.get("body"):
            assert message["more_body"] is True  # the body is never ended cleanly
            sent.append(message["body"])

    data = body("gpt-4o~cut_after=3", stream=True)
    with pytest.raises(StreamCut):
        await app(_scope(), _receive(data), send)
    assert sent[0] == b"start"
    assert len(sent) == 4
    assert all(b'"content"' in chunk for chunk in sent[1:])
    assert b'"model":"gpt-4o~cut_after=3"' in sent[1]


async def test_cut_after_on_the_responses_api_keeps_response_created() -> None:
    data = json.dumps({"model": "m~cut_after=2", "input": "hi", "stream": True}).encode()
    sent: list[bytes] = []

    async def send(message: Any) -> None:
        if message.get("body"):
            sent.append(message["body"])

    with pytest.raises(StreamCut):
        await MockUpstream()(_scope("/v1/responses"), _receive(data), send)
    assert [chunk.split(b"\n")[0] for chunk in sent] == [
        b"event: response.created",
        b"event: response.output_text.delta",
        b"event: response.output_text.delta",
    ]


async def test_stall_after_keeps_quiet_until_the_client_leaves() -> None:
    app = MockUpstream()
    started = time.monotonic()
    result = await chat(app, "m~stall_after=2", stream=True, disconnect_after_s=0.3)
    assert time.monotonic() - started >= 0.25
    assert result.status == 200
    assert len(result.chunks) == 2
    assert DONE not in result.body
    assert (await stats(app))["streams_disconnected"] == 1


async def test_error_event_after_ends_cleanly_without_done() -> None:
    app = MockUpstream()
    result = await chat(app, "m~error_event_after=1", stream=True)
    assert result.status == 200
    assert len(result.chunks) == 2
    assert b'"content":"The"' in result.chunks[0]
    assert result.chunks[1] == STREAM_ERROR
    assert DONE not in result.body
    assert b'finish_reason":"stop' not in result.body


async def test_stream_directives_leave_non_streamed_requests_alone() -> None:
    result = await chat(MockUpstream(), "m~cut_after=1")
    assert result.status == 200
    assert json.loads(result.body)["choices"][0]["message"]["content"].startswith("The quick")


async def test_fail_first_fails_then_recovers_per_model_string() -> None:
    app = MockUpstream()
    assert [(await chat(app, "m~fail_first=2,status=503")).status for _ in range(4)] == [503, 503, 200, 200]
    assert [(await chat(app, "m~fail_first=1")).status for _ in range(2)] == [500, 200]
    assert (await request(app, "POST", "/_mock/reset")).body == b"{}"
    assert (await chat(app, "m~fail_first=2,status=503")).status == 503


async def test_ratelimit_remaining_headers_on_success_only() -> None:
    result = await chat(MockUpstream(), "m~ratelimit_remaining=7", stream=True)
    assert result.status == 200
    assert result.headers[b"x-ratelimit-limit-requests"] == b"1000"
    assert result.headers[b"x-ratelimit-remaining-requests"] == b"7"
    assert result.headers[b"x-ratelimit-reset-requests"] == b"1s"
    assert result.headers[b"x-ratelimit-limit-tokens"] == b"100000"
    assert result.headers[b"x-ratelimit-remaining-tokens"] == b"700"
    assert result.headers[b"x-ratelimit-reset-tokens"] == b"1s"
    failed = await chat(MockUpstream(), "m~ratelimit_remaining=7,status=500")
    assert b"x-ratelimit-remaining-requests" not in failed.headers


@pytest.mark.parametrize(
    ("model", "named"),
    [
        ("m~nope=1", "nope"),
        ("m~status=abc", "status"),
        ("m~status=200", "status"),
        ("m~cut_after=-1", "cut_after"),
        ("m~retry_after=nan", "retry_after"),
        ("m~hang=1", "hang"),
        ("m~", "''"),
        ("m~status=500,status=503", "status"),
        ("m~cut_after=1,stall_after=1", "cut_after"),
    ],
)
async def test_bad_directives_are_a_400_naming_them(model: str, named: str) -> None:
    result = await chat(MockUpstream(), model)
    assert result.status == 400
    doc = error(result)
    assert doc["type"] == "invalid_request_error"
    assert named in doc["message"]


async def test_header_and_env_modes_with_precedence() -> None:
    app = MockUpstream(mode="status=503,retry_after=3")
    result = await chat(app, "m")
    assert (result.status, result.headers[b"retry-after"]) == (503, b"3")
    result = await chat(app, "m", headers=[(b"x-mock-mode", b"status=429")])
    assert (result.status, result.headers[b"retry-after"]) == (429, b"3")
    assert (await chat(app, "m~status=500", headers=[(b"x-mock-mode", b"status=429")])).status == 500
    assert (await chat(MockUpstream(), "m", headers=[(b"x-mock-mode", b"bogus")])).status == 400
    with pytest.raises(ModeError):
        MockUpstream(mode="status=1")


async def test_rejected_keys_get_401_before_anything_else() -> None:
    app = MockUpstream(reject_keys=frozenset({"sk-bad-0001", "az-bad-0002"}))
    for header in ((b"authorization", b"Bearer sk-bad-0001"), (b"api-key", b"az-bad-0002")):
        result = await chat(app, "m~hang", headers=[header])
        assert result.status == 401
        doc = error(result)
        assert (doc["type"], doc["code"]) == ("invalid_request_error", "invalid_api_key")
        assert "sk-bad" not in doc["message"]
        assert "az-bad" not in doc["message"]
    assert (await chat(app, "m", headers=[(b"authorization", b"Bearer sk-good")])).status == 200


async def test_stats_count_by_credential_and_model_and_reset() -> None:
    app = MockUpstream()
    await chat(app, "m", headers=[(b"authorization", b"Bearer k1")])
    await chat(app, "m", stream=True, headers=[(b"authorization", b"Bearer k1")])
    await chat(app, "m~status=500", headers=[(b"api-key", b"k2")])
    await chat(app, "other")
    doc = await stats(app)
    assert doc == {
        "requests": 4,
        "streams_started": 1,
        "streams_completed": 1,
        "streams_disconnected": 0,
        "auth": {"Bearer k1": 2, "k2": 1, "none": 1},
        "models": {"m": 2, "m~status=500": 1, "other": 1},
    }
    reset = await request(app, "POST", "/_mock/reset")
    assert (reset.status, reset.body) == (200, b"{}")
    assert await stats(app) == {
        "requests": 0,
        "streams_started": 0,
        "streams_completed": 0,
        "streams_disconnected": 0,
        "auth": {},
        "models": {},
    }


@pytest.mark.parametrize("kind", ["chat/completions", "completions", "embeddings"])
async def test_azure_paths_use_the_deployment_as_model(kind: str) -> None:
    app = MockUpstream()
    path = f"/openai/deployments/my-gpt~status=503/{kind}"
    failed = await request(
        app, "POST", path, b'{"messages": [], "prompt": "x", "input": "x"}', query=b"api-version=2024-10-21"
    )
    assert failed.status == 503
    path = f"/openai/deployments/my-gpt/{kind}"
    result = await request(
        app, "POST", path, b'{"prompt": "x", "input": "x", "messages": []}', query=b"api-version=2024-10-21"
    )
    assert result.status == 200
    assert json.loads(result.body)["model"] == "my-gpt"
    last = json.loads((await request(app, "GET", "/_mock/last")).body)
    assert (last["path"], last["api_version"]) == (path, "2024-10-21")
    named = await request(app, "POST", path, b'{"model": "from-body", "input": "x", "prompt": "x", "messages": []}')
    assert json.loads(named.body)["model"] == "from-body"


async def test_the_model_field_echoes_the_full_model_string() -> None:
    result = await chat(MockUpstream(), "gpt-4o~ratelimit_remaining=5")
    assert json.loads(result.body)["model"] == "gpt-4o~ratelimit_remaining=5"


async def test_bad_embeddings_body_is_a_400() -> None:
    result = await request(MockUpstream(), "POST", "/v1/embeddings", b"{not json")
    assert result.status == 400
    assert error(result)["type"] == "invalid_request_error"


def test_merge_overrides_per_directive() -> None:
    mode = merge(parse("status=503,first_token_ms=10"), "status=429", "retry_after=2")
    assert (mode.status, mode.first_token_ms, mode.retry_after) == (429, 10.0, 2.0)


def _scope(path: str = CHAT) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "query_string": b"", "headers": []}


def _receive(data: bytes) -> Any:
    messages = [{"type": "http.request", "body": data, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    return receive
