"""One pipelined Redis connection: the request path's Redis I/O (the limiter's script calls, the response
cache's GET and SET).

A script call through redis-py costs about 125 µs of CPU here (connection pool, retry wrapper, event
dispatch, packing in Python); this channel costs about 37 (bench/RESULTS.md, "History": the rate-limiter cost):
an asyncio Protocol on the loop's own transport, replies parsed by hiredis (the parser redis-py itself
uses), each command packed with one join. It speaks only what its users need (EVALSHA, SCRIPT LOAD, GET,
SET, and AUTH / SELECT when it connects); everything else keeps using redis-py. Shared here, below the
adapters, so the limiter and the cache use one implementation (each its own connection).

`submit` hands a reply to a plain callback, called from the protocol's own data_received, so the
limiter needs no task per call (its added latency at a moderate rate did not change with it, though:
bench/RESULTS.md). Replies come back in the order the commands were written, so a queue of callbacks matches them. When
a reply does not come in time, the connection is dropped (later replies could no longer be matched to
their callers) and the next command opens a new one.

    ChannelError             no connection, a lost one, a timeout, or bytes that are not RESP
    ReplyError               Redis answered with an error (e.g. NOSCRIPT, WRONGTYPE)
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import hiredis

# Given the reply, or the ChannelError / ReplyError that stands for it. Must not raise.
OnReply = Callable[[Any], None]


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


def pack_evalsha(sha: str, keys: Sequence[bytes], args: Sequence[bytes]) -> bytes:
    """EVALSHA with `keys` and `args` already in bulk form (see `bulk`)."""
    head = b"*%d\r\n%s%s%s" % (3 + len(keys) + len(args), _EVALSHA, bulk(sha), bulk(len(keys)))
    return b"".join((head, *keys, *args))


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiters: deque[tuple[OnReply, asyncio.TimerHandle]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        # Commands written in this turn of the loop, sent together by `flush` (a corked channel).
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered as asyncio.Transport subclasses: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiters = self.waiters
        try:
            while (reply := self.reader.gets()) is not False:
                on_reply, timer = waiters.popleft()
                timer.cancel()
                on_reply(ReplyError(str(reply)) if isinstance(reply, hiredis.ReplyError) else reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            self.fail(ChannelError(f"unexpected bytes from Redis: {exc}"))

    def flush(self) -> None:
        pending = self.pending
        if pending and not self.lost and self.transport is not None:
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
        pending.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail_waiters(f"connection to Redis lost: {exc or 'closed by the server'}")

    def fail(self, exc: ChannelError) -> None:
        """Give every waiting caller `exc` and drop the connection."""
        self.lost = True
        if self.transport is not None:
            self.transport.abort()
        self._fail_waiters(str(exc))

    def _fail_waiters(self, why: str) -> None:
        while self.waiters:
            on_reply, timer = self.waiters.popleft()
            timer.cancel()
            on_reply(ChannelError(why))  # one instance each: a shared one would gather every traceback


class ScriptChannel:
    """Sends commands over one connection (opened on first use, again after a failure).

    `params` are redis-py's connection kwargs (host, port, path, db, username, password), so the
    channel reaches the same server as the redis-py client built from the same URL.
    """

    def __init__(self, params: Mapping[str, Any], timeout: float, tls: bool = False, cork: bool = False) -> None:
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
        # Corked: the commands of one turn of the loop go out in one write (one syscall for many
        # concurrent requests' commands), flushed by a callback at the end of the turn.
        self._cork = cork
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    def submit(self, packed: bytes, on_reply: OnReply) -> bool:
        """Write a packed command now and have `on_reply` called with its reply; False (nothing
        written) when there is no live connection: then `connect()` first."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            return False
        self._write(protocol, packed, on_reply)
        return True

    async def call(self, *args: str | int | bytes) -> Any:
        """One command's reply, connecting first when needed. Raises ChannelError or ReplyError."""
        return await self.send(_pack(args))

    async def send(self, packed: bytes) -> Any:
        """`call` for a command packed already."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self.connect()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._write(protocol, packed, functools.partial(_settle, future))
        return await future

    async def evalsha(self, packed: bytes, script: str) -> Any:
        """An EVALSHA packed by `pack_evalsha`, loading `script` first when Redis does not know it
        (after a restart or a SCRIPT FLUSH). Raises ChannelError or ReplyError."""
        try:
            return await self.send(packed)
        except ReplyError as exc:
            if not is_noscript(exc):
                raise
        await self.call("SCRIPT", "LOAD", script)
        return await self.send(packed)

    def _write(self, protocol: _Protocol, packed: bytes, on_reply: OnReply) -> None:
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self._timeout, _expire, protocol, self._timeout)
        protocol.waiters.append((on_reply, timer))
        if self._cork:
            pending = protocol.pending
            pending.append(packed)
            if len(pending) == 1:
                loop.call_soon(protocol.flush)
            return
        assert protocol.transport is not None
        protocol.transport.write(packed)

    async def connect(self) -> _Protocol:
        """The live connection, opened now if there is none. Raises ChannelError."""
        if self._protocol is not None and not self._protocol.lost:
            return self._protocol
        # Concurrent callers share one attempt: a burst after a failure opens one connection, not many.
        # (A finished attempt whose callers all left is stale: a new one starts.)
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open())
            # Read its outcome even if every caller is cancelled meanwhile (no "never retrieved" warning).
            self._connecting.add_done_callback(lambda f: f.cancelled() or f.exception())
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
                    future: asyncio.Future[Any] = loop.create_future()
                    self._write(protocol, _pack(command), functools.partial(_settle, future))
                    await future
        except (OSError, TimeoutError, ReplyError) as exc:
            error = ChannelError(f"cannot connect to Redis: {type(exc).__name__}: {exc}")
            if protocol is not None:
                protocol.fail(error)
            raise error from exc
        self._protocol = protocol
        return protocol

    def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._protocol is not None:
            self._protocol.fail(ChannelError("channel closed"))
            self._protocol = None


def pack(*args: str | int | bytes) -> bytes:
    """Any command, packed (callers that send one often pack its constant head once with `bulk`)."""
    return _pack(args)


def is_noscript(reply: object) -> bool:
    return isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT")


def _settle(future: asyncio.Future[Any], reply: Any) -> None:
    if future.done():
        return
    if isinstance(reply, (ChannelError, ReplyError)):
        future.set_exception(reply)
    else:
        future.set_result(reply)


def _expire(protocol: _Protocol, timeout: float) -> None:
    protocol.fail(ChannelError(f"no reply from Redis within {timeout} s"))
