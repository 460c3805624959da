"""Access tokens (short-lived JWTs) and refresh tokens (opaque, long-lived, stored only as hashes).

Access tokens are HS256 JWTs carrying `sub` (the user id), `iat`, `exp` and `iss`, with a `kid`
header naming the secret that signed them: the first of FASTPROXY_JWT_SECRETS signs, every one
listed verifies. Rotating is putting a new secret first and, once the longest access token signed
with the old one has expired (jwt_access_ttl), removing the old one. A token whose `kid` names no
listed secret is refused without trying any (a retired secret's tokens stop working at once).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Sequence

import jwt

from fastproxy.selfservice.errors import SignInFailed

ISSUER = "fastproxy"
ALGORITHM = "HS256"
REFRESH_PREFIX = "fprt-"


def key_id(secret: str) -> str:
    """A public name for a secret: a prefix of its hash, so the token header never reveals the secret."""
    return hashlib.sha256(b"fastproxy-jwt-kid:" + secret.encode()).hexdigest()[:16]


class Keyring:
    def __init__(self, secrets_: Sequence[str], ttl: int, clock: Callable[[], float] = time.time) -> None:
        if not secrets_:
            raise ValueError("at least one JWT secret is needed")
        self._keys = {key_id(s): s.encode() for s in secrets_}
        self._signing_kid = key_id(secrets_[0])
        self._signing_key = secrets_[0].encode()
        self.ttl = ttl
        self._clock = clock

    def issue(self, user_id: str) -> str:
        now = int(self._clock())
        claims = {"sub": user_id, "iat": now, "exp": now + self.ttl, "iss": ISSUER}
        return jwt.encode(claims, self._signing_key, algorithm=ALGORITHM, headers={"kid": self._signing_kid})

    def verify(self, token: str) -> str:
        """The user id of a valid access token; SignInFailed (401) saying why otherwise."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError as exc:
            raise SignInFailed("The access token is malformed.", code="invalid_token") from exc
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise SignInFailed(
                "The access token was signed with a key this server no longer accepts.", code="invalid_token"
            )
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["sub", "exp", "iat", "iss"]},
                # PyJWT compares exp with its own clock; the injectable one is for issuing in tests.
            )
        except jwt.ExpiredSignatureError as exc:
            raise SignInFailed("The access token has expired; refresh it.", code="token_expired") from exc
        except jwt.InvalidTokenError as exc:
            raise SignInFailed("The access token is invalid.", code="invalid_token") from exc
        sub = claims["sub"]
        if not isinstance(sub, str):
            raise SignInFailed("The access token is invalid.", code="invalid_token")
        return sub


def new_refresh_token() -> str:
    return REFRESH_PREFIX + secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
