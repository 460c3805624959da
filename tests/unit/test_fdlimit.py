"""`fastproxy serve` raises its open-file soft limit before the workers start, and says when too low."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from fastproxy.server.fdlimit import HEADROOM, needed

# Run in a child: lowering a hard limit cannot be undone by an unprivileged process.
_CHILD = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))
    from fastproxy.server import cli
    from fastproxy.core.settings import load_settings
    started = []
    cli._granian = lambda *args, **kwargs: started.append(args)
    cli._serve(load_settings())
    print(len(started), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    """
)


def serve_under(soft: int, hard: int, pool_size: int) -> subprocess.CompletedProcess[str]:
    env = {"FASTPROXY_POOL_SIZE": str(pool_size), "FASTPROXY_METRICS": "false", "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-c", _CHILD, str(soft), str(hard)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=True)


def test_needed_counts_two_sockets_per_pooled_connection() -> None:
    assert needed(1000) == 2000 + HEADROOM


def test_soft_limit_is_raised_to_the_hard_one_before_granian_starts() -> None:
    done = serve_under(soft=300, hard=needed(100) + 10, pool_size=100)
    assert done.stdout.split() == ["1", str(needed(100) + 10)]
    assert "open-file limit" not in done.stderr


def test_a_hard_limit_below_what_the_pool_needs_is_reported() -> None:
    done = serve_under(soft=300, hard=600, pool_size=4096)
    assert done.stdout.split() == ["1", "600"]
    assert "the open-file limit is 600, below the 8448 that FASTPROXY_POOL_SIZE=4096 can use" in done.stderr
