"""Opens every resource a worker needs, in order, and closes them in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable

from fastproxy.auth import OpenAccess
from fastproxy.limits import NoLimits
from fastproxy.logs import ACCESS_LOGGER, AccessLog, configure_logging
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
        metrics: Metrics | None = None
        access: AccessLog | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            metrics = _open_metrics(settings)
            if metrics is not None:
                tasks.append(asyncio.create_task(metrics.flush_periodically()))
            access = _open_access_log(settings)
            if access is not None:
                tasks.append(asyncio.create_task(access.run()))
            auth = (("authorization", "Bearer " + settings.upstream_api_key),) if settings.upstream_api_key else ()
            observers: tuple[Observer, ...] = (access.write,) if access is not None else ()
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
            for task in reversed(tasks):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if access is not None:
                access.close()  # writes every line handed over
            if metrics is not None:
                metrics.close()  # the last flush
            await upstream.close()
    finally:
        listener.stop()


def _open_metrics(settings: Settings) -> Metrics | None:
    if not settings.metrics:
        return None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") and settings.workers != 1:
        log.warning("PROMETHEUS_MULTIPROC_DIR is not set: /metrics covers this worker only (use `fastproxy serve`)")
    return Metrics(max_models=settings.metrics_max_models)


def _open_access_log(settings: Settings) -> AccessLog | None:
    if not settings.access_log or not logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO):
        return None
    access = AccessLog(settings.log_format)
    access.start()
    return access
