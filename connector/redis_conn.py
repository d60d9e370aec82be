"""Redis connections: one for the queues (RQ and the event streams), one for the profile store.

They default to the same URL. RQ does not run on Redis Cluster while a large profile store may
want to, so they are kept apart from the start. A URL whose scheme is ``redis+cluster://`` (or
``rediss+cluster://``) names one node of a Redis Cluster: the client discovers the others. Only the
profile store may use one.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import AskError, ClusterDownError, TryAgainError

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def is_cluster(conn: Any) -> bool:
    """A cluster client, or a pipeline of one."""
    return isinstance(conn, RedisCluster) or type(conn).__name__ == "ClusterPipeline"


_REDIRECTS = (AskError, TryAgainError, ClusterDownError)  # MovedError is an AskError


def per_node(conn: Any, calls: Sequence[tuple[str, str, Sequence[Any]]]) -> list[Any]:
    """Run commands ``(name, key, other args)`` and return their replies in order, in one round trip
    per Redis server.

    On a cluster the calls are grouped by the node that holds their key and each group goes in a
    plain pipeline to that node (redis-py's cluster pipeline costs a slot lookup per command and
    splits MGET/MSET by slot). A call that meets a moved slot is sent again through the cluster
    client, which follows the redirect; the callers only read, or write idempotently."""
    if not is_cluster(conn):
        pipe = conn.pipeline(transaction=False)
        for name, key, args in calls:
            pipe.execute_command(name, key, *args)
        return list(pipe.execute())
    groups: dict[str, list[int]] = {}
    for n, (_, key, _) in enumerate(calls):
        groups.setdefault(conn.get_node_from_key(key).name, []).append(n)
    replies: list[Any] = [None] * len(calls)
    for node, members in groups.items():
        pipe = conn.get_node(node_name=node).redis_connection.pipeline(transaction=False)
        for n in members:
            name, key, args = calls[n]
            pipe.execute_command(name, key, *args)
        try:
            answers = list(pipe.execute(raise_on_error=False))
        except redis.ConnectionError:  # the node is gone (failover): the cluster client finds the new one
            answers = [TryAgainError("node unreachable")] * len(members)
        for n, answer in zip(members, answers, strict=True):
            if isinstance(answer, _REDIRECTS):
                name, key, args = calls[n]
                answer = conn.execute_command(name, key, *args)
            elif isinstance(answer, Exception):
                raise answer
            replies[n] = answer
    return replies


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
