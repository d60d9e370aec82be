"""Reading profiles back: the profiles an evaluation loads are the full decode's, field by field."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import redis

from connector.config import Accounts
from connector.profiles import keys, lookup, store
from connector.profiles.store import NameCodes, load_profiles, name_codes, read_profiles, to_rules_profile
from tests.helpers import before_sent, script_call
from tests.profile_helpers import NOW, T0, apply, ev


def test_the_profiles_an_evaluation_loads_are_the_full_decode(
    redis_client: redis.Redis, accounts: Accounts
) -> None:
    apply(
        redis_client,
        accounts,
        ev("1", "order_completed", at=3, email="Ann@Example.com", props={"total": 12.5, "n": 2, "vip": True}),
        ev(
            "2", "product_viewed", at=1, email="ann@example.com", props={"sku": "a\u00e9", "tags": ["x", "y"]}
        ),
        ev(
            "3",
            "identify",
            type="identify",
            at=2,
            email="ann@example.com",
            user_id="u1",
            traits={"plan": "pro"},
        ),
        ev(
            "4", "identify", type="identify", at=5, user_id="u1", traits={"plan": "max", "age": 41, "x": None}
        ),
        ev("5", "product_viewed", at=4, anonymous_id="v1"),
        ev("6", "page", type="page", at=0, user_id="u1", props={"path": "/"}),
    )
    apply(redis_client, accounts, ev("7", "product_viewed", at=-30, user_id="u1"))  # late: sorted in
    pids = sorted(
        {
            p
            for p in (
                lookup(redis_client, "acme", "user_id", "u1"),
                lookup(redis_client, "acme", "anonymous_id", "v1"),
            )
            if p
        }
    )
    pids.append("nobody")
    loaded = load_profiles(redis_client, "acme", pids, NOW)
    full = read_profiles(redis_client, name_codes(redis_client), "acme", pids)
    assert loaded["nobody"] is None and full["nobody"] is None
    for pid in pids[:-1]:
        data = full[pid]
        assert data is not None and loaded[pid] == to_rules_profile(data)
    person = loaded[lookup(redis_client, "acme", "user_id", "u1") or ""]
    assert person is not None
    assert person.traits == {"age": 41, "plan": "max", "x": None}
    assert [e.name for e in person.events][:2] == ["product_viewed", "page"]
    assert len(person.events) == 4 and person.revision > 0


def test_a_batch_of_one_person_keeps_the_first_and_last_occurrences_and_the_newest_traits(
    redis_client: redis.Redis, accounts: Accounts
) -> None:
    """Many events of one profile in one script call: each name's first and last occurrence, each
    trait's value from the newest event (whatever the order they come in) and every identify id
    once, as event by event."""
    apply(
        redis_client,
        accounts,
        ev("a", "product_viewed", at=5, user_id="u1", traits={"plan": "b"}),
        ev("b", "product_viewed", at=1, user_id="u1", traits={"plan": "a", "tier": 1}),
        ev("c", "product_viewed", at=9, user_id="u1"),
        ev("d", "order_completed", at=7, user_id="u1", traits={"plan": "c"}),
        ev("e", "identify", type="identify", at=2, user_id="u1", traits={"tier": 2}),
        ev("f", "identify", type="identify", at=3, user_id="u1"),
    )
    apply(
        redis_client,
        accounts,
        ev("g", "product_viewed", at=-5, user_id="u1", traits={"plan": "old", "tier": 0}),
        ev("e", "identify", type="identify", at=2, user_id="u1", traits={"tier": 2}),  # again
        ev("h", "order_completed", at=8, user_id="u1", traits={"tier": 3}),
    )
    pid = lookup(redis_client, "acme", "user_id", "u1")
    assert pid is not None
    data = read_profiles(redis_client, name_codes(redis_client), "acme", [pid])[pid]
    assert data is not None
    start = T0
    assert data.first_seen == {
        "product_viewed": start + timedelta(minutes=-5),
        "order_completed": start + timedelta(minutes=7),
    }
    assert data.last_seen == {
        "product_viewed": start + timedelta(minutes=9),
        "order_completed": start + timedelta(minutes=8),
    }
    assert data.traits == {"plan": "c", "tier": 3}
    assert data.trait_times["plan"] == start + timedelta(minutes=7)
    assert len(data.other_event_ids) == 2 and len(set(data.other_event_ids)) == 2


def test_events_of_one_instant_load_in_event_id_order_with_every_kind_of_property(
    redis_client: redis.Redis, accounts: Accounts
) -> None:
    """The loaded history is in (occurred_at, event id) order whatever order the events came in,
    at millisecond precision, and each compact property type reads back as it was sent."""
    at = T0 + timedelta(milliseconds=1234)
    props = {"s": "text", "i": 0, "f": 2.5, "t": True, "n": False, "neg": -7}
    apply(redis_client, accounts, *[ev(sid, at=at, user_id="u1", props=props) for sid in "qwertyuiop"])
    pid = lookup(redis_client, "acme", "user_id", "u1") or ""
    person = load_profiles(redis_client, "acme", [pid], NOW)[pid]
    assert person is not None and len(person.events) == 10
    assert [e.event_id for e in person.events] == sorted(e.event_id for e in person.events)
    assert {e.occurred_at for e in person.events} == {at}
    for record in person.events:
        assert dict(record.properties) == props
        assert [type(v) for v in record.properties.values()] == [type(props[k]) for k in record.properties]


def _before_the_codes_script(monkeypatch: pytest.MonkeyPatch, conn: redis.Redis, meanwhile: Any) -> None:
    """Run ``meanwhile()`` once, just before the names dictionary's script is next sent (what
    another lane or process does while this one waits for Redis)."""
    before_sent(monkeypatch, [script_call(conn, store._CODES)], meanwhile)


def test_codes_answered_while_another_thread_drops_the_cache(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another drain lane that finds the dictionary's generation changed replaces the cache while
    this lane waits for Redis: the codes this lane read are answered, and go to the cache it had."""
    names = NameCodes(redis_client)
    before = names.codes("acme", {"order_completed"})
    _before_the_codes_script(monkeypatch, redis_client, lambda: names.check("acme", b"another generation"))
    both = names.codes("acme", {"order_completed", "cart_viewed"}, checked=True)
    assert both["order_completed"] == before["order_completed"]
    assert both["cart_viewed"] == redis_client.hget(keys.names_key("acme"), "n:cart_viewed").decode()
    assert both["cart_viewed"] != both["order_completed"]
    assert ("acme", "cart_viewed") not in names._codes  # not kept as another generation's code


