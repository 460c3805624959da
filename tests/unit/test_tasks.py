"""The periodic task runner: every step runs each tick, in order, whatever another step raised."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fastproxy.core.tasks import every, stop_task


async def test_every_runs_each_step_in_order_and_survives_a_failing_one(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def broken() -> None:
        calls.append("broken")
        raise RuntimeError("boom")

    def counted() -> None:
        calls.append("counted")

    # configure_logging (run by other tests) stops "fastproxy" propagating to caplog's root handler.
    monkeypatch.setattr(logging.getLogger("fastproxy"), "propagate", True)
    caplog.set_level(logging.ERROR, logger="fastproxy")
    task = asyncio.create_task(every(0.005, [broken, counted]))
    for _ in range(400):
        await asyncio.sleep(0.005)
        if calls.count("counted") >= 3:
            break
    await stop_task(task)
    assert calls.count("counted") >= 3
    # One tick is both steps, the broken one first, tick after tick.
    ticks = len(calls) // 2
    assert calls[: ticks * 2] == ["broken", "counted"] * ticks
    assert any("broken failed" in r.getMessage() and r.exc_info for r in caplog.records)
    assert task.cancelled()
