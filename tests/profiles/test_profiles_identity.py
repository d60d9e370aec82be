"""Identity resolution: stitching, merges, conflicts, blocked values, rejected events."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime

import pytest
import redis

from connector.config import Accounts
from connector.event import Event
from connector.profiles import keys, load_profile, lookup
from connector.profiles import rejected as rejected_log
from connector.profiles.identity import usable_identities
from tests.profile_helpers import NOW, apply, ev


def _profile(conn: redis.Redis, kind: str, value: str):  # type: ignore[no-untyped-def]
    pid = lookup(conn, "acme", kind, value)
    assert pid is not None, f"no profile for {kind}={value}"
    profile = load_profile(conn, "acme", pid, NOW)
    assert profile is not None
    return profile


def test_identify_merges_anonymous_history_into_known_profile(redis_client, accounts: Accounts) -> None:
    apply(redis_client, accounts, ev("1", anonymous_id="anon-1"), ev("2", at=1, anonymous_id="anon-1"))
    apply(
        redis_client,
        accounts,
        ev(
            "3",
            "identify",
            type="identify",
            at=2,
            anonymous_id="anon-1",
            user_id="u1",
            email=" Ann@Example.COM ",
        ),
    )
    apply(redis_client, accounts, ev("4", "order_completed", at=3, user_id="u1"))
    profile = _profile(redis_client, "email", "ann@example.com")
    assert [e.name for e in profile.events] == ["product_viewed", "product_viewed", "order_completed"]
    assert profile.identities == {
        "anonymous_id": ("anon-1",),
        "email": ("ann@example.com",),
        "user_id": ("u1",),
    }
    assert lookup(redis_client, "acme", "anonymous_id", "anon-1") == profile.profile_id


def test_event_with_anonymous_and_known_identity_merges_two_existing_profiles(redis_client, accounts) -> None:
    apply(redis_client, accounts, ev("1", anonymous_id="a1"), ev("2", at=1, email="bo@example.com"))
    assert lookup(redis_client, "acme", "anonymous_id", "a1") != lookup(
        redis_client, "acme", "email", "bo@example.com"
    )
    apply(redis_client, accounts, ev("3", at=2, anonymous_id="a1", email="bo@example.com"))
    profile = _profile(redis_client, "anonymous_id", "a1")
    assert profile.profile_id == lookup(redis_client, "acme", "email", "bo@example.com")
    assert len(profile.events) == 3
    # merging is idempotent: the same linking event again changes nothing
    apply(redis_client, accounts, ev("3", at=2, anonymous_id="a1", email="bo@example.com"))
    assert len(_profile(redis_client, "anonymous_id", "a1").events) == 3


def test_profiles_with_different_user_ids_are_never_merged(redis_client, accounts) -> None:
    apply(redis_client, accounts, ev("1", user_id="u1", email="shared@example.com", anonymous_id="device"))
    outcome = apply(
        redis_client, accounts, ev("2", at=1, user_id="u2", email="shared@example.com", anonymous_id="device")
    )
    first = _profile(redis_client, "user_id", "u1")
    second = _profile(redis_client, "user_id", "u2")
    assert first.profile_id != second.profile_id
    assert first.identities["email"] == ("shared@example.com",)
    assert "email" not in second.identities
    assert len(first.events) == 1 and len(second.events) == 1
    assert outcome.applied == 1
    assert redis_client.xlen("conflicts:acme") >= 1


def test_a_device_id_alone_never_joins_two_customers_who_each_have_an_email(redis_client, accounts) -> None:
    # two customers the shop knows, each with an order
    apply(redis_client, accounts, ev("1", "order_completed", email="alice@example.com"))
    apply(redis_client, accounts, ev("2", "order_completed", at=1, email="bob@example.com"))
    # anyone holding the public write key names one device with each email in turn
    apply(
        redis_client,
        accounts,
        ev("3", "identify", type="identify", at=2, anonymous_id="dev", email="alice@example.com"),
    )
    outcome = apply(
        redis_client,
        accounts,
        ev("4", "product_viewed", at=3, anonymous_id="dev", email="bob@example.com"),
    )
    alice = _profile(redis_client, "email", "alice@example.com")
    bob = _profile(redis_client, "email", "bob@example.com")
    assert alice.profile_id != bob.profile_id
    assert alice.identities == {"anonymous_id": ("dev",), "email": ("alice@example.com",)}
    assert bob.identities == {"email": ("bob@example.com",)}
    assert [e.name for e in bob.events] == ["order_completed", "product_viewed"]
    assert outcome.applied == 1 and redis_client.xlen("conflicts:acme") == 1
    # a device whose profile has no email still joins the customer it identifies as
    apply(redis_client, accounts, ev("5", at=4, anonymous_id="dev2"))
    apply(
        redis_client,
        accounts,
        ev("6", "identify", type="identify", at=5, anonymous_id="dev2", email="bob@example.com"),
    )
    assert lookup(redis_client, "acme", "anonymous_id", "dev2") == bob.profile_id
    assert len(_profile(redis_client, "email", "bob@example.com").events) == 3


@pytest.mark.parametrize("one_batch", [False, True])
def test_merge_protection_holds_in_one_batch_and_when_the_device_s_profile_has_a_user_id(
    redis_client, accounts, one_batch: bool
) -> None:
    apply(redis_client, accounts, ev("1", "order_completed", user_id="u-alice", email="alice@example.com"))
    apply(redis_client, accounts, ev("2", "order_completed", at=1, email="bob@example.com"))
    calls = [
        ev("3", "identify", type="identify", at=2, anonymous_id="dev", email="alice@example.com"),
        ev("4", "product_viewed", at=3, anonymous_id="dev", email="bob@example.com"),
        ev("5", "identify", type="identify", at=4, anonymous_id="dev2", email="mallory@example.com"),
        ev("6", "product_viewed", at=5, anonymous_id="dev2", email="bob@example.com"),
    ]
    for batch in [calls] if one_batch else [[c] for c in calls]:
        apply(redis_client, accounts, *batch)
    owners = {
        e: lookup(redis_client, "acme", "email", f"{e}@example.com") for e in ("alice", "bob", "mallory")
    }
    assert len(set(owners.values())) == 3, owners
    # the events naming bob went to bob's profile, not to the device's
    assert [e.name for e in _profile(redis_client, "email", "bob@example.com").events] == [
        "order_completed",
        "product_viewed",
        "product_viewed",
    ]


def test_blocked_values_never_link(redis_client, accounts) -> None:
    apply(redis_client, accounts, ev("1", anonymous_id="null", email="c1@example.com"))
    apply(redis_client, accounts, ev("2", anonymous_id="null", email="c2@example.com"))
    assert lookup(redis_client, "acme", "email", "c1@example.com") != lookup(
        redis_client, "acme", "email", "c2@example.com"
    )
    assert lookup(redis_client, "acme", "anonymous_id", "null") is None
    assert usable_identities(
        {"user_id": " 0 ", "email": "UNKNOWN", "anonymous_id": "x"}, frozenset({"0", "unknown"})
    ) == {"anonymous_id": "x"}


def test_event_without_usable_identity_is_rejected_and_kept_with_reason(redis_client, accounts) -> None:
    outcome = apply(
        redis_client, accounts, ev("1", user_id="undefined"), ev("2"), ev("3", at=1, user_id="u9")
    )
    assert outcome.rejected == 2 and outcome.applied == 1
    reasons = sorted(r.reason for r in rejected_log.latest(redis_client, "acme"))
    assert reasons == ["no identity", "no usable identity (only blocked or unsupported identity values)"]
    assert int(redis_client.hget("metrics:worker", "rejected:acme")) == 2


def test_source_and_esp_ids_find_the_profile(redis_client, accounts) -> None:
    apply(redis_client, accounts, ev("1", email="d@example.com", shopify_customer_id="777"))
    apply(
        redis_client, accounts, ev("2", "email_opened", at=1, klaviyo_profile_id="01K", email="d@example.com")
    )
    apply(redis_client, accounts, ev("3", "order_completed", at=2, shopify_customer_id="777"))
    profile = _profile(redis_client, "klaviyo_profile_id", "01K")
    assert [e.name for e in profile.events] == ["product_viewed", "email_opened", "order_completed"]


def test_alias_links_previous_id(redis_client, accounts) -> None:
    apply(redis_client, accounts, ev("1", anonymous_id="old-anon"))
    apply(redis_client, accounts, ev("2", "alias", type="alias", at=1, user_id="u5", previous_id="old-anon"))
    profile = _profile(redis_client, "user_id", "u5")
    assert len(profile.events) == 1
    assert profile.identities["anonymous_id"] == ("old-anon",)


def test_unknown_account_and_odd_values_do_not_crash(redis_client, accounts) -> None:
    outcome = apply(
        redis_client,
        accounts,
        ev(
            "1",
            user_id="u1",
            props={"nested": {"a": 1}, "nan": float("nan"), "ok": True},
            traits={"set": {1}},
        ),
        ev("2", user_id="x" * 600, at=1),
        ev("4", user_id="u1", at=datetime(1969, 12, 31, tzinfo=UTC)),
    )
    assert outcome.applied == 1 and outcome.rejected == 2
    profile = _profile(redis_client, "user_id", "u1")
    assert profile.events[0].properties == {"ok": True}
    outcome = apply(redis_client, accounts, ev("3", account="nobody", user_id="u1"))
    assert [r.reason for r in rejected_log.latest(redis_client, "nobody")] == ["unknown account"]


def test_an_event_redirected_by_an_unfinished_merge_is_counted_once(redis_client, accounts) -> None:
    """A worker meets a profile marked as merged whose data is not yet in the survivor (the merging
    worker is between its mark and its copy, or died there): it waits for the merge, so an event
    already in the absorbed profile counts as a duplicate, not as applied a second time."""
    apply(redis_client, accounts, ev("1", anonymous_id="a9"), ev("2", at=1, email="eve@example.com"))
    absorbed = lookup(redis_client, "acme", "anonymous_id", "a9")
    survivor = lookup(redis_client, "acme", "email", "eve@example.com")
    assert absorbed and survivor and absorbed != survivor
    redis_client.hset(keys.profile_key("acme", absorbed), "m", survivor)  # marked, data not copied yet
    outcome = apply(redis_client, accounts, ev("1", anonymous_id="a9"))
    assert (outcome.applied, outcome.duplicates) == (0, 1)
    profile = _profile(redis_client, "anonymous_id", "a9")
    assert profile.profile_id == survivor
    assert [e.name for e in profile.events] == ["product_viewed", "product_viewed"]
    assert not redis_client.exists(keys.history_key("acme", absorbed))


def test_new_people_of_one_batch_get_distinct_random_ids(redis_client, accounts) -> None:
    # more new people than one draw of random bytes covers (64 ids)
    apply(redis_client, accounts, *[ev(str(n), anonymous_id=f"visitor-{n}") for n in range(150)])
    pids = [lookup(redis_client, "acme", "anonymous_id", f"visitor-{n}") for n in range(150)]
    assert len(set(pids)) == 150
    assert all(pid is not None and re.fullmatch(r"[0-9a-f]{16}", pid) for pid in pids)


@pytest.mark.parametrize("one_batch", [False, True])
def test_a_new_email_is_not_attached_to_a_customer_through_their_device(
    redis_client, accounts, one_batch: bool
) -> None:
    """With only the public write key: claim a customer's email on a device of one's own (which
    links the device to the customer, as any identify does), then send a new address with that
    device. The new address must not join the customer's profile: it would receive the customer's
    segments and fields, and an access or erasure request for it would reach the customer."""
    apply(
        redis_client,
        accounts,
        ev(
            "1",
            "identify",
            type="identify",
            user_id="cust-42",
            anonymous_id="laptop",
            email="alice@example.com",
        ),
        ev("2", "order_completed", at=1, user_id="cust-42"),
    )
    calls = [
        ev("3", "identify", type="identify", at=2, anonymous_id="dev", email="alice@example.com"),
        ev("4", "identify", type="identify", at=3, anonymous_id="dev", email="mallory@example.com"),
    ]
    for batch in [calls] if one_batch else [[c] for c in calls]:
        apply(redis_client, accounts, *batch)
    alice = _profile(redis_client, "email", "alice@example.com")
    mallory = _profile(redis_client, "email", "mallory@example.com")
    assert alice.profile_id != mallory.profile_id
    assert alice.identities == {
        "anonymous_id": ("dev", "laptop"),
        "email": ("alice@example.com",),
        "user_id": ("cust-42",),
    }
    assert mallory.identities == {"email": ("mallory@example.com",)}
    assert [e.name for e in alice.events] == ["order_completed"]
    assert redis_client.xlen("conflicts:acme") == 1  # the device's profile was not merged: recorded
    # an anonymous visitor's device (no email yet) still takes the email it identifies with
    apply(redis_client, accounts, ev("5", at=4, anonymous_id="visitor"))
    apply(
        redis_client,
        accounts,
        ev("6", "identify", type="identify", at=5, anonymous_id="visitor", email="carol@example.com"),
    )
    carol = _profile(redis_client, "email", "carol@example.com")
    assert carol.identities == {"anonymous_id": ("visitor",), "email": ("carol@example.com",)}
    assert [e.name for e in carol.events] == ["product_viewed"]


def public(event: Event) -> Event:
    """The event as the tracking API (the account's public write key) stores it."""
    from connector.ingest import tracking

    return replace(event, source=tracking.SOURCE)


def test_the_public_write_key_never_joins_two_customers_who_each_have_an_email(
    redis_client, accounts
) -> None:
    """``identify(userId: X, email: alice)`` then ``(X, email: bob)`` through the tracking API (whose
    write key is public): alice's and bob's profiles stay apart; the same two calls from a signed
    sender merge them, as on Segment."""
    from connector.event import PUBLIC_SOURCES
    from connector.ingest import tracking

    assert tracking.SOURCE in PUBLIC_SOURCES

    orders = [
        ev(
            "o1",
            "order_completed",
            at=0,
            props={"revenue": 500.0},
            email="alice@example.com",
            anonymous_id="da",
        ),
        ev(
            "o2",
            "order_completed",
            at=1,
            props={"revenue": 500.0},
            email="bob@example.com",
            anonymous_id="db",
        ),
    ]
    apply(redis_client, accounts, *orders)
    alice, bob = (lookup(redis_client, "acme", "email", f"{n}@example.com") for n in ("alice", "bob"))
    claim = ev("x1", "identify", type="identify", at=2, user_id="evil-1", email="alice@example.com")
    second = ev("x2", "identify", type="identify", at=3, user_id="evil-1", email="bob@example.com")
    outcome = apply(redis_client, accounts, public(claim), public(second))
    assert outcome.rejected == 0
    assert lookup(redis_client, "acme", "email", "bob@example.com") == bob != alice
    assert lookup(redis_client, "acme", "user_id", "evil-1") == alice
    assert _profile(redis_client, "email", "bob@example.com").identities["email"] == ("bob@example.com",)
    assert [e.name for e in _profile(redis_client, "email", "bob@example.com").events] == ["order_completed"]
    [entry] = [fields for _, fields in redis_client.xrange(keys.conflicts_key("acme"))]
    assert {entry[b"profile"].decode(), entry[b"other"].decode()} == {alice, bob}

    # a new visitor logging in through the same API still joins the customer's profile
    apply(redis_client, accounts, ev("e1", "order_completed", at=4, email="erin@example.com"))
    apply(redis_client, accounts, public(ev("v1", at=4, anonymous_id="dc")))
    login = ev(
        "v2",
        "identify",
        type="identify",
        at=5,
        user_id="u-erin",
        email="erin@example.com",
        anonymous_id="dc",
    )
    apply(redis_client, accounts, public(login))
    erin = lookup(redis_client, "acme", "email", "erin@example.com")
    assert (
        lookup(redis_client, "acme", "anonymous_id", "dc")
        == erin
        == lookup(redis_client, "acme", "user_id", "u-erin")
    )
    assert sorted(e.name for e in _profile(redis_client, "email", "erin@example.com").events) == [
        "order_completed",
        "product_viewed",
    ]

    # a signed sender's identify is trusted to join two known customers (bob's profile into frank's)
    apply(redis_client, accounts, ev("f0", at=6, user_id="u-frank", email="frank@example.com"))
    apply(
        redis_client,
        accounts,
        ev("f1", "identify", type="identify", at=7, user_id="u-frank", email="bob@example.com"),
    )
    frank = lookup(redis_client, "acme", "user_id", "u-frank")
    assert lookup(redis_client, "acme", "email", "bob@example.com") == frank
    assert lookup(redis_client, "acme", "email", "frank@example.com") == frank


def test_a_user_id_claimed_through_the_public_write_key_gives_way_to_the_customers_own(
    redis_client, accounts
) -> None:
    """``identify(userId: evil, email: carol)`` through the tracking API gives carol's profile that
    user id; carol's own order from a signed sender, with her real user id, still lands on her
    profile (which then has her user id), not on a new one without her email."""
    apply(
        redis_client,
        accounts,
        ev("c1", "order_completed", at=0, props={"revenue": 700.0}, email="carol@example.com"),
    )
    carol = lookup(redis_client, "acme", "email", "carol@example.com")
    claim = ev("x1", "identify", type="identify", at=1, user_id="evil-carol", email="carol@example.com")
    apply(redis_client, accounts, public(claim))
    assert lookup(redis_client, "acme", "user_id", "evil-carol") == carol
    assert redis_client.hmget(keys.profile_key("acme", carol), "uid", "uw") == [b"evil-carol", b"1"]

    own = ev(
        "c2",
        "order_completed",
        at=2,
        props={"revenue": 700.0},
        user_id="real-carol-42",
        email="carol@example.com",
    )
    apply(redis_client, accounts, own)
    assert lookup(redis_client, "acme", "user_id", "real-carol-42") == carol
    assert redis_client.hmget(keys.profile_key("acme", carol), "uid", "uw") == [b"real-carol-42", b"0"]
    assert [e.name for e in _profile(redis_client, "email", "carol@example.com").events] == [
        "order_completed"
    ] * 2

    # her user id is her own now: another claim through the public key makes a profile of its own
    again = ev("x2", "identify", type="identify", at=3, user_id="evil-2", email="carol@example.com")
    apply(redis_client, accounts, public(again))
    assert lookup(redis_client, "acme", "user_id", "evil-2") not in (None, carol)
    assert lookup(redis_client, "acme", "email", "carol@example.com") == carol
    # and a signed sender's user id is never replaced by another signed one
    other = ev("c3", "order_completed", at=4, user_id="someone-else", email="carol@example.com")
    apply(redis_client, accounts, other)
    assert redis_client.hget(keys.profile_key("acme", carol), "uid") == b"real-carol-42"


def test_a_customer_s_user_id_squatted_through_the_public_write_key_never_takes_their_profile(
    redis_client, accounts
) -> None:
    """``identify(userId: real-carol-42, email: mallory)`` through the tracking API first: carol's
    own signed order with that user id goes to her emailed profile, which is not merged into
    mallory's; and after a signed takeover, the replaced provisional id adds no email to her."""
    apply(redis_client, accounts, ev("c1", "order_completed", at=0, email="carol@example.com"))
    carol = lookup(redis_client, "acme", "email", "carol@example.com")
    squat = ev("x1", "identify", type="identify", at=1, user_id="real-carol-42", email="mallory@example.net")
    apply(redis_client, accounts, public(squat))
    mallory = lookup(redis_client, "acme", "email", "mallory@example.net")
    assert lookup(redis_client, "acme", "user_id", "real-carol-42") == mallory != carol
    own = ev("c2", "order_completed", at=2, user_id="real-carol-42", email="carol@example.com")
    apply(redis_client, accounts, own)
    assert lookup(redis_client, "acme", "email", "carol@example.com") == carol
    assert _profile(redis_client, "email", "carol@example.com").identities["email"] == ("carol@example.com",)
    assert [e.name for e in _profile(redis_client, "email", "carol@example.com").events] == [
        "order_completed"
    ] * 2
    assert [e.name for e in _profile(redis_client, "email", "mallory@example.net").events] == []

    # dana: a provisional id replaced by her signed one, then reused through the public key
    apply(redis_client, accounts, ev("d1", "order_completed", at=3, email="dana@example.com"))
    dana = lookup(redis_client, "acme", "email", "dana@example.com")
    claim = ev("x2", "identify", type="identify", at=4, user_id="evil-dana", email="dana@example.com")
    apply(redis_client, accounts, public(claim))
    apply(
        redis_client,
        accounts,
        ev("d2", "order_completed", at=5, user_id="real-dana", email="dana@example.com"),
    )
    assert redis_client.hget(keys.profile_key("acme", dana), "uid") == b"real-dana"
    attach = ev("x3", "identify", type="identify", at=6, user_id="evil-dana", email="mallory2@example.net")
    apply(redis_client, accounts, public(attach))
    assert _profile(redis_client, "email", "dana@example.com").identities["email"] == ("dana@example.com",)
    assert lookup(redis_client, "acme", "email", "mallory2@example.net") not in (None, dana)


def test_a_shopify_cart_without_a_customer_is_kept_on_a_profile_of_its_own(redis_client, accounts) -> None:
    """A cart webhook without a customer carries only the cart's token: its events are stored (not
    rejected for want of an identity) on a profile of their own, apart from any customer's."""
    apply(redis_client, accounts, ev("o1", "order_completed", at=0, email="dora@example.com"))
    dora = lookup(redis_client, "acme", "email", "dora@example.com")
    for n in range(2):
        apply(redis_client, accounts, ev(f"c{n}", "cart_updated", at=1 + n, shopify_cart_token="tok-7f3a"))
    cart = lookup(redis_client, "acme", "shopify_cart_token", "tok-7f3a")
    assert cart is not None and cart != dora
    assert rejected_log.count(redis_client, "acme") == 0
    assert [e.name for e in _profile(redis_client, "shopify_cart_token", "tok-7f3a").events] == [
        "cart_updated"
    ] * 2
