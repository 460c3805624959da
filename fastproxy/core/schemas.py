"""Every msgspec Struct the proxy decodes or encodes, and the codecs, built once.

Request views hold only the fields the proxy acts on; the original bytes are what goes upstream,
so messages, tools and images are never turned into Python objects.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec


class StreamOptions(msgspec.Struct, gc=False):
    include_usage: bool | None = None


class RequestView(msgspec.Struct, gc=False):
    """The fields of a chat/completions/embeddings/responses body the proxy needs."""

    model: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    max_output_tokens: int | None = None
    n: int | None = None
    # The response cache's rule for a deterministic request (fastproxy/cache/policy.py).
    temperature: float | None = None
    seed: int | None = None


class _TokenDetails(msgspec.Struct, gc=False):
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


class UsageView(msgspec.Struct, gc=False):
    """OpenAI usage, in both the chat (prompt/completion) and Responses (input/output) spellings."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    prompt_tokens_details: _TokenDetails | None = None
    completion_tokens_details: _TokenDetails | None = None
    input_tokens_details: _TokenDetails | None = None
    output_tokens_details: _TokenDetails | None = None


class _ResponseObject(msgspec.Struct, gc=False):
    usage: UsageView | None = None


class UsageCarrier(msgspec.Struct, gc=False):
    """Where usage lives in a response body or SSE event: top level, or under `response` (Responses API).

    `choices` is kept as raw fragments only to tell the include_usage chunk (empty choices) apart.
    """

    usage: UsageView | None = None
    response: _ResponseObject | None = None
    choices: list[msgspec.Raw] | None = None


class TokenUsage(msgspec.Struct, frozen=True, gc=False):
    """Normalised token counts, whichever API reported them."""

    prompt: int = 0
    completion: int = 0
    total: int = 0
    cached: int = 0
    reasoning: int = 0

    @classmethod
    def from_view(cls, u: UsageView) -> TokenUsage:
        prompt = u.prompt_tokens if u.prompt_tokens is not None else (u.input_tokens or 0)
        completion = u.completion_tokens if u.completion_tokens is not None else (u.output_tokens or 0)
        in_details = u.prompt_tokens_details or u.input_tokens_details
        out_details = u.completion_tokens_details or u.output_tokens_details
        return cls(
            prompt=prompt,
            completion=completion,
            total=u.total_tokens if u.total_tokens is not None else prompt + completion,
            cached=(in_details.cached_tokens or 0) if in_details else 0,
            reasoning=(out_details.reasoning_tokens or 0) if out_details else 0,
        )


class ErrorDetail(msgspec.Struct, omit_defaults=False):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


request_decoder = msgspec.json.Decoder(RequestView)
usage_decoder = msgspec.json.Decoder(UsageCarrier)
json_encoder = msgspec.json.Encoder()


def usage_from_json(data: bytes | memoryview) -> tuple[TokenUsage | None, bool]:
    """Read usage from one JSON document: (usage or None, whether `choices` is an empty list).

    Never raises: a body that is not JSON, or not shaped as expected, simply has no usage.
    """
    try:
        carrier = usage_decoder.decode(data)
    except msgspec.DecodeError:
        return None, False
    view = carrier.usage or (carrier.response.usage if carrier.response else None)
    empty_choices = carrier.choices is not None and len(carrier.choices) == 0
    return (TokenUsage.from_view(view) if view else None), empty_choices


class Limits(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """Limits of a key or a user; None means unlimited. Enforced by the limiter and the usage issue."""

    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    tpd: int | None = None
    max_tokens_total: int | None = None
    max_budget_usd: float | None = None


class KeyCache(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """A key's response-cache settings (fastproxy/cache); a field left out follows the route's, then the
    global setting (fastproxy/cache/policy.py). `enabled: false` keeps the key out of the cache; `true`
    caches its requests even when FASTPROXY_CACHE_DEFAULT=off, but cannot turn on a cache that is off
    (FASTPROXY_CACHE). The same fields as a route's (core.providers.RouteCache)."""

    enabled: bool | None = None
    scope: Literal["key", "user", "global"] | None = None
    # Seconds an entry written for this key lives (the shortest of the key's and the route's wins).
    ttl: Annotated[float, msgspec.Meta(gt=0)] | None = None
    generations: Literal["deterministic", "always", "never"] | None = None


class Principal(msgspec.Struct, frozen=True, gc=False):
    """Who is calling, as authentication resolved it. Never holds the key itself."""

    key_id: str | None = None
    user_id: str | None = None
    # Last 4 characters of the key, the only part that may appear in logs and messages.
    key_hint: str | None = None
    key_limits: Limits | None = None
    user_limits: Limits | None = None
    # None means every model is allowed.
    allowed_models: frozenset[str] | None = None
    cache: KeyCache | None = None
    # Served only with the provider key of this id (the key's pin, else its user's); None: the pool.
    upstream_key: str | None = None


ANONYMOUS = Principal()


class BucketLevel(msgspec.Struct, frozen=True, gc=False):
    """One rate-limit bucket's current level, as operators see it (GET /admin/keys/{id}/limits)."""

    name: str
    # "requests" or "tokens".
    kind: str
    capacity: int
    # Seconds to refill from empty; 0 for a lifetime quota.
    period: int
    remaining: float
    # Milliseconds until the bucket is full again: 0 when full, -1 for a lifetime quota in use.
    reset_ms: int
