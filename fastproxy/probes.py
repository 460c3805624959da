"""Liveness, readiness and identity endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from time import perf_counter

from fastproxy import __version__
from fastproxy.errors import UpstreamError
from fastproxy.responses import send_json
from fastproxy.schemas import json_encoder
from fastproxy.state import State
from fastproxy.types import Receive, Scope, Send

READY_TIMEOUT = 2.0
_HEALTH = json_encoder.encode({"status": "ok"})
_ROOT = json_encoder.encode({"name": "fastproxy", "version": __version__})


async def health(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    """Liveness: answers without touching any dependency."""
    await send_json(send, 200, _HEALTH)


async def root(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 200, _ROOT)


async def readyz(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    """Readiness: every configured dependency is pinged; 503 names each one that failed."""
    checks = {"upstream": await _check_upstream(state)}
    for name, ping in state.ready_checks:
        checks[name] = await _check(ping)
    failed = [name for name, check in checks.items() if not check["ok"]]
    doc: dict[str, object] = {"status": "unready" if failed else "ready", "checks": checks}
    if failed:
        doc["message"] = "not ready: " + ", ".join(f"{name} ({checks[name]['error']})" for name in failed)
    await send_json(send, 503 if failed else 200, json_encoder.encode(doc))


async def _check(ping: Callable[[], Awaitable[object]]) -> dict[str, object]:
    """Any failure counts (a driver error, a timeout); its class name is all that is reported."""
    started = perf_counter()
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await ping()
    except TimeoutError:
        return {"ok": False, "error": "timeout"}
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "ms": round((perf_counter() - started) * 1000, 2)}


async def _check_upstream(state: State) -> dict[str, object]:
    started = perf_counter()
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            resp = await state.upstream.send("GET", state.base_url + "/models", list(state.upstream_headers), b"")
            await resp.read()
            resp.release()
    except TimeoutError:
        return {"ok": False, "error": "timeout"}
    except UpstreamError as err:
        return {"ok": False, "error": err.code}
    ms = round((perf_counter() - started) * 1000, 2)
    if resp.status >= 500:
        return {"ok": False, "error": f"status {resp.status}", "ms": ms}
    return {"ok": True, "ms": ms}
