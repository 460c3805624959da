"""Background tasks with an owner: whoever starts one stops it, and stopping waits for it to end."""

from __future__ import annotations

import asyncio
import contextlib


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` and wait until it has really finished (its cleanup ran); None is a no-op."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
