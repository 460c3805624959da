"""Opens every resource a worker needs, in order, and closes them in reverse."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable

from fastproxy.auth import OpenAccess
from fastproxy.limits import NoLimits
from fastproxy.logs import AccessLog, configure_logging
from fastproxy.metrics import Metrics
from fastproxy.readiness import ReadinessCheck, upstream_check
from fastproxy.settings import Settings
from fastproxy.state import Observer, State
from fastproxy.upstream import AiohttpUpstream, Upstream

log = logging.getLogger("fastproxy")

UpstreamFactory = Callable[[Settings], Upstream]


@contextlib.asynccontextmanager
async def open_state(settings: Settings, upstream_factory: UpstreamFactory = AiohttpUpstream) -> AsyncIterator[State]:
    listener = configure_logging(settings.log_level, settings.log_format)
    try:
        log.info("starting with settings %s", settings.masked())
        upstream = upstream_factory(settings)
        metrics = _open_metrics(settings)
        try:
            auth = (("authorization", "Bearer " + settings.upstream_api_key),) if settings.upstream_api_key else ()
            observers: tuple[Observer, ...] = (AccessLog().write,) if settings.access_log else ()
            if metrics is not None:
                observers += (metrics.observe,)
            base_url = settings.upstream_url.rstrip("/")
            readiness: dict[str, ReadinessCheck] = {"upstream": upstream_check(upstream, base_url, auth)}
            yield State(
                settings=settings,
                upstream=upstream,
                auth=OpenAccess(),
                limiter=NoLimits(),
                observers=observers,
                base_url=base_url,
                upstream_headers=auth,
                metrics=metrics,
                readiness=readiness,
            )
        finally:
            await upstream.close()
            if metrics is not None:
                metrics.close()
    finally:
        listener.stop()


def _open_metrics(settings: Settings) -> Metrics | None:
    if not settings.metrics:
        return None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") and settings.workers != 1:
        log.warning("PROMETHEUS_MULTIPROC_DIR is not set: /metrics covers this worker only (use `fastproxy serve`)")
    return Metrics(max_models=settings.metrics_max_models)
