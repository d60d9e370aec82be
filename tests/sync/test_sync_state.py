"""The applied state per contact and destination: one compact hash field (version, 8-byte digest,
ownership ledger with coded names), and the state stored before the compact form still read."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import redis

from adapters.change import OwnedState
from connector import sync
from connector.sync.keys import Applied, decode_applied, state_digest
from tests.sync.test_sync_worker import NOW, RecordingEsp, account, flusher, submit


def test_applied_state_is_one_small_field_with_coded_names(redis_client: redis.Redis, tmp_path: Path) -> None:
    acct = account(tmp_path)
    submit(redis_client, acct, "p1", 1, ["cart_abandoner", "vip"], traits={"ltv": 42})
    esp = RecordingEsp()
    assert flusher(redis_client, acct, esp).flush(NOW + timedelta(seconds=1)) == {"applied": 1}
    raw = redis_client.hget(sync.key("acme", "mailchimp", "applied"), "p1")
    assert raw is not None and raw.startswith(b"1#") and len(raw) < 40, raw
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
    assert sync.owned_state(redis_client, "acme", "mailchimp", "p1") == OwnedState.from_dict(old_owned)
    assert sync.applied_version(redis_client, "acme", "mailchimp", "p1") == 2
