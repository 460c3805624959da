from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.redis_cluster import RedisCluster
from tests.redis_cluster import redis_cluster as start_redis_cluster
from tests.services import postgres_server, redis_server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_admin_dsn() -> Iterator[str]:
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own, so runs sharing one Redis never see each other's keys."""
    return f"fptest:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def redis_client(redis_url: str, redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    async for key in client.scan_iter(match=redis_prefix + "*"):
        await client.delete(key)
    await client.aclose()


@pytest.fixture
async def postgres_dsn(postgres_admin_dsn: str) -> AsyncIterator[str]:
    """A database of this test's own, dropped afterwards."""
    name = f"fptest_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield postgres_admin_dsn.rsplit("/", 1)[0] + "/" + name
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test against both store backends: a fresh SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fastproxy.db'}"
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A real Redis Cluster (3 masters, 3 replicas) of this session's own; tests isolate by redis_prefix."""
    with start_redis_cluster() as cluster:
        yield cluster
