"""The model list clients see on /v1/models once providers or routes are configured: every route, then
each provider's own models (from its /models, fetched at startup and refreshed in the background; a
provider that fails is skipped and logged, and never breaks the list). The default provider's models
keep their plain ids; another provider's are listed as `provider/model`, the name that addresses them.

Providers and routes changed through the admin API show at once: the router calls `changed` after every
rebuild, which re-renders the list (routes added or gone) and wakes the refresher to fetch the models
of providers it has not listed yet. While only the default provider exists, nothing is fetched: its
own /models answer is passed through, as it always was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec

from fastproxy.core.schemas import json_encoder
from fastproxy.upstream import Upstream
from fastproxy.upstream.providers import LiveProvider
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
        # Provider name -> (the live provider listed, its models): a provider rebuilt with another config
        # is listed again.
        self._fetched: dict[str, tuple[LiveProvider, list[str]]] = {}
        self._wake = asyncio.Event()
        self.listing = b""
        self.items: dict[str, bytes] = {}
        self._render()
        router.listeners.append(self.changed)

    def changed(self) -> None:
        """The router was rebuilt: drop what removed providers listed, show the routes as they are now."""
        live = self._router.providers
        self._fetched = {name: got for name, got in self._fetched.items() if live.get(name) is got[0]}
        self._render()
        if any(name not in self._fetched for name in live):
            self._wake.set()

    def _render(self) -> None:
        created = int(time.time())
        entries: dict[str, dict[str, object]] = {}
        for name in self._router.routes:
            entries[name] = {"id": name, "object": "model", "created": created, "owned_by": "fastproxy"}
        for provider, (_, models) in self._fetched.items():
            for model in models:
                ident = model if provider == self._router.default.name else f"{provider}/{model}"
                entries.setdefault(ident, {"id": ident, "object": "model", "created": created, "owned_by": provider})
        self.items = {ident: json_encoder.encode(doc) for ident, doc in entries.items()}
        self.listing = json_encoder.encode({"object": "list", "data": list(entries.values())})

    async def refresh(self, missing_only: bool = False) -> None:
        """Fetch every provider's models (concurrently, each bounded); keep the last good list of a failing one.
        `missing_only`: only the providers not listed yet (after an admin change)."""
        providers = [p for p in self._router.providers.values() if not (missing_only and p.name in self._fetched)]
        results = await asyncio.gather(*(self._fetch(provider) for provider in providers))
        live = self._router.providers
        for provider, models in zip(providers, results, strict=True):
            # Not if the admin API removed or changed the provider while it was being asked.
            if models is not None and live.get(provider.name) is provider:
                self._fetched[provider.name] = (provider, models)
        self._render()

    async def _fetch(self, provider: LiveProvider) -> list[str] | None:
        name = provider.name
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
        """Refresh every interval, and at once when the router gains a provider, until cancelled (owned by
        lifespan). Nothing is fetched while the router has only its default provider and no route."""
        woken = False
        while True:
            if self._router.configured:
                await self.refresh(missing_only=woken)
            self._wake.clear()
            woken = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
                    woken = True
