"""Minimal raw-ASGI pass-through proxy, one variant per upstream HTTP client.

Select the client with env BENCH_CLIENT = aiohttp | httpx | pyreqwest | pyqwest.
Upstream URL: env BENCH_UPSTREAM (default http://127.0.0.1:18090/v1/chat/completions).
Pool size: env BENCH_POOL (default 256).

Every variant:
  * creates ONE pooled keep-alive client on lifespan startup (closed on shutdown),
    pool bounded to BENCH_POOL connections, connect timeout 5 s, read timeout 60 s;
  * per request reads the whole ASGI request body, POSTs it upstream with
    content-type: application/json;
  * streams the upstream response back chunk by chunk as it arrives:
    http.response.start(upstream status, upstream content-type), then one
    http.response.body(more_body=True) per upstream chunk, then a final empty body;
  * on cancellation of the ASGI task (client disconnect / server shutdown)
    closes the upstream response (the connection is dropped, not reused,
    because its body was not fully read).

Run: BENCH_CLIENT=aiohttp granian --interface asgi --loop uvloop ... passthrough:app
"""

from __future__ import annotations

import os

CLIENT = os.environ.get("BENCH_CLIENT", "aiohttp")
UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:18090/v1/chat/completions")
POOL = int(os.environ.get("BENCH_POOL", "256"))
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0

# request headers sent upstream, as a list of (str, str) tuples
REQ_HEADERS = [("content-type", "application/json"), ("authorization", "Bearer sk-bench")]
CT_JSON = b"application/json"

START = "http.response.start"
BODY = "http.response.body"
FINAL = {"type": BODY, "body": b"", "more_body": False}


async def read_body(receive) -> bytes:
    msg = await receive()
    body = msg.get("body", b"")
    if not msg.get("more_body", False):
        return body
    parts = [body]
    while msg.get("more_body", False):
        msg = await receive()
        parts.append(msg.get("body", b""))
    return b"".join(parts)


# --------------------------------------------------------------------------- aiohttp
class AiohttpBackend:
    name = "aiohttp"

    async def start(self) -> None:
        import aiohttp

        self.aiohttp = aiohttp
        connector = aiohttp.TCPConnector(
            limit=POOL,  # bounded pool: at most POOL connections in total ...
            limit_per_host=POOL,  # ... and per host; extra requests wait for a slot
            keepalive_timeout=60,
            ttl_dns_cache=300,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
            ),
            auto_decompress=False,  # pass bytes through untouched
            skip_auto_headers=("User-Agent",),
        )

    async def stop(self) -> None:
        await self.session.close()

    async def proxy(self, body: bytes, send) -> None:
        resp = await self.session.post(UPSTREAM, data=body, headers=REQ_HEADERS, allow_redirects=False)
        try:
            ct = CT_JSON
            for k, v in resp.raw_headers:  # tuple of (bytes, bytes), as received
                if len(k) == 12 and k.lower() == b"content-type":
                    ct = v
                    break
            await send({"type": START, "status": resp.status, "headers": [(b"content-type", ct)]})
            # readany()/iter_any(): whatever bytes are buffered right now, no re-chunking
            content = resp.content
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                await send({"type": BODY, "body": chunk, "more_body": True})
            await send(FINAL)
        except BaseException:
            # cancelled / client gone / error: drop the connection (body not fully read)
            resp.close()
            raise
        else:
            resp.release()  # body fully read -> connection goes back to the pool


# --------------------------------------------------------------------------- httpx
class HttpxBackend:
    name = "httpx"

    async def start(self) -> None:
        import httpx

        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL, keepalive_expiry=60),
            timeout=httpx.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT, write=READ_TIMEOUT, pool=READ_TIMEOUT),
            follow_redirects=False,
            trust_env=False,
            http1=True,
            http2=False,
        )

    async def stop(self) -> None:
        await self.client.aclose()

    async def proxy(self, body: bytes, send) -> None:
        client = self.client
        req = client.build_request("POST", UPSTREAM, content=body, headers=REQ_HEADERS)
        resp = await client.send(req, stream=True)
        try:
            ct = CT_JSON
            for k, v in resp.headers.raw:  # list of (bytes, bytes)
                if len(k) == 12 and k.lower() == b"content-type":
                    ct = v
                    break
            await send({"type": START, "status": resp.status_code, "headers": [(b"content-type", ct)]})
            async for chunk in resp.aiter_raw():  # raw network chunks, no decoding
                await send({"type": BODY, "body": chunk, "more_body": True})
            await send(FINAL)
        finally:
            # on normal completion returns the connection to the pool; on cancel/error
            # (body not fully read) the connection is closed
            await resp.aclose()


