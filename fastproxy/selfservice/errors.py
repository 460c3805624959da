"""Errors of the self-service API; rendered like every other error (fastproxy.core.errors)."""

from __future__ import annotations

from fastproxy.core.errors import ProxyError


class SignInFailed(ProxyError):
    """401: bad credentials, token or signature. The message says what, never echoing the secret."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_credentials"


class Forbidden(ProxyError):
    status = 403
    type = "invalid_request_error"
    code = "forbidden"


class NotFound(ProxyError):
    """404, also for another user's ids: a caller cannot tell "not yours" from "does not exist"."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class Conflict(ProxyError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"
