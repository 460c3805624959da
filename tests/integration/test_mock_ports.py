"""`fastproxy mock-upstream --ports A,B`: one mock per port, each with its own counters and mode."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from fastproxy.accounts.cli import CommandError
from fastproxy.server.cli import _mock_plan, build_parser
from tests.services import free_port, wait_for_port

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def two_mocks() -> Iterator[tuple[int, int]]:
    a, b = free_port(), free_port()
    argv = [sys.executable, "-m", "fastproxy", "mock-upstream", "--ports", f"{a},{b}", "--mode", f"{b}=status=503"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port("127.0.0.1", a)
        wait_for_port("127.0.0.1", b)
        yield a, b
    finally:
        # The parent alone: it must stop its children itself.
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        for port in (a, b):
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{port}/_mock/stats")
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


async def test_each_port_is_its_own_mock(two_mocks: tuple[int, int]) -> None:
    a, b = two_mocks
    async with httpx.AsyncClient() as http:
        for _ in range(3):
            ok = await http.post(f"http://127.0.0.1:{a}/v1/chat/completions", json=CHAT)
            assert ok.status_code == 200
        failed = await http.post(
            f"http://127.0.0.1:{b}/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer k-b"}
        )
        assert failed.status_code == 503
        assert failed.json()["error"]["type"] == "server_error"
        stats_a = (await http.get(f"http://127.0.0.1:{a}/_mock/stats")).json()
        stats_b = (await http.get(f"http://127.0.0.1:{b}/_mock/stats")).json()
    assert (stats_a["requests"], stats_a["auth"], stats_a["models"]) == (3, {"none": 3}, {"mock-model": 3})
    assert (stats_b["requests"], stats_b["auth"], stats_b["models"]) == (1, {"Bearer k-b": 1}, {"mock-model": 1})


@pytest.mark.parametrize(
    "argv",
    [
        ["--ports", "1,x"],
        ["--ports", "1,1"],
        ["--ports", "1,2", "--mode", "3=status=500"],
        ["--ports", "1,2", "--mode", "1=bogus"],
        ["--mode", "status=500"],
    ],
)
def test_bad_ports_and_modes_are_refused(argv: list[str]) -> None:
    with pytest.raises(CommandError):
        _mock_plan(build_parser().parse_args(["mock-upstream", *argv]))


def test_plain_port_is_unchanged() -> None:
    assert _mock_plan(build_parser().parse_args(["mock-upstream"])) == {8001: None}
    args = build_parser().parse_args(["mock-upstream", "--port", "9", "--mode", "9=hang"])
    assert _mock_plan(args) == {9: "hang"}
