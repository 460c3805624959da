"""Defects the fuzzer (tests/integration/fuzz) found, each pinned by a test of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from fastproxy.proxy.sse import SSEWatcher
from tests.unit.appclient import ADMIN_KEY, app_client

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
async def admin(postgres_dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(database_url=postgres_dsn) as (client, _):
        client.headers.update(ADMIN)
        yield client


def _refused(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 400, resp.text
    body: dict[str, Any] = resp.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"
    return body


async def test_a_value_the_database_refuses_is_the_clients_error(admin: httpx.AsyncClient) -> None:
    """PostgreSQL refuses NUL characters in text: that was a 503 ("the database is unavailable") for a
    request that can never succeed; it is a 400 naming no secret, and the database stays usable."""
    _refused(await admin.post("/admin/users", json={"name": "nul\u0000name"}))
    _refused(await admin.get("/admin/usage", params={"model": "a\u0000b"}))
    assert (await admin.post("/admin/users", json={"name": "fine"})).status_code == 201


async def test_a_blank_query_value_is_malformed_not_absent(admin: httpx.AsyncClient) -> None:
    """`?limit=` and `?end=` were read as absent (parse_qs drops blank values), so a client's typo passed
    silently and the document's `integer`/`number` parameters were not what the code did."""
    assert _refused(await admin.get("/admin/usage?limit="))["param"] == "limit"
    assert _refused(await admin.get("/admin/usage?end="))["param"] == "end"
    assert _refused(await admin.get("/admin/usage?after="))["param"] == "after"
    assert _refused(await admin.get("/admin/users?limit="))["param"] == "limit"
    assert (await admin.get("/admin/usage?model=")).status_code == 200


def test_a_cr_separated_stream_read_in_one_chunk_has_ended() -> None:
    """Found by the split property (tests/unit/test_properties.py): `[DONE]` after a lone CR (a valid SSE line
    end) was only seen when it came in a chunk of its own; a whole stream in one read looked cut, and the
    client got an error event after a complete stream."""
    stream = b'data: {"choices":[{"delta":{"content":"hi"}}]}\r\rdata: [DONE]\r\r'
    watcher = SSEWatcher(strip=False)
    assert watcher.feed(stream) == stream
    assert watcher.ended
