"""Browser-facing headers: CORS for the configured origins, security headers on /api and /admin.

CORS never costs the proxied path anything when no origin is configured: State.cors is None then
and the app does not look at it. With origins configured, a /v1 response gets CORS headers only
when the request's Origin is listed; any other origin gets none (the browser then refuses to read
the response). Credentials are allowed only for listed origins, never for `*`.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastproxy.core.types import Message, RawHeaders, Scope, Send

ALLOW_METHODS = b"GET, POST, PUT, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = b"authorization, content-type, openai-organization, openai-project, x-request-id, x-stainless-*"
EXPOSE_HEADERS = (
    b"x-request-id, retry-after, retry-after-ms, x-ratelimit-remaining-requests, x-ratelimit-remaining-tokens"
)
MAX_AGE = b"600"
_SECURITY: RawHeaders = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
_HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


def _origin(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"origin":
            return bytes(value)
    return None


class Web:
    def __init__(self, origins: Iterable[str], hsts: bool) -> None:
        self.origins = frozenset(o.strip().rstrip("/").encode() for o in origins if o.strip())
        self._security = [*_SECURITY, _HSTS] if hsts else list(_SECURITY)

    def _cors(self, scope: Scope) -> RawHeaders:
        origin = _origin(scope) if self.origins else None
        if origin is None or origin not in self.origins:
            return []
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-credentials", b"true"),
            (b"access-control-expose-headers", EXPOSE_HEADERS),
            (b"vary", b"Origin"),
        ]

    def cors_send(self, scope: Scope, send: Send) -> Send:
        """`send`, adding CORS headers to the response start when the request's Origin is listed."""
        extra = self._cors(scope)
        return _adding(send, extra) if extra else send

    def secure_send(self, send: Send, no_store: bool = True) -> Send:
        """`send` with the security headers on the response start (CORS ones come from cors_send, app-wide)."""
        extra = list(self._security)
        if no_store:
            extra.append((b"cache-control", b"no-store"))
        return _adding(send, extra)

    async def preflight(self, scope: Scope, send: Send) -> None:
        """Answer an OPTIONS preflight without authentication; CORS headers only for a listed Origin.

        The allow-origin and credentials headers are added by cors_send, which wraps every response.
        """
        headers: RawHeaders = [(b"allow", ALLOW_METHODS), (b"content-length", b"0")]
        if self._cors(scope):
            headers += [
                (b"access-control-allow-methods", ALLOW_METHODS),
                (b"access-control-allow-headers", _requested_headers(scope) or ALLOW_HEADERS),
                (b"access-control-max-age", MAX_AGE),
            ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _requested_headers(scope: Scope) -> bytes | None:
    # Echoing what the browser asks for lets the SDKs' own headers through; only listed origins get here.
    for name, value in scope["headers"]:
        if name == b"access-control-request-headers":
            return bytes(value)[:1024]
    return None


def _adding(send: Send, extra: RawHeaders) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return wrapped
