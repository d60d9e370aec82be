"""An erased person stays erased: not by their events still waiting on another stream shard, not
by a replay of their earlier signed events, not by a replayed erasure request wiping the people
who came after it; and no event name of the account keeps one of their identifiers."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis

from connector import clock
from connector.config import Accounts
from connector.ingest.queue import PRIVILEGED_DEDUPE_SECONDS, EventQueue, dedupe_key
from connector.ingest.receivers.segment import sign
from connector.ingest.receivers.shopify import signature as shopify_signature
from connector.profiles import load_profile, lookup
from connector.profiles.keys import names_key
from connector.worker.erasure import EVENT_WAIT_MAX_SECONDS, tombstone_key
from connector.worker.jobs import drain_events
from tests.conftest import ACME_ENV
from tests.ingest.accounts import SHOP, client_with
from tests.profile_helpers import NOW, apply, ev
from tests.test_end_to_end import T0
from tests.worker.test_erasure_leaves_nothing import hits

SEGMENT_SECRET = ACME_ENV["ACME_SEGMENT_SECRET"].encode()
SHOPIFY_SECRET = ACME_ENV["ACME_SHOPIFY_SECRET"].encode()
EMAIL = "victim.person@example.com"
USER = "u-victim-7"


def segment(client: Any, message: dict[str, Any]) -> str:
    body = json.dumps({"timestamp": T0.isoformat(), **message}).encode()
    headers = {"Content-Type": "application/json", "X-Signature": sign(SEGMENT_SECRET, body)}
    answer = client.post("/webhooks/acme/segment", data=body, headers=headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return str(answer.get_json()["status"])


def shopify(client: Any, body: bytes, topic: str, webhook_id: str) -> str:
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Hmac-Sha256": shopify_signature(SHOPIFY_SECRET, body),
        "X-Shopify-Topic": topic,
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-Shop-Domain": SHOP,
    }
    answer = client.post("/webhooks/acme/shopify", data=body, headers=headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return str(answer.get_json()["status"])


def drain_all(conn: redis.Redis, shards: int) -> None:
    for shard in range(shards):
        drain_events(shard, conn=conn)


def shard_of(conn: redis.Redis, shards: int, **identities: str) -> int:
    return EventQueue(conn, shards).shard_for("acme", [ev("x", **identities)])


def test_an_event_waiting_on_another_shard_does_not_recreate_an_erased_person(
    settings: Any, tmp_path: Path, redis_client: redis.Redis
) -> None:
    conn, shards = redis_client, settings.event_shards
    client = client_with(settings, tmp_path / "a", segment={"privileged": ["delete"]})
    delete_shard = shard_of(conn, shards, user_id=USER)
    anon = next(
        a for i in range(100) if shard_of(conn, shards, anonymous_id=(a := f"anon-{i}")) != delete_shard
    )
    other_shard = shard_of(conn, shards, anonymous_id=anon)
    with clock.frozen(T0) as frozen:
        segment(client, {"type": "identify", "userId": USER, "messageId": "x1", "traits": {"email": EMAIL}})
        drain_all(conn, shards)
        assert lookup(conn, "acme", "email", EMAIL) is not None
        # sent before the deletion, routed by its anonymous id to another shard
        segment(client, {"type": "track", "event": "Page Read", "anonymousId": anon, "messageId": "x2",
                         "context": {"traits": {"email": EMAIL.upper()}}})  # fmt: skip
        segment(client, {"type": "delete", "userId": USER, "messageId": "x3"})
        drain_events(delete_shard, conn=conn)
        assert lookup(conn, "acme", "email", EMAIL) is None
        drain_events(other_shard, conn=conn)
        assert lookup(conn, "acme", "email", EMAIL) is None
        assert lookup(conn, "acme", "anonymous_id", anon) is None
        assert conn.hget("metrics:worker", "before_erasure:acme") == b"1"  # counted, not silent
        metrics = client.get("/metrics").get_data(as_text=True)
        assert 'connector_worker_events_total{account="acme",outcome="before_erasure"} 1.0' in metrics
        assert hits(conn, [EMAIL, USER, anon]) == []  # the tombstones are digests
        # the same person coming back later is a new relationship
        frozen.advance(timedelta(minutes=5))
        segment(client, {"type": "track", "event": "Page Read", "anonymousId": anon, "messageId": "x4",
                         "context": {"traits": {"email": EMAIL}}})  # fmt: skip
        drain_all(conn, shards)
        assert lookup(conn, "acme", "email", EMAIL) is not None
        assert conn.hget("metrics:worker", "before_erasure:acme") == b"1"


def test_tombstones_drop_events_received_up_to_the_erasure_and_expire(
    redis_client: redis.Redis, accounts: Accounts
) -> None:
    conn = redis_client
    apply(conn, accounts, ev("1", user_id=USER, email=EMAIL, anonymous_id="anon-tomb"))
    apply(conn, accounts, ev("del", "delete", type="delete", user_id=USER), now=NOW)
    key = tombstone_key("acme", "email", EMAIL)
    acme = accounts.get("acme")
    assert acme is not None
    assert float(conn.get(key) or 0) == NOW.timestamp()
    assert conn.ttl(key) >= EVENT_WAIT_MAX_SECONDS + acme.dedupe_ttl_seconds - 5
    early = ev("2", "order_completed", at=NOW - timedelta(seconds=1), anonymous_id="anon-tomb")
    at_erasure = ev("3", "order_completed", at=NOW, email=" Victim.Person@Example.com")
    alias = ev("4", "alias", type="alias", at=NOW - timedelta(hours=1), user_id="u-new", previous_id=USER)
    someone_else = ev("5", at=NOW - timedelta(hours=1), user_id="u-someone-else")
    outcome = apply(conn, accounts, early, at_erasure, alias, someone_else, now=NOW + timedelta(minutes=1))
    assert outcome.applied == 1
    assert lookup(conn, "acme", "user_id", "u-someone-else") is not None
    for kind, value in (("anonymous_id", "anon-tomb"), ("email", EMAIL), ("user_id", "u-new")):
        assert lookup(conn, "acme", kind, value) is None
    assert conn.hget("metrics:worker", "before_erasure:acme") == b"3"
    later = ev("6", at=NOW + timedelta(seconds=1), email=EMAIL)
    assert apply(conn, accounts, later, now=NOW + timedelta(minutes=1)).applied == 1


def test_shop_redact_drops_every_event_of_the_account_received_before_it(
    redis_client: redis.Redis, accounts: Accounts
) -> None:
    conn = redis_client
    apply(conn, accounts, ev("1", user_id="u1"), ev("2", user_id="u2"))
    assert apply(conn, accounts, ev("redact", "shop_redact", type="delete", at=NOW), now=NOW).erased == 2
    assert conn.exists(tombstone_key("acme"))
    assert not list(conn.scan_iter(tombstone_key("acme", "user_id", "u1")))  # the account's covers them
    queued = ev("3", at=NOW - timedelta(seconds=5), user_id="u3")
    assert apply(conn, accounts, queued, now=NOW + timedelta(seconds=1)).applied == 0
    assert lookup(conn, "acme", "user_id", "u3") is None
    globex = ev("4", account="globex", at=NOW - timedelta(seconds=5), user_id="u3")
    assert apply(conn, accounts, globex, now=NOW + timedelta(seconds=1)).applied == 1
    assert apply(conn, accounts, ev("5", at=NOW + timedelta(seconds=1), user_id="u3")).applied == 1


def test_a_replay_of_an_erased_persons_earlier_event_is_a_duplicate(
    settings: Any, tmp_path: Path, redis_client: redis.Redis
) -> None:
    conn, shards = redis_client, settings.event_shards
    client = client_with(settings, tmp_path / "a", segment={"privileged": ["delete"]})
    earlier = {"type": "track", "event": "Page Read", "userId": USER, "messageId": "r1",
               "context": {"traits": {"email": EMAIL}}}  # fmt: skip
    with clock.frozen(T0) as frozen:
        assert segment(client, earlier) == "accepted"
        drain_all(conn, shards)
        assert segment(client, {"type": "delete", "userId": USER, "messageId": "r2"}) == "accepted"
        drain_all(conn, shards)
        assert lookup(conn, "acme", "user_id", USER) is None
        frozen.advance(timedelta(hours=71))  # within the dedupe window
        assert segment(client, earlier) == "duplicate"
        drain_all(conn, shards)
        assert lookup(conn, "acme", "user_id", USER) is None


def test_a_replayed_shop_redact_is_a_duplicate_for_a_year(
    settings: Any, tmp_path: Path, redis_client: redis.Redis
) -> None:
    conn, shards = redis_client, settings.event_shards
    client = client_with(settings, tmp_path / "a", shopify={"shop_domain": SHOP})
    redact = json.dumps({"shop_id": 1, "shop_domain": SHOP}).encode()

    def order(n: int) -> bytes:
        stamp = clock.now().isoformat()
        customer = {"id": 1000 + n, "email": f"buyer{n}@example.com"}
        return json.dumps({"id": n, "email": customer["email"], "updated_at": stamp, "created_at": stamp,
                           "line_items": [], "customer": customer}).encode()  # fmt: skip

    with clock.frozen(T0) as frozen:
        assert shopify(client, order(1), "orders/create", "w1") == "accepted"
        drain_all(conn, shards)
        assert shopify(client, redact, "shop/redact", "w2") == "accepted"
        drain_all(conn, shards)
        assert lookup(conn, "acme", "email", "buyer1@example.com") is None
        markers = list(conn.scan_iter("dd:acme:*"))
        assert len(markers) == 2  # the order's and the redact's own are kept
        assert max(conn.ttl(k) for k in markers) >= PRIVILEGED_DEDUPE_SECONDS - 5
        assert shopify(client, redact, "shop/redact", "w3") == "duplicate"
        frozen.advance(timedelta(days=30))
        assert shopify(client, order(2), "orders/create", "w4") == "accepted"
        drain_all(conn, shards)
        buyer = lookup(conn, "acme", "email", "buyer2@example.com")
        assert buyer is not None
        assert shopify(client, redact, "shop/redact", "w5") == "duplicate"
        drain_all(conn, shards)
        assert lookup(conn, "acme", "email", "buyer2@example.com") == buyer


def test_privileged_events_keep_their_dedupe_marker_for_a_year(redis_client: redis.Redis) -> None:
    queue = EventQueue(redis_client, 4)
    with clock.frozen(T0):
        result = queue.ingest(
            "acme", [ev("t", user_id="u1"), ev("d", "delete", type="delete", user_id="u1")], 72 * 3600
        )
    assert result.accepted == 2
    assert 72 * 3600 - 5 <= redis_client.ttl(dedupe_key("acme", ev("t").event_id)) <= 72 * 3600
    assert redis_client.ttl(dedupe_key("acme", ev("d").event_id)) >= PRIVILEGED_DEDUPE_SECONDS - 5


def test_event_names_holding_an_identifier_leave_the_name_index(
    redis_client: redis.Redis, accounts: Accounts
) -> None:
    conn = redis_client
    invited = "invited_victim_person_example_com"  # how ``Invited Victim.Person@example.com`` is stored
    apply(
        conn, accounts, ev("1", invited, user_id=USER, email=EMAIL), ev("2", "order_completed", user_id=USER)
    )
    apply(conn, accounts, ev("3", invited, user_id="u-inviter"), ev("4", "page_viewed", user_id="u-inviter"))
    code = conn.hget(names_key("acme"), f"n:{invited}")
    assert code is not None
    apply(conn, accounts, ev("del", "delete", type="delete", email=EMAIL))
    fields = {f.decode(): v.decode() for f, v in conn.hgetall(names_key("acme")).items()}
    assert "n:order_completed" in fields and "n:page_viewed" in fields
    assert not [f for f in fields if "victim" in f or "victim" in fields[f]]
    assert hits(conn, [EMAIL, "victim_person", USER]) == []
    inviter = lookup(conn, "acme", "user_id", "u-inviter")
    assert inviter is not None
    profile = load_profile(conn, "acme", inviter, NOW)
    assert profile is not None
    assert sorted(e.name for e in profile.events) == [f"erased_{code.decode()}", "page_viewed"]
    # the name comes back (with a new code) when someone else's event carries it
    apply(conn, accounts, ev("5", invited, user_id="u-other"))
    assert conn.hget(names_key("acme"), f"n:{invited}") not in (None, code)
