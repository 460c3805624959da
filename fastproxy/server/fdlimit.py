"""The open-file limit: every request in flight holds two sockets, the client's and the upstream's.

A soft limit of 1024 (common in containers and login shells) would refuse connections long before
the upstream pool is full, so `fastproxy serve` raises its soft limit to the hard one before Granian
starts its workers (they inherit it), as nginx's worker_rlimit_nofile and Go's runtime do.
"""

from __future__ import annotations

import resource

# Sockets and files that are not requests': listeners, Redis, PostgreSQL, logs, metrics files.
HEADROOM = 256
# A soft limit may not be infinite on every kernel; this is plenty for one process.
_CEILING = 1 << 20


def needed(pool_size: int) -> int:
    """Descriptors a worker needs with its upstream pool full: a client and an upstream socket each."""
    return 2 * pool_size + HEADROOM


def raise_soft_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit (never lower it); the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # a sandbox may refuse; the caller warns when what is left is too low
    return soft
