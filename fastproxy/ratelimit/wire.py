"""One pipelined Redis connection for the limiter's script calls: the request path's only Redis I/O.

A script call through redis-py costs about 90 µs of CPU here (connection pool, retry wrapper, event
dispatch, packing in Python); this channel costs about 20 (bench/ratelimit/wire.py measures both):
an asyncio Protocol on the loop's own transport, replies parsed by hiredis (the parser redis-py itself
uses), each command packed with one join. It speaks only what the limiter needs (EVALSHA, SCRIPT LOAD,
and AUTH / SELECT when it connects); everything else keeps using redis-py.

Replies come back in the order the commands were written, so a waiter queue matches them. When a call
times out, the connection is dropped (later replies could no longer be matched to their callers) and
the next call opens a new one.

    ChannelError             no connection, a lost one, a timeout, or bytes that are not RESP
    ReplyError               Redis answered with an error (e.g. NOSCRIPT, WRONGTYPE)
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, cast

import hiredis


class ChannelError(ConnectionError):
    """The connection failed, was lost, or a reply did not come in time."""


class ReplyError(Exception):
    """Redis answered this command with an error reply."""


def bulk(value: str | int | bytes) -> bytes:
    """One command argument in RESP's bulk-string form (callers may pack constant arguments once)."""
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _pack(args: tuple[str | int | bytes, ...]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(map(bulk, args))


_EVALSHA = bulk("EVALSHA")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered as asyncio.Transport subclasses: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiters = self.waiters
        try:
            while (reply := self.reader.gets()) is not False:
                future = waiters.popleft()
                if future.done():  # its caller timed out; the connection is being dropped anyway
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(ReplyError(str(reply)))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            self.fail(ChannelError(f"unexpected bytes from Redis: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail_waiters(ChannelError(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def fail(self, exc: ChannelError) -> None:
        """Give every waiting caller `exc` and drop the connection."""
        self.lost = True
        if self.transport is not None:
            self.transport.abort()
        self._fail_waiters(exc)

    def _fail_waiters(self, exc: ChannelError) -> None:
        while self.waiters:
            future = self.waiters.popleft()
            if not future.done():
                future.set_exception(ChannelError(str(exc)))


class ScriptChannel:
    """Sends commands over one connection (opened on first use, again after a failure).

    `params` are redis-py's connection kwargs (host, port, path, db, username, password), so the
    channel reaches the same server as the redis-py client built from the same URL.
    """

    def __init__(self, params: Mapping[str, Any], timeout: float, tls: bool = False) -> None:
        self._host = params.get("host", "localhost")
        self._port = int(params.get("port", 6379))
        self._path: str | None = params.get("path")
        self._setup: list[tuple[str | int | bytes, ...]] = []
        password, username = params.get("password"), params.get("username")
        if password:
            self._setup.append(("AUTH", username, password) if username else ("AUTH", password))
        if int(params.get("db") or 0):
            self._setup.append(("SELECT", int(params["db"])))
        self._tls = ssl.create_default_context() if tls else None
        self._timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def call(self, *args: str | int | bytes) -> Any:
        """One command's reply. Raises ChannelError or ReplyError."""
        return await self._packed(_pack(args))

    async def evalsha(self, sha: str, script: str, keys: Sequence[bytes], args: Sequence[bytes]) -> Any:
        """EVALSHA with `keys` and `args` already in bulk form (see `bulk`), loading the script first
        when Redis does not know it (after a restart or a SCRIPT FLUSH)."""
        head = b"*%d\r\n%s%s%s" % (3 + len(keys) + len(args), _EVALSHA, bulk(sha), bulk(len(keys)))
        packed = b"".join((head, *keys, *args))
        try:
            return await self._packed(packed)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.call("SCRIPT", "LOAD", script)
        return await self._packed(packed)

    async def _packed(self, packed: bytes) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        return await self._send(protocol, packed)

    def _send(self, protocol: _Protocol, packed: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        protocol.waiters.append(future)
        assert protocol.transport is not None
        protocol.transport.write(packed)
        timer = loop.call_later(self._timeout, _expire, protocol, future, self._timeout)
        future.add_done_callback(lambda _: timer.cancel())
        return future

    async def _connect(self) -> _Protocol:
        # Concurrent callers share one attempt: a burst after a failure opens one connection, not many.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done():
                self._connecting = None

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        protocol: _Protocol | None = None
        try:
            async with asyncio.timeout(self._timeout):
                if self._path:
                    _, protocol = await loop.create_unix_connection(_Protocol, self._path)
                else:
                    _, protocol = await loop.create_connection(_Protocol, self._host, self._port, ssl=self._tls)
                for command in self._setup:
                    await self._send(protocol, _pack(command))
        except (OSError, TimeoutError, ReplyError) as exc:
            error = ChannelError(f"cannot connect to Redis: {type(exc).__name__}: {exc}")
            if protocol is not None:
                protocol.fail(error)
            raise error from exc
        self._protocol = protocol
        return protocol

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.fail(ChannelError("channel closed"))
            self._protocol = None


def _expire(protocol: _Protocol, future: asyncio.Future[Any], timeout: float) -> None:
    if not future.done():
        protocol.fail(ChannelError(f"no reply from Redis within {timeout} s"))
