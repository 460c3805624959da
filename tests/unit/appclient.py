"""The FastProxy ASGI app in this process (lifespan state opened for real), behind an httpx client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from fastproxy.app import FastProxy
from fastproxy.core.settings import Settings
from fastproxy.server.lifespan import open_state
from fastproxy.server.state import State

ADMIN_KEY = "admin-secret-for-tests-0001"


@contextlib.asynccontextmanager
async def app_client(**overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, State]]:
    fields: dict[str, Any] = {"admin_key": ADMIN_KEY, "access_log": False, "log_level": "warning", **overrides}
    settings = Settings(**fields)
    app = FastProxy(settings)
    async with open_state(settings) as state:
        app.state = state
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fastproxy") as client:
            yield client, state
