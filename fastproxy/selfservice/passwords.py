"""Password hashing (argon2id through argon2-cffi) and the sign-up policy.

Hashing is deliberately slow (tens of milliseconds, tens of MiB): callers run it in a thread
(`asyncio.to_thread`) so a login never stalls the worker's event loop and the requests on it.
"""

from __future__ import annotations

import secrets
from importlib import resources

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 12
MAX_LENGTH = 1024


def _common_passwords() -> frozenset[str]:
    text = resources.files("fastproxy.selfservice").joinpath("common_passwords.txt").read_text(encoding="utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#"))


class Passwords:
    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()  # argon2id, RFC 9106's second recommended parameters
        self._common = _common_passwords()
        # Verified against when an email is unknown, so that answer costs the same time as a wrong password.
        self._decoy = self._hasher.hash(secrets.token_urlsafe(24))

    def problem(self, password: str) -> str | None:
        """Why this password may not be used, or None."""
        if len(password) < MIN_LENGTH:
            return f"The password must be at least {MIN_LENGTH} characters long."
        if len(password) > MAX_LENGTH:
            return f"The password must be at most {MAX_LENGTH} characters long."
        if password.lower() in self._common:
            return "This password is too common; choose another."
        return None

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        """True when `password` matches; with no hash (unknown user, no password set) the same work is done."""
        try:
            return self._hasher.verify(password_hash or self._decoy, password) and password_hash is not None
        except (VerificationError, InvalidHashError):
            return False
