"""The model list clients see on /v1/models once providers or routes are configured: every route, then
each provider's own models (from its /models, fetched at startup and refreshed in the background; a
provider that fails is skipped and logged, and never breaks the list). The default provider's models
keep their plain ids; another provider's are listed as `provider/model`, the name that addresses them.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from fastproxy.core.schemas import json_encoder
from fastproxy.upstream import Upstream
from fastproxy.upstream.router import Router

log = logging.getLogger("fastproxy.upstream")

_FETCH_TIMEOUT = 10.0


class _Model(msgspec.Struct):
    id: str


class _ModelList(msgspec.Struct):
    data: list[_Model] = msgspec.field(default_factory=list)


_decode_list = msgspec.json.Decoder(_ModelList).decode


class Catalog:
    """Rendered once per refresh: a request for the list or one model is a dict lookup."""

    def __init__(self, router: Router, upstream: Upstream, refresh_interval: float = 300.0) -> None:
        self._router = router
        self._upstream = upstream
        self._interval = refresh_interval
        self._fetched: dict[str, list[str]] = {}
        self.listing = b""
        self.items: dict[str, bytes] = {}
        self._render()

    def _render(self) -> None:
        created = int(time.time())
        entries: dict[str, dict[str, object]] = {}
        for name in self._router.routes:
            entries[name] = {"id": name, "object": "model", "created": created, "owned_by": "fastproxy"}
        for provider, models in self._fetched.items():
            for model in models:
                ident = model if provider == self._router.default.name else f"{provider}/{model}"
                entries.setdefault(ident, {"id": ident, "object": "model", "created": created, "owned_by": provider})
        self.items = {ident: json_encoder.encode(doc) for ident, doc in entries.items()}
        self.listing = json_encoder.encode({"object": "list", "data": list(entries.values())})

    async def refresh(self) -> None:
        """Fetch every provider's models (concurrently, each bounded); keep the last good list of a failing one."""
        names = list(self._router.providers)
        results = await asyncio.gather(*(self._fetch(name) for name in names))
        for name, models in zip(names, results, strict=True):
            if models is not None:
                self._fetched[name] = models
        self._render()

    async def _fetch(self, name: str) -> list[str] | None:
        provider = self._router.providers[name]
        if provider.type == "azure":
            url = f"{provider.base_url}/openai/models?api-version={provider.api_version}"
        elif provider.type == "anthropic":
            url = provider.base_url + "/v1/models?limit=1000"  # Anthropic pages its list (20 by default)
        else:
            url = provider.base_url + "/models"
        try:
            async with asyncio.timeout(_FETCH_TIMEOUT):
                resp = await self._upstream.send("GET", url, list(provider.keys[0].headers), b"")
                try:
                    data = await resp.read()
                except BaseException:
                    await resp.abort()
                    raise
                await resp.release()
            if resp.status != 200:
                raise ValueError(f"status {resp.status}")
            return [m.id for m in _decode_list(data).data]
        except Exception as exc:  # any failure of one provider only leaves it out
            log.warning("could not list the models of provider %s (%s); it is left out of /v1/models", name, exc)
            return None

    async def run(self) -> None:
        """Refresh until cancelled (owned by lifespan)."""
        while True:
            await self.refresh()
            await asyncio.sleep(self._interval)
