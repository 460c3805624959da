"""The response cache and request coalescing (issue 19).

    entry.py     the stored answer (status, headers, raw chunks, usage), its binary codec, the key
    policy.py    what is cacheable, the client's Cache-Control, the tenant scope
    memory.py    the in-process LRU, bounded in bytes (the embedded default)
    redis_store.py  Redis: binary values with a TTL, one key per command (Cluster-safe), never raises
    coalesce.py  identical requests in flight in one worker share the first one's answer
    replay.py    sends a stored or in-flight answer to the client, a stream as the same events
    service.py   ResponseCache: what the request path calls (one lookup, one tee)
    admin.py     DELETE /admin/cache... (purges)

The cache can never fail a request: a backend that is slow, down or returns garbage is a miss or a
bypass, counted; the request then simply goes upstream.
"""
