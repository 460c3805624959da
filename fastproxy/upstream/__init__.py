"""The seam between the proxy and the network: a tiny client interface, and the client the settings pick.

Two implementations, chosen by measurement on the proxy path (bench/clients/RESULTS.md):
`reqwest_client` (pyreqwest, Rust; the default: about half the CPU per request) and `aiohttp_client`
(pure asyncio). Each maps its library's exceptions to fastproxy.errors, so handlers never see a
library type:

    connection refused / reset / DNS  -> UpstreamUnreachable (502)
    connect, read or total timeout    -> UpstreamTimeout (504)
    anything else from the client     -> UpstreamError (502)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from fastproxy.settings import Settings
from fastproxy.types import RawHeaders

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
    async def send(self, method: str, url: str, headers: HeaderList, body: bytes) -> UpstreamResponse:
        """Send a request and return once the status and headers are in; raises UpstreamError subclasses."""
        ...

    async def close(self) -> None: ...


def build_upstream(settings: Settings) -> Upstream:
    """The client FASTPROXY_UPSTREAM_CLIENT names, with the pool and timeouts of the settings."""
    if settings.upstream_client == "aiohttp":
        from fastproxy.upstream.aiohttp_client import AiohttpUpstream

        return AiohttpUpstream(settings)
    from fastproxy.upstream.reqwest_client import ReqwestUpstream

    return ReqwestUpstream(settings)
