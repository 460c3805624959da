"""Authentication seam: the Authorization header in, a Principal out.

`OpenAccess` is the default until API keys are configured: every request is anonymous.
"""

from __future__ import annotations

from typing import Protocol

from fastproxy.schemas import ANONYMOUS, Principal


class Authenticator(Protocol):
    async def authenticate(self, authorization: bytes | None) -> Principal:
        """Resolve the caller. Raises AuthenticationFailed (401) with a message saying what was wrong.

        Must cost no I/O in the steady state (cached).
        """
        ...

    async def close(self) -> None: ...


class OpenAccess:
    async def authenticate(self, authorization: bytes | None) -> Principal:
        return ANONYMOUS

    async def close(self) -> None:
        return None
