"""The ledger is one string per person: the state, then the history, names as codes; the layouts
of before (a string or a hash beside a history list or stream) are still read and are rewritten in
this one, their history moved into it, the next time the profile is recorded."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from connector.profiles.erasure import drop_names
from connector.profiles.store import name_codes
from connector.worker import ledger as ledger_module
from connector.worker.ledger import Entry, Ledger, history_key, ledger_key, names_key, older_key
from tests.profiles.test_profiles_cluster import cluster, cluster_url  # noqa: F401  (fixtures)

T0 = datetime(2024, 3, 1, 11, 0, tzinfo=UTC)
TRAITS = {f"trait_{n}": f"value number {n} of this profile" for n in range(7)}
PIECE = 64  # the earlier hash layout cut the packed state into pieces of this size
MISSING = object()


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def test_one_string_holds_the_state_and_the_history(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    assert ledger.record("acme", "p1", frozenset({"vip"}), TRAITS, T0, revision=1) is not None
    assert ledger.record("acme", "p1", frozenset({"new"}), TRAITS, T0 + timedelta(seconds=1), 2) is not None
    key = ledger_key("acme", "p1")
    assert redis_client.type(key) == b"string" and not redis_client.exists(history_key("acme", "p1"))
    lines = (redis_client.get(key) or b"").split(b"\n")
    assert len(lines) == 3  # the state, two changes
    assert b"trait_" not in b"".join(lines) and lines[1].endswith(b" *")  # codes; no copy of the traits
    state = ledger.state("acme", "p1")
    assert state is not None and (state.version, state.segments, state.traits) == (2, {"new"}, TRAITS)
    assert [(h["entered"], h["exited"], h["traits"]) for h in ledger.history("acme", "p1")] == [
        (["vip"], [], TRAITS),
        (["new"], ["vip"], {}),
    ]
    # the same result again is no change, and leaves the history as it was
    assert ledger.record("acme", "p1", frozenset({"new"}), TRAITS, T0 + timedelta(seconds=2), 3) is None
    assert ledger.history_length("acme", "p1") == 2


def _reference(steps: list[tuple[frozenset[str], dict[str, Any]]]) -> list[dict[str, Any]]:
    """The history as the ledger has always answered it: per change, the segments entered and
    exited and the traits whose value changed (with the new value; removed ones not listed)."""
    out: list[dict[str, Any]] = []
    state: tuple[frozenset[str], dict[str, Any]] | None = None
    version = 0
    for segments, traits in steps:
        old_s, old_t = state if state is not None else (frozenset(), {})
        same = state is not None and old_s == segments and _json(old_t) == _json(traits)
        if state is None and not segments and not traits:
            same = True
        if not same:
            version += 1
            if not (state is None and not segments):
                changed = {k: v for k, v in sorted(traits.items()) if old_t.get(k, MISSING) != v}
                out.append({"version": version, "entered": sorted(segments - old_s),
                            "exited": sorted(old_s - segments), "traits": changed})  # fmt: skip
        state = (segments, traits)
    return out


VALUES: list[Any] = [None, 0, 1, 1.0, True, False, "x", "", 2.5, [1, 2], {"k": 1}, "a b=c,d/e"]


def _steps(seed: int, n: int) -> list[tuple[frozenset[str], dict[str, Any]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        segments = frozenset(s for s in ("a", "b", "c-d", "e.f") if rng.random() < 0.4)
        traits = {k: rng.choice(VALUES) for k in ("x", "y", "z_1") if rng.random() < 0.7}
        if rng.random() < 0.3 and out:
            segments, traits = out[-1][0], dict(out[-1][1])  # nothing changed
        out.append((segments, traits))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_the_history_answers_what_each_change_changed(redis_client: redis.Redis, seed: int) -> None:
    ledger = Ledger(redis_client)
    steps = _steps(seed, 60)
    for n, (segments, traits) in enumerate(steps):
        ledger.record("acme", "p1", segments, traits, T0 + timedelta(seconds=n), revision=n + 1)
    expected = _reference(steps)
    got = [{k: v for k, v in h.items() if k != "at"} for h in ledger.history("acme", "p1", count=1000)]
    assert _json(got) == _json(expected)
    assert _json(ledger.history("acme", "p1", count=5)) == _json(ledger.history("acme", "p1", 1000)[-5:])
    assert ledger.history("acme", "p1", count=0) == []


def test_the_cap_keeps_the_latest_changes_answered_the_same(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_module, "HISTORY_MAXLEN", 7)
    ledger = Ledger(redis_client)
    steps = _steps(99, 40)
    trimmed = 0
    for n, (segments, traits) in enumerate(steps):
        diff = ledger.record("acme", "p1", segments, traits, T0 + timedelta(seconds=n), revision=n + 1)
        trimmed += diff.trimmed if diff is not None else 0
    expected = _reference(steps)
    assert trimmed == len(expected) - 7 and ledger.history_length("acme", "p1") == 7
    got = [{k: v for k, v in h.items() if k != "at"} for h in ledger.history("acme", "p1")]
    assert _json(got) == _json(expected[-7:])


def test_the_names_have_a_dictionary_an_erasure_of_event_names_leaves_alone(
    redis_client: redis.Redis,
) -> None:
    ledger = Ledger(redis_client)
    ledger.record("acme", "p1", frozenset({"lifetime_customers"}), {"customers_seen": 1}, T0, revision=1)
    name_codes(redis_client).codes("acme", {"viewed_customers"})  # an event name
    assert drop_names(redis_client, "acme", frozenset({"customers"})) == 1  # scrubs event names only
    fields = {f.decode() for f in redis_client.hkeys(names_key("acme"))}
    assert {"n:lifetime_customers", "n:customers_seen"} <= fields
    other = Ledger(redis.Redis(connection_pool=redis_client.connection_pool))  # no cached codes
    state = other.state("acme", "p1")
    assert state is not None and state.segments == {"lifetime_customers"}
    assert state.traits == {"customers_seen": 1}


def test_the_layout_of_before_is_read_then_rewritten_with_its_history(redis_client: redis.Redis) -> None:
    key, hist = ledger_key("acme", "p1"), history_key("acme", "p1")
    traits = _json({"ltv": 120.0, "n": 1})
    redis_client.set(key, f'["active","vip"]\n2 1 1709290800.0,1709463600.0,abcd1234 abc {traits}')
    redis_client.rpush(hist, f"1 1709287200000000 +active,+vip\x1e{traits}", "2 1709290800000000 +vip")
    ledger = Ledger(redis_client)
    before = ledger.history("acme", "p1")
    assert [h["entered"] for h in before] == [["active", "vip"], ["vip"]]
    (stored,) = ledger.stored_many("acme", ["p1"])
    assert (stored.members(), stored.rules, stored.revision) == ({"active", "vip"}, "abcd1234", 1)
    assert stored.due == datetime(2024, 3, 3, 11, 0, tzinfo=UTC)
    # the same result at the same revision and instant: no change, rewritten in this layout
    same = Entry("p1", frozenset({"active", "vip"}), {"ltv": 120.0, "n": 1}, 1, "abc")
    assert ledger.record_many("acme", [same], T0) == [None]
    assert (redis_client.get(key) or b"").startswith(b"2 1 ") and not redis_client.exists(hist)
    assert ledger.history("acme", "p1") == before and ledger.history_length("acme", "p1") == 2
    state = ledger.state("acme", "p1")
    assert state is not None and (state.version, state.segments) == (2, {"active", "vip"})
    diff = ledger.record("acme", "p1", frozenset({"vip"}), {"ltv": 150.0, "n": 1}, T0, 2, contact="abc")
    assert diff is not None and (diff.version, diff.exited) == (3, {"active"})
    assert diff.changed_traits == {"ltv": 150.0}
    assert ledger.history("acme", "p1") == [
        *before,
        {"version": 3, "at": "2024-03-01T11:00:00Z", "entered": [], "exited": ["active"],
         "traits": {"ltv": 150.0}},
    ]  # fmt: skip


def test_a_hash_with_its_history_list_is_read_and_rewritten_in_this_layout(redis_client: redis.Redis) -> None:
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
    assert ledger.history_length("acme", "p1") == 2 and not redis_client.exists(history_key("acme", "p1"))


def test_the_oldest_hash_layout_with_a_stream_history_is_read_and_rewritten(
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
    assert ledger.history_length("acme", "p1") == 2 and not redis_client.exists(history_key("acme", "p1"))


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


def _changes_held(redis_client: redis.Redis | RedisCluster, pid: str = "p1") -> int:
    """The changes the ledger string itself holds."""
    return len((redis_client.get(ledger_key("acme", pid)) or b"").split(b"\n")) - 1


@pytest.mark.parametrize("seed", range(3))
def test_the_older_changes_move_to_a_list_and_are_answered_the_same(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    monkeypatch.setattr(ledger_module, "STATE_PREFIX", 24)  # state lines longer and shorter than it
    ledger = Ledger(redis_client)
    steps = _steps(seed, 160)
    for n, (segments, traits) in enumerate(steps):
        ledger.record("acme", "p1", segments, traits, T0 + timedelta(seconds=n), revision=n + 1)
        assert _changes_held(redis_client) <= ledger_module.INLINE
    expected = _reference(steps)
    assert len(expected) > ledger_module.INLINE + ledger_module.KEEP  # some moved, more than once
    assert redis_client.type(older_key("acme", "p1")) == b"list"
    assert ledger.history_length("acme", "p1") == len(expected)
    whole = ledger.history("acme", "p1", count=1000)
    assert _json([{k: v for k, v in h.items() if k != "at"} for h in whole]) == _json(expected)
    for count in (1, 5, 16, 17, 32, 33, 50, len(expected) - 1, len(expected)):
        # the traits of each change are undone across the string and the list alike
        assert _json(ledger.history("acme", "p1", count=count)) == _json(whole[-count:])
    (stored,) = ledger.stored_many("acme", ["p1"])
    state = ledger.state("acme", "p1")
    assert state is not None and stored.members() == state.segments == steps[-1][0]


def test_the_cap_counts_what_the_list_drops(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_module, "HISTORY_MAXLEN", 40)
    monkeypatch.setattr(ledger_module, "INLINE", 8)
    monkeypatch.setattr(ledger_module, "KEEP", 3)
    ledger = Ledger(redis_client)
    steps = _steps(5, 300)
    trimmed = 0
    for n, (segments, traits) in enumerate(steps):
        diff = ledger.record("acme", "p1", segments, traits, T0 + timedelta(seconds=n), revision=n + 1)
        trimmed += diff.trimmed if diff is not None else 0
        assert ledger.history_length("acme", "p1") <= 40 and _changes_held(redis_client) <= 8
    expected = _reference(steps)
    length = ledger.history_length("acme", "p1")
    assert trimmed + length == len(expected) and length >= 40 - 8
    got = [{k: v for k, v in h.items() if k != "at"} for h in ledger.history("acme", "p1", count=1000)]
    assert _json(got) == _json(expected[-length:])


def test_a_ledger_holding_its_whole_history_moves_the_older_changes_out_at_its_next_record(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the first layout of one string kept every change in it (up to the cap)
    monkeypatch.setattr(ledger_module, "INLINE", 10_000)
    ledger = Ledger(redis_client)
    steps = [(frozenset({f"s{n % 3}"}), {"score": n}) for n in range(503)]
    for n, (segments, traits) in enumerate(steps):
        ledger.record("acme", "p1", segments, traits, T0 + timedelta(seconds=n), revision=n + 1)
    assert _changes_held(redis_client) == 500 and not redis_client.exists(older_key("acme", "p1"))
    before = ledger.history("acme", "p1", count=1000)
    monkeypatch.setattr(ledger_module, "INLINE", 32)
    # the same result again: the string keeps its newest changes, nothing is dropped
    last = steps[-1]
    assert ledger.record("acme", "p1", last[0], last[1], T0 + timedelta(seconds=600), revision=600) is None
    assert _changes_held(redis_client) == 32 and redis_client.llen(older_key("acme", "p1")) == 468
    assert ledger.history("acme", "p1", count=1000) == before
    # the next change moves 17 more, and the list drops its oldest 17 (counted)
    diff = ledger.record("acme", "p1", frozenset({"new"}), {"score": -1}, T0 + timedelta(seconds=601), 601)
    assert diff is not None and diff.trimmed == 17
    assert _changes_held(redis_client) == 16 and ledger.history_length("acme", "p1") == 484
    after = ledger.history("acme", "p1", count=1000)
    assert after[:-1] == before[17:] and after[-1]["entered"] == ["new"]
    assert after[-1]["traits"] == {"score": -1}


def test_a_long_history_of_before_moves_in_and_out_to_the_list(redis_client: redis.Redis) -> None:
    key, hist = ledger_key("acme", "p1"), history_key("acme", "p1")
    traits = _json({"n": 99})
    redis_client.set(key, f'["vip"]\n99 1 1709290800.0 abc {traits}')
    items = [
        f"{v} {1709287200000000 + v} {'+vip' if v % 2 else '-vip'}\x1e{_json({'n': v})}"
        for v in range(1, 100)
    ]
    redis_client.rpush(hist, *items)
    ledger = Ledger(redis_client)
    before = ledger.history("acme", "p1", count=1000)
    assert len(before) == 99
    diff = ledger.record("acme", "p1", frozenset(), {"n": 100}, T0, revision=2, contact="abc")
    assert diff is not None and (diff.version, diff.trimmed) == (100, 0)
    assert not redis_client.exists(hist) and _changes_held(redis_client) == ledger_module.KEEP
    after = ledger.history("acme", "p1", count=1000)
    assert after[:-1] == before and after[-1]["exited"] == ["vip"]
    assert ledger.history("acme", "p1", count=3) == after[-3:]


def test_a_state_longer_than_what_is_read_first_is_read_whole(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    long = {f"trait_{n}": "x" * 300 for n in range(5)}
    for n in range(40):
        ledger.record("acme", "p1", frozenset({"vip"}), {**long, "n": n}, T0 + timedelta(seconds=n), n + 1)
    ledger.record("acme", "p2", frozenset({"vip"}), {"n": 1}, T0, 1)
    one, two, none = ledger.stored_many("acme", ["p1", "p2", "p3"])
    assert json.loads(one.traits.split(b"=", 1)[1]) == [39, *long.values()]  # type: ignore[union-attr]
    assert two.members() == one.members() == {"vip"} and none.segments is None
    # the string layout of before, longer than the first bytes read
    redis_client.set(ledger_key("acme", "p4"), f'["vip"]\n2 1 1709290800.0 abc {_json(long)}')
    (old,) = ledger.stored_many("acme", ["p4"])
    assert old.members() == {"vip"} and json.loads(old.traits or b"") == long


def test_deleting_a_profile_removes_its_older_changes(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_module, "INLINE", 2)
    monkeypatch.setattr(ledger_module, "KEEP", 1)
    ledger = Ledger(redis_client)
    for pid in ("p1", "p2"):
        for n in range(5):
            ledger.record("acme", pid, frozenset({f"s{n}"}), {}, T0 + timedelta(seconds=n), n + 1)
        assert redis_client.exists(older_key("acme", pid))
    ledger.delete_many("acme", ["p1", "p2"])
    assert redis_client.keys("*p1*") == [] and redis_client.keys("*p2*") == []


def test_the_older_changes_on_a_cluster(
    cluster: RedisCluster,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ledger_module, "INLINE", 4)
    monkeypatch.setattr(ledger_module, "KEEP", 2)
    ledger = Ledger(cluster)
    pids = [f"p{n}" for n in range(8)]  # on every node
    steps = _steps(7, 40)
    for n, (segments, traits) in enumerate(steps):
        entries = [Entry(pid, segments, traits, n + 1) for pid in pids]
        ledger.record_many("acme", entries, T0 + timedelta(seconds=n))
    expected = _reference(steps)
    for pid in pids:
        assert cluster.exists(older_key("acme", pid)) and _changes_held(cluster, pid) <= 4
        got = [{k: v for k, v in h.items() if k != "at"} for h in ledger.history("acme", pid, count=1000)]
        assert _json(got) == _json(expected) and ledger.history_length("acme", pid) == len(expected)
    stored = ledger.stored_many("acme", pids)
    assert {s.members() for s in stored} == {steps[-1][0]}
    assert {s.traits for s in stored} == {
        (cluster.get(ledger_key("acme", "p0")) or b"").split(b"\n")[0].split(b" ", 6)[6]
    }
    state = ledger.state("acme", "p0")
    assert state is not None and _json(state.traits) == _json(steps[-1][1])
    ledger.delete_many("acme", pids)
    assert not cluster.exists(*[older_key("acme", pid) for pid in pids])


def test_a_wiped_store_recoded_by_another_process_is_read_with_its_new_codes(
    redis_client: redis.Redis,
) -> None:
    """This process cached the codes of a store that was wiped; another process coded the names
    again, in another order: the state and the history read here name the segments it recorded."""
    ledger = Ledger(redis_client)
    ledger.record_many("acme", [Entry("p1", frozenset({"vip"}), {}, 1, "")], T0)
    assert ledger.state("acme", "p1").segments == frozenset({"vip"})  # type: ignore[union-attr]
    redis_client.flushdb()
    elsewhere = Ledger(redis.Redis(connection_pool=redis_client.connection_pool))
    elsewhere.record_many("acme", [Entry("p1", frozenset({"churned"}), {}, 1, "")], T0)  # vip's code before
    assert ledger.state("acme", "p1").segments == frozenset({"churned"})  # type: ignore[union-attr]
    assert [(c["entered"], c["exited"]) for c in ledger.history("acme", "p1")] == [(["churned"], [])]
