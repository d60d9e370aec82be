"""The packed history: one string per profile, entries of any length, the history stored before
the packed form (a sorted set) still read, merged and rewritten, and the order independent of the
server's collation."""

from __future__ import annotations

from datetime import timedelta

import redis

from connector.profiles import keys, load_profile, lookup
from connector.profiles.store import COMPRESSED, name_codes, order_key, pack_history, unpack_history
from tests.profile_helpers import NOW, T0, apply, ev


def _pid(conn: redis.Redis, kind: str, value: str) -> str:
    pid = lookup(conn, "acme", kind, value)
    assert pid is not None
    return pid


def test_history_is_one_string_holding_entries_of_any_length(redis_client, accounts) -> None:
    props = [{"k": "x"}, {"k": "y" * 200}, {"k": "z" * 256, **{f"p{i}": "w" * 256 for i in range(70)}}]
    apply(redis_client, accounts, *[ev(str(i), at=i, user_id="u1", props=p) for i, p in enumerate(props)])
    pid = _pid(redis_client, "user_id", "u1")
    key = keys.history_key("acme", pid)
    assert redis_client.type(key) == b"string"
    stored = redis_client.get(key)
    assert stored is not None and stored[0] == COMPRESSED and len(stored) < 2_000  # 18 KB of entries
    entries = unpack_history(stored)
    plain = pack_history(entries, compress=False)
    assert 16_384 < len(plain) < 20_000  # the last entry takes a 3-byte length
    assert unpack_history(plain) == entries
    profile = load_profile(redis_client, "acme", pid, NOW)
    assert profile is not None
    assert [e.properties for e in profile.events] == props
    # 50 small events cost about 30 bytes each
    apply(
        redis_client,
        accounts,
        *[ev(f"s{i}", at=10 + i, user_id="u2", props={"sku": "A1"}) for i in range(50)],
    )
    small = redis_client.strlen(keys.history_key("acme", _pid(redis_client, "user_id", "u2")))
    assert small <= 50 * 15, small  # compressed: about 30 bytes each plain


