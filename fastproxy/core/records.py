"""What one proxied request leaves behind, for the access log now and the usage writer later."""

from __future__ import annotations

import msgspec

from fastproxy.core.schemas import TokenUsage

# The access log's logger name: its level decides whether access lines are written, and each line says it.
ACCESS_LOGGER = "fastproxy.access"


class FailedAttempt(msgspec.Struct, gc=False, frozen=True):
    """An upstream attempt that failed before anything reached the client (the request then fell back)."""

    provider: str
    # The provider key's last 4 characters: never more of it.
    key_hint: str
    # What went wrong: unreachable, timeout, first_token_timeout, status_<N>, stream_cut, stream_error.
    error: str
    # Whether the request's bytes had been sent (a refused connection had not).
    sent: bool


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
    # The provider and model that answered (the last one tried when none did), and how many attempts it took.
    provider: str | None = None
    upstream_model: str | None = None
    attempts: int = 0
    failures: list[FailedAttempt] | None = None
    # The stream broke after its first content reached the client: the client got an error event.
    partial: bool = False
