"""The ASGI app in-process with a fake upstream: /metrics, Server-Timing, metrics switched off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fastproxy.app import FastProxy
from fastproxy.core.settings import Settings
from fastproxy.core.types import Message
from fastproxy.upstream import HeaderList, Upstream, UpstreamResponse

BODY = b'{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}'


class _Response:
    def __init__(self) -> None:
        self.status = 200
        self.headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]

    async def chunks(self) -> AsyncIterator[bytes]:
        yield BODY

    async def read(self) -> bytes:
        return BODY

    async def release(self) -> None:
        return None

    async def abort(self) -> None:
        return None


class _Upstream:
    async def send(
        self, method: str, url: str, headers: HeaderList, body: bytes, *, stream: bool = False
    ) -> UpstreamResponse:
        return _Response()

    async def close(self) -> None:
        return None


def _fake(settings: Settings) -> Upstream:
    return _Upstream()


async def _request(
    app: FastProxy, method: str, path: str, body: bytes = b"", headers: list[Any] | None = None
) -> dict[str, Any]:
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": headers or [],
        "client": ("127.0.0.1", 5000),
    }
    sent = asyncio.Event()
    messages: list[Message] = []
    first = True

    async def receive() -> Message:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": body, "more_body": False}
        await sent.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        messages.append(message)

    await app(scope, receive, send)
    sent.set()
    start = messages[0]
    return {
        "status": start["status"],
        "headers": {k.decode(): v.decode() for k, v in start["headers"]},
        "body": b"".join(m.get("body", b"") for m in messages[1:]),
    }


@pytest.fixture
async def running(request: pytest.FixtureRequest) -> AsyncIterator[FastProxy]:
    app = FastProxy(
        Settings(access_log=False, auth="none", database_url="", **getattr(request, "param", {})),
        upstream_factory=_fake,
    )
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.ensure_future(app({"type": "lifespan"}, inbox.get, outbox.put))
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    yield app
    await inbox.put({"type": "lifespan.shutdown"})
    assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
    await task


CHAT = b'{"model": "gpt-a", "messages": []}'


async def test_metrics_and_server_timing(running: FastProxy) -> None:
    resp = await _request(running, "POST", "/v1/chat/completions", CHAT)
    assert resp["status"] == 200 and resp["body"] == BODY
    assert resp["headers"]["server-timing"].startswith("proxy;dur=")
    # The scraping worker flushes its own pending counts before rendering.
    metrics = await _request(running, "GET", "/metrics")
    assert metrics["headers"]["content-type"].startswith("text/plain")
    text = metrics["body"].decode()
    assert 'fastproxy_requests_total{endpoint="chat.completions",model="gpt-a",status="2xx"} 1.0' in text
    assert 'fastproxy_tokens_total{kind="completion",model="gpt-a"} 4.0' in text
    assert "fastproxy_requests_in_flight 0.0" in text


@pytest.mark.parametrize("running", [{"metrics": False}, {"metrics_port": 9999}], indirect=True)
async def test_no_metrics_route_when_off_or_on_its_own_port(running: FastProxy) -> None:
    assert running.state is not None
    resp = await _request(running, "GET", "/metrics")
    assert resp["status"] == 404
    # The proxy works the same without metrics.
    assert (await _request(running, "POST", "/v1/chat/completions", CHAT))["status"] == 200


class _Stuck(_Upstream):
    """An upstream that never answers."""

    async def send(
        self, method: str, url: str, headers: HeaderList, body: bytes, *, stream: bool = False
    ) -> UpstreamResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_in_flight_ends_however_the_request_ends() -> None:
    app = FastProxy(Settings(access_log=False, auth="none", database_url=""), upstream_factory=lambda s: _Stuck())
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    lifespan = asyncio.ensure_future(app({"type": "lifespan"}, inbox.get, outbox.put))
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    assert app.state is not None and app.state.metrics is not None
    metrics = app.state.metrics
    try:
        # Cancelled while waiting for the upstream (the server dropped the task).
        stuck = asyncio.ensure_future(_request(app, "POST", "/v1/chat/completions", CHAT))
        for _ in range(100):
            if metrics.serving == 1:
                break
            await asyncio.sleep(0.01)
        assert metrics.serving == 1
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        assert metrics.serving == 0
        # Refused by the proxy itself.
        assert (await _request(app, "POST", "/v1/chat/completions", b"{not json"))["status"] == 400
        assert metrics.serving == 0
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await lifespan
