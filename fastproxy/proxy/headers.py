"""Which headers cross the proxy in each direction, and the Server-Timing the proxy adds."""

from __future__ import annotations

from fastproxy.core.types import RawHeaders

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# The client's credentials are for fastproxy, never for the provider.
DROP_REQUEST = HOP_BY_HOP | {
    b"host",
    b"authorization",
    b"x-api-key",
    b"api-key",
    b"cookie",
    b"content-length",
    b"expect",
    b"x-request-id",
}
# Usage is read from these bodies, so they must arrive uncompressed.
DROP_REQUEST_ACCOUNTED = DROP_REQUEST | {b"accept-encoding"}
DROP_RESPONSE = HOP_BY_HOP | {b"content-length", b"date", b"server", b"set-cookie", b"x-request-id"}
IDENTITY = ("accept-encoding", "identity")
STREAM_HEADERS: RawHeaders = [(b"x-accel-buffering", b"no")]
MAX_REQUEST_ID = 128


def server_timing(started: float, sent: float, answered: float) -> tuple[bytes, bytes]:
    """The proxy's own time before the upstream call, and the upstream's time to its response headers."""
    value = f"proxy;dur={(sent - started) * 1000:.2f}, upstream;dur={(answered - sent) * 1000:.2f}"
    return (b"server-timing", value.encode())


def proxy_timing(started: float, now: float) -> tuple[bytes, bytes]:
    """For an answer the proxy gave by itself (the upstream was never called): its own time."""
    return (b"server-timing", f"proxy;dur={(now - started) * 1000:.2f}".encode())
