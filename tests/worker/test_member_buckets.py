"""Segment members in buckets (connector.worker.sizes): growth, paging, the earlier layout."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from connector import buckets
from connector.analytics import overlap
from connector.worker import sizes
from tests.bucket_helpers import split_before_each_call, states_after
from tests.profiles.test_profiles_cluster import cluster, cluster_url  # noqa: F401  (fixtures)

NOW = datetime(2024, 3, 1, tzinfo=UTC)


def _pids(n: int, start: int = 0) -> list[str]:
    return [f"{k * 0x9E3779B97F4A7C15 % 2**64:016x}" for k in range(start, start + n)]


def _bucket_keys(conn: redis.Redis, account: str, segment: str) -> list[bytes]:
    return sorted(conn.scan_iter(f"{sizes.buckets_key(account)}:{segment}:*"))


def test_members_grow_into_compact_buckets_and_page_exactly(redis_client: redis.Redis) -> None:
    pids = _pids(2000)
    for start in range(0, 2000, 400):
        sizes.record_many(redis_client, "acme", [(p, {"a"}, ()) for p in pids[start : start + 400]], NOW)
    sizes.record_many(redis_client, "acme", [(p, {"b"}, {"a"}) for p in pids[:500]], NOW)
    assert sizes.sizes(redis_client, "acme") == {"a": 1500, "b": 500}
    names = _bucket_keys(redis_client, "acme", "a")
    assert 1500 / len(names) <= sizes.MEMBERS_CAP
    assert {redis_client.object("encoding", k) for k in names} == {b"intset"}
    assert max(redis_client.scard(k) for k in names) <= 512
    assert sizes.member_ids(redis_client, "acme", "a") == set(pids[500:])
    seen: list[str] = []
    position, page = sizes.members(redis_client, "acme", "a", None, 7)
    seen += page
    while position is not None:
        assert len(page) == 7
        position, page = sizes.members(redis_client, "acme", "a", position, 7)
        seen += page
    assert sorted(seen) == sorted(pids[500:])  # each once
    assert sizes.is_member(redis_client, "acme", "a", pids[600])
    assert not sizes.is_member(redis_client, "acme", "a", pids[100])
    assert sizes.is_member(redis_client, "acme", "b", pids[100])
    assert sizes.overlap(redis_client, "acme", "a", "b") == 0
    sizes.record_many(redis_client, "acme", [(p, {"b"}, ()) for p in pids[500:800]], NOW)
    assert (
        sizes.overlap(redis_client, "acme", "a", "b") == overlap.count(redis_client, "acme", "b", "a") == 300
    )


def test_paging_loses_nobody_while_buckets_split(redis_client: redis.Redis) -> None:
    first = _pids(300)
    sizes.record_many(redis_client, "acme", [(p, {"a"}, ()) for p in first], NOW)
    seen: set[str] = set()
    position, page = sizes.members(redis_client, "acme", "a", None, 50)
    seen.update(page)
    more = 0
    while position is not None:
        more += 1
        if more <= 5:  # splits happen between the pages
            batch = _pids(200, 1000 * more)
            sizes.record_many(redis_client, "acme", [(p, {"a"}, ()) for p in batch], NOW)
        position, page = sizes.members(redis_client, "acme", "a", position, 50)
        seen.update(page)
    assert set(first) <= seen
    assert (
        buckets.bucket_count(*buckets.unpack_state(redis_client.hget(sizes.buckets_key("acme"), "a"))[:2]) > 4
    )


def test_odd_profile_ids_are_members_too(redis_client: redis.Redis) -> None:
    odd = ["p1", "42", "=x", "0123456789ABCDEF", "x" * 100]
    sizes.record_many(redis_client, "acme", [(p, {"a"}, ()) for p in odd], NOW)
    assert sizes.member_ids(redis_client, "acme", "a") == set(odd)
    assert all(sizes.is_member(redis_client, "acme", "a", p) for p in odd)
    sizes.record_many(redis_client, "acme", [(p, (), {"a"}) for p in odd], NOW)
    assert sizes.sizes(redis_client, "acme") == {}
    assert not list(redis_client.scan_iter(f"{sizes.buckets_key('acme')}*"))  # nothing left behind


def test_a_set_of_the_earlier_layout_is_read_and_adopted_a_slice_at_a_time(redis_client: redis.Redis) -> None:
    pids = [*_pids(1000), "p-odd"]
    redis_client.sadd(sizes.members_key("acme", "a"), *pids)
    redis_client.sadd(sizes.members_key("acme", "b"), *pids[:10])
    redis_client.hset(sizes.size_key("acme"), mapping={"a": len(pids), "b": 10})
    assert sizes.is_member(redis_client, "acme", "a", pids[3])
    assert not sizes.is_member(redis_client, "acme", "a", "someone")
    # a change of the segment moves a slice; both hold members meanwhile (an overlap adopts all)
    sizes.record_many(redis_client, "acme", [(pids[0], (), {"a"}), (pids[5], {"a"}, ())], NOW)
    assert redis_client.scard(sizes.members_key("acme", "a")) in (801, 800)  # 200 moved; pids[0] left
    level, split, _ = buckets.unpack_state(redis_client.hget(sizes.buckets_key("acme"), "a"))
    assert buckets.bucket_count(level, split) == 7  # what the whole set needs, at once
    assert sizes.sizes(redis_client, "acme")["a"] == 1000  # pids[0] left; pids[5] was in already
    assert sizes.member_ids(redis_client, "acme", "a") == set(pids[1:])
    assert sizes.is_member(redis_client, "acme", "a", pids[5]) and not sizes.is_member(
        redis_client, "acme", "a", pids[0]
    )
    assert sizes.overlap(redis_client, "acme", "a", "b") == 9
    for _ in range(4):
        sizes.record_many(redis_client, "acme", [(pids[0], {"a"}, ())], NOW)
        sizes.record_many(redis_client, "acme", [(pids[0], (), {"a"})], NOW)
    assert not redis_client.exists(sizes.members_key("acme", "a"))
    assert sizes.member_ids(redis_client, "acme", "a") == set(pids[1:])
    assert sizes.sizes(redis_client, "acme") == {"a": 1000, "b": 10}
    assert sizes.overlap(redis_client, "acme", "b", "a") == 9


def test_paging_goes_through_the_earlier_layout_then_the_buckets(redis_client: redis.Redis) -> None:
    pids = _pids(700)
    redis_client.sadd(sizes.members_key("acme", "a"), *pids[:500])
    sizes.record_many(redis_client, "acme", [(p, {"a"}, ()) for p in pids[500:]], NOW)  # adopts 200
    seen: list[str] = []
    position, page = sizes.members(redis_client, "acme", "a", None, 40)
    seen += page
    while position is not None:
        position, page = sizes.members(redis_client, "acme", "a", position, 40)
        seen += page
    assert set(seen) == set(pids)
    assert not redis_client.exists(sizes.members_key("acme", "a"))  # the pages adopted the rest


def test_lua_packs_profile_ids_as_python_does(redis_client: redis.Redis) -> None:
    script = redis_client.register_script(buckets.LUA + "return lh_pack_pid(ARGV[1])")
    for pid in [
        *_pids(200),
        "ffffffffffffffff",
        "8000000000000000",
        "7fffffffffffffff",
        "0" * 16,
        "42",
        "=a",
        "p",
    ]:
        assert script(args=[pid]).decode() == buckets.pack_pid(pid)
        assert buckets.member_hash(buckets.pack_pid(pid)) == int(
            redis_client.eval(buckets.LUA + "return lh_hash_member(ARGV[1])", 0, buckets.pack_pid(pid))
        )


def test_members_on_a_cluster(cluster: Any) -> None:  # noqa: F811
    pids = _pids(700)
    node = cluster.get_node_from_key(sizes.size_key("acme")).redis_connection
    sizes.record_many(node, "acme", [(p, {"a"}, ()) for p in pids], NOW)
    assert sizes.member_ids(cluster, "acme", "a") == set(pids)
    assert sizes.is_member(cluster, "acme", "a", pids[5])


def test_recording_while_another_worker_keeps_splitting_a_segment_goes_through(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each recording call finds the segment's buckets split once more since the last (another
    worker growing them); people whose buckets those splits leave alone are recorded at the first
    call, where every split used to send the call round again until the batch failed."""
    pids = _pids(600)
    sizes.record_many(redis_client, "acme", [(p, {"a"}, ()) for p in pids[:500]], NOW)
    state = sizes.buckets_key("acme")
    level, split, _ = buckets.unpack_state(redis_client.hget(state, "a"))
    states = states_after(level, split, 2 * buckets.TRIES)
    steady = [
        p
        for p in pids[500:]
        if len({buckets.bucket_of(buckets.member_hash(buckets.pack_pid(p)), *st) for st in states}) == 1
    ][:10]
    assert len(steady) == 10
    calls = split_before_each_call(
        monkeypatch, redis_client, sizes._RECORD_MANY, state, "a", "s", f"{state}:a:"
    )
    sizes.record_many(redis_client, "acme", [(p, {"a"}, ()) for p in steady], NOW)
    monkeypatch.undo()
    assert len(calls) <= 2  # the first call, or a second with the state the first one answered
    assert buckets.unpack_state(redis_client.hget(state, "a"))[:2] != (level, split)  # it moved under it
    assert sizes.member_ids(redis_client, "acme", "a") == set(pids[:500]) | set(steady)
