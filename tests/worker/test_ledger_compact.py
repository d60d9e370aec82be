"""The ledger is a string per person (segments and state) beside its history list; hashes of the
earlier layouts are still read and are rewritten in this one, and history streams go on."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import redis

from connector.worker.ledger import Entry, Ledger, history_key, ledger_key

T0 = datetime(2024, 3, 1, 11, 0, tzinfo=UTC)
TRAITS = {f"trait_{n}": f"value number {n} of this profile" for n in range(7)}
PIECE = 64  # the earlier hash layout cut the packed state into pieces of this size


def test_a_string_holds_the_state_beside_the_history(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    assert ledger.record("acme", "p1", frozenset({"vip"}), TRAITS, T0, revision=1) is not None
    assert ledger.record("acme", "p1", frozenset({"new"}), TRAITS, T0 + timedelta(seconds=1), 2) is not None
    key, history = ledger_key("acme", "p1"), history_key("acme", "p1")
    assert redis_client.type(key) == b"string" and redis_client.llen(history) == 2  # two changes
    lines = redis_client.get(key).split(b"\n")  # type: ignore[union-attr]
    assert json.loads(lines[0]) == ["new"] and len(lines) == 2  # segments, state
    state = ledger.state("acme", "p1")
    assert state is not None and (state.version, state.segments, state.traits) == (2, {"new"}, TRAITS)
    assert [(h["entered"], h["exited"]) for h in ledger.history("acme", "p1")] == [
        (["vip"], []),
        (["new"], ["vip"]),
    ]
    # the same result again is no change, and leaves the history as it was
    assert ledger.record("acme", "p1", frozenset({"new"}), TRAITS, T0 + timedelta(seconds=2), 3) is None
    assert ledger.history_length("acme", "p1") == 2


def test_a_hash_with_its_history_list_is_read_and_rewritten_as_a_string(redis_client: redis.Redis) -> None:
    key = ledger_key("acme", "p1")
    packed = f"4 1 1709290800.0 abc {json.dumps(TRAITS, sort_keys=True, separators=(',', ':'))}"
    pieces = {
        ("x" if n == 0 else f"x{n}"): packed[n * PIECE : (n + 1) * PIECE]
        for n in range(len(packed) // PIECE + 1)
    }
    redis_client.hset(key, mapping={"s": '["vip"]', **pieces})
    redis_client.rpush(history_key("acme", "p1"), "4 1709290800000000 +vip")
    ledger = Ledger(redis_client)
    state = ledger.state("acme", "p1")
    assert state is not None and (state.version, state.traits, state.segments) == (4, TRAITS, {"vip"})
    assert [h["entered"] for h in ledger.history("acme", "p1")] == [["vip"]]
    diffs = ledger.record_many("acme", [Entry("p1", frozenset(), TRAITS, 3, "abc")], T0)
    assert diffs[0] is not None and (diffs[0].version, diffs[0].exited) == (5, {"vip"})
    assert redis_client.type(key) == b"string"
    assert [(h["version"], h["exited"]) for h in ledger.history("acme", "p1")] == [(4, []), (5, ["vip"])]
    assert ledger.history_length("acme", "p1") == 2


def test_the_oldest_hash_layout_with_a_stream_history_is_read_and_continued(
    redis_client: redis.Redis,
) -> None:
    key = ledger_key("acme", "p1")
    whole = json.dumps(TRAITS, sort_keys=True, separators=(",", ":"))
    redis_client.hset(key, mapping={"v": 2, "s": '["vip"]', "t": whole, "r": 1, "e": "1.0", "c": ""})
    old = {
        "v": 2,
        "at": "2024-03-01T10:00:00Z",
        "old_s": "[]",
        "new_s": '["vip"]',
        "old_t": "{}",
        "new_t": whole,
    }
    redis_client.xadd(history_key("acme", "p1"), old)
    ledger = Ledger(redis_client)
    state = ledger.state("acme", "p1")
    assert state is not None and (state.version, state.traits) == (2, TRAITS)
    assert ledger.record("acme", "p1", frozenset({"vip"}), TRAITS, T0, revision=2) is None
    assert redis_client.type(key) == b"string"
    ledger.record("acme", "p1", frozenset(), TRAITS, T0, revision=3)
    history = ledger.history("acme", "p1")
    assert [(h["version"], h["entered"], h["exited"]) for h in history] == [
        (2, ["vip"], []),
        (3, [], ["vip"]),
    ]
    assert ledger.history_length("acme", "p1") == 2


def test_the_recorded_next_due_and_rules_are_read_back(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    due = T0 + timedelta(hours=48)
    ledger.record_many("acme", [Entry("p1", frozenset({"vip"}), {}, 1, "", False, due, "abcd1234")], T0)
    ledger.record_many("acme", [Entry("p2", frozenset(), {"n": 1}, 1, "", False, None, "abcd1234")], T0)
    ledger.record("acme", "p3", frozenset({"vip"}), {}, T0, revision=1)
    one, two, three, none = ledger.stored_many("acme", ["p1", "p2", "p3", "p4"])
    assert (one.members(), one.due, one.rules) == ({"vip"}, due, "abcd1234")
    assert (two.members(), two.due, two.rules) == (frozenset(), None, "abcd1234")
    assert (three.members(), three.rules, three.revision) == ({"vip"}, "", 1)  # not from the worker
    assert none.segments is None and none.rules == ""
