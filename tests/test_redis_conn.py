"""The worker's direct Redis path (connector.redis_conn): the packer, the replies and the scripts."""

from __future__ import annotations

from typing import Any

import hiredis
import pytest
import redis
from redis.connection import HiredisRespSerializer

from connector import redis_conn
from connector.redis_conn import DirectScript, RespPacker, cached_script, pack_commands, pipelined

ECHO_KEYS_AND_ARGS = "return {KEYS[1], ARGV[1], ARGV[2], #ARGV}"


def test_the_packer_writes_what_hiredis_writes_for_every_kind_of_argument() -> None:
    commands = [
        ("EVALSHA", "f" * 40, 2, "k:{a}1", "k:{a}2", b"\x00\xff\r\n", 3.25, -7, 0, "é" * 600, "x" * 5000),
        ("GET", ""),
        ("HSET", "h", "field", 12345678901234567890),
    ]
    expected = b"".join(hiredis.pack_command(tuple(command)) for command in commands)
    assert pack_commands(commands) == expected
    assert pack_commands([]) == b""


def test_the_clients_packer_splits_a_two_word_command_as_redis_py_does() -> None:
    for command in [("SCRIPT LOAD", "return 1"), (b"CONFIG SET", "maxmemory", 0), ("GET", "a b")]:
        assert RespPacker().pack(*command) == [b"".join(HiredisRespSerializer().pack(*command))]


def test_the_products_clients_send_through_the_packer(redis_url: str) -> None:
    redis_conn.reset()
    try:
        conn = redis_conn.connection(redis_url)
        conn.flushdb()
        connection = conn.connection_pool.get_connection()
        assert isinstance(connection._command_packer, RespPacker)
        conn.connection_pool.release(connection)
        sha = conn.script_load("return ARGV[1]")
        pipe = conn.pipeline(transaction=True)
        pipe.hset("h", mapping={"a": 1, "b": "é"})
        pipe.evalsha(sha, 0, 2.5)
        pipe.hgetall("h")
        assert pipe.execute() == [2, b"2.5", {b"a": b"1", b"b": "é".encode()}]
    finally:
        redis_conn.reset()


@pytest.mark.parametrize("bad", [True, None, object(), [1]])
def test_the_packer_refuses_what_redis_py_refuses(bad: object) -> None:
    with pytest.raises(redis.DataError, match="Invalid input of type"):
        pack_commands([("SET", "k", bad)])


@pytest.mark.parametrize("protocol", [2, 3])
def test_replies_come_in_order_with_errors_in_place_and_long_ones_whole(
    redis_url: str, protocol: int
) -> None:
    conn = redis.Redis.from_url(redis_url, protocol=protocol)
    conn.flushdb()
    big = "v" * 300_000  # read off the socket in many pieces
    commands = [("SET", "s", big), ("INCR", "s"), ("GET", "s"), ("LPUSH", "l", 1, 2), ("EXISTS", "none")]
    replies = pipelined(conn, commands)
    assert replies[0] == b"OK"
    assert isinstance(replies[1], redis.ResponseError)
    assert replies[2] == big.encode()
    assert replies[3:] == [2, 0]
    for connection in conn.connection_pool._available_connections:
        assert not connection.can_read()  # nothing left unread: the pooled connection is in step


class _ResetWhileReading:
    """A socket whose peer resets the connection once the command is sent."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)

    def recv_into(self, *args: Any) -> int:
        raise ConnectionResetError(104, "Connection reset by peer")


def _pooled_connection_reset_on_read(conn: redis.Redis) -> None:
    connection = conn.connection_pool.get_connection()
    connection._sock = connection._parser._sock = _ResetWhileReading(connection._sock)
    conn.connection_pool.release(connection)


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_connection_reset_while_reading_is_redis_py_s_connection_error_and_reads_go_again(
    redis_url: str, protocol: int
) -> None:
    conn = redis.Redis.from_url(redis_url, protocol=protocol)
    conn.set("k", "v")
    _pooled_connection_reset_on_read(conn)
    with pytest.raises(redis.ConnectionError, match="reset by peer"):
        pipelined(conn, [("GET", "k")], attempts=1)
    _pooled_connection_reset_on_read(conn)
    assert pipelined(conn, [("GET", "k")]) == [b"v"]  # a read is sent again on a new connection


def test_a_push_message_between_replies_goes_to_redis_py_and_the_replies_stay_in_step(redis_url: str) -> None:
    conn = redis.Redis.from_url(redis_url, protocol=3, max_connections=1)  # the same connection
    other = redis.Redis.from_url(redis_url)
    other.set("tracked", "1")
    assert pipelined(conn, [("CLIENT", "TRACKING", "ON"), ("GET", "tracked")]) == [b"OK", b"1"]
    other.set("tracked", "2")  # the server pushes an invalidation to the tracking connection first
    assert pipelined(conn, [("GET", "tracked"), ("PING",)]) == [b"2", b"PONG"]
    pipelined(conn, [("CLIENT", "TRACKING", "OFF")])


def test_a_script_the_server_does_not_hold_is_loaded_and_run_once(redis_url: str) -> None:
    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    conn.script_flush()
    counter = cached_script(conn, "return redis.call('INCR', KEYS[1])")
    assert isinstance(counter, DirectScript)
    assert counter(keys=["n"]) == 1
    conn.script_flush()  # a restart or a flush between calls
    assert counter(keys=["n"]) == 2
    assert conn.get("n") == b"2"
    echo = cached_script(conn, ECHO_KEYS_AND_ARGS)
    assert echo(keys=["a"], args=[b"x", 5]) == [b"a", b"x", b"5", 2]
    assert cached_script(conn, ECHO_KEYS_AND_ARGS) is echo


def test_a_script_error_is_raised_and_a_pipeline_call_is_queued_on_the_pipeline(redis_url: str) -> None:
    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    failing = cached_script(conn, "return redis.error_reply('WRONG the reason')")
    with pytest.raises(redis.ResponseError, match="the reason"):
        failing()
    broken = cached_script(conn, "return (")
    with pytest.raises(redis.ResponseError, match=r"(?i)compiling") as raised:
        broken(keys=None, args=None)  # the load's own error, not NOSCRIPT
    assert not isinstance(raised.value, redis.exceptions.NoScriptError)
    echo = cached_script(conn, ECHO_KEYS_AND_ARGS)
    pipe = conn.pipeline(transaction=False)
    pipe.set("before", 1)
    echo(keys=["b"], args=["y", "z"], client=pipe)
    assert pipe.execute() == [True, [b"b", b"y", b"z", 2]]
