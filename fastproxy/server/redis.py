"""Redis clients from FASTPROXY_REDIS_URL: one standalone server, or a Redis Cluster.

A cluster is named by `redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://`
for TLS), or by any node's `redis://` URL with FASTPROXY_REDIS_CLUSTER=true. Either way the nodes
listed are only where discovery starts: the client learns the slot map from them (CLUSTER SLOTS)
and follows it, refreshing it after a MOVED reply or a lost node.

Every user of these clients follows the slot rules in README.md ("Running many instances"): a
script call or MULTI names keys of one slot only (hash tags), and no command spans slots.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

AnyRedis = Redis | RedisCluster
_CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
_POOL_WAIT = 1.0


def is_cluster(url: str, cluster: bool = False) -> bool:
    return cluster or url.startswith(_CLUSTER_SCHEMES)


def cluster_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The startup nodes of a cluster URL and the connection options it carries (credentials, TLS)."""
    parts = urlsplit(url)
    options: dict[str, Any] = {}
    if parts.scheme.startswith("rediss"):
        options["ssl"] = True
    if parts.password:
        options["password"] = unquote(parts.password)
    if parts.username:
        options["username"] = unquote(parts.username)
    hosts = parts.netloc.rpartition("@")[2]
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host:
            host, port = port, "6379"
        nodes.append((host.strip("[]"), int(port or 6379)))
    return nodes, options


def open_client(
    url: str,
    *,
    cluster: bool = False,
    timeout: float | None = None,
    max_connections: int | None = None,
    retries: bool = True,
) -> AnyRedis:
    """A client for `url` (opens no connection yet). With `timeout`, calls give up after that many
    seconds; with `retries=False` a failed call is never sent again on its own (a script that takes
    must not run twice: the caller's failure policy decides)."""
    if not is_cluster(url, cluster):
        if max_connections is None and timeout is None:
            return Redis.from_url(url)
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections or 10,
            timeout=_POOL_WAIT,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=None if retries else Retry(NoBackoff(), 0),
            protocol=2,
        )
        return Redis.from_pool(pool)
    options: dict[str, Any] = {"protocol": 2}
    if timeout is not None:
        options.update(socket_timeout=timeout, socket_connect_timeout=timeout)
    if max_connections is not None:
        options["max_connections"] = max_connections
    if not retries:
        options["retry"] = Retry(NoBackoff(), 0)
    if url.startswith(_CLUSTER_SCHEMES):
        nodes, extra = cluster_nodes(url)
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], **extra, **options)
    return RedisCluster.from_url(url, **options)
