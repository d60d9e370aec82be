"""Profile store: traits, history, idempotence, retention, order independence, the rules interface."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from unittest import mock

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import connector.profiles.apply as apply_module
from connector.config import load_accounts
from connector.profiles import iter_profile_ids, load_profile, lookup
from connector.profiles.erasure import export_profile
from tests.conftest import ACME, write_accounts
from tests.profile_helpers import NOW, T0, apply, ev


def test_latest_trait_by_occurred_at_wins(redis_client, accounts) -> None:
    apply(
        redis_client,
        accounts,
        ev("2", "identify", type="identify", at=10, user_id="u1", traits={"plan": "pro"}),
    )
    apply(
        redis_client,
        accounts,
        ev("1", "identify", type="identify", at=5, user_id="u1", traits={"plan": "free", "x": 1}),
    )
    profile = load_profile(redis_client, "acme", lookup(redis_client, "acme", "user_id", "u1"), NOW)
    assert profile is not None
    assert profile.traits == {"plan": "pro", "x": 1}


def test_applying_a_batch_twice_has_no_double_effect(redis_client, accounts) -> None:
    batch = [
        ev(str(i), "order_completed" if i % 3 else "product_viewed", at=i, user_id="u1") for i in range(20)
    ]
    first = apply(redis_client, accounts, *batch)
    second = apply(redis_client, accounts, *batch)
    assert (first.applied, first.duplicates) == (20, 0)
    assert (second.applied, second.duplicates) == (0, 20)
    profile = load_profile(redis_client, "acme", lookup(redis_client, "acme", "user_id", "u1"), NOW)
    assert profile is not None and len(profile.events) == 20
    assert [e.occurred_at for e in profile.events] == sorted(e.occurred_at for e in profile.events)


def test_retention_by_count_and_age(redis_client, tmp_path: Path, monkeypatch) -> None:
    for key, value in {
        "ACME_SEGMENT_SECRET": "segment_shared_secret_123",
        "ACME_SEGMENT_SECRET_OLD": "segment_previous_secret_456",
        "ACME_WRITE_KEY": "acme-write-key-7f3a",
    }.items():
        monkeypatch.setenv(key, value)
    account = {
        "account": "acme",
        "senders": {"segment": ACME["senders"]["segment"]},
        "retention": {"max_age_days": 30, "max_events": 5},
    }
    directory = write_accounts(tmp_path / "acc", account)
    monkeypatch.setenv("CONNECTOR_CONFIG_DIR", str(directory))
    accounts = load_accounts(directory)
    now = T0 + timedelta(days=40)
    old = [ev(f"old{i}", at=i, user_id="u1") for i in range(3)]  # 40 days old: beyond 30 days
    recent = [ev(f"new{i}", at=T0 + timedelta(days=20, minutes=i), user_id="u1") for i in range(8)]
    outcome = apply(redis_client, accounts, *old, *recent, now=now)
    assert (outcome.applied, outcome.expired) == (8, 3)
    assert outcome.history_dropped == 3  # over max_events: removed, and counted
    assert redis_client.hget("metrics:dropped", "profile_history") == b"3"
    profile = load_profile(redis_client, "acme", lookup(redis_client, "acme", "user_id", "u1"), now)
    assert profile is not None
    assert [e.occurred_at for e in profile.events] == [e.occurred_at for e in recent[-5:]]
    # a compressed history is opened to apply the retention, then compressed again
    with mock.patch.object(apply_module, "COMPRESS_AT", 1):
        apply(redis_client, accounts, ev("newer", at=T0 + timedelta(days=21), user_id="u1"), now=now)
        outcome = apply(
            redis_client, accounts, ev("newest", at=T0 + timedelta(days=22), user_id="u1"), now=now
        )
    assert (outcome.applied, outcome.history_dropped) == (1, 1)
    profile = load_profile(redis_client, "acme", lookup(redis_client, "acme", "user_id", "u1"), now)
    assert profile is not None and len(profile.events) == 5
    assert profile.events[-1].occurred_at == T0 + timedelta(days=22)


def _state(conn: redis.Redis) -> list[dict]:
    docs = []
    for pid in iter_profile_ids(conn, "acme"):
        doc = export_profile(conn, "acme", pid)
        assert doc is not None
        doc.pop("profile_id")
        docs.append(doc)
    return sorted(docs, key=repr)


def _stream() -> list:
    events = []
    for i in range(12):
        who = i % 3
        events.append(
            ev(f"p{i}", "product_viewed", at=i, anonymous_id=f"anon{who}", props={"sku": f"s{i}", "n": i})
        )
    events.append(
        ev(
            "id0",
            "identify",
            type="identify",
            at=4,
            anonymous_id="anon0",
            user_id="u0",
            email="e0@example.com",
            traits={"plan": "a"},
        )
    )
    events.append(ev("id0b", "identify", type="identify", at=9, user_id="u0", traits={"plan": "b"}))
    events.append(ev("o1", "order_completed", at=7, email="e0@example.com", props={"total": 10.5}))
    events.append(ev("link1", "cart_viewed", at=8, anonymous_id="anon1", email="e1@example.com"))
    events.append(ev("u1", "order_completed", at=3, email="e1@example.com", user_id="u1"))
    return events


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(min_value=0, max_value=10**6), batch=st.integers(min_value=1, max_value=6))
def test_shuffled_events_give_equal_profiles(redis_client, accounts, seed: int, batch: int) -> None:
    _shuffled_give_equal_profiles(redis_client, accounts, seed, batch)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(min_value=0, max_value=10**6), batch=st.integers(min_value=1, max_value=6))
def test_shuffled_events_give_equal_profiles_with_every_history_compressed(
    redis_client, accounts, seed: int, batch: int
) -> None:
    """Every write compresses the history it leaves: late events, duplicates and merges all go
    through opening a compressed history."""
    with mock.patch.object(apply_module, "COMPRESS_AT", 1):
        _shuffled_give_equal_profiles(redis_client, accounts, seed, batch)
    compressed = [k for k in redis_client.scan_iter("h:*") if redis_client.getrange(k, 0, 0) == b"\xff"]
    assert len(compressed) == 3


def _shuffled_give_equal_profiles(redis_client, accounts, seed: int, batch: int) -> None:
    redis_client.flushdb()
    ordered = sorted(_stream(), key=lambda e: e.occurred_at)
    for i in range(0, len(ordered), 4):
        apply(redis_client, accounts, *ordered[i : i + 4])
    expected = _state(redis_client)
    redis_client.flushdb()
    shuffled = list(ordered)
    random.Random(seed).shuffle(shuffled)
    for i in range(0, len(shuffled), batch):
        apply(redis_client, accounts, *shuffled[i : i + batch])
    assert _state(redis_client) == expected
    assert len(expected) == 3


def test_load_profile_and_iterate_profile_ids(redis_client, accounts) -> None:
    apply(
        redis_client,
        accounts,
        *[ev(str(i), at=-i, user_id=f"u{i % 4}", props={"sku": str(i)}) for i in range(12)],
    )
    pids = sorted(iter_profile_ids(redis_client, "acme"))
    assert len(pids) == 4
    profile = load_profile(redis_client, "acme", pids[0], NOW)
    assert profile is not None and len(profile.events) == 3
    keys = [(e.occurred_at, e.event_id) for e in profile.events]
    assert keys == sorted(keys)
    assert profile.events_named("product_viewed")[0].properties["sku"]
    assert load_profile(redis_client, "acme", "missing", NOW) is None


def test_profile_keys_share_a_hash_tag(redis_client, accounts) -> None:
    apply(redis_client, accounts, ev("1", user_id="u1"))
    pid = lookup(redis_client, "acme", "user_id", "u1")
    own = sorted(k.decode() for k in redis_client.keys(f"*{pid}*"))
    assert {f"h:{{acme:{pid}}}", f"p:{{acme:{pid}}}"} <= set(own)
    assert all(f"{{acme:{pid}}}" in k for k in own)
    profile_store = [
        k.decode() for k in redis_client.keys("*") if not k.startswith((b"metrics", b"due", b"q:"))
    ]
    assert all(":acme" in k or "{acme" in k for k in profile_store), profile_store


def test_names_past_the_accounts_cap_are_refused_and_counted(redis_client, accounts) -> None:
    """Made-up event names and property keys cannot grow the account's dictionary past its cap: a
    new event name is rejected with its reason, a new property key is not kept (counted); names
    already known keep working."""
    from connector.profiles import rejected
    from connector.profiles.store import MAX_ACCOUNT_NAMES, name_codes

    assert name_codes(redis_client).cap == MAX_ACCOUNT_NAMES == 10_000
    codes = name_codes(redis_client)
    codes.cap = 4
    try:
        first = apply(redis_client, accounts, ev("1", "product_viewed", user_id="u1", props={"sku": "A1"}))
        assert first.applied == 1  # two codes: the name and @sku
        second = apply(
            redis_client,
            accounts,
            ev("2", "order_completed", at=1, user_id="u1", props={"total": 5, "coupon": "X"}),
            ev("3", "made_up_1", at=2, user_id="u1"),
            ev("4", "product_viewed", at=3, user_id="u1", props={"sku": "B2", "size": "M"}),
        )
        # event names are coded before property keys: made_up_1 and order_completed take the last
        # two codes; @coupon, @size and @total get none
        assert (second.applied, second.rejected, second.unnamed_properties) == (3, 0, 3)
        assert redis_client.hget("metrics:dropped", "property_names") == b"3"
        third = apply(redis_client, accounts, ev("5", "made_up_2", at=4, user_id="u1"))
        assert (third.applied, third.rejected) == (0, 1)
        reasons = [(r.event.get("name"), r.reason) for r in rejected.latest(redis_client, "acme", 10)]
        assert reasons == [
            (
                "made_up_2",
                "event name `made_up_2` is new and the account has used up its 4 event names and "
                'property keys (docs/profiles.md, "Names")',
            )
        ]
        profile = load_profile(redis_client, "acme", lookup(redis_client, "acme", "user_id", "u1"), NOW)
        assert profile is not None
        assert [(e.name, e.properties) for e in profile.events] == [
            ("product_viewed", {"sku": "A1"}),
            ("order_completed", {}),
            ("made_up_1", {}),
            ("product_viewed", {"sku": "B2"}),
        ]
        assert int(redis_client.hget("names:acme", "#seq")) == 4
    finally:
        codes.cap = MAX_ACCOUNT_NAMES


def test_a_profile_keeps_at_most_max_traits_and_counts_the_rest(redis_client, accounts, monkeypatch) -> None:
    """One identify with more traits than a profile keeps (anyone with the public write key can send
    one): the traits past the cap are not kept and are counted; the traits kept still take new values;
    a merge brings no trait past the cap either."""
    from connector.profiles.store import MAX_TRAITS

    assert MAX_TRAITS == 1_000
    many = {f"t{n:04d}": n for n in range(MAX_TRAITS + 250)}
    outcome = apply(redis_client, accounts, ev("1", "identify", type="identify", user_id="u1", traits=many))
    assert outcome.untraited == 250
    assert redis_client.hget("metrics:dropped", "profile_traits") == b"250"
    pid = lookup(redis_client, "acme", "user_id", "u1")
    profile = load_profile(redis_client, "acme", pid, NOW)
    assert profile is not None and len(profile.traits) == MAX_TRAITS
    # a kept trait takes a new value; a new one is still refused
    later = {"t0000": "changed", "brand_new": 1}
    outcome = apply(
        redis_client, accounts, ev("2", "identify", type="identify", at=1, user_id="u1", traits=later)
    )
    assert outcome.untraited == 1
    profile = load_profile(redis_client, "acme", pid, NOW)
    assert profile is not None and profile.traits["t0000"] == "changed" and "brand_new" not in profile.traits
    # an anonymous visitor with traits of its own, then identified as u1: merged, no trait past the cap
    apply(
        redis_client,
        accounts,
        ev("3", "identify", type="identify", at=2, anonymous_id="a9", traits={"x9": 1}),
    )
    apply(redis_client, accounts, ev("4", "identify", type="identify", at=3, anonymous_id="a9", user_id="u1"))
    profile = load_profile(redis_client, "acme", lookup(redis_client, "acme", "user_id", "u1"), NOW)
    assert profile is not None and len(profile.traits) == MAX_TRAITS and "x9" not in profile.traits
