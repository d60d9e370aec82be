"""Redis connections: one for the queues (RQ and the event streams), one for the profile store.

They default to the same URL. RQ does not run on Redis Cluster while a large profile store may
want to, so they are kept apart from the start. A URL whose scheme is ``redis+cluster://`` (or
``rediss+cluster://``) names one node of a Redis Cluster: the client discovers the others. Only the
profile store may use one.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import redis
from redis.cluster import RedisCluster

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def is_cluster(conn: Any) -> bool:
    """A cluster client, or a pipeline of one."""
    return isinstance(conn, RedisCluster) or type(conn).__name__ == "ClusterPipeline"


def _connect(url: str) -> redis.Redis:
    if url.startswith(CLUSTER_SCHEMES):
        plain = url.replace("+cluster", "", 1)
        cluster: Any = RedisCluster.from_url(plain, socket_connect_timeout=1.0, socket_timeout=5.0)
        return cluster  # the same commands; scripts in pipelines go through profiles.store.run_script
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=1.0,
        socket_timeout=5.0,
        health_check_interval=30,
    )


@lru_cache(maxsize=8)
def connection(url: str) -> redis.Redis:
    """A shared client (it holds a connection pool) per URL."""
    return _connect(url)


def reset() -> None:
    connection.cache_clear()
