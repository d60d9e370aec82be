"""Many calls of a per-key script in a few script calls, and reads in one round trip
(:mod:`connector.profiles.batched`), on a real Redis."""

from __future__ import annotations

import redis

from connector.profiles.batched import Batched
from connector.redis_conn import pipelined

# KEYS: a counter. ARGV: the amount, then names whose count is returned with it.
_BUMP = Batched(
    """
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
local out = {KEYS[1], total}
for i = 2, #ARGV do out[#out + 1] = ARGV[i] end
return out
""",
    per_call=3,
)


def test_every_call_runs_once_and_answers_in_order_across_script_calls(redis_client: redis.Redis) -> None:
    calls = [([f"n:{n % 4}"], [n + 1, *[f"x{j}" for j in range(n % 3)]]) for n in range(8)]
    replies = _BUMP.run(redis_client, calls)
    totals: dict[str, int] = {}
    for n, reply in enumerate(replies):
        key = f"n:{n % 4}"
        totals[key] = totals.get(key, 0) + n + 1
        assert reply == [key.encode(), totals[key], *[f"x{j}".encode() for j in range(n % 3)]]
    assert {k: int(redis_client.get(k) or 0) for k in totals} == totals


def test_a_body_without_a_reply_answers_none(redis_client: redis.Redis) -> None:
    quiet = Batched("redis.call('SET', KEYS[1], ARGV[1])")
    assert quiet.run(redis_client, [(["a"], ["1"]), (["b"], ["2"])]) == [None, None]
    assert redis_client.mget("a", "b") == [b"1", b"2"]


def test_a_server_that_lost_its_scripts_loads_them_again(redis_client: redis.Redis) -> None:
    assert _BUMP.run(redis_client, [(["c"], [2])] * 4) == [[b"c", 2], [b"c", 4], [b"c", 6], [b"c", 8]]
    redis_client.script_flush()
    # every call answered NOSCRIPT without running: each runs once after the load
    assert _BUMP.run(redis_client, [(["c"], [1])] * 5)[-1] == [b"c", 13]
    assert redis_client.get("c") == b"13"


def test_reads_in_one_round_trip_answer_each_reply_and_errors_in_place(redis_url: str) -> None:
    for protocol in (2, 3):
        conn = redis.Redis.from_url(redis_url, protocol=protocol)
        conn.flushdb()
        conn.hset("h", mapping={"a": "1", "b": "2"})
        conn.set("s", "hello")
        conn.zadd("z", {"m": 1})
        replies = pipelined(conn, [("HGETALL", "h"), ("GET", "z"), ("GETRANGE", "s", 0, 2), ("GET", "none")])
        flat = replies[0]
        fields = flat if isinstance(flat, dict) else dict(zip(flat[::2], flat[1::2], strict=True))
        assert fields == {b"a": b"1", b"b": b"2"}
        assert isinstance(replies[1], redis.ResponseError) and "WRONGTYPE" in str(replies[1])
        assert replies[2:] == [b"hel", None]
        # the connection went back to the pool in step: the next command reads its own reply
        assert conn.get("s") == b"hello"
        conn.flushdb()
        conn.close()


def test_a_profile_s_identity_fields_are_written_however_many_there_are(redis_client: redis.Redis) -> None:
    """Lua's unpack stops at a few thousand values: the fields go in slices of 500 pairs."""
    from connector.profiles.identity import _HSET_MANY

    many = [x for n in range(4500) for x in (f"i:{n}", str(n))]
    replies = _HSET_MANY.run(redis_client, [(["p:{acme:a}"], many), (["p:{acme:b}"], ["i:x", "1"])])
    assert replies == [4500, 1]
    assert redis_client.hlen("p:{acme:a}") == 4500 and redis_client.hget("p:{acme:b}", "i:x") == b"1"
