"""The in-process LRU, bounded in bytes: the embedded default, and per worker.

An entry's size is its payload plus a fixed overhead per chunk and header (Entry.size) plus the
bookkeeping below (_SLOT), so the bound holds on the process's real memory within a small factor,
whatever the number of entries. Entries are kept as objects: a hit decodes nothing.
"""

from __future__ import annotations

from collections import OrderedDict

from fastproxy.cache.entry import CacheKey, Entry

# The OrderedDict node, the 32-byte digest and the tuple per entry (tracemalloc, CPython 3.11: under 300 bytes).
_SLOT = 400


class MemoryStore:
    """get/put/purge, all synchronous and O(1) except purge (a scan). Never raises."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions = 0
        # digest -> (entry, expires at (the clock's seconds), size, scope, model); scope and model strings
        # are shared with the requests' own, so they cost no memory per entry.
        self._items: OrderedDict[bytes, tuple[Entry, float, int, str, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: CacheKey, now: float) -> Entry | None:
        item = self._items.get(key.digest)
        if item is None:
            return None
        if item[1] <= now:
            self._remove(key.digest)
            return None
        self._items.move_to_end(key.digest)
        return item[0]

    def put(self, key: CacheKey, entry: Entry, ttl: float, now: float, size: int = 0) -> bool:
        """Store `entry` (`size`: its Entry.size() when the caller knows it); False when it alone is larger
        than the whole bound."""
        size = (size or entry.size()) + len(key.digest) + _SLOT
        if size > self.max_bytes:
            return False
        if key.digest in self._items:
            self._remove(key.digest)
        self._items[key.digest] = (entry, now + ttl, size, key.scope, key.model)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, _, old, _, _) = self._items.popitem(last=False)
            self.bytes -= old
            self.evictions += 1
        return True

    def purge(self, scope: str | None = None, model: str | None = None) -> int:
        """Remove every entry of the scope and/or route (both None: everything); return how many."""
        doomed = [
            digest
            for digest, (_, _, _, s, m) in self._items.items()
            if (scope is None or s == scope) and (model is None or m == model)
        ]
        for digest in doomed:
            self._remove(digest)
        return len(doomed)

    def _remove(self, digest: bytes) -> None:
        item = self._items.pop(digest, None)
        if item is not None:
            self.bytes -= item[2]
