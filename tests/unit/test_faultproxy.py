"""bench/faultproxy.py, the chaos run's network fault injector: each mode does to a live connection what it says."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from bench.faultproxy import FaultProxy

REQUEST = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()


@pytest.fixture
async def fault() -> AsyncIterator[FaultProxy]:
    server = await asyncio.start_server(_answer, "127.0.0.1", 0)
    proxy = FaultProxy("127.0.0.1", server.sockets[0].getsockname()[1])
    await proxy.start()
    clients: list[asyncio.StreamWriter] = []
    proxy.test_clients = clients  # type: ignore[attr-defined]
    yield proxy
    for writer in clients:  # closed here, or they would warn as unclosed sockets
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    await proxy.close()
    server.close()
    await server.wait_closed()


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _connect(proxy: FaultProxy) -> Conn:
    conn = await asyncio.open_connection("127.0.0.1", proxy.port)
    proxy.test_clients.append(conn[1])  # type: ignore[attr-defined]
    return conn


async def _ask(proxy: FaultProxy, conn: Conn | None = None) -> bytes:
    reader, writer = conn or await _connect(proxy)
    writer.write(REQUEST)
    return await asyncio.wait_for(reader.read(4096), 1.0)


async def test_pass_then_503_then_reset_then_hang_then_pass_again(fault: FaultProxy) -> None:
    assert (await _ask(fault)).endswith(b"ok")
    pooled = await _connect(fault)
    assert (await _ask(fault, pooled)).endswith(b"ok")

    fault.mode = "5xx"
    answer = await _ask(fault, pooled)  # a pooled connection gets it too
    assert answer.startswith(b"HTTP/1.1 503 ") and b"connection: close" in answer and b'"server_error"' in answer

    fault.mode = "reset"
    with pytest.raises(ConnectionResetError):
        await _ask(fault)

    fault.mode = "hang"
    hung = await _connect(fault)
    with pytest.raises(TimeoutError):
        await _ask(fault, hung)

    fault.mode = "pass"  # the hung connection lost bytes: it is reset; new ones work
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(hung[0].read(4096), 1.0)
    assert (await _ask(fault)).endswith(b"ok")
