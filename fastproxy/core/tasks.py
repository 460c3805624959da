"""Background tasks with an owner: whoever starts one stops it, and stopping waits for it to end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

log = logging.getLogger("fastproxy")


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` and wait until it has really finished (its cleanup ran); None is a no-op."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def every(interval: float, steps: Sequence[Callable[[], None]]) -> None:
    """Call each of `steps`, in order, every `interval` seconds until cancelled.

    A step that raises is logged and the others still run: a bug in one must not end the task for the
    life of the worker.
    """
    while True:
        await asyncio.sleep(interval)
        for step in steps:
            try:
                step()
            except Exception:
                log.exception("%s failed", getattr(step, "__qualname__", step))
