from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import openai
import pytest

from tests.integration.servers import Server, start_mock, start_proxy


@pytest.fixture(scope="session")
def mock_upstream() -> Iterator[Server]:
    server = start_mock()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def proxy(mock_upstream: Server) -> Iterator[Server]:
    server = start_proxy(mock_upstream.url + "/v1", FASTPROXY_UPSTREAM_API_KEY="sk-upstream-secret-1234")
    yield server
    server.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


@pytest.fixture
async def sdk(proxy: Server) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-fp-client", max_retries=0) as client:
        yield client
