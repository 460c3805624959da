"""Nothing lost: a SIGTERM under load, and PostgreSQL stopped and restarted under the proxy."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx

from tests.integration.pg_instance import private_postgres
from tests.integration.servers import Server, start_proxy
from tests.integration.usage_db import usage_rows

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}


async def send(http: httpx.AsyncClient, url: str, request_id: str, stream: bool = False) -> bool:
    """One request; True when its whole response arrived with 200."""
    body = {**CHAT, "stream": stream}
    try:
        async with http.stream(
            "POST", url + "/v1/chat/completions", json=body, headers={"x-request-id": request_id}
        ) as resp:
            await resp.aread()
            return resp.status_code == 200
    except httpx.HTTPError:
        return False


async def test_sigterm_under_load_leaves_a_row_for_every_response(
    mock_upstream: Server, postgres_dsn: str, tmp_path: Path
) -> None:
    proxy = start_proxy(
        mock_upstream.url + "/v1",
        FASTPROXY_DATABASE_URL=postgres_dsn,
        FASTPROXY_ACCESS_LOG="false",
        FASTPROXY_USAGE_FLUSH_INTERVAL="30",
        FASTPROXY_USAGE_BATCH_SIZE="100000",  # nothing is written before the SIGTERM
        FASTPROXY_USAGE_JOURNAL_DIR=str(tmp_path),
    )
    answered: list[str] = []
    counter = iter(range(1_000_000))
    stop = asyncio.Event()

    async def client(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            rid = f"load-{next(counter)}"
            if await send(http, proxy.url, rid, stream=len(answered) % 2 == 0):
                answered.append(rid)
            elif proxy.proc.poll() is not None:
                return

    try:
        async with httpx.AsyncClient(timeout=10) as http:
            tasks = [asyncio.create_task(client(http)) for _ in range(8)]
            while len(answered) < 150:
                await asyncio.sleep(0.01)
            os.killpg(proxy.proc.pid, signal.SIGTERM)
            await asyncio.get_running_loop().run_in_executor(None, proxy.proc.wait, 30)
            stop.set()
            await asyncio.gather(*tasks)
    finally:
        proxy.stop_proc_only()
    rows = await usage_rows(postgres_dsn)
    missing = set(answered) - set(rows)
    assert not missing, f"{len(missing)} answered requests without a row; log: {proxy.log()[-2000:]}"
    assert len(answered) >= 150
    assert all(rows[r]["total_tokens"] > 0 for r in answered)


async def test_postgres_down_midrun_then_back_every_row_exactly_once(
    mock_upstream: Server, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    with private_postgres() as pg:
        proxy = start_proxy(
            mock_upstream.url + "/v1",
            FASTPROXY_DATABASE_URL=pg.dsn,
            FASTPROXY_USAGE_FLUSH_INTERVAL="0.1",
            FASTPROXY_USAGE_FLUSH_TIMEOUT="1",
            FASTPROXY_USAGE_REPLAY_INTERVAL="0.3",
            FASTPROXY_USAGE_JOURNAL_DIR=str(tmp_path),
        )
        try:
            sent = [f"before-{i}" for i in range(20)]
            assert all([await send(http, proxy.url, rid, stream=i % 2 == 1) for i, rid in enumerate(sent)])
            await _wait_rows(pg.dsn, 20)
            pg.stop()
            during = [f"during-{i}" for i in range(40)]
            # The proxy keeps answering while its database is gone.
            assert all([await send(http, proxy.url, rid, stream=i % 2 == 1) for i, rid in enumerate(during)])
            await _wait_for(lambda: any(p.stat().st_size > 0 for p in tmp_path.glob("usage-*.jsonl")))
            pg.start()
            after = [f"after-{i}" for i in range(10)]
            assert all([await send(http, proxy.url, rid) for rid in after])
            rows = await _wait_rows(pg.dsn, 70)
            assert sorted(rows) == sorted(sent + during + after)
            await _wait_for(lambda: all(p.stat().st_size == 0 for p in tmp_path.glob("usage-*.jsonl")))
            assert "usage journal replayed" in proxy.log()
        finally:
            proxy.stop()
        assert len(await usage_rows(pg.dsn)) == 70


async def _wait_for(predicate: object, timeout: float = 15.0) -> None:
    assert callable(predicate)
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def _wait_rows(dsn: str, n: int, timeout: float = 20.0) -> dict[str, dict[str, object]]:
    rows: dict[str, dict[str, object]] = {}
    for _ in range(int(timeout / 0.1)):
        try:
            rows = await usage_rows(dsn)
        except OSError:
            rows = {}
        if len(rows) >= n:
            return rows
        await asyncio.sleep(0.1)
    raise AssertionError(f"{len(rows)} rows, expected {n}")
