"""The upstream seam implemented with pyreqwest (Rust reqwest/hyper; FASTPROXY_UPSTREAM_CLIENT=reqwest).

Measured at about half of aiohttp's CPU per proxied request (bench/RESULTS.md, "History": the upstream
HTTP client). Two things matter for a proxy: .streamed_read_buffer_limit(0)`, without which a streamed
body is read ahead up to 64 KiB before the first chunk is handed over (SSE would arrive in bursts); and closing the
streamed response (`__aexit__`), which drops the connection when the body was not read to the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import ConnectError, PyreqwestError, RequestTimeoutError
from pyreqwest.request import StreamRequest
from pyreqwest.response import Response

from fastproxy.core.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from fastproxy.core.settings import Settings
from fastproxy.core.types import RawHeaders
from fastproxy.upstream import HeaderList, UpstreamResponse


def _map_error(exc: PyreqwestError) -> UpstreamError:
    if isinstance(exc, RequestTimeoutError):
        return UpstreamTimeout("The upstream provider did not answer in time.")
    if isinstance(exc, ConnectError):
        return UpstreamUnreachable("The upstream provider could not be reached.")
    return UpstreamError("The upstream provider returned an invalid response.")


class _ReqwestResponse:
    __slots__ = ("_request", "_resp", "headers", "status")

    def __init__(self, request: StreamRequest, resp: Response) -> None:
        self._request = request
        self._resp = resp
        self.status = resp.status
        self.headers: RawHeaders = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers.items()]

    async def chunks(self) -> AsyncIterator[bytes]:
        reader = self._resp.body_reader
        try:
            while (chunk := await reader.read_chunk()) is not None:
                yield bytes(chunk)
        except PyreqwestError as exc:
            raise _map_error(exc) from exc

    async def read(self) -> bytes:
        try:
            return bytes(await self._resp.bytes())
        except PyreqwestError as exc:
            raise _map_error(exc) from exc

    async def release(self) -> None:
        await self._request.__aexit__(None, None, None)

    async def abort(self) -> None:
        # The body was not read to its end: closing drops the connection instead of pooling it.
        await self._request.__aexit__(None, None, None)


class ReqwestUpstream:
    """A bounded keep-alive pool; bodies are not decompressed (bytes pass through as upstream sent them)."""

    def __init__(self, settings: Settings) -> None:
        self._client: Client = (
            ClientBuilder()
            .max_connections(settings.pool_size)
            .pool_max_idle_per_host(settings.pool_size)
            .pool_idle_timeout(timedelta(seconds=30))
            .connect_timeout(timedelta(seconds=settings.connect_timeout))
            .read_timeout(timedelta(seconds=settings.read_timeout))
            .timeout(timedelta(seconds=settings.request_timeout))
            # A full pool waits for a free connection, within the time a connection may take.
            .pool_timeout(timedelta(seconds=settings.connect_timeout))
            .follow_redirects(False)
            .gzip(False)
            .brotli(False)
            .zstd(False)
            .deflate(False)
            .error_for_status(False)
            .build()
        )

    async def send(
        self, method: str, url: str, headers: HeaderList, body: bytes, *, stream: bool = False
    ) -> UpstreamResponse:
        builder = self._client.request(method, url).headers(headers).streamed_read_buffer_limit(0)
        if body:
            builder = builder.body_bytes(body)
        request = builder.build_streamed()
        try:
            resp = await request.__aenter__()
        except PyreqwestError as exc:
            raise _map_error(exc) from exc
        return _ReqwestResponse(request, resp)

    async def close(self) -> None:
        await self._client.close()
