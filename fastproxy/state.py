"""The one object a worker's request handling needs, built in lifespan and never mutated after."""

from __future__ import annotations

from dataclasses import dataclass

from fastproxy.logs import AccessLog
from fastproxy.settings import Settings
from fastproxy.upstream import Upstream


@dataclass(frozen=True, slots=True)
class State:
    settings: Settings
    upstream: Upstream
    # Upstream base URL without a trailing slash; the client's path after `/v1` is appended to it.
    base_url: str
    # Headers the proxy adds to every upstream request (the provider's credentials).
    upstream_headers: tuple[tuple[str, str], ...]
    access_log: AccessLog | None
