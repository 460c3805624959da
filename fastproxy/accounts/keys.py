"""API key format: `sk-fp-` + base62 of 32 random bytes (43 characters).

Only the SHA-256 hex digest is stored: the keys carry 256 bits of entropy, so a fast hash is as
safe as a slow one and costs microseconds instead of the milliseconds bcrypt would add per request.
The display prefix (`sk-fp-` + 4 characters) and the last 4 characters are all that is kept in clear.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

KEY_PREFIX = "sk-fp-"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_BYTES = 32
# 62**43 > 2**256 > 62**42: every 32-byte value fits in 43 digits (left-padded).
_BODY_LEN = 43
KEY_PATTERN = re.compile(rf"^{KEY_PREFIX}[0-9A-Za-z]{{{_BODY_LEN}}}$")


def _base62(data: bytes, width: int) -> str:
    n = int.from_bytes(data, "big")
    digits = []
    while n:
        n, r = divmod(n, 62)
        digits.append(_ALPHABET[r])
    return "".join(reversed(digits)).rjust(width, "0")


def generate_key() -> str:
    return KEY_PREFIX + _base62(secrets.token_bytes(_RANDOM_BYTES), _BODY_LEN)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + 4]


def hint(key: str) -> str:
    """The last 4 characters: the only part of a key that may appear in logs and messages."""
    return key[-4:]


def well_formed(key: str) -> bool:
    return KEY_PATTERN.match(key) is not None


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
