"""The readiness registry: each check reported by name, failures say why, a hung check times out."""

from __future__ import annotations

import asyncio
import socket
import time

from fastproxy.core.errors import UpstreamUnreachable
from fastproxy.observability.readiness import CHECK_TIMEOUT, DEGRADED_CHECK_TIMEOUT, run_checks
from tests.services import free_port
from tests.unit.appclient import app_client


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


async def test_shared_dependencies_with_a_fallback_leave_the_instance_ready() -> None:
    """Regression (bench/chaos.py): Redis killed made /readyz 503 on every instance at once, so HAProxy had
    none left and answered 503 to every request, although each proxy would have served under fail_open."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    upstream = f"http://127.0.0.1:{free_port()}/v1"
    async with app_client(auth="none", database_url="", redis_url=dead, upstream_url=upstream) as (client, _):
        resp = await client.get("/readyz")
    doc = resp.json()
    assert resp.status_code == 200, doc
    assert doc["status"] == "degraded" and sorted(doc["degraded"]) == ["redis", "upstream"]
    assert doc["checks"]["redis"]["ok"] is False and doc["message"].startswith("degraded: ")


async def test_a_dependency_the_operator_made_required_still_makes_it_unready() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    async with app_client(auth="none", database_url="", redis_url=dead, ratelimit_failure="fail_closed") as (
        client,
        _,
    ):
        resp = await client.get("/readyz")
    assert resp.status_code == 503
    assert resp.json()["status"] == "unready" and "redis" in resp.json()["message"]


async def test_a_hung_degradable_dependency_does_not_make_readyz_slow() -> None:
    """Regression (bench/chaos.py): an upstream that accepts and never answers held /readyz for 2 s, past
    HAProxy's check timeout, so every instance left the rotation although none was unready."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # connections complete in the backlog; nothing ever answers
        upstream = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        async with app_client(auth="none", database_url="", upstream_url=upstream) as (client, _):
            started = time.perf_counter()
            resp = await client.get("/readyz")
            took = time.perf_counter() - started
    assert resp.status_code == 200 and resp.json()["checks"]["upstream"] == {"ok": False, "error": "timeout"}
    assert took < DEGRADED_CHECK_TIMEOUT + 0.5 < CHECK_TIMEOUT
