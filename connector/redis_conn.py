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

_SCRIPTS: dict[tuple[int, str], Any] = {}
_SCRIPTS_MOST = 1000


def cached_script(conn: Any, source: str) -> Any:
    """``conn.register_script(source)``, made once per connection pool and script: registering
    hashes the script's text (SHA-1), which a batch's dozen script calls would otherwise pay each
    time (a client made per batch over the same pool shares it)."""
    pool = getattr(conn, "connection_pool", conn)
    key = (id(pool), source)
    found = _SCRIPTS.get(key)
    if (
        found is None
        or getattr(found.registered_client, "connection_pool", found.registered_client) is not pool
    ):
        if len(_SCRIPTS) >= _SCRIPTS_MOST:
            _SCRIPTS.clear()
        found = _SCRIPTS[key] = conn.register_script(source)
    return found


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


_pack_command: Any
try:
    import hiredis

    _pack_command = hiredis.pack_command
except ImportError:  # the pure Python packer of redis-py does it as well, slower
    _pack_command = None


READ_ATTEMPTS = 2  # a read pipeline that lost its connection is sent again once


def pipelined(
    conn: redis.Redis, commands: Sequence[Sequence[Any]], attempts: int = READ_ATTEMPTS
) -> list[Any]:
    """The replies of commands (each a command name and its arguments; str, bytes or int) on a
    single server, in one round trip; an error reply is answered as its exception.

    What a pipeline of redis-py does for them without its cost per command in Python (the command
    stack, the packing argument by argument, the response callbacks): the commands are packed at
    once, sent in one write and their replies read off the connection as the server sent them (a
    hash is a dict with RESP3, a flat list with RESP2). A connection lost on the way sends them all
    again, up to ``attempts`` sends in all (reads; 1 for writes)."""
    if not commands:
        return []
    for attempt in range(attempts):
        pool = conn.connection_pool
        connection = pool.get_connection()
        try:
            if _pack_command is not None:
                packed = [b"".join([_pack_command(tuple(command)) for command in commands])]
            else:
                packed = connection.pack_commands(commands)
            connection.send_packed_command(packed)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(connection.read_response())
                except redis.ResponseError as err:  # read whole: the connection stays in step
                    replies.append(err)
            return replies
        except (redis.ConnectionError, redis.TimeoutError):
            connection.disconnect()
            if attempt + 1 == attempts:
                raise
        except BaseException:
            connection.disconnect()  # replies may be left unread: never reused as it is
            raise
        finally:
            pool.release(connection)
    raise ValueError("no attempt")
