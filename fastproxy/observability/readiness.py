"""Readiness checks: a registry of named async checks that /readyz runs, one per dependency.

A check is an async callable that returns when its dependency is usable and raises otherwise; the
exception's message (short, never a secret) is reported as the reason. Lifespan registers the
upstream check; the Redis and database adapters register theirs the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from time import perf_counter

from fastproxy.core.errors import ProxyError
from fastproxy.upstream import Upstream

ReadinessCheck = Callable[[], Awaitable[None]]
CHECK_TIMEOUT = 2.0
# A check that cannot make the instance unready (a degradable dependency) must not make /readyz slow
# either: a hung upstream would otherwise hold every probe for CHECK_TIMEOUT, past the probe timeouts of
# load balancers (HAProxy's default is its check interval; Kubernetes' is 1 s), and take every instance
# out as surely as a 503 (found by bench/chaos.py).
DEGRADED_CHECK_TIMEOUT = 0.5


async def run_checks(
    checks: Mapping[str, ReadinessCheck], limit: float = CHECK_TIMEOUT, limits: Mapping[str, float] | None = None
) -> dict[str, dict[str, object]]:
    """Run every check concurrently, each bounded by `limits[name]`, else `limit` seconds;
    name -> {"ok", "ms"} or {"ok", "error"}."""
    names = list(checks)
    bounds = limits or {}
    results = await asyncio.gather(*(_run(checks[name], bounds.get(name, limit)) for name in names))
    return dict(zip(names, results, strict=True))


async def _run(check: ReadinessCheck, limit: float) -> dict[str, object]:
    started = perf_counter()
    try:
        async with asyncio.timeout(limit):
            await check()
    except TimeoutError:
        return {"ok": False, "error": "timeout"}
    except ProxyError as err:
        return {"ok": False, "error": err.code or err.message}
    except Exception as exc:
        return {"ok": False, "error": str(exc) or type(exc).__name__}
    return {"ok": True, "ms": round((perf_counter() - started) * 1000, 2)}


class UpstreamNotReady(Exception):
    """The upstream answered with a server error."""


def upstream_check(upstream: Upstream, base_url: str, headers: tuple[tuple[str, str], ...]) -> ReadinessCheck:
    """Ready when `GET {base_url}/models` answers without a 5xx."""

    async def check() -> None:
        resp = await upstream.send("GET", base_url + "/models", list(headers), b"")
        await resp.read()
        await resp.release()
        if resp.status >= 500:
            raise UpstreamNotReady(f"status {resp.status}")

    return check
