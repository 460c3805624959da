"""The seam between the proxy and the network: a tiny client interface, and the client the settings pick.

Two implementations, chosen by measurement on the proxy path (bench/RESULTS.md and its "History"):
`reqwest_client` (pyreqwest, Rust: about half aiohttp's CPU per non-streamed request) and
`aiohttp_client` (pure asyncio: cheaper per SSE event). The default, `auto`, uses each where it is
cheaper. Each maps its library's exceptions to fastproxy.core.errors, so handlers never see a
library type:

    connection refused / reset / DNS  -> UpstreamUnreachable (502)
    connect, read or total timeout    -> UpstreamTimeout (504)
    anything else from the client     -> UpstreamError (502)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from fastproxy.core.settings import Settings
from fastproxy.core.types import RawHeaders

HeaderList = list[tuple[str, str]]


class UpstreamResponse(Protocol):
    status: int
    # Lower-case names, as bytes: what goes back to the client.
    headers: RawHeaders

    def chunks(self) -> AsyncIterator[bytes]:
        """Yield body bytes as they arrive from the network; raises UpstreamError subclasses."""
        ...

    async def read(self) -> bytes:
        """The whole body; raises UpstreamError subclasses."""
        ...

    async def release(self) -> None:
        """The body was consumed: give the connection back to the pool."""

    async def abort(self) -> None:
        """Stop now: close the connection, so the upstream sees the client go away."""


class Upstream(Protocol):
    async def send(
        self, method: str, url: str, headers: HeaderList, body: bytes, *, stream: bool = False
    ) -> UpstreamResponse:
        """Send a request and return once the status and headers are in; raises UpstreamError subclasses.

        `stream` says the client asked for a streamed (SSE) response: a hint for choosing a client.
        """
        ...

    async def close(self) -> None: ...


class SplitUpstream:
    """Non-streamed requests through one client, streamed ones through another.

    Measured on the proxy path (bench/RESULTS.md): pyreqwest costs ~50 µs less CPU per non-streamed
    request than aiohttp, but ~5 µs more per SSE event (each chunk crosses from its Tokio thread to
    the event loop), so for streams longer than about ten events aiohttp is the cheaper one.
    """

    def __init__(self, plain: Upstream, streams: Upstream) -> None:
        self._plain = plain
        self._streams = streams

    async def send(
        self, method: str, url: str, headers: HeaderList, body: bytes, *, stream: bool = False
    ) -> UpstreamResponse:
        client = self._streams if stream else self._plain
        return await client.send(method, url, headers, body, stream=stream)

    async def close(self) -> None:
        await self._plain.close()
        await self._streams.close()


def build_upstream(settings: Settings) -> Upstream:
    """The client(s) FASTPROXY_UPSTREAM_CLIENT names, with the pool and timeouts of the settings."""
    from fastproxy.upstream.aiohttp_client import AiohttpUpstream
    from fastproxy.upstream.reqwest_client import ReqwestUpstream

    if settings.upstream_client == "aiohttp":
        return AiohttpUpstream(settings)
    if settings.upstream_client == "reqwest":
        return ReqwestUpstream(settings)
    return SplitUpstream(ReqwestUpstream(settings), AiohttpUpstream(settings))
