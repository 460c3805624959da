"""Shapes of the answers that the handlers build as plain dicts, and of the provider answers the proxy passes
through, for the OpenAPI document only: nothing on the request path encodes or decodes these.

Request bodies are never described here: the document takes them from the Structs the handlers decode with
(fastproxy.core.schemas.RequestView, fastproxy.accounts.admin_schemas, fastproxy.selfservice.api, the
provider and route config), so a field added there shows up in the document by itself. Answers the proxy
passes through from a provider are described loosely (the members every OpenAI-compatible provider sends;
any others allowed), since fastproxy forwards them byte for byte and does not own them.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from fastproxy.core.schemas import BucketLevel
from fastproxy.store import ApiKey

T = TypeVar("T")


class Page(msgspec.Struct, Generic[T]):
    """OpenAI's list shape: pass `last_id` as `after` for the next page."""

    object: str
    data: list[T]
    first_id: str | None
    last_id: str | None
    has_more: bool


class Listing(msgspec.Struct, Generic[T]):
    object: str
    data: list[T]


# -- probes ---------------------------------------------------------------------------------------------------
class Health(msgspec.Struct):
    status: str


class Identity(msgspec.Struct):
    name: str
    version: str


class Check(msgspec.Struct):
    ok: bool
    ms: float | None = None
    error: str | None = None


class Readiness(msgspec.Struct):
    status: str
    checks: dict[str, Check]
    providers_down: list[str] | None = None
    message: str | None = None


# -- what providers answer on /v1 (passed through) ------------------------------------------------------------
class Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


class ChatCompletion(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str | None
    choices: list[dict[str, Any]]
    usage: Usage | None = None


# The same members as a chat completion, under its own name in the document.
class Completion(ChatCompletion):
    pass


class Embedding(msgspec.Struct):
    object: str
    index: int
    embedding: list[float] | str


class EmbeddingList(msgspec.Struct):
    object: str
    data: list[Embedding]
    model: str | None
    usage: Usage | None = None


class ResponseObject(msgspec.Struct):
    id: str
    object: str
    created_at: float
    status: str | None
    model: str | None
    output: list[dict[str, Any]]
    usage: Usage | None = None


class Model(msgspec.Struct):
    id: str
    object: str
    created: int | None = None
    owned_by: str | None = None


# -- admin ----------------------------------------------------------------------------------------------------
class KeyState(msgspec.Struct):
    """An upstream key as the answering worker sees it; the key itself is never shown."""

    id: str
    key_hint: str
    weight: float
    breaker: str | None = None
    inflight: int | None = None
    ewma_ms: float | None = None
    ttft_ms: float | None = None
    last_error: str | None = None
    cooldown_remaining: float | None = None
    ratelimit: dict[str, Any] | None = None


class ProviderView(msgspec.Struct):
    object: str
    name: str
    source: str | None
    type: str
    base_url: str
    api_version: str
    headers: dict[str, str]
    first_token_timeout: float | None
    stream_idle_timeout: float | None
    keys: list[KeyState]


class RouteView(msgspec.Struct):
    object: str
    name: str
    source: str | None
    targets: list[dict[str, Any]]
    context_fallback: str | None = None
    max_attempts: int | None = None


class Deleted(msgspec.Struct):
    object: str
    name: str
    deleted: bool


class CachePurge(msgspec.Struct):
    object: str
    deleted: int
    backend: str


class KeyLimits(msgspec.Struct):
    object: str
    key_id: str
    data: list[BucketLevel]


# -- self-service ---------------------------------------------------------------------------------------------
class Nonce(msgspec.Struct):
    object: str
    nonce: str
    domain: str
    uri: str
    chain_ids: list[int]


class Logout(msgspec.Struct):
    object: str
    revoked: bool


KeyPage = Page[ApiKey]
