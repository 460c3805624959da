"""What a limiter decision looks like on the wire: OpenAI's x-ratelimit-* headers and 429 errors."""

from __future__ import annotations

import math

import msgspec

from fastproxy.core.errors import RateLimited
from fastproxy.core.types import RawHeaders
from fastproxy.ratelimit.buckets import Bucket, Plan


class Taken(msgspec.Struct, frozen=True, gc=False):
    """A store's answer to take(): the level and time-to-full of every bucket (plan order, after the
    take on success, untouched on refusal); on refusal which bucket refused (index into the plan), its
    level, and when to retry (-1: never)."""

    ok: bool
    remaining: tuple[int, ...] = ()
    reset_ms: tuple[int, ...] = ()
    refused: int = -1
    level: int = 0
    retry_ms: int = -1


def go_duration(ms: int) -> bytes:
    """A duration in Go's time.Duration.String() form, as OpenAI sends resets: 12ms, 1s, 1.5s, 6m0s, 1h2m3s."""
    if ms <= 0:
        return b"0s"
    if ms < 1000:
        return b"%dms" % ms
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}".encode()
    if minutes:
        return f"{minutes}m{seconds}".encode()
    return seconds.encode()


def headers(plan: Plan, taken: Taken) -> RawHeaders:
    """x-ratelimit-* for the tightest refilling bucket of each kind (lifetime quotas have no reset)."""
    out: RawHeaders = []
    remaining = taken.remaining
    for kind, refilling in plan.reported:
        best, capacity = refilling[0]
        for i, cap in refilling[1:]:
            if remaining[i] < remaining[best]:
                best, capacity = i, cap
        out += (
            (_LIMIT[kind], capacity),
            (_REMAINING[kind], b"%d" % max(0, remaining[best])),
            (_RESET[kind], go_duration(taken.reset_ms[best])),
        )
    return out


_LIMIT = {kind: b"x-ratelimit-limit-" + kind for kind in (b"requests", b"tokens")}
_REMAINING = {kind: b"x-ratelimit-remaining-" + kind for kind in (b"requests", b"tokens")}
_RESET = {kind: b"x-ratelimit-reset-" + kind for kind in (b"requests", b"tokens")}


def refused(bucket: Bucket, used: int, requested: int, retry_ms: int) -> RateLimited:
    """The 429 for a bucket that could not give `requested` (Retry-After only when waiting helps)."""
    kind = "tokens" if bucket.tokens else "requests"
    head = f"Rate limit reached for {bucket.name}: Limit {bucket.capacity}, Used {max(0, used)}, Requested {requested}."
    if retry_ms < 0:
        err = RateLimited(head + " This quota does not refill.", code="insufficient_quota")
    else:
        after = go_duration(retry_ms).decode()
        err = RateLimited(
            f"{head} Please try again in {after}.",
            headers=[(b"retry-after", b"%d" % math.ceil(retry_ms / 1000)), (b"retry-after-ms", b"%d" % retry_ms)],
        )
    err.type = kind
    return err


def too_large(bucket: Bucket, requested: int) -> RateLimited:
    """The 429 for a request that no amount of waiting would admit: it asks for more than the capacity."""
    if not bucket.tokens:
        err = RateLimited(f"No requests are allowed: the limit of {bucket.name} is {bucket.capacity}.")
        err.type = "requests"
        return err
    err = RateLimited(
        f"Request too large for {bucket.name}: Limit {bucket.capacity}, Requested {requested}. "
        "The input or output tokens must be reduced in order to run successfully."
    )
    err.type = "tokens"
    return err
