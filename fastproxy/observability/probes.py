"""Liveness, readiness, identity and metrics endpoints."""

from __future__ import annotations

import asyncio

from fastproxy import __version__
from fastproxy.core.errors import RouteNotFound
from fastproxy.core.responses import send_error, send_json
from fastproxy.core.schemas import json_encoder
from fastproxy.core.types import Receive, Scope, Send
from fastproxy.observability.readiness import DEGRADED_CHECK_TIMEOUT, run_checks
from fastproxy.server.state import State

_HEALTH = json_encoder.encode({"status": "ok"})
_DRAINING = json_encoder.encode(
    {"status": "draining", "checks": {}, "message": "not ready: shutting down (draining requests in flight)"}
)
_ROOT = json_encoder.encode({"name": "fastproxy", "version": __version__})


async def health(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    """Liveness: answers without touching any dependency."""
    await send_json(send, 200, _HEALTH)


async def root(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 200, _ROOT)


async def readyz(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    """Readiness: every registered dependency check runs; 503 names each failed one the worker cannot
    serve without. Draining (after SIGTERM): 503 at once, so the load balancer stops sending new requests here.

    A failed dependency of `state.degradable` (shared by every instance, with a failure policy that keeps
    serving: the upstream, Redis under fail_open, the database under stale auth) is listed in `degraded`
    and leaves the instance ready: every instance sees the same outage, and pulling them all out of the
    load balancer would answer every request 503 where the proxy itself would serve it.

    `providers_down` names the providers none of whose keys may be tried now. It informs and does not
    make the instance unready: a provider's outage is every instance's, and pulling them all out of the
    load balancer would turn fallback into a full outage.
    """
    if state.drain.draining():
        await send_json(send, 503, _DRAINING)
        return
    checks = await run_checks(state.readiness, limits=dict.fromkeys(state.degradable, DEGRADED_CHECK_TIMEOUT))
    down = [name for name, check in checks.items() if not check["ok"]]
    failed = [name for name in down if name not in state.degradable]
    degraded = [name for name in down if name in state.degradable]
    doc: dict[str, object] = {
        "status": "unready" if failed else "degraded" if degraded else "ready",
        "checks": checks,
        "degraded": degraded,
        "providers_down": state.router.providers_down(),
    }
    if down:
        prefix = "not ready: " if failed else "degraded: "
        doc["message"] = prefix + ", ".join(f"{name} ({checks[name]['error']})" for name in down)
    await send_json(send, 503 if failed else 200, json_encoder.encode(doc))


async def metrics(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    """Prometheus exposition for the whole instance (OpenMetrics when the Accept header asks for it).

    Absent when metrics are off or served on their own port (FASTPROXY_METRICS_PORT).
    """
    if state.metrics is None or state.settings.metrics_port:
        await send_error(send, RouteNotFound(f"Invalid URL ({scope['method']} {scope['path']})"))
        return
    accept = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"accept"), None)
    state.metrics.flush()
    # Merging every worker's files is file I/O: keep it off the event loop.
    body, content_type = await asyncio.to_thread(state.metrics.render, accept)
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
