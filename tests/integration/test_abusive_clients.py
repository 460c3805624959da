"""Abusive clients against a real Granian worker, over raw sockets (bench/abuse.py has the scenarios): each is
answered with the right status or closed within its setting's bound, while a well-behaved client keeps its
latency and the worker its memory. The figures are printed (README, "Limits on what a client may send")."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import abuse

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
MAX_BODY = 1 << 20
# The sweep of body deadlines runs every second; the rest is this machine's scheduling.
SLACK = 2.5
SCALE = 0.25
# What every abusive connection must get: its statuses ("none": closed without an answer), and the bound on
# how long it may stay open.
EXPECTED: dict[str, tuple[set[str], float]] = {
    "too many headers (150)": ({"431"}, 1.0),
    "1 MiB header": ({"431"}, 1.0),
    "slowloris headers (1 B/s)": ({"none"}, HEADER_TIMEOUT + SLACK),
    "slowloris body (1 B/s)": ({"408"}, BODY_TIMEOUT + SLACK),
    "idle connections": ({"200", "none"}, HEADER_TIMEOUT + SLACK),
    "pipelined garbage": ({"200+400"}, 1.0),
    # Past 64 MiB read on, the connection is dropped without reading further: no answer is seen then.
    "endless chunked body, fast": ({"413", "none"}, 5.0),
    "endless chunked body, 1 chunk/s": ({"408"}, BODY_TIMEOUT + SLACK),
}


@pytest.fixture(scope="module")
def worker() -> Iterator[tuple[int, int]]:
    with (
        tempfile.TemporaryDirectory(prefix="fastproxy-abuse-") as tmp,
        abuse.servers(HEADER_TIMEOUT, BODY_TIMEOUT, MAX_BODY, Path(tmp)) as served,
    ):
        yield served


def test_every_abuse_has_an_expectation(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(EXPECTED) == set(abuse.SCENARIOS)
    with capsys.disabled():
        print(f"\nabusive clients: header timeout {HEADER_TIMEOUT}s, body timeout {BODY_TIMEOUT}s\n{abuse.HEADER}")


@pytest.mark.parametrize("name", list(abuse.SCENARIOS))
def test_abusive_client_is_bounded_and_others_unaffected(
    worker: tuple[int, int], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    port, pid = worker
    scenario, connections = abuse.SCENARIOS[name]
    n = max(2, round(connections * SCALE))
    statuses, bound = EXPECTED[name]
    measured = abuse.measure(port, pid, name, scenario, n, limit=bound + 10, quiet=1.0)
    with capsys.disabled():
        print(f"\n{measured.row()}")
    got = measured.abused
    assert got.open == 0, f"{got.open} of {n} abusive connections still open after {bound + 10}s"
    assert set(got.statuses) <= statuses and got.statuses[min(statuses)] > 0, got.statuses
    assert max(got.seconds_to_close) <= bound, got.seconds_to_close
    before, during, after = measured.before, measured.during, measured.after
    # The well-behaved client: every request answered, its p99 within noise of its own before and after.
    assert before.failed == during.failed == after.failed == 0
    assert during.requests > 0
    assert during.p99_ms <= 3 * max(before.p99_ms, after.p99_ms) + 20, (before, during, after)
    # The worker's memory: bounded while it happens, back afterwards.
    assert during.rss_mb - before.rss_mb < 60, (before, during)
    assert after.rss_mb - before.rss_mb < 20, (before, after)
