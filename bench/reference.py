"""The reference point: a minimal raw-ASGI pass-through with one pooled aiohttp client.

The aiohttp variant of the pass-through the upstream clients were compared in (bench/RESULTS.md,
History, "Upstream HTTP client"): per request it reads the whole body, POSTs it upstream (BENCH_UPSTREAM + the request path) with
fixed headers, and streams the response back chunk by chunk as it arrives (readany: no re-chunking),
so it serves both plain and SSE responses. No auth, no parsing, no limits, no logging: what any
Python proxy on this stack must spend at least.

    BENCH_UPSTREAM=http://127.0.0.1:PORT granian --interface asgi --loop uvloop ... bench.reference:app
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp

from fastproxy.server.threads import RuntimeThreads

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:18090")
# 1: Granian's runtime thread in SCHED_BATCH, as fastproxy does by default (fastproxy/threads.py), to
# compare like with like; the reference as the issue defines it runs without.
BATCH = os.environ.get("BENCH_RUNTIME_THREADS_BATCH") == "1"
POOL = int(os.environ.get("BENCH_POOL", "4096"))  # fastproxy's default pool_size
REQ_HEADERS = [("content-type", "application/json"), ("authorization", "Bearer sk-bench")]
CT_JSON = b"application/json"
START = "http.response.start"
BODY = "http.response.body"
FINAL = {"type": BODY, "body": b"", "more_body": False}


class Passthrough:
    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.threads = RuntimeThreads(frozenset({"tokio-rt-worker"}))
        self.watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if BATCH:
            self.watch = asyncio.ensure_future(self.threads.watch())
        connector = aiohttp.TCPConnector(limit=POOL, limit_per_host=POOL, keepalive_timeout=60, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=5.0, sock_connect=5.0, sock_read=60.0),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def stop(self) -> None:
        if self.watch is not None:
            self.watch.cancel()
        self.threads.restore()
        if self.session is not None:
            await self.session.close()

    async def proxy(self, path: str, body: bytes, send: Send) -> None:
        assert self.session is not None
        resp = await self.session.post(UPSTREAM + path, data=body, headers=REQ_HEADERS, allow_redirects=False)
        try:
            ct = CT_JSON
            for k, v in resp.raw_headers:
                if len(k) == 12 and k.lower() == b"content-type":
                    ct = v
                    break
            await send({"type": START, "status": resp.status, "headers": [(b"content-type", ct)]})
            content = resp.content
            while chunk := await content.readany():
                await send({"type": BODY, "body": chunk, "more_body": True})
            await send(FINAL)
        except BaseException:
            resp.close()  # body not fully read: drop the connection rather than reuse it
            raise
        else:
            resp.release()


backend = Passthrough()


async def read_body(receive: Receive) -> bytes:
    msg = await receive()
    body: bytes = msg.get("body", b"")
    if not msg.get("more_body", False):
        return body
    parts = [body]
    while msg.get("more_body", False):
        msg = await receive()
        parts.append(msg.get("body", b""))
    return b"".join(parts)


async def app(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await backend.proxy(scope["path"], await read_body(receive), send)
    elif scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await backend.start()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await backend.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