def test_a_sorted_set_history_from_before_is_read_merged_and_rewritten(redis_client, accounts) -> None:
    apply(redis_client, accounts, ev("first", at=1, user_id="u1", props={"sku": "A"}))
    pid = _pid(redis_client, "user_id", "u1")
    key = keys.history_key("acme", pid)
    codes = name_codes(redis_client).codes("acme", {"product_viewed", "@sku"})
    # the same event as stored before: score = seconds, member = 2 bytes of ms + id + code + NUL + props
    redis_client.delete(key)
    old = [(ev("first", at=1, user_id="u1"), "A"), (ev("second", at=2, user_id="u1"), "B")]
    for event, sku in old:
        ms = int(order_key(event.occurred_at, event.event_id)[:13]) + 250
        member = (
            (ms % 1000).to_bytes(2, "big")
            + bytes.fromhex(event.event_id[:16])
            + codes["product_viewed"].encode()
            + b"\x00"
            + f"{codes['@sku']}S{sku}".encode()
        )
        redis_client.zadd(key, {member: ms // 1000})
    profile = load_profile(redis_client, "acme", pid, NOW)
    assert profile is not None and [e.properties["sku"] for e in profile.events] == ["A", "B"]
    assert profile.events[0].occurred_at == T0 + timedelta(minutes=1, milliseconds=250)
    # applying again: the old entries are kept once, the new one added, the key is rewritten packed
    outcome = apply(redis_client, accounts, ev("third", at=3, user_id="u1", props={"sku": "C"}))
    assert (outcome.applied, outcome.duplicates) == (1, 0)
    assert redis_client.type(key) == b"string"
    profile = load_profile(redis_client, "acme", pid, NOW)
    assert profile is not None and [e.properties["sku"] for e in profile.events] == ["A", "B", "C"]
    # a profile with a sorted-set history merged into another one brings its events along
    redis_client.delete(key)
    for event, _ in old:
        ms = int(order_key(event.occurred_at, event.event_id)[:13])
        member = (ms % 1000).to_bytes(2, "big") + bytes.fromhex(event.event_id[:16])
        redis_client.zadd(key, {member + codes["product_viewed"].encode() + b"\x00": ms // 1000})
    apply(redis_client, accounts, ev("anon", at=4, anonymous_id="a1"))
    apply(redis_client, accounts, ev("link", at=5, type="identify", user_id="u1", anonymous_id="a1"))
    survivor = _pid(redis_client, "anonymous_id", "a1")
    profile = load_profile(redis_client, "acme", survivor, NOW)
    assert profile is not None and len(profile.events) == 3  # first, second (from the set) and anon


def test_entries_are_stored_in_time_then_id_byte_order(redis_client, accounts) -> None:
    # the same millisecond, ids with bytes above 0x7f: ordered bytewise whatever the server's locale
    events = [ev(f"e{i}", at=7, user_id="u1") for i in range(12)]
    apply(redis_client, accounts, *reversed(events))
    apply(redis_client, accounts, ev("early", at=6, user_id="u1"), ev("late", at=8, user_id="u1"))
    pid = _pid(redis_client, "user_id", "u1")
    stored = unpack_history(redis_client.get(keys.history_key("acme", pid)))
    assert [entry[:14] for entry in stored] == sorted(entry[:14] for entry in stored)
    assert len(stored) == 14 and any(entry[6] >= 0x80 for entry in stored)


def test_newer_events_are_appended_and_a_late_one_is_sorted_in(redis_client, accounts) -> None:
    for i in (1, 2, 5):  # one batch each, in time order: appended
        apply(redis_client, accounts, ev(f"t{i}", at=i, user_id="u1", props={"n": i}))
    late = apply(
        redis_client, accounts, ev("t3", at=3, user_id="u1", props={"n": 3}), ev("t5", at=5, user_id="u1")
    )
    assert (late.applied, late.duplicates) == (1, 1)
    again = apply(
        redis_client, accounts, ev("t1", at=1, user_id="u1"), ev("t6", at=6, user_id="u1", props={"n": 6})
    )
    assert (again.applied, again.duplicates) == (1, 1)
    pid = _pid(redis_client, "user_id", "u1")
    packed = redis_client.get(keys.history_key("acme", pid))
    assert packed is not None and int.from_bytes(packed[:3], "big") == 5  # the header's count
    profile = load_profile(redis_client, "acme", pid, NOW)
    assert profile is not None and [e.properties["n"] for e in profile.events] == [1, 2, 3, 5, 6]
    stored = unpack_history(packed)
    assert packed[3:17] == stored[-1][:14]  # the header names the newest entry


def _compressed_profile(conn: redis.Redis, accounts, n: int = 20) -> tuple[str, str]:
    """A profile whose history was compressed (every event's properties differ a little)."""
    apply(
        conn,
        accounts,
        *[ev(f"c{i}", at=10 * i, user_id="u1", props={"n": i, "sku": f"S{i}"}) for i in range(n)],
    )
    pid = _pid(conn, "user_id", "u1")
    key = keys.history_key("acme", pid)
    stored = conn.get(key)
    assert stored is not None and stored[0] == COMPRESSED
    return pid, key


def test_a_compressed_history_takes_new_events_at_its_end_without_reopening(redis_client, accounts) -> None:
    pid, key = _compressed_profile(redis_client, accounts)
    before = redis_client.get(key)
    assert before is not None
    outcome = apply(redis_client, accounts, ev("next", at=1000, user_id="u1", props={"n": 99}))
    assert (outcome.applied, outcome.duplicates) == (1, 0)
    after = redis_client.get(key)
    assert after is not None and after[0] == COMPRESSED
    block_end = 27 + int.from_bytes(before[24:27], "big")
    assert after[27:block_end] == before[27:block_end]  # the block is kept, the entry appended
    assert int.from_bytes(after[1:4], "big") == 21
    profile = load_profile(redis_client, "acme", pid, NOW)
    assert profile is not None and [e.properties["n"] for e in profile.events] == [*range(20), 99]


def test_a_compressed_history_is_opened_for_late_events_duplicates_and_merges(redis_client, accounts) -> None:
    pid, key = _compressed_profile(redis_client, accounts)
    again = apply(redis_client, accounts, ev("c3", at=30, user_id="u1", props={"n": 3, "sku": "S3"}))
    assert (again.applied, again.duplicates) == (0, 1)
    late = apply(redis_client, accounts, ev("late", at=35, user_id="u1", props={"n": 3.5}))
    assert (late.applied, late.duplicates) == (1, 0)
    stored = redis_client.get(key)
    assert stored is not None and stored[0] == COMPRESSED  # compressed again once written
    profile = load_profile(redis_client, "acme", pid, NOW)
    assert profile is not None
    assert [e.properties["n"] for e in profile.events] == [0, 1, 2, 3, 3.5, *range(4, 20)]
    # another profile merged into this one brings its events along
    apply(redis_client, accounts, ev("anon", at=36, anonymous_id="a1", props={"n": 3.6}))
    apply(redis_client, accounts, ev("link", at=500, type="identify", user_id="u1", anonymous_id="a1"))
    survivor = _pid(redis_client, "anonymous_id", "a1")
    profile = load_profile(redis_client, "acme", survivor, NOW)
    assert profile is not None
    assert [e.properties.get("n") for e in profile.events] == [0, 1, 2, 3, 3.5, 3.6, *range(4, 20)]


def test_a_plain_history_from_before_is_compressed_when_written(redis_client, accounts, monkeypatch) -> None:
    import connector.profiles.apply as apply_module

    monkeypatch.setattr(apply_module, "COMPRESS_AT", 1 << 30)  # the form written before compression
    apply(redis_client, accounts, *[ev(f"c{i}", at=i, user_id="u1", props={"n": i}) for i in range(20)])
    pid = _pid(redis_client, "user_id", "u1")
    key = keys.history_key("acme", pid)
    plain = redis_client.get(key)
    assert plain is not None and plain[0] == 0 and len(unpack_history(plain)) == 20
    profile = load_profile(redis_client, "acme", pid, NOW)
    assert profile is not None and len(profile.events) == 20  # read as it is
    monkeypatch.undo()
    apply(redis_client, accounts, ev("next", at=100, user_id="u1", props={"n": 20}))
    stored = redis_client.get(key)
    assert stored is not None and stored[0] == COMPRESSED and len(stored) < len(plain)
    profile = load_profile(redis_client, "acme", pid, NOW)
    assert profile is not None and [e.properties["n"] for e in profile.events] == list(range(21))
