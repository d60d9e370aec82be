"""The ledger hash is two fields, the segments JSON and the rest packed, and keeps Redis' compact
(listpack) encoding when the segments JSON is short (the rest then in pieces of at most 64 bytes);
hashes of the earlier layouts are still read and are rewritten in this one."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import redis

from connector.worker.ledger import PIECE, Entry, Ledger, ledger_key

T0 = datetime(2024, 3, 1, 11, 0, tzinfo=UTC)
COMPACT = {"listpack", "ziplist"}  # the compact hash encoding (ziplist before Redis 7)
TRAITS = {f"trait_{n}": f"value number {n} of this profile" for n in range(7)}


def encoding(conn: redis.Redis, key: str) -> str:
    raw = conn.object("encoding", key)
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def test_long_traits_are_stored_in_pieces_and_read_back_whole(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    diff = ledger.record("acme", "p1", frozenset({"vip"}), TRAITS, T0, revision=1)
    assert diff is not None and diff.version == 1
    key = ledger_key("acme", "p1")
    fields = redis_client.hgetall(key)
    assert len(json.dumps(TRAITS)) > 3 * PIECE and b"x3" in fields and b"t" not in fields
    assert max(len(value) for value in fields.values()) <= PIECE
    assert encoding(redis_client, key) in COMPACT
    state = ledger.state("acme", "p1")
    assert state is not None and state.traits == TRAITS and state.segments == {"vip"}
    # the same result again is no change: the pieces compare equal to the JSON the caller computed
    assert ledger.record("acme", "p1", frozenset({"vip"}), TRAITS, T0 + timedelta(seconds=1), 2) is None


def test_fewer_pieces_leave_no_stale_piece_behind(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    ledger.record("acme", "p1", frozenset(), TRAITS, T0, revision=1)
    diff = ledger.record("acme", "p1", frozenset(), {"n": 1}, T0, revision=2)
    assert diff is not None and diff.changed_traits["n"] == 1
    fields = redis_client.hgetall(ledger_key("acme", "p1"))
    assert sorted(fields) == [b"s", b"x"]
    state = ledger.state("acme", "p1")
    assert state is not None and state.traits == {"n": 1}


def test_a_hash_with_the_whole_traits_json_is_read_and_rewritten_compact(redis_client: redis.Redis) -> None:
    key = ledger_key("acme", "p1")
    whole = json.dumps(TRAITS, sort_keys=True, separators=(",", ":"))
    redis_client.hset(key, mapping={"v": 4, "s": '["vip"]', "t": whole, "r": 1, "e": "1.0", "c": ""})
    assert encoding(redis_client, key) == "hashtable"
    ledger = Ledger(redis_client)
    state = ledger.state("acme", "p1")
    assert state is not None and (state.version, state.traits) == (4, TRAITS)
    assert ledger.record("acme", "p1", frozenset({"vip"}), TRAITS, T0, revision=2) is None
    assert encoding(redis_client, key) in COMPACT
    diffs = ledger.record_many("acme", [Entry("p1", frozenset(), TRAITS, 3)], T0)
    assert diffs[0] is not None and (diffs[0].version, diffs[0].exited) == (5, {"vip"})
    state = ledger.state("acme", "p1")
    assert state is not None and (state.version, state.traits, state.segments) == (5, TRAITS, frozenset())


def test_with_long_segments_json_the_traits_stay_in_one_field(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    many = frozenset(f"segment_with_a_long_name_{n}" for n in range(4))
    ledger.record("acme", "p1", frozenset({"vip"}), TRAITS, T0, revision=1)
    diff = ledger.record("acme", "p1", many, TRAITS, T0, revision=2)
    assert diff is not None and diff.entered == many
    fields = redis_client.hgetall(ledger_key("acme", "p1"))
    assert sorted(fields) == [b"s", b"x"]  # the pieces are gone: x whole
    state = ledger.state("acme", "p1")
    assert state is not None and (state.segments, state.traits) == (many, TRAITS)
    ledger.record("acme", "p1", frozenset(), TRAITS, T0, revision=3)  # short again: pieces, compact
    assert encoding(redis_client, ledger_key("acme", "p1")) in COMPACT


def test_a_hash_with_the_traits_in_pieces_of_the_first_compact_layout_is_read(
    redis_client: redis.Redis,
) -> None:
    key = ledger_key("acme", "p1")
    whole = json.dumps(TRAITS, sort_keys=True, separators=(",", ":"))
    pieces = {
        ("t" if n == 0 else f"t{n}"): whole[n * PIECE : (n + 1) * PIECE]
        for n in range(len(whole) // PIECE + 1)
    }
    redis_client.hset(key, mapping={"v": 2, "s": "[]", "r": 1, "e": "1.0", "c": "", **pieces})
    ledger = Ledger(redis_client)
    state = ledger.state("acme", "p1")
    assert state is not None and (state.version, state.traits) == (2, TRAITS)
    assert ledger.record("acme", "p1", frozenset(), TRAITS, T0, revision=2) is None
    assert not [name for name in redis_client.hgetall(key) if name.startswith(b"t")]
    state = ledger.state("acme", "p1")
    assert state is not None and (state.version, state.traits) == (2, TRAITS)
