"""The benchmark's open-loop client frames HTTP/1.1 responses itself: it must find each response's end
whichever way the bytes are split, or the latency figures would be wrong."""

from __future__ import annotations

import pytest

from bench.openloop import _Connection, _Results

CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n"
)
SIZED = b'HTTP/1.1 429 Too Many Requests\r\nContent-Length: 11\r\nServer: x\r\n\r\n{"error":1}'


def _feed(conn: _Connection, data: bytes, step: int) -> None:
    for i in range(0, len(data), step):
        conn.data_received(data[i : i + step])


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_responses_end_where_their_framing_says(step: int) -> None:
    results = _Results()
    conn = _Connection(results)
    for due, response in enumerate((CHUNKED, SIZED, CHUNKED)):
        results.outstanding += 1
        conn.due, conn.sent, conn.busy = float(due), float(due), True
        _feed(conn, response, step)
        assert results.outstanding == 0 and not conn.busy and not conn.buf
    assert len(results.latencies) == 2 and results.errors == ["HTTP 429"]
    assert results.idle == [conn, conn, conn]


def test_a_lost_connection_is_an_error_and_is_not_reused() -> None:
    results = _Results()
    conn = _Connection(results)
    results.outstanding += 1
    conn.busy = True
    _feed(conn, CHUNKED[:40], 40)
    conn.connection_lost(ConnectionResetError("reset"))
    assert results.outstanding == 0 and results.errors[0].startswith("connection lost")
    assert results.idle == [] and not conn.reusable


def test_a_connection_the_server_closes_is_not_reused() -> None:
    results = _Results()
    conn = _Connection(results)
    closed: list[bool] = []

    class Transport:
        def close(self) -> None:
            closed.append(True)

    conn.transport = Transport()  # type: ignore[assignment]
    results.outstanding += 1
    conn.busy = True
    _feed(conn, SIZED.replace(b"Server: x", b"Connection: close"), 1000)
    assert results.errors == ["HTTP 429"] and results.idle == [] and closed == [True]
