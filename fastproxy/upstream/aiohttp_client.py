"""The upstream seam implemented with aiohttp (pure asyncio; FASTPROXY_UPSTREAM_CLIENT=aiohttp).

Its exceptions are mapped here to fastproxy.core.errors so handlers never see a library type:

    connection refused / reset / DNS  -> UpstreamUnreachable (502)
    connect, read or total timeout    -> UpstreamTimeout (504)
    anything else from the client     -> UpstreamError (502)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp

from fastproxy.core.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from fastproxy.core.settings import Settings
from fastproxy.core.types import RawHeaders
from fastproxy.upstream import HeaderList, UpstreamResponse


def _map_error(exc: BaseException) -> UpstreamError:
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout("The upstream provider did not answer in time.")
    if isinstance(exc, (aiohttp.ClientConnectionError, OSError)):
        return UpstreamUnreachable("The upstream provider could not be reached.")
    return UpstreamError("The upstream provider returned an invalid response.")


class _AiohttpResponse:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: RawHeaders = list(resp.raw_headers)

    async def chunks(self) -> AsyncIterator[bytes]:
        # readany itself, not iter_any(): its iterator is one more coroutine frame per SSE event.
        read = self._resp.content.readany
        try:
            while chunk := await read():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map_error(exc) from exc

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map_error(exc) from exc

    async def release(self) -> None:
        self._resp.release()

    async def abort(self) -> None:
        self._resp.close()


class AiohttpUpstream:
    """A bounded keep-alive pool. Responses are not decompressed: bytes pass through as upstream sent them."""

    def __init__(self, settings: Settings) -> None:
        connector = aiohttp.TCPConnector(
            limit=settings.pool_size,
            limit_per_host=settings.pool_size,
            keepalive_timeout=30,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=settings.request_timeout,
                connect=settings.connect_timeout,
                sock_read=settings.read_timeout,
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            # Header values are forwarded from clients; aiohttp must not second-guess them.
            raise_for_status=False,
        )

    async def send(
        self, method: str, url: str, headers: HeaderList, body: bytes, *, stream: bool = False
    ) -> UpstreamResponse:
        try:
            resp = await self._session.request(method, url, headers=headers, data=body or None)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _map_error(exc) from exc
        return _AiohttpResponse(resp)

    async def close(self) -> None:
        await self._session.close()