def test_codes_of_a_dictionary_replaced_while_read_are_read_again(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store is wiped while this lane reads its codes, and another process codes a name in the
    new dictionary first: the codes answered all come from the new dictionary (none of the old
    cache mixed in, which could give two names one code)."""
    names = NameCodes(redis_client)
    names.codes("acme", {"order_completed"})

    def wiped_and_coded_by_another() -> None:
        redis_client.delete(keys.names_key("acme"))
        NameCodes(redis_client).codes("acme", {"cart_viewed"})

    _before_the_codes_script(monkeypatch, redis_client, wiped_and_coded_by_another)
    both = names.codes("acme", {"order_completed", "cart_viewed"})
    stored = {n: redis_client.hget(keys.names_key("acme"), f"n:{n}") for n in both}
    assert both == {n: code.decode() for n, code in stored.items() if code is not None}
    assert both["order_completed"] != both["cart_viewed"]
    assert names.codes("acme", {"order_completed", "cart_viewed"}, checked=True) == both


def test_new_codes_count_in_base_36(redis_client: redis.Redis) -> None:
    names = NameCodes(redis_client)
    wanted = [f"event_{n:02d}" for n in range(40)]
    for name in wanted:  # one at a time: the codes follow the order asked
        names.codes("acme", {name})
    codes = names.codes("acme", set(wanted), checked=True)
    assert [codes[name] for name in wanted] == [store.base36(n) for n in range(1, 41)]
    assert all(names.name("acme", codes[name]) == name for name in wanted)
