"""FASTPROXY_REDIS_URL naming a Redis Cluster: accepted by the settings, parsed into seed nodes."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis, RedisCluster

from fastproxy.core.settings import SettingsError, load_settings
from fastproxy.server.redis import cluster_nodes, is_cluster, open_client


def test_cluster_url_accepted_and_masked() -> None:
    url = "redis+cluster://user:s3cret-pass@10.0.0.1:7000,10.0.0.2:7001"
    settings = load_settings(environ={"FASTPROXY_REDIS_URL": url})
    assert settings.redis_url == url
    assert "s3cret" not in str(settings.masked())
    with pytest.raises(SettingsError, match="redis_url"):
        load_settings(environ={"FASTPROXY_REDIS_URL": "cluster://10.0.0.1:7000"})


def test_cluster_nodes_and_options() -> None:
    nodes, options = cluster_nodes("rediss+cluster://:pw@a:7000, b:7001,c")
    assert nodes == [("a", 7000), ("b", 7001), ("c", 6379)]
    assert options == {"ssl": True, "password": "pw"}
    assert is_cluster("redis+cluster://a:1") and is_cluster("redis://a:1", cluster=True)
    assert not is_cluster("redis://a:1")


async def test_open_client_picks_the_kind() -> None:
    single = open_client("redis://127.0.0.1:6379/0")
    cluster = open_client("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", timeout=0.1, retries=False)
    try:
        assert isinstance(single, Redis) and isinstance(cluster, RedisCluster)
        assert sorted(n.port for n in cluster.nodes_manager.startup_nodes.values()) == [7000, 7001]
    finally:
        await single.aclose()
        await cluster.aclose()
