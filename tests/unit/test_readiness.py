"""The readiness registry: each check reported by name, failures say why, a hung check times out."""

from __future__ import annotations

import asyncio

from fastproxy.core.errors import UpstreamUnreachable
from fastproxy.observability.readiness import run_checks


async def _ok() -> None:
    return None


async def _refused() -> None:
    raise UpstreamUnreachable("could not connect")


async def _broken() -> None:
    raise ConnectionError("redis down")


async def _hangs() -> None:
    await asyncio.sleep(30)


async def test_each_check_reported_by_name() -> None:
    results = await run_checks({"upstream": _ok, "redis": _broken, "db": _refused, "slow": _hangs}, limit=0.05)
    assert results["upstream"]["ok"] is True and "ms" in results["upstream"]
    assert results["redis"] == {"ok": False, "error": "redis down"}
    assert results["db"] == {"ok": False, "error": "upstream_unreachable"}
    assert results["slow"] == {"ok": False, "error": "timeout"}


async def test_no_checks_is_ready() -> None:
    assert await run_checks({}) == {}
