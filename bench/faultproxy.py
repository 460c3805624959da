"""A TCP forwarder between the proxies and their upstream that can reset or hang every connection.

The mock upstream's own failure modes (fastproxy/mock/modes.py) are chosen per request; a network
fault is not: when it starts, connections already open are hit too (a stream half sent, a keep-alive
connection in the proxy's pool). Modes, switched at any time with `mode = ...`:

- `pass`:  bytes flow both ways untouched;
- `reset`: every open connection is reset at once (TCP RST: SO_LINGER 0, then close), and a new one
           is reset as soon as it sends its request;
- `5xx`:   a request that arrives (on a new or a pooled connection) is answered 503 with an OpenAI
           error body and `Connection: close`, as an overloaded provider does; responses already
           flowing finish;
- `hang`:  connections stay open and nothing moves either way (bytes read are dropped): the
           proxy sees an upstream that accepted the request and never answers. A connection that
           went through a hang is reset once the hang ends, since the bytes it lost broke its framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Literal

Mode = Literal["pass", "reset", "hang", "5xx"]
_LINGER_0 = struct.pack("ii", 1, 0)
_BODY = b'{"error": {"message": "injected fault: upstream overloaded", "type": "server_error", "param": null, "code": null}}'
_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
    + b"content-length: %d\r\n\r\n" % len(_BODY)
    + _BODY
)


class _Conn:
    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.writers = (client, upstream)
        self.tainted = False  # lost bytes in a hang: its HTTP framing is broken for good
        self.answered = False  # got the injected 503: closing

    def reset(self) -> None:
        for writer in self.writers:
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(OSError):
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
            writer.transport.abort()


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._mode: Mode = "pass"
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0
        self.resets = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.reset()
        # Each handler ends once its sockets are reset; waiting here keeps asyncio.run from cancelling them.
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        self._mode = mode
        for conn in list(self._conns):
            if mode == "reset" or (mode == "pass" and conn.tainted):
                self._reset(conn)

    def _reset(self, conn: _Conn) -> None:
        self.resets += 1
        self._conns.discard(conn)
        conn.reset()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        conn = _Conn(writer, up_writer)
        self._conns.add(conn)
        try:
            await asyncio.gather(self._pump(conn, reader, up_writer), self._pump(conn, up_reader, writer))
        finally:
            self._conns.discard(conn)
            for w in (writer, up_writer):
                w.transport.abort()

    async def _pump(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = conn.writers[0]
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if conn.answered:
                    continue  # the rest of a request we already answered 503
                if self._mode == "5xx" and writer is not client:
                    conn.answered = True
                    client.write(_503)
                    await client.drain()
                    client.close()
                    conn.writers[1].transport.abort()
                    return
                if self._mode == "reset":
                    self._reset(conn)
                    return
                if self._mode == "hang":
                    conn.tainted = True
                    continue
                writer.write(data)
                await writer.drain()
            # One side closed cleanly: pass the close on (half-close as TCP does).
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()
