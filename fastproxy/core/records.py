"""What one proxied request leaves behind, for the access log now and the usage writer later."""

from __future__ import annotations

import msgspec

from fastproxy.core.schemas import TokenUsage

# The access log's logger name: its level decides whether access lines are written, and each line says it.
ACCESS_LOGGER = "fastproxy.access"


class RequestRecord(msgspec.Struct, gc=False, kw_only=True):
    """One finished request. Its JSON encoding, field for field, is the request's access line
    (fastproxy.observability.logs): the access log encodes a whole batch of records in one msgspec call, which is
    why the line's own fields (ts, level, logger, pid) live here too."""

    request_id: str
    method: str
    path: str
    endpoint: str
    model: str | None
    stream: bool
    status: int
    upstream_status: int | None
    usage: TokenUsage | None
    latency_ms: float
    ttfb_ms: float | None
    # The proxy's own time before the upstream call; None when the request never went upstream.
    proxy_ms: float | None = None
    error: str | None = None
    key_id: str | None = None
    user_id: str | None = None
    # The last 4 characters of the API key: never more of it.
    key_hint: str | None = None
    client_ip: str | None = None
    # The client left before the response ended; the upstream request was cancelled.
    disconnected: bool = False
    events: int = 0
    # The prompt part of the token estimate (accounted endpoints), for usage of streams that end without it.
    prompt_estimate: int = 0
    # request_id is the client's x-request-id (not unique: clients may reuse one), not one the proxy made.
    request_id_from_client: bool = False
    # When the response ended, in Unix seconds.
    ts: float = 0.0
    # Answered by the response cache (fastproxy/cache): `usage` is then the original answer's.
    cache_hit: bool = False
    level: str = "info"
    logger: str = ACCESS_LOGGER
    # The worker that served the request.
    pid: int = 0
