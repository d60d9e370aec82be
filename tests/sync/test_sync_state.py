"""The applied state per contact and destination: one compact field (version, 6-byte digest,
ownership ledger with coded names) in listpack buckets that grow with the destination, and the
state stored before (one hash per destination, or three) still read and moved on the next write."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import redis

from adapters.change import OwnedState
from connector import sync
from connector.sync import applied
from connector.sync.keys import Applied, contact_key, decode_applied, run_script, short_digest, state_digest
from tests.sync.test_sync_worker import NOW, RecordingEsp, account, flusher, submit


def test_applied_state_is_one_small_field_with_coded_names(redis_client: redis.Redis, tmp_path: Path) -> None:
    acct = account(tmp_path)
    submit(redis_client, acct, "p1", 1, ["cart_abandoner", "vip"], traits={"ltv": 42})
    esp = RecordingEsp()
    assert flusher(redis_client, acct, esp).flush(NOW + timedelta(seconds=1)) == {"applied": 1}
    [raw] = applied.read(redis_client, sync.key("acme", "mailchimp", "applied"), ["p1"])
    assert raw is not None and raw.startswith(b"1~") and len(raw) < 40, raw
    assert not redis_client.exists(sync.key("acme", "mailchimp", "applied"))  # in a bucket
    assert b"cart abandoner" not in raw  # names are codes of the destination's dictionary
    for legacy in ("owned", "digest"):
        assert not redis_client.exists(sync.key("acme", "mailchimp", legacy))
    owned = sync.owned_state(redis_client, "acme", "mailchimp", "p1")
    assert owned == OwnedState(
        tags=frozenset({"cart abandoner", "vip"}),
        lists=frozenset({"77"}),
        fields=frozenset({"LTV"}),
        segments=frozenset({"cart_abandoner", "vip"}),
        remote_id="r1",
        email_key=contact_key("p1@example.com"),  # the address it was set under, as a short key
    )
    # the same desired state again is recognised by the short digest: no call
    submit(redis_client, acct, "p1", 2, ["cart_abandoner", "vip"], traits={"ltv": 42})
    assert flusher(redis_client, acct, esp).flush(NOW + timedelta(seconds=2)) == {"unchanged": 1}
    assert len(esp.calls) == 1
    assert sync.applied_version(redis_client, "acme", "mailchimp", "p1") == 2


def test_encoding_round_trips_any_remote_id_and_digest_bytes() -> None:
    codes = {"a": "1", "b": "2"}
    names = {v: k for k, v in codes.items()}
    state = Applied(
        None,
        b"|#;r,\x00\xff1",
        OwnedState(tags=frozenset({"a", "b"}), fields=frozenset({"b"}), remote_id="x;|r#"),
    )
    decoded = decode_applied(b"7" + state.tail(codes), names.__getitem__)
    assert decoded == Applied(7, state.digest, state.owned)
    assert decode_applied(b"-1|", names.__getitem__) == Applied(None, None, OwnedState())
    assert decode_applied(b"12", names.__getitem__) == Applied(12, None, None)


def test_state_stored_before_the_compact_form_is_read_and_rewritten(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    acct = account(tmp_path)
    submit(redis_client, acct, "p1", 2, ["vip"])
    submit(redis_client, acct, "p2", 2, [])
    change = sync.pending(redis_client, "acme", "mailchimp")["p1"]
    old_owned = {"tags": ["vip"], "lists": [], "fields": [], "segments": ["vip"], "remote_id": "r9"}
    for pid, owned in (("p1", old_owned), ("p2", dict(old_owned, remote_id="r8"))):
        redis_client.hset(sync.key("acme", "mailchimp", "applied"), pid, "1")
        redis_client.hset(sync.key("acme", "mailchimp", "owned"), pid, json.dumps(owned))
    redis_client.hset(sync.key("acme", "mailchimp", "digest"), "p1", state_digest(change))
    assert sync.owned_state(redis_client, "acme", "mailchimp", "p1") == OwnedState.from_dict(old_owned)
    assert sync.applied_version(redis_client, "acme", "mailchimp", "p1") == 1
    esp = RecordingEsp()
    counts = flusher(redis_client, acct, esp).flush(NOW + timedelta(seconds=1))
    assert counts == {"unchanged": 1, "applied": 1}  # p1 matched its old digest; p2 left vip
    assert [c.profile_id for c in esp.calls[0]] == ["p2"]
    assert esp.owned_seen[0]["p2"].remote_id == "r8" and esp.owned_seen[0]["p2"].tags == {"vip"}
    for legacy in ("owned", "digest"):
        assert not redis_client.exists(sync.key("acme", "mailchimp", legacy))
    # rewritten compact, with the key of the address it was applied under from then on
    keyed = replace(OwnedState.from_dict(old_owned), email_key=contact_key("p1@example.com"))
    assert sync.owned_state(redis_client, "acme", "mailchimp", "p1") == keyed
    assert sync.applied_version(redis_client, "acme", "mailchimp", "p1") == 2


_SET = applied.WRITE + "ap_put(KEYS[1], ARGV[1], ARGV[2], ap_find(KEYS[1], ARGV[1], ARGV[2]), ARGV[3])"
BASE = sync.key("acme", "mailchimp", "applied")


def _buckets(conn: redis.Redis) -> list[bytes]:
    return [k for k in conn.scan_iter(f"{BASE}:*") if not k.endswith(applied.STATE_SUFFIX.encode())]


def test_buckets_grow_with_the_destination_and_stay_compact(redis_client: redis.Redis) -> None:
    pids = [f"{n:016x}" for n in range(0, 2000 * 7919, 7919)] + ["p-odd", "12", "=x"]
    for n, pid in enumerate(pids):
        run_script(redis_client, _SET, [BASE], [pid, applied.pack_pid(pid), f"{n}~abcdef|t1"])
    buckets = _buckets(redis_client)
    assert 2003 / 80 <= len(buckets) <= 2003 / 40 + 1
    assert all(redis_client.object("encoding", k) in (b"listpack", b"ziplist") for k in buckets)
    assert sum(redis_client.hlen(k) for k in buckets) == 2003
    assert redis_client.get(BASE + applied.STATE_SUFFIX).split()[-2:] == [b"2003", b"0"]
    values = applied.read(redis_client, BASE, pids)
    assert values == [f"{n}~abcdef|t1".encode() for n in range(len(pids))]
    level, split, _, _ = (int(x) for x in redis_client.get(BASE + applied.STATE_SUFFIX).split())
    for n, pid in enumerate(pids):  # each where the hash puts it
        h = applied.entry_hash(applied.pack_pid(pid))
        bucket = h % 2**level if h % 2**level >= split else h % 2 ** (level + 1)
        assert redis_client.hget(f"{BASE}:{bucket}", applied.pack_pid(pid)) == values[n]
    # erasure (sync.forget) leaves nothing of them
    pipe = redis_client.pipeline()
    applied.forget(pipe, [BASE], pids)
    pipe.execute()
    assert _buckets(redis_client) == [] and applied.read(redis_client, BASE, pids[:3]) == [None] * 3
    assert redis_client.get(BASE + applied.STATE_SUFFIX).split()[-2:] == [b"0", b"0"]


def test_a_value_of_before_is_read_and_moved_to_its_bucket(redis_client: redis.Redis, tmp_path: Path) -> None:
    """A compact value written before the buckets (``sync:{a}:{d}:applied``, 8 bytes of digest
    behind ``#``) is read as it is (the digest still recognises the same state) and moved into a
    bucket by the next write; a value over 64 bytes stays in that hash (a bucket stays compact)."""
    acct = account(tmp_path)
    submit(redis_client, acct, "p1", 2, ["vip"])
    change = sync.pending(redis_client, "acme", "mailchimp")["p1"]
    digest = bytes.fromhex(state_digest(change)[:16])
    assert short_digest(change) == digest[:6]
    redis_client.hset(BASE, "p1", b"1#" + digest + b"|rr9")
    assert sync.owned_state(redis_client, "acme", "mailchimp", "p1") == OwnedState(remote_id="r9")
    esp = RecordingEsp()
    assert flusher(redis_client, acct, esp).flush(NOW + timedelta(seconds=1)) == {"unchanged": 1}
    assert not redis_client.exists(BASE)
    [raw] = applied.read(redis_client, BASE, ["p1"])
    assert raw == b"2~" + digest[:6] + b"|e" + contact_key("p1@example.com").encode() + b";rr9"
    long = b"3~abcdef|t" + b",".join(str(n).encode() for n in range(40))
    run_script(redis_client, _SET, [BASE], ["p1", applied.pack_pid("p1"), long])
    assert redis_client.hget(BASE, "p1") == long and _buckets(redis_client) == []
    assert redis_client.get(BASE + applied.STATE_SUFFIX) == b"0 0 0 1"  # the hash of before is read again
    assert sync.applied_version(redis_client, "acme", "mailchimp", "p1") == 3
