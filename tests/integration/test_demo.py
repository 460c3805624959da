"""`fastproxy demo`, the README's first command, comes up and serves the openai SDK as its banner says."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.integration.servers import Server
from tests.services import free_port


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir: Path = tmp_path_factory.mktemp("demo")
    server = Server(["demo", "--upstream-port", str(free_port())], cwd=workdir)
    yield server
    server.stop()


async def test_demo_serves_the_sdk(demo: Server) -> None:
    banner = demo.log()
    assert f"http://127.0.0.1:{demo.port}/v1" in banner
    found = re.search(r'api_key="([^"]+)"', banner)
    assert found, banner
    async with openai.AsyncOpenAI(base_url=demo.url + "/v1", api_key=found.group(1), max_retries=0) as client:
        chat = await client.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": "Hi"}])
        assert chat.choices[0].message.content
        stream = await client.chat.completions.create(
            model="mock-model", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        completion = await client.completions.create(model="mock-model", prompt="Hi")
        assert completion.choices[0].text
        embedding = await client.embeddings.create(model="text-embedding-3-small", input="Hi")
        assert embedding.data[0].embedding
        assert [m.id async for m in client.models.list()]
