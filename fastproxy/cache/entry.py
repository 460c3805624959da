"""A stored answer and the cache key, both pure.

The key is SHA-256 over the scope, the endpoint, the resolved upstream (the route's name, and whether
the stream's usage chunk is stripped for this client), the model and the request body bytes as sent
upstream, each length-prefixed so no two different tuples hash alike. The scope comes from the
authenticated principal, never from the client, so a client cannot name (or probe) another tenant's entry.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

# Bumped when the stored layout changes: an entry of another version decodes as a miss.
FORMAT = 1
_HEADER_OVERHEAD = 64
# Head hash states kept by a KeyMaker (scopes x routes in use; cleared when full).
_HEADS = 4096


class Entry(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """One cached 200 answer. `chunks` are the bytes the client was sent, as they were sent (one for a
    plain body); stream shaping (the usage chunk stripped or not) is part of the key."""

    version: int
    created: float
    status: int
    stream: bool
    headers: list[tuple[bytes, bytes]]
    chunks: list[bytes]
    # The original usage: prompt, completion, total, cached, reasoning tokens.
    usage: tuple[int, int, int, int, int] | None = None

    def size(self) -> int:
        """Bytes this entry holds (payload plus a fixed overhead per chunk and header), for the LRU bound."""
        return size_of(self.headers, self.chunks, sum(map(len, self.chunks)))


def size_of(headers: list[tuple[bytes, bytes]], chunks: list[bytes], payload: int) -> int:
    """Entry.size() from its parts, with the chunks' total length already known (the tee counts it)."""
    n = _HEADER_OVERHEAD * (len(chunks) + len(headers) + 4) + payload
    for name, value in headers:
        n += len(name) + len(value)
    return n


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Entry)


def encode(entry: Entry) -> bytes:
    return _encoder.encode(entry)


def decode(data: bytes) -> Entry | None:
    """The entry, or None when the bytes are not one of this version (a corrupt entry is a miss)."""
    try:
        entry = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return entry if entry.version == FORMAT else None


def tag(value: str) -> str:
    """A short, stable, non-reversible label for a scope or a route inside Redis keys (purges match it)."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


class CacheKey(msgspec.Struct, frozen=True, gc=False):
    """Where an entry lives: `digest` (32 bytes) identifies it; scope and model let purges find it."""

    digest: bytes
    scope: str
    model: str


class KeyMaker:
    """`derive`, with the hash of each (scope, endpoint, upstream, model) head kept (bounded): a request
    then hashes only its body, into a copy of its head's hash state."""

    __slots__ = ("_heads",)

    def __init__(self) -> None:
        self._heads: dict[tuple[str, str, str, str], Any] = {}

    def derive(self, scope: str, endpoint: str, upstream: str, model: str, body: bytes) -> CacheKey:
        head = (scope, endpoint, upstream, model)
        state = self._heads.get(head)
        if state is None:
            if len(self._heads) >= _HEADS:
                self._heads.clear()
            state = self._heads[head] = _head(scope, endpoint, upstream, model)
        h = state.copy()
        h.update(body)
        return CacheKey(h.digest(), scope, model)


def _head(scope: str, endpoint: str, upstream: str, model: str) -> Any:
    return hashlib.sha256(
        f"{len(scope)}:{scope}|{len(endpoint)}:{endpoint}|{len(upstream)}:{upstream}|{len(model)}:{model}|".encode()
    )


def derive(scope: str, endpoint: str, upstream: str, model: str, body: bytes) -> CacheKey:
    """The key of a request. `upstream`: the resolved route (and stream shaping); `model`: as the client named it.

    Each text part is length-prefixed, so no two different tuples give the same bytes to hash.
    """
    h = _head(scope, endpoint, upstream, model)
    h.update(body)  # the bytes as sent upstream, never decoded or copied; last, so needs no length
    return CacheKey(h.digest(), scope, model)
