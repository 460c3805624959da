"""Every endpoint fastproxy answers itself, one line each: the table the OpenAPI document is built from.

Adding an endpoint is one `Op(...)` line here (and its route in fastproxy/proxy/routes.py or its feature's
dispatch table); tests/unit/test_openapi.py fails while the two disagree. Bodies name the Struct the handler
decodes with, answers the Struct it encodes (or its shape in fastproxy.contract.shapes), errors the statuses
the handler can answer with, rendered by `error` (OpenAI's format unless said otherwise).

Not listed: `/v1/*` paths the proxy passes through to the provider without reading (audio, files, batches...,
GET /v1/chat/completions, DELETE /v1/models/{model}) and CORS preflights (OPTIONS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastproxy.accounts.admin_schemas import KeyCreate, KeyCreated, KeyPatch, UserCreate, UserPatch
from fastproxy.contract import shapes as s
from fastproxy.core.providers import Provider, Route
from fastproxy.core.schemas import ErrorBody, RequestView
from fastproxy.selfservice.api import Connect, KeyRequest, Login, Profile, Refresh, Register, TokenPair
from fastproxy.store import ApiKey, User
from fastproxy.translate.ingress_response import AnthropicError
from fastproxy.usage.query import UsageRecord, UsageSummary


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    schema: dict[str, Any]
    description: str


@dataclass(frozen=True, slots=True)
class Named:
    """A request body given as a config table plus a `name` (POST /admin/providers|routes)."""

    struct: type[Any]


@dataclass(frozen=True, slots=True)
class Op:
    method: str
    path: str
    tag: str
    summary: str
    ok: Any
    body: Any = None
    status: int = 200
    security: str | None = None
    errors: tuple[int, ...] = ()
    query: tuple[Param, ...] = ()
    # 200 may also be a server-sent event stream (the request's `stream: true`).
    streams: bool = False
    # The answer is not JSON: its content type.
    content_type: str = "application/json"
    error: type[Any] = ErrorBody
    extra: dict[str, Any] = field(default_factory=dict)


# Security schemes (all `Authorization: Bearer ...`).
KEY = "apiKey"
ADMIN = "adminKey"
SESSION = "session"

_LIMIT_100 = Param("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "page size (default 20)")
_LIMIT_1000 = Param("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size (default 100)")
_AFTER = Param("after", {"type": "string"}, "the last id seen (`last_id`)")
_AFTER_RECORD = Param("after", {"type": "string", "pattern": r"^\d{1,18}$"}, "the last record id seen")
_TIME = {"type": "number", "minimum": 0, "exclusiveMaximum": 1e12}
_START = Param("start", _TIME, "Unix seconds, inclusive")
_END = Param("end", _TIME, "Unix seconds, exclusive")
_MODEL = Param("model", {"type": "string", "maxLength": 200}, "only this model")
_KEY_ID = Param("key_id", {"type": "string"}, "only this key")
_USER_ID = Param("user_id", {"type": "string"}, "only this user")
USAGE_FILTERS = (_START, _END, _MODEL)
USAGE_QUERY = (_LIMIT_1000, _AFTER_RECORD, *USAGE_FILTERS)
ADMIN_USAGE_QUERY = (*USAGE_QUERY, _KEY_ID, _USER_ID)

# What any /v1 model request can be answered with: fastproxy's own refusals, then the provider's (passed
# through) and the gateway errors (unreachable 502, no target 503, timeout 504).
PROXIED = (400, 401, 403, 404, 408, 413, 429, 502, 503, 504)
ADMIN_ERRORS = (400, 401, 404, 405, 408, 413, 503)
SESSION_ERRORS = (400, 401, 404, 405, 408, 413, 429, 503)

OPERATIONS: tuple[Op, ...] = (
    # -- the proxy: OpenAI's API, answered by the route's provider; fastproxy reads only RequestView's fields
    Op("POST", "/v1/chat/completions", "proxy", "Chat completion", s.ChatCompletion, RequestView, security=KEY, errors=PROXIED, streams=True),
    Op("POST", "/v1/completions", "proxy", "Text completion", s.Completion, RequestView, security=KEY, errors=PROXIED, streams=True),
    Op("POST", "/v1/messages", "proxy", "Anthropic Messages (translated for OpenAI-compatible providers)", dict[str, Any], RequestView, security=KEY, errors=PROXIED, streams=True, error=AnthropicError),
    Op("POST", "/v1/messages/count_tokens", "proxy", "Anthropic token count (the provider's, or fastproxy's estimate)", dict[str, int], RequestView, security=KEY, errors=PROXIED, error=AnthropicError),
    Op("POST", "/v1/embeddings", "proxy", "Embeddings", s.EmbeddingList, RequestView, security=KEY, errors=PROXIED),
    Op("POST", "/v1/responses", "proxy", "Responses API", s.ResponseObject, RequestView, security=KEY, errors=PROXIED, streams=True),
    Op("GET", "/v1/models", "proxy", "Models: the routes and providers' models", s.Listing[s.Model], security=KEY, errors=(401, 429, 502, 503, 504)),
    Op("GET", "/v1/models/{model}", "proxy", "One model", s.Model, security=KEY, errors=(401, 404, 429, 502, 503, 504)),
    Op("GET", "/v1/usage", "usage", "The calling key's usage records", s.Page[UsageRecord], security=KEY, errors=(400, 401, 403, 503), query=USAGE_QUERY),
    Op("GET", "/v1/usage/summary", "usage", "The calling key's totals by model and day", UsageSummary, security=KEY, errors=(400, 401, 403, 503), query=USAGE_FILTERS),
    # -- probes
    Op("GET", "/health", "probes", "Liveness (no I/O)", s.Health),
    Op("HEAD", "/health", "probes", "Liveness (no I/O)", s.Health),
    Op("GET", "/readyz", "probes", "Readiness: every dependency pinged; 503 names the ones that failed", s.Readiness, extra={"503": s.Readiness}),
    Op("GET", "/metrics", "probes", "Prometheus exposition", str, content_type="text/plain", errors=(404,)),
    Op("GET", "/", "probes", "Name and version", s.Identity),
    Op("GET", "/openapi.json", "probes", "This document", dict),
    # -- the admin API (FASTPROXY_ADMIN_KEY; every /admin path is 404 without one)
    Op("POST", "/admin/users", "admin", "Create a user", User, UserCreate, 201, ADMIN, (*ADMIN_ERRORS, 409)),
    Op("GET", "/admin/users", "admin", "List users", s.Page[User], security=ADMIN, errors=ADMIN_ERRORS, query=(_LIMIT_100, _AFTER)),
    Op("GET", "/admin/users/{id}", "admin", "A user", User, security=ADMIN, errors=ADMIN_ERRORS),
    Op("PATCH", "/admin/users/{id}", "admin", "Change a user", User, UserPatch, security=ADMIN, errors=(*ADMIN_ERRORS, 409)),
    Op("DELETE", "/admin/users/{id}", "admin", "Disable a user and revoke its keys", User, security=ADMIN, errors=ADMIN_ERRORS),
    Op("GET", "/admin/users/{id}/usage", "admin", "A user's usage records", s.Page[UsageRecord], security=ADMIN, errors=ADMIN_ERRORS, query=USAGE_QUERY),
    Op("POST", "/admin/keys", "admin", "Create an API key (the key is in this answer only)", KeyCreated, KeyCreate, 201, ADMIN, ADMIN_ERRORS),
    Op("GET", "/admin/keys", "admin", "List API keys", s.Page[ApiKey], security=ADMIN, errors=ADMIN_ERRORS, query=(_LIMIT_100, _AFTER, _USER_ID)),
    Op("GET", "/admin/keys/{id}", "admin", "An API key", ApiKey, security=ADMIN, errors=ADMIN_ERRORS),
    Op("PATCH", "/admin/keys/{id}", "admin", "Change an API key", ApiKey, KeyPatch, security=ADMIN, errors=ADMIN_ERRORS),
    Op("DELETE", "/admin/keys/{id}", "admin", "Revoke an API key", ApiKey, security=ADMIN, errors=ADMIN_ERRORS),
    Op("GET", "/admin/keys/{id}/limits", "admin", "The level of each rate-limit bucket of a key", s.KeyLimits, security=ADMIN, errors=ADMIN_ERRORS),
    Op("GET", "/admin/usage", "admin", "Usage records", s.Page[UsageRecord], security=ADMIN, errors=ADMIN_ERRORS, query=ADMIN_USAGE_QUERY),
    Op("GET", "/admin/usage/summary", "admin", "Usage totals", UsageSummary, security=ADMIN, errors=ADMIN_ERRORS, query=(*USAGE_FILTERS, _KEY_ID, _USER_ID)),
    Op("GET", "/admin/providers", "admin", "Providers, with each key's live state", s.Listing[s.ProviderView], security=ADMIN, errors=ADMIN_ERRORS),
    Op("POST", "/admin/providers", "admin", "Create a provider", s.ProviderView, Named(Provider), 201, ADMIN, (*ADMIN_ERRORS, 409)),
    Op("GET", "/admin/providers/{name}", "admin", "A provider", s.ProviderView, security=ADMIN, errors=ADMIN_ERRORS),
    Op("PATCH", "/admin/providers/{name}", "admin", "Change a provider", s.ProviderView, Named(Provider), security=ADMIN, errors=(*ADMIN_ERRORS, 409)),
    Op("DELETE", "/admin/providers/{name}", "admin", "Delete a provider", s.Deleted, security=ADMIN, errors=(*ADMIN_ERRORS, 409)),
    Op("GET", "/admin/routes", "admin", "Model routes", s.Listing[s.RouteView], security=ADMIN, errors=ADMIN_ERRORS),
    Op("POST", "/admin/routes", "admin", "Create a model route", s.RouteView, Named(Route), 201, ADMIN, (*ADMIN_ERRORS, 409)),
    Op("GET", "/admin/routes/{name}", "admin", "A model route", s.RouteView, security=ADMIN, errors=ADMIN_ERRORS),
    Op("PATCH", "/admin/routes/{name}", "admin", "Change a model route", s.RouteView, Named(Route), security=ADMIN, errors=(*ADMIN_ERRORS, 409)),
    Op("DELETE", "/admin/routes/{name}", "admin", "Delete a model route", s.Deleted, security=ADMIN, errors=(*ADMIN_ERRORS, 409)),
    Op("DELETE", "/admin/cache", "admin", "Purge the response cache", s.CachePurge, security=ADMIN, errors=ADMIN_ERRORS),
    Op("DELETE", "/admin/cache/global", "admin", "Purge the shared scope", s.CachePurge, security=ADMIN, errors=ADMIN_ERRORS),
    Op("DELETE", "/admin/cache/users/{id}", "admin", "Purge a user's scope", s.CachePurge, security=ADMIN, errors=ADMIN_ERRORS),
    Op("DELETE", "/admin/cache/keys/{id}", "admin", "Purge a key's scope", s.CachePurge, security=ADMIN, errors=ADMIN_ERRORS),
    Op("DELETE", "/admin/cache/models/{model}", "admin", "Purge a model's entries", s.CachePurge, security=ADMIN, errors=ADMIN_ERRORS),
    # -- self-service (FASTPROXY_JWT_SECRETS and a database; every /api path is 404 without them)
    Op("POST", "/api/auth/register", "selfservice", "Sign up (FASTPROXY_SIGNUP)", Profile, Register, 201, None, (*SESSION_ERRORS, 403, 409)),
    Op("POST", "/api/auth/login", "selfservice", "Sign in: an access and a refresh token", TokenPair, Login, errors=SESSION_ERRORS),
    Op("POST", "/api/auth/refresh", "selfservice", "A new token pair; the refresh token is spent", TokenPair, Refresh, errors=SESSION_ERRORS),
    Op("POST", "/api/auth/logout", "selfservice", "Revoke a refresh token's family", s.Logout, Refresh, errors=SESSION_ERRORS),
    Op("GET", "/api/auth/me", "selfservice", "The caller's profile", Profile, security=SESSION, errors=SESSION_ERRORS),
    Op("GET", "/api/user/profile", "selfservice", "The caller's profile", Profile, security=SESSION, errors=SESSION_ERRORS),
    Op("GET", "/api/auth/nonce", "selfservice", "A Sign-In with Ethereum nonce", s.Nonce, errors=SESSION_ERRORS),
    Op("POST", "/api/auth/connect", "selfservice", "Sign in with an Ethereum wallet (EIP-4361)", TokenPair, Connect, errors=SESSION_ERRORS),
    Op("GET", "/api/api-keys", "selfservice", "The caller's API keys", s.KeyPage, security=SESSION, errors=SESSION_ERRORS, query=(_LIMIT_100, _AFTER)),
    Op("POST", "/api/api-keys", "selfservice", "Create an API key (the key is in this answer only)", KeyCreated, KeyRequest, 201, SESSION, (*SESSION_ERRORS, 403)),
    Op("GET", "/api/api-keys/{id}", "selfservice", "One of the caller's API keys", ApiKey, security=SESSION, errors=SESSION_ERRORS),
    Op("DELETE", "/api/api-keys/{id}", "selfservice", "Revoke one of the caller's API keys", ApiKey, security=SESSION, errors=SESSION_ERRORS),
    Op("GET", "/api/usage", "selfservice", "The caller's usage records", s.Page[UsageRecord], security=SESSION, errors=SESSION_ERRORS, query=ADMIN_USAGE_QUERY[:-1]),
    Op("GET", "/api/usage/summary", "selfservice", "The caller's usage totals", UsageSummary, security=SESSION, errors=SESSION_ERRORS, query=(*USAGE_FILTERS, _KEY_ID)),
)  # fmt: skip
