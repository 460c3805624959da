"""Opens every resource a worker needs, in order, and closes them in reverse."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastproxy.auth import OpenAccess
from fastproxy.logs import AccessLog, configure_logging
from fastproxy.ratelimit import build_limiter
from fastproxy.settings import Settings
from fastproxy.state import State
from fastproxy.upstream import AiohttpUpstream, Upstream

log = logging.getLogger("fastproxy")

UpstreamFactory = Callable[[Settings], Upstream]


@contextlib.asynccontextmanager
async def open_state(settings: Settings, upstream_factory: UpstreamFactory = AiohttpUpstream) -> AsyncIterator[State]:
    listener = configure_logging(settings.log_level, settings.log_format)
    try:
        log.info("starting with settings %s", settings.masked())
        upstream = upstream_factory(settings)
        limiter = build_limiter(settings)
        try:
            auth = (("authorization", "Bearer " + settings.upstream_api_key),) if settings.upstream_api_key else ()
            observers = (AccessLog().write,) if settings.access_log else ()
            yield State(
                settings=settings,
                upstream=upstream,
                auth=OpenAccess(),
                limiter=limiter,
                observers=observers,
                base_url=settings.upstream_url.rstrip("/"),
                upstream_headers=auth,
            )
        finally:
            await limiter.close()
            await upstream.close()
    finally:
        listener.stop()
