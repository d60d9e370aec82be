"""Redis connections: one for the queues (RQ and the event streams), one for the profile store.

They default to the same URL. RQ does not run on Redis Cluster while a large profile store may
want to, so they are kept apart from the start. A URL whose scheme is ``redis+cluster://`` (or
``rediss+cluster://``) names one node of a Redis Cluster: the client discovers the others. Only the
profile store may use one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import AskError, ClusterDownError, TryAgainError

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def is_cluster(conn: Any) -> bool:
    return isinstance(conn, RedisCluster)


_REDIRECTS = (AskError, TryAgainError, ClusterDownError)  # MovedError is an AskError


def grouped_by_node(
    conn: Any, keys: Sequence[str], queue: Callable[[Any, int], object], again: Callable[[int], Any]
) -> list[Any]:
    """Run call ``n`` (whose key is ``keys[n]``) for every n and return the replies in order, in one
    round trip per Redis server: ``queue(pipe, n)`` adds it to a plain pipeline, ``again(n)`` runs it
    through the cluster client.

    On a cluster the calls are grouped by the node that holds their key and each group goes in a
    plain pipeline to that node: redis-py's cluster pipeline refuses scripts and costs a slot lookup
    per command. A call that meets a moved slot (resharding, failover) runs ``again``, which follows
    the redirect; callers only read, or write idempotently."""
    if not is_cluster(conn):
        pipe = conn.pipeline(transaction=False)
        for n in range(len(keys)):
            queue(pipe, n)
        return list(pipe.execute())
    groups: dict[str, list[int]] = {}
    for n, key in enumerate(keys):
        groups.setdefault(conn.get_node_from_key(key).name, []).append(n)
    replies: list[Any] = [None] * len(keys)
    for node, members in groups.items():
        pipe = conn.get_node(node_name=node).redis_connection.pipeline(transaction=False)
        for n in members:
            queue(pipe, n)
        try:
            answers = list(pipe.execute(raise_on_error=False))
        except redis.ConnectionError:  # the node is gone (failover): the cluster client finds the new one
            answers = [TryAgainError("node unreachable")] * len(members)
        for n, answer in zip(members, answers, strict=True):
            if isinstance(answer, _REDIRECTS):
                answer = again(n)
            elif isinstance(answer, Exception):
                raise answer
            replies[n] = answer
    return replies


def per_node(conn: Any, calls: Sequence[tuple[str, str, Sequence[Any]]]) -> list[Any]:
    """Commands ``(name, key, other args)``, in one round trip per server (:func:`grouped_by_node`)."""
    return grouped_by_node(
        conn,
        [key for _, key, _ in calls],
        lambda pipe, n: pipe.execute_command(calls[n][0], calls[n][1], *calls[n][2]),
        lambda n: conn.execute_command(calls[n][0], calls[n][1], *calls[n][2]),
    )


def _connect(url: str) -> redis.Redis:
    if url.startswith(CLUSTER_SCHEMES):
        plain = url.replace("+cluster", "", 1)
        cluster: Any = RedisCluster.from_url(plain, socket_connect_timeout=1.0, socket_timeout=5.0)
        return cluster  # the same commands; pipelines of scripts go through grouped_by_node
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
