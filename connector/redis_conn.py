"""Redis connections: one for the queues (RQ and the event streams), one for the profile store.

They default to the same URL. RQ does not run on Redis Cluster while a large profile store may
want to, so they are kept apart from the start. A URL whose scheme is ``redis+cluster://`` (or
``rediss+cluster://``) names one node of a Redis Cluster: the client discovers the others. Only the
profile store may use one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import redis
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _HiredisParser
from redis.cluster import RedisCluster
from redis.exceptions import AskError, ClusterDownError, NoScriptError, TryAgainError

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def is_cluster(conn: Any) -> bool:
    return isinstance(conn, RedisCluster)


_REDIRECTS = (AskError, TryAgainError, ClusterDownError)  # MovedError is an AskError

_SCRIPTS: dict[tuple[int, str], Any] = {}
_SCRIPTS_MOST = 1000


class DirectScript:
    """A Lua script of one Redis server, called as redis-py's registered scripts are
    (``script(keys=..., args=...)``, ``.sha``, ``.script``) but sent by :func:`pipelined`: the
    EVALSHA packed at once and its reply read off the connection, without the client's command
    stack (its retry wrapper, argument checks and response callbacks cost more CPU than many of
    the worker's scripts take to run). A server that does not hold the script yet gets it loaded
    and the call sent again; any other error reply is raised. A call given another ``client`` (a
    pipeline) goes through redis-py's own script object."""

    def __init__(self, conn: redis.Redis, source: str) -> None:
        self.registered_client = conn
        self.script = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(
        self, keys: Sequence[Any] | None = (), args: Sequence[Any] | None = (), client: Any = None
    ) -> Any:
        if client is not None and client is not self.registered_client:
            return queued_script(client, self.script)(keys=keys, args=args, client=client)
        keys, args = keys or (), args or ()
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        reply = pipelined(self.registered_client, [command], attempts=1)[0]
        if isinstance(reply, NoScriptError):
            load = ("SCRIPT", "LOAD", self.script)
            loaded, reply = pipelined(self.registered_client, [load, command], attempts=1)
            if isinstance(loaded, Exception):  # the script's own error (it does not compile, OOM)
                raise loaded
        if isinstance(reply, Exception):
            raise reply
        return reply


_QUEUED: dict[tuple[int, str], Any] = {}


def _made_once(cache: dict[tuple[int, str], Any], pool: Any, source: str, make: Callable[[], Any]) -> Any:
    """The script object of ``source`` for a connection pool, made once (making one hashes the
    script's text); one made for an earlier pool at the same address is made again."""
    key = (id(pool), source)
    found = cache.get(key)
    if (
        found is None
        or getattr(found.registered_client, "connection_pool", found.registered_client) is not pool
    ):
        if len(cache) >= _SCRIPTS_MOST:
            cache.clear()
        found = cache[key] = make()
    return found


def queued_script(pipe: Any, source: str) -> Any:
    """redis-py's script object of ``source`` for calls queued on pipelines of one connection pool
    (``script(keys=..., args=..., client=pipe)``), registered on a client of the pool, not on the
    pipeline: the pipeline loads it on NOSCRIPT when it runs."""
    pool = pipe.connection_pool
    return _made_once(
        _QUEUED, pool, source, lambda: redis.Redis(connection_pool=pool).register_script(source)
    )


def cached_script(conn: Any, source: str) -> Any:
    """The script object of ``source`` for ``conn``: a :class:`DirectScript` on a single server,
    redis-py's ``register_script`` on a cluster (whose client finds the node of the keys)."""
    pool = getattr(conn, "connection_pool", conn)
    return _made_once(
        _SCRIPTS,
        pool,
        source,
        lambda: conn.register_script(source) if is_cluster(conn) else DirectScript(conn, source),
    )


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


class RespPacker:
    """redis-py's ``command_packer`` for the product's clients: every command they send (pipelines,
    scripts queued on them, RQ's own) is packed by :func:`pack_commands` instead of hiredis's
    ``pack_command``. As redis-py's packers do, a first argument naming two words ("SCRIPT LOAD")
    is sent as two."""

    def pack(self, *args: Any) -> list[bytes]:
        first = args[0]
        if (isinstance(first, str) and " " in first) or (isinstance(first, bytes) and b" " in first):
            args = (*first.split(), *args[1:])
        return [pack_commands([args])]


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
        command_packer=RespPacker(),
    )


@lru_cache(maxsize=8)
def connection(url: str) -> redis.Redis:
    """A shared client (it holds a connection pool) per URL."""
    return _connect(url)


def reset() -> None:
    connection.cache_clear()


_HEADS = [b"$%d\r\n" % n for n in range(1024)]  # the bulk string headers of short arguments
_SMALL = [b"%d" % n for n in range(1024)]  # small integers (counts, most often) as sent


def _arg(value: object) -> bytes:
    """One argument as Redis receives it (redis-py's encoding: text as UTF-8, numbers by repr)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if type(value) is int and 0 <= value < 1024:
        return _SMALL[value]
    if isinstance(value, bool) or not isinstance(value, (int, float, bytearray, memoryview)):
        raise redis.DataError(f"Invalid input of type: {type(value).__name__!r}")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return repr(value).encode()


def pack_commands(commands: Sequence[Sequence[Any]]) -> bytes:
    """Commands in the Redis protocol, in one buffer. What hiredis's ``pack_command`` writes,
    without its ``sprintf`` per argument (a tenth of the worker's instructions went there)."""
    parts: list[bytes] = []
    heads = _HEADS
    for command in commands:
        parts.append(b"*%d\r\n" % len(command))
        for value in command:
            data = value if isinstance(value, bytes) else _arg(value)
            size = len(data)
            parts.append(heads[size] if size < 1024 else b"$%d\r\n" % size)
            parts.append(data)
            parts.append(b"\r\n")
    return b"".join(parts)


def _read_replies(connection: Any, count: int) -> list[Any]:
    """``count`` replies off the connection, an error reply as its exception (read whole: the
    connection stays in step). With hiredis the replies are taken from its reader as they are
    parsed (what ``read_response`` does per reply, without its layers per reply); a RESP3 push
    message on the way goes to redis-py's handler, as ``read_response`` sends it."""
    replies: list[Any] = []
    parser = connection._parser
    if type(parser) is not _HiredisParser:
        for _ in range(count):
            try:
                replies.append(connection.read_response())
            except redis.ResponseError as err:
                replies.append(err)
        return replies
    reader = parser._reader
    if reader is None:
        raise redis.ConnectionError("the connection closed before its replies were read")
    push = getattr(parser, "_hiredis_PushNotificationType", None)
    while len(replies) < count:
        reply = reader.gets()
        if reply is NOT_ENOUGH_DATA:  # not a whole reply yet
            try:
                parser.read_from_socket()  # converts a timeout; other socket errors are ours to
            except OSError as err:  # convert, as redis-py's read_response does
                raise redis.ConnectionError(f"Error while reading from the connection: {err}") from err
            continue
        if push is not None and isinstance(reply, push):
            parser.handle_push_response(reply)
            continue
        if isinstance(reply, redis.ConnectionError):
            raise reply
        if isinstance(reply, list) and reply and isinstance(reply[0], redis.ConnectionError):
            raise reply[0]
        replies.append(reply)
    return replies


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
            connection.send_packed_command([pack_commands(commands)])
            return _read_replies(connection, len(commands))
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
