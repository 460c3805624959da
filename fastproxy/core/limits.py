"""Rate-limit seam: admit a request before it goes upstream, settle it with the real usage after.

`NoLimits` is the trivial limiter (a base to wrap, and for tests); fastproxy.ratelimit builds the real ones,
which cost nothing measurable for a request that has no limit configured.
"""

from __future__ import annotations

from typing import Protocol

from fastproxy.core.schemas import BucketLevel, Principal, TokenUsage
from fastproxy.core.types import RawHeaders


class Admission:
    """What admit() took, so settle() can refund or charge the difference; and the headers to return."""

    __slots__ = ("estimate", "headers", "principal")

    def __init__(self, principal: Principal, estimate: int, headers: RawHeaders) -> None:
        self.principal = principal
        self.estimate = estimate
        self.headers = headers


class Limiter(Protocol):
    async def admit(self, principal: Principal, estimate: int, client_ip: str | None) -> Admission:
        """Take one request and `estimate` tokens from every bucket that applies, atomically.

        Raises RateLimited (429, with Retry-After) or ServiceUnavailable (503, fail-closed policy).
        """
        ...

    async def settle(self, admission: Admission, usage: TokenUsage | None) -> None:
        """Reconcile the estimate with the real usage (None: the estimate stands). Never raises."""
        ...

    async def levels(self, principal: Principal, client_ip: str | None = None) -> list[BucketLevel]:
        """The current level of every bucket that applies to `principal`, taking nothing.

        Raises ServiceUnavailable when the shared store cannot be read.
        """
        ...

    async def close(self) -> None: ...


class NoLimits:
    async def admit(self, principal: Principal, estimate: int, client_ip: str | None) -> Admission:
        return Admission(principal, estimate, [])

    async def settle(self, admission: Admission, usage: TokenUsage | None) -> None:
        return None

    async def levels(self, principal: Principal, client_ip: str | None = None) -> list[BucketLevel]:
        return []

    async def close(self) -> None:
        return None
