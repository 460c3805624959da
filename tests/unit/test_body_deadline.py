"""A request body that does not arrive within body_read_timeout is a 408, on every API that reads bodies."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

from fastproxy.app import FastProxy
from fastproxy.core.deadline import BodyDeadline
from fastproxy.core.errors import RequestTimeout
from fastproxy.core.settings import load_settings
from fastproxy.core.types import Message
from tests.asgi import Result, lifespan, request
from tests.fakes import FakeResponse, FakeUpstream

ADMIN = [(b"authorization", b"Bearer admin-deadline-0001")]


@pytest.fixture
async def app(tmp_path: object) -> AsyncIterator[tuple[FastProxy, FakeUpstream]]:
    upstream = FakeUpstream()
    settings = load_settings(
        environ={
            "FASTPROXY_UPSTREAM_URL": "http://up.test/v1/",
            "FASTPROXY_AUTH": "none",
            "FASTPROXY_DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite",
            "FASTPROXY_ADMIN_KEY": "admin-deadline-0001",
            "FASTPROXY_ACCESS_LOG": "false",
            "FASTPROXY_BODY_READ_TIMEOUT": "0.3",
            "FASTPROXY_USAGE_JOURNAL_DIR": f"{tmp_path}/journal",
        }
    )
    proxy = FastProxy(settings, upstream_factory=upstream.factory)
    async with lifespan(proxy):
        yield proxy, upstream


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/admin/users"])
async def test_a_body_that_never_ends_is_a_408(app: tuple[FastProxy, FakeUpstream], path: str) -> None:
    proxy, upstream = app
    started = time.monotonic()
    # One chunk announcing more, then nothing: the client keeps the connection and never finishes its body.
    res = await _never_ending(proxy, path)
    elapsed = time.monotonic() - started
    assert res.status == 408, res.body
    error = json.loads(res.body)["error"]
    assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
    assert res.headers[b"connection"] == b"close"
    # Swept once a second: the answer comes between the timeout and the timeout plus one sweep.
    assert 0.3 <= elapsed < 2.5
    assert upstream.sent == []
    assert proxy.state is not None and proxy.state.body_deadline.reading == 0


async def _never_ending(proxy: FastProxy, path: str) -> Result:
    sent = [{"type": "http.request", "body": b'{"model": "m", ', "more_body": True}]
    never = asyncio.Event()
    result = Result()

    async def receive() -> Message:
        if sent:
            return sent.pop()
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            result.status, result.headers = message["status"], dict(message["headers"])
        elif message.get("body"):
            result.chunks.append(message["body"])

    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"", "headers": ADMIN,
             "client": ("127.0.0.1", 5000)}  # fmt: skip
    await proxy(scope, receive, send)
    return result


async def test_a_body_in_many_chunks_within_the_timeout_is_served(app: tuple[FastProxy, FakeUpstream]) -> None:
    proxy, upstream = app
    upstream.queue(FakeResponse(200, [(b"content-type", b"application/json")], [b'{"id":"x"}']))
    body = b'{"model": "m", "messages": []}'
    res = await request(proxy, "POST", "/v1/chat/completions", [body[i : i + 3] for i in range(0, len(body), 3)])
    assert res.status == 200 and res.body == b'{"id":"x"}'
    # Past the deadline of that request nothing is cancelled: it was taken off the list when its body was in.
    await asyncio.sleep(1.2)
    assert proxy.state is not None and proxy.state.body_deadline.reading == 0


async def test_sweep_cancels_only_readers_past_their_deadline() -> None:
    deadline = BodyDeadline(10.0)
    gate = asyncio.Event()

    async def reader() -> str:
        try:
            with deadline:
                await gate.wait()
        except RequestTimeout as err:
            return err.code or ""
        return "read"

    slow, fast = asyncio.ensure_future(reader()), asyncio.ensure_future(reader())
    await asyncio.sleep(0)
    assert deadline.reading == 2
    assert deadline.sweep(time.monotonic() + 5) == 0
    # Only `slow` is late: move `fast`'s deadline forward (as if it had started later).
    deadline._reading[fast] = time.monotonic() + 60
    assert deadline.sweep(time.monotonic() + 11) == 1
    gate.set()
    assert await slow == "request_timeout"
    assert await fast == "read"
    assert deadline.reading == 0
