"""The composition root: the ASGI callable Granian serves."""

from __future__ import annotations

import contextlib
import logging

from fastproxy.core.errors import INTERNAL_ERROR_BODY, MethodNotAllowed, RouteNotFound
from fastproxy.core.responses import send_error, send_json
from fastproxy.core.settings import Settings, load_settings
from fastproxy.core.types import Receive, Scope, Send
from fastproxy.proxy.routes import resolve
from fastproxy.server.lifespan import UpstreamFactory, open_state
from fastproxy.server.state import State
from fastproxy.upstream import build_upstream

log = logging.getLogger("fastproxy")


class FastProxy:
    """One per worker process. `state` exists between lifespan startup and shutdown."""

    def __init__(self, settings: Settings | None = None, upstream_factory: UpstreamFactory = build_upstream) -> None:
        self._settings = settings
        self._upstream_factory = upstream_factory
        self.state: State | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        if state is None:
            raise RuntimeError("fastproxy must be served with ASGI lifespan enabled")
        target = resolve(scope["path"])
        if target is None:
            await send_error(send, RouteNotFound(f"Invalid URL ({scope['method']} {scope['path']})"))
            return
        if isinstance(target, dict):
            handler = target.get(scope["method"])
            if handler is None:
                allow = ", ".join(sorted(target)).encode()
                err = MethodNotAllowed(
                    f"Method {scope['method']} not allowed for {scope['path']}.", headers=[(b"allow", allow)]
                )
                await send_error(send, err)
                return
        else:
            handler = target
        if state.cors is not None:
            # Only with CORS origins configured; adds headers when this request's Origin is one of them.
            send = state.cors.cors_send(scope, send)
        drain = state.drain
        drain.inflight += 1
        try:
            await handler(state, scope, receive, send)
        except Exception:
            # A bug, not a client error: log it once, give the client a generic OpenAI-shaped 500.
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            with contextlib.suppress(Exception):
                await send_json(send, 500, INTERNAL_ERROR_BODY)
        finally:
            drain.inflight -= 1

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            settings = self._settings or load_settings()
            stack = contextlib.AsyncExitStack()
            self.state = await stack.enter_async_context(open_state(settings, self._upstream_factory))
        except Exception as exc:
            await send({"type": "lifespan.startup.failed", "message": f"fastproxy failed to start: {exc}"})
            return
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        try:
            # Granian has stopped accepting: let what is in flight finish (core/drain.py), then close.
            cut = await self.state.drain.settle()
            if cut:
                log.warning("shutdown deadline reached: %d open streams ended with an error event", cut)
            await stack.aclose()
        finally:
            self.state = None
            await send({"type": "lifespan.shutdown.complete"})


def create_app() -> FastProxy:
    """Granian's factory: each worker builds its own app; settings are read in lifespan."""
    return FastProxy()
