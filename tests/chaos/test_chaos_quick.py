"""The quick chaos run (bench/chaos.py --quick, about 80 s) in the suite: every fault in turn under load on
two full-featured instances behind HAProxy, with 0 500s, 0 hangs, no truncated stream, every answer's
usage row (SIGKILL: at most one flush interval's worth), and each recovery within 7 s of the fault's end.
Its own Redis and PostgreSQL are started and killed; the shared ones are never touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.fleet import HAPROXY

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(HAPROXY is None, reason="haproxy not installed (Debian: apt-get install haproxy)")
@pytest.mark.timeout(170)
def test_quick_chaos_run_finds_no_defect() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--quick", "--rate", "60"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=160,
        check=False,
    )
    out = run.stdout
    assert "500s: 0   hangs (> 30 s): 0   truncated-looking-complete: 0" in out, out + run.stderr[-3000:]
    assert "lost elsewhere: 0" in out and "request ids with more than one row: 0" in out, out
    assert run.returncode == 0 and "chaos: PASS" in out, out + run.stderr[-3000:]