# --------------------------------------------------------------------------- pyreqwest
class PyreqwestBackend:
    name = "pyreqwest"
    read_buffer_limit = 0

    async def start(self) -> None:
        from datetime import timedelta

        from pyreqwest.client import ClientBuilder

        self.client = (
            ClientBuilder()
            .max_connections(POOL)  # max in-flight requests (semaphore) -> bounds open connections
            .pool_max_idle_per_host(POOL)
            .pool_idle_timeout(timedelta(seconds=60))
            .connect_timeout(timedelta(seconds=CONNECT_TIMEOUT))
            .read_timeout(timedelta(seconds=READ_TIMEOUT))
            .pool_timeout(timedelta(seconds=READ_TIMEOUT))
            .follow_redirects(False)
            .gzip(False)
            .brotli(False)
            .zstd(False)
            .deflate(False)
            .http1_only()
            .build()
        )

    async def stop(self) -> None:
        await self.client.close()

    async def proxy(self, body: bytes, send) -> None:
        req = (
            self.client.post(UPSTREAM)
            .headers(REQ_HEADERS)
            .body_bytes(body)
            # IMPORTANT: default (64 KiB) makes __aenter__ pre-read up to 64 KiB of the body
            # before returning -> a short SSE stream arrives in one piece at the end and the
            # request cannot be cancelled meanwhile. 0 = hand over chunks as they arrive.
            .streamed_read_buffer_limit(self.read_buffer_limit)
            .build_streamed()
        )
        # __aenter__ sends the request and returns once headers are in;
        # __aexit__ closes the streamed response (also on CancelledError)
        async with req as resp:
            ct = resp.get_header("content-type")  # str (HeaderMap is str-typed)
            await send(
                {
                    "type": START,
                    "status": resp.status,
                    "headers": [(b"content-type", ct.encode("latin-1") if ct else CT_JSON)],
                }
            )
            reader = resp.body_reader
            while True:
                chunk = await reader.read_chunk()  # next raw hyper chunk, None at EOF
                if chunk is None:
                    break
                # pyreqwest.Bytes is a zero-copy buffer; the ASGI server wants real bytes
                await send({"type": BODY, "body": bytes(chunk), "more_body": True})
            await send(FINAL)


class PyreqwestDefaultBufBackend(PyreqwestBackend):
    """pyreqwest with its default streamed_read_buffer_limit (64 KiB): NOT chunk-by-chunk."""

    name = "pyreqwest_buf64k"
    read_buffer_limit = 65536


# --------------------------------------------------------------------------- pyqwest
class PyqwestBackend:
    name = "pyqwest"

    async def start(self) -> None:
        import pyqwest

        self.transport = pyqwest.HTTPTransport(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            pool_idle_timeout=60.0,
            pool_max_idle_per_host=POOL,
            max_connections_per_address=POOL,  # bounded: requests wait when all POOL conns are busy
            enable_gzip=False,
            enable_brotli=False,
            enable_zstd=False,
            follow_redirects=False,
            enable_otel=False,
            http_version=pyqwest.HTTPVersion.HTTP1,
        )
        self.client = pyqwest.Client(self.transport)

    async def stop(self) -> None:
        await self.transport.aclose()

    async def proxy(self, body: bytes, send) -> None:
        async with self.client.stream("POST", UPSTREAM, headers=REQ_HEADERS, content=body) as resp:
            ct = resp.headers.get("content-type")  # str
            await send(
                {
                    "type": START,
                    "status": resp.status,
                    "headers": [(b"content-type", ct.encode("latin-1") if ct else CT_JSON)],
                }
            )
            async for chunk in resp.content:  # bytes | memoryview | bytearray per chunk
                if type(chunk) is not bytes:
                    chunk = bytes(chunk)
                await send({"type": BODY, "body": chunk, "more_body": True})
            await send(FINAL)
        # leaving the `async with` (also via CancelledError) calls resp.aclose()


BACKENDS = {
    "aiohttp": AiohttpBackend,
    "httpx": HttpxBackend,
    "pyreqwest": PyreqwestBackend,
    "pyqwest": PyqwestBackend,
    "pyreqwest_buf64k": PyreqwestDefaultBufBackend,
}

backend = BACKENDS[CLIENT]()

# Granian 2.8.7 neither cancels the ASGI task nor raises from send() when the downstream
# client goes away, so without this the upstream stream runs to completion. With
# BENCH_WATCH_DISCONNECT=1 a second task waits on receive() for http.disconnect and
# cancels the proxying task (costs one extra task per request).
WATCH_DISCONNECT = os.environ.get("BENCH_WATCH_DISCONNECT", "0") == "1"


async def proxy_watching_disconnect(body, receive, send):
    import asyncio

    task = asyncio.ensure_future(backend.proxy(body, send))

    async def watch():
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        await task
    except asyncio.CancelledError:
        pass
    finally:
        watcher.cancel()


async def app(scope, receive, send):
    t = scope["type"]
    if t == "http":
        body = await read_body(receive)
        if WATCH_DISCONNECT:
            await proxy_watching_disconnect(body, receive, send)
        else:
            await backend.proxy(body, send)
        return
    if t == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await backend.start()
                except Exception as exc:  # report, don't hang
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                try:
                    await backend.stop()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return
