"""One exception tree for everything the proxy answers with an error, and its OpenAI-shaped rendering.

    ProxyError (500 server_error)
    ├── InvalidRequest (400 invalid_request_error; `param` names the field)
    │   ├── BodyTooLarge (413)
    │   ├── RequestTimeout (408: the body did not arrive in time)
    │   ├── RouteNotFound (404)
    │   └── MethodNotAllowed (405)
    ├── AuthenticationFailed (401 invalid_api_key)
    ├── PermissionDenied (403)
    ├── RateLimited (429 rate_limit_exceeded)
    ├── QuotaExceeded (429 insufficient_quota: a key's or user's max_budget_usd is spent)
    ├── ServiceUnavailable (503)
    └── UpstreamError (502 upstream_error)
        ├── UpstreamUnreachable (502 upstream_unreachable)
        ├── UpstreamTimeout (504 upstream_timeout)
        └── UpstreamUnavailable (503 upstream_unavailable: every target resting behind open breakers)

Adapters map library exceptions to these (raised `from` the original) so nothing library-specific
reaches the handlers, and no traceback ever reaches a client.
"""

from __future__ import annotations

from fastproxy.core.schemas import ErrorBody, ErrorDetail, json_encoder
from fastproxy.core.types import RawHeaders


class ProxyError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: RawHeaders | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers: RawHeaders = headers or []

    def body(self) -> bytes:
        detail = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        return json_encoder.encode(ErrorBody(error=detail))


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"


class BodyTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class RequestTimeout(InvalidRequest):
    status = 408
    code = "request_timeout"


class RouteNotFound(InvalidRequest):
    status = 404
    code = "unknown_url"


class MethodNotAllowed(InvalidRequest):
    status = 405
    code = "method_not_allowed"


class AuthenticationFailed(ProxyError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(ProxyError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class RateLimited(ProxyError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class QuotaExceeded(ProxyError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class ServiceUnavailable(ProxyError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class UpstreamError(ProxyError):
    status = 502
    type = "server_error"
    code = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "upstream_unavailable"


INTERNAL_ERROR_BODY = ProxyError("The server had an error while processing your request.").body()
