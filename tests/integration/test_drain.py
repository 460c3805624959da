"""Graceful drain under `fastproxy serve`: SIGTERM to the master makes /readyz 503 at once while the
instance keeps serving for FASTPROXY_DRAIN_SECONDS; in-flight streams finish within the grace; a
stream still open at the deadline ends with an error event the openai SDK raises, never a silent cut."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.integration.servers import Server, start_proxy

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def slow_upstream() -> Iterator[Server]:
    """Streams of 20 chunks, 150 ms apart: 3 s each."""
    server = Server(["mock-upstream", "--delay-ms", "150", "--chunks", "20"])
    yield server
    server.stop()


async def read_stream(url: str) -> str:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:
        chunks = await client.chat.completions.create(model="mock-model", messages=MESSAGES, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])


async def test_sigterm_drains_then_cuts_open_streams_with_an_error_event(slow_upstream: Server) -> None:
    proxy = start_proxy(
        slow_upstream.url + "/v1", FASTPROXY_WORKERS="2", FASTPROXY_DRAIN_SECONDS="1", FASTPROXY_SHUTDOWN_GRACE="1"
    )
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(proxy.url + "/readyz")).status_code == 200
            stream = asyncio.create_task(read_stream(proxy.url))
            await asyncio.sleep(0.5)
            sent = time.monotonic()
            os.kill(proxy.proc.pid, signal.SIGTERM)  # the master only, as a container runtime does
            await asyncio.sleep(0.1)
            ready = await http.get(proxy.url + "/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "draining"
            # Still serving during the drain: liveness and new requests.
            assert (await http.get(proxy.url + "/health")).status_code == 200
            assert (await http.get(proxy.url + "/v1/models")).status_code == 200
            # The stream (3 s) outlives drain + grace (2 s): it ends with the error event, raised by the SDK.
            with pytest.raises(openai.APIError, match="shutting down"):
                await stream
            cut_after = time.monotonic() - sent
        exit_code = await asyncio.to_thread(proxy.proc.wait, 15)
        took = time.monotonic() - sent
    finally:
        proxy.stop_proc_only()
    assert 1.5 < cut_after < 3.0, cut_after
    assert exit_code == 0 and took < 8, (exit_code, took)
    assert "open streams ended with an error event" in proxy.log() or "server_shutting_down" in proxy.log()
    proxy.log_path.unlink(missing_ok=True)


async def test_stream_shorter_than_the_grace_finishes_whole(slow_upstream: Server) -> None:
    proxy = start_proxy(
        slow_upstream.url + "/v1", FASTPROXY_WORKERS="1", FASTPROXY_DRAIN_SECONDS="0.5", FASTPROXY_SHUTDOWN_GRACE="5"
    )
    try:
        stream = asyncio.create_task(read_stream(proxy.url))
        direct = asyncio.create_task(read_stream(slow_upstream.url))  # the same stream, not through the proxy
        await asyncio.sleep(0.3)
        os.kill(proxy.proc.pid, signal.SIGTERM)
        text = await stream  # 3 s of stream, within 0.5 + 5 s: every chunk arrives
        assert text == await direct and len(text) > 20
        assert await asyncio.to_thread(proxy.proc.wait, 15) == 0
    finally:
        proxy.stop()
