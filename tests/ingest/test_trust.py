"""What the connector trusts: privileged events need proof, dedupe keys come from what is signed,
hostile bodies are 400s on every route, and nothing the workers would refuse is acknowledged."""

from __future__ import annotations

import gzip
import json
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest

from connector import clock
from connector.config import SenderConfig, load_accounts
from connector.errors import ConfigError
from connector.ingest.receivers import REGISTRY
from connector.ingest.receivers.base import Inbound, Proof, Receiver
from connector.ingest.receivers.hubspot import signature_v3
from connector.ingest.receivers.segment import sign, sign_whole
from connector.ingest.receivers.shopify import signature as shopify_signature
from tests.conftest import ACME, FIXED_NOW, GLOBEX, vector, write_accounts
from tests.helpers import stored_events
from tests.ingest.accounts import SHOP, client_with
from tests.ingest.signing import signed, tracking_headers, wrap

SEGMENT_SECRET = b"segment_shared_secret_123"
SHOPIFY_SECRET = b"hush_shopify_client_secret"


def post(client, path: str, body: bytes, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    with clock.frozen(FIXED_NOW):
        return client.post(path, data=body, headers=headers)


def segment(client, body: bytes, **headers: str):  # type: ignore[no-untyped-def]
    hdrs = {"Content-Type": "application/json", **headers}
    if "X-Segment-Signature" not in headers and "X-Signature" not in headers:
        hdrs["X-Signature"] = sign(SEGMENT_SECRET, body)
    return post(client, "/webhooks/acme/segment", body, hdrs)


def shopify(client, body: bytes, topic: str, webhook_id: str = "wh-1"):  # type: ignore[no-untyped-def]
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Hmac-Sha256": shopify_signature(SHOPIFY_SECRET, body),
        "X-Shopify-Topic": topic,
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-Shop-Domain": SHOP,
    }
    return post(client, "/webhooks/acme/shopify", body, headers)


def message(mid: str, kind: str = "track", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": kind,
        "messageId": mid,
        "userId": "u1",
        "timestamp": "2024-01-01T00:00:00Z",
    }
    if kind == "track":
        out["event"] = "Product Viewed"
    out.update(extra)
    return out


# --- 1. the base class ---------------------------------------------------------------------


def test_every_receiver_derives_from_the_base_class() -> None:
    assert all(isinstance(r, Receiver) for r in REGISTRY.values())
    assert all("handle" not in type(r).__dict__ for r in REGISTRY.values())


def test_a_receiver_cannot_override_handle() -> None:
    with pytest.raises(TypeError, match="must not override handle"):

        class Sneaky(Receiver):
            name: ClassVar[str] = "sneaky"
            methods: ClassVar[tuple[str, ...]] = ("POST",)
            source: ClassVar[str] = "sneaky"
            event_types: ClassVar[frozenset[str]] = frozenset({"track"})

            def handle(self, inbound, account, sender, now):  # type: ignore[no-untyped-def]
                return []


def test_privileged_types_must_be_declared_among_event_types() -> None:
    with pytest.raises(TypeError, match="privileged"):

        class Loose(Receiver):
            name: ClassVar[str] = "loose"
            methods: ClassVar[tuple[str, ...]] = ("POST",)
            source: ClassVar[str] = "loose"
            event_types: ClassVar[frozenset[str]] = frozenset({"track"})
            privileged: ClassVar[frozenset[str]] = frozenset({"delete"})


def test_a_new_sender_gets_admission_without_writing_it(accounts) -> None:  # type: ignore[no-untyped-def]
    """A sender whose parse yields a delete is refused by the base class, not by its own code."""

    class Naive(Receiver):
        name: ClassVar[str] = "naive"
        methods: ClassVar[tuple[str, ...]] = ("POST",)
        source: ClassVar[str] = "naive"
        event_types: ClassVar[frozenset[str]] = frozenset({"track", "delete"})
        privileged: ClassVar[frozenset[str]] = frozenset({"delete"})

        def verify(self, inbound: Inbound, sender: SenderConfig, now: datetime) -> Proof:
            return Proof()

        def parse(self, inbound, account, sender, now, proof):  # type: ignore[no-untyped-def]
            from connector.ingest.receivers.spec import normalize

            return [normalize(json.loads(inbound.body), account=account.id, source="naive", received_at=now)]

    from connector.errors import EventNotAllowed

    inbound = Inbound("POST", "http://x/", {}, {}, json.dumps(message("d1", "delete")).encode())
    cfg = SenderConfig(name="naive", secrets=())
    with pytest.raises(EventNotAllowed, match="'delete' event"):
        Naive().handle(inbound, accounts.get("acme"), cfg, FIXED_NOW)


# --- 1. privileged events ------------------------------------------------------------------


def test_tracking_batch_never_erases(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps({"batch": [message("t1"), message("t2", "delete")]}).encode()
    res = post(client, "/v1/batch", body, tracking_headers())
    assert res.status_code == 400
    assert res.json["error"] == "event_not_allowed"
    assert "batch[1]" in res.json["message"] and "'delete'" in res.json["message"]
    assert stored_events(redis_client) == []


def test_segment_delete_needs_the_accounts_permission(client, settings, tmp_path, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(message("d1", "delete")).encode()
    res = segment(client, body)
    assert res.status_code == 400
    assert res.json["error"] == "event_not_allowed"
    assert "senders.segment.privileged" in res.json["message"]
    assert stored_events(redis_client) == []
    allowed = client_with(settings, tmp_path / "a", segment={"privileged": ["delete"]})
    assert segment(allowed, body).status_code == 200
    assert [e["type"] for e in stored_events(redis_client)] == ["delete"]


def test_appended_element_is_refused_by_default(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    captured = json.dumps([message("s1")]).encode()
    signature = sign(SEGMENT_SECRET, captured)
    forged = captured[:-1] + b"," + json.dumps(message("forged")).encode() + b"]"
    res = segment(client, forged, **{"X-Signature": signature})
    assert res.status_code == 400
    assert res.json["message"].startswith("body[1] is not covered by the signature")
    assert stored_events(redis_client) == []


def test_opted_in_account_takes_unsigned_elements_but_never_a_privileged_one(
    settings, tmp_path, redis_client
) -> None:  # type: ignore[no-untyped-def]
    client = client_with(
        settings, tmp_path / "a", segment={"unsigned_batch_elements": "accept", "privileged": ["delete"]}
    )
    captured = json.dumps([message("s1")]).encode()
    signature = sign(SEGMENT_SECRET, captured)
    erase = captured[:-1] + b"," + json.dumps(message("forged", "delete")).encode() + b"]"
    res = segment(client, erase, **{"X-Signature": signature})
    assert res.status_code == 400
    assert "body[1] is a 'delete' event outside the signed part" in res.json["message"]
    assert stored_events(redis_client) == []
    plain = captured[:-1] + b"," + json.dumps(message("s2")).encode() + b"]"
    assert segment(client, plain, **{"X-Signature": signature}).json["accepted"] == 2
    # a delete in the signed first element is allowed (the account lists it)
    first = json.dumps([message("d1", "delete"), message("s3")]).encode()
    assert segment(client, first).json["accepted"] == 2


def test_whole_body_signature_covers_every_element(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps([message("w1"), message("w2")]).encode()
    res = segment(client, body, **{"X-Segment-Signature": sign_whole(SEGMENT_SECRET, body)})
    assert res.status_code == 200 and res.json["accepted"] == 2


def test_rudderstack_and_hubspot_deletes_need_permission(client, settings, tmp_path, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(message("r1", "delete")).encode()
    path, headers = signed("rudderstack", body)
    assert post(client, path, body, headers).json["error"] == "event_not_allowed"
    hub = json.dumps(
        [{"eventId": 9, "subscriptionId": 1, "portalId": 2, "occurredAt": 1704067200000,
          "subscriptionType": "contact.privacyDeletion", "objectId": 5}]
    ).encode()  # fmt: skip
    path, headers = signed("hubspot", hub)
    res = post(client, path, hub, headers)
    assert res.status_code == 400 and "senders.hubspot.privileged" in res.json["message"]
    allowed = client_with(settings, tmp_path / "a", hubspot={"privileged": ["delete"]})
    assert post(allowed, path, hub, headers).status_code == 200
    assert [e["type"] for e in stored_events(redis_client)] == ["delete"]


REDACT = vector("shopify_customers_redact")["body"].encode()
ORDER = vector("shopify_orders_create")["body"].encode()
DATA_REQUEST = json.dumps(
    {"shop_id": 954889, "shop_domain": SHOP, "orders_requested": [1], "customer": {"id": 191167},
     "data_request": {"id": 9999}}
).encode()  # fmt: skip


@pytest.fixture
def shop_client(settings, tmp_path):  # type: ignore[no-untyped-def]
    return client_with(settings, tmp_path / "shop", shopify={"shop_domain": SHOP})


def test_an_order_body_cannot_be_sent_as_a_redact(shop_client, redis_client) -> None:  # type: ignore[no-untyped-def]
    for topic in ("customers/redact", "customers/data_request", "shop/redact"):
        res = shopify(shop_client, ORDER, topic)
        assert res.status_code == 400, topic
        assert f"shape of a {topic} delivery" in res.json["message"]
    assert stored_events(redis_client) == []


def test_compliance_bodies_cannot_swap_topics(shop_client, redis_client) -> None:  # type: ignore[no-untyped-def]
    assert shopify(shop_client, DATA_REQUEST, "customers/redact").status_code == 400
    assert shopify(shop_client, REDACT, "customers/data_request").status_code == 400
    assert shopify(shop_client, REDACT, "shop/redact").status_code == 400
    assert shopify(shop_client, REDACT, "orders/create").status_code == 400
    assert shopify(shop_client, REDACT, "customers/update").status_code == 400
    assert stored_events(redis_client) == []
    assert shopify(shop_client, REDACT, "customers/redact").status_code == 200
    assert shopify(shop_client, DATA_REQUEST, "customers/data_request").status_code == 200
    assert sorted(e["type"] for e in stored_events(redis_client)) == ["data_request", "delete"]


def test_compliance_refused_without_a_configured_shop(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    res = shopify(client, REDACT, "customers/redact")
    assert res.status_code == 400
    assert "senders.shopify.shop_domain" in res.json["message"]
    assert stored_events(redis_client) == []


def test_compliance_for_another_shop_refused(shop_client, redis_client) -> None:  # type: ignore[no-untyped-def]
    other = REDACT.replace(SHOP.encode(), b"other-shop.myshopify.com")
    res = shopify(shop_client, other, "customers/redact")
    assert res.status_code == 400 and "not this account's shop" in res.json["message"]
    assert stored_events(redis_client) == []


@pytest.mark.parametrize(
    ("sender", "options", "path", "reason"),
    [
        ("mailchimp", {"privileged": ["delete"]}, "senders.mailchimp.privileged", "cannot deliver delete"),
        ("segment", {"privileged": ["data_request"]}, "senders.segment.privileged", "only delete"),
        ("shopify", {"unsigned_batch_elements": "accept"}, "senders.shopify.unsigned_batch_elements",
         "only the segment sender"),
        ("segment", {"shop_domain": SHOP}, "senders.segment.shop_domain", "only the shopify sender"),
        ("shopify", {"shop_domain": "not a domain"}, "senders.shopify.shop_domain", "shop domain"),
        ("segment", {"unsigned_batch_elements": "maybe"}, "senders.segment.unsigned_batch_elements",
         "one of"),
    ],
)  # fmt: skip
def test_sender_trust_options_validated_at_load(
    config_dir: Path, tmp_path, sender, options, path, reason
) -> None:  # type: ignore[no-untyped-def]
    import copy

    acme = copy.deepcopy(ACME)
    acme["senders"][sender].update(options)
    directory = write_accounts(tmp_path / "bad", acme, GLOBEX)
    with pytest.raises(ConfigError) as err:
        load_accounts(directory)
    assert err.value.path == path
    assert err.value.file and err.value.file.endswith("acme.yaml")
    assert reason.lower() in err.value.reason.lower()


# --- 2. dedupe on what is signed -------------------------------------------------------------


def test_shopify_replay_with_a_new_webhook_id_is_a_duplicate(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    order = json.loads(ORDER) | {"updated_at": "2024-01-01T12:00:00-05:00"}
    body = json.dumps(order).encode()
    answers = [shopify(client, body, "orders/create", webhook_id=f"wh-{i}") for i in range(4)]
    assert [a.json["accepted"] for a in answers] == [1, 0, 0, 0]
    [event] = stored_events(redis_client)
    assert event["source_event_id"] == "order:820982911946154508"
    # an order is created once: a later state of it replayed as orders/create is not a second order
    later = json.dumps(order | {"updated_at": "2024-01-02T00:00:00Z"}).encode()
    assert shopify(client, later, "orders/create", webhook_id="wh-9").json["duplicates"] == 1
    assert [e["name"] for e in stored_events(redis_client)].count("order_completed") == 1


# --- 3. hostile bodies are 400s on every route -------------------------------------------------

JSON_SENDERS = ("segment", "rudderstack", "shopify", "klaviyo", "hubspot", "standard_webhooks", "mandrill")
HOSTILE = {
    "deep": (b'{"a":' * 70 + b"1" + b"}" * 70, "nested deeper than 64"),
    "huge int": (b'{"a": ' + b"9" * 5000 + b"}", "integer too long"),
    "lone surrogate": (b'{"a": "\\ud800"}', "lone surrogate"),
    "infinite": (b'{"a": 1e999}', "out of range"),
    "invalid utf-8": (b'{"a": "\xff\xfe"}', "UTF-8"),
}


@pytest.mark.parametrize("sender", JSON_SENDERS)
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_json_after_a_valid_signature_is_400(client, redis_client, sender, case) -> None:  # type: ignore[no-untyped-def]
    raw, reason = HOSTILE[case]
    body = wrap(sender, raw)
    path, headers = signed(sender, body)
    res = post(client, path, body, headers)
    assert res.status_code == 400, (res.status_code, res.get_data()[:200])
    assert reason in res.json["message"]
    assert stored_events(redis_client) == []


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_json_on_the_tracking_api_is_400(client, redis_client, case) -> None:  # type: ignore[no-untyped-def]
    raw, reason = HOSTILE[case]
    res = post(client, "/v1/track", raw, tracking_headers())
    assert res.status_code == 400, (res.status_code, res.get_data()[:200])
    assert reason in res.json["message"]


def test_mailchimp_form_hostile_bodies_are_400(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    for body, reason in (
        (b"type=subscribe&data[email]=%FF%FE", "not valid URL encoding"),
        (b"type=subscribe&data" + b"[x]" * 100 + b"=1", "nested deeper than 64"),
        (b"type=subscribe&data[email]=\xff", "not UTF-8"),
    ):
        path, headers = signed("mailchimp", body)
        res = post(client, path, body, headers)
        assert res.status_code == 400, body
        assert reason in res.json["message"]


def test_invalid_utf8_in_a_segment_batch_still_verifies_then_is_400(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = b'[{"type": "track", "event": "\xff", "userId": "u"}]'
    res = segment(client, body)
    assert res.status_code == 400 and "not UTF-8" in res.json["message"]


def test_truncated_gzip_on_the_tracking_api_is_400(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    whole = gzip.compress(json.dumps({"batch": [message("g1")]}).encode())
    for cut in (whole[:-4], whole[:-8], whole[: len(whole) // 2]):
        res = post(client, "/v1/batch", cut, tracking_headers(**{"Content-Encoding": "gzip"}))
        assert res.status_code == 400, res.json
        assert res.json["error"] == "malformed_payload"
    assert stored_events(redis_client) == []
    ok = post(client, "/v1/batch", whole, tracking_headers(**{"Content-Encoding": "gzip"}))
    assert ok.status_code == 200 and ok.json["accepted"] == 1


# --- 4. acknowledge only what will be applied ----------------------------------------------------


def test_event_name_longer_than_the_store_keeps_is_400(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    long_name = "x" * 201
    res = post(client, "/v1/track", json.dumps(message("n1", event=long_name)).encode(), tracking_headers())
    assert res.status_code == 400 and "201 characters" in res.json["message"]
    res = segment(client, json.dumps(message("n2", event=long_name)).encode())
    assert res.status_code == 400 and "more than the 200 kept" in res.json["message"]
    assert stored_events(redis_client) == []
    ok = post(client, "/v1/track", json.dumps(message("n3", event="y" * 200)).encode(), tracking_headers())
    assert ok.status_code == 200


def test_messages_the_worker_cannot_attach_are_400(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    cases = [
        ({"type": "track", "event": "E", "messageId": "i1"}, "userId or anonymousId is required"),
        ({"type": "track", "event": "E", "messageId": "i2", "userId": "undefined"}, "blocked"),
        ({"type": "track", "event": "E", "messageId": "i3", "userId": "u" * 501}, "too long"),
        ({"type": "alias", "messageId": "i4", "userId": "u1"}, "previousId is required"),
    ]
    for payload, reason in cases:
        res = post(client, "/v1/batch", json.dumps({"batch": [payload]}).encode(), tracking_headers())
        assert res.status_code == 400, payload
        assert res.json["message"].startswith("batch[0]: ") and reason in res.json["message"]
        res = segment(client, json.dumps(payload).encode())
        assert res.status_code == 400, payload
        # one message is named `body`; an element of an array body by its index
        assert res.json["message"].startswith("body: ") and reason in res.json["message"]
        res = segment(client, json.dumps([payload]).encode())
        assert res.status_code == 400 and res.json["message"].startswith("body[0]: "), payload
    assert stored_events(redis_client) == []


# --- 5. an email change makes the email an identity ---------------------------------------------


def _drain(conn) -> None:  # type: ignore[no-untyped-def]
    from connector.worker.jobs import drain_events

    for shard in range(4):
        drain_events(shard, conn=conn)


def test_hubspot_email_change_is_an_identity_the_profile_is_found_by(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    from connector.profiles import lookup

    body = json.dumps(
        [{"eventId": 7, "subscriptionId": 1, "portalId": 2, "occurredAt": 1704067200000,
          "subscriptionType": "contact.propertyChange", "objectId": 501, "propertyName": "email",
          "propertyValue": "New.Address@Example.com"}]
    ).encode()  # fmt: skip
    url = "http://localhost/webhooks/acme/hubspot"
    stamp = str(int(FIXED_NOW.timestamp() * 1000))
    headers = {
        "Content-Type": "application/json",
        "X-HubSpot-Request-Timestamp": stamp,
        "X-HubSpot-Signature-v3": signature_v3(
            b"yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy", "POST", url, body, stamp
        ),
    }
    assert post(client, "/webhooks/acme/hubspot", body, headers).status_code == 200
    [event] = stored_events(redis_client)
    assert event["identities"] == {"hubspot_contact_id": "501", "email": "new.address@example.com"}
    with clock.frozen(FIXED_NOW):
        _drain(redis_client)
    pid = lookup(redis_client, "acme", "email", "new.address@example.com")
    assert pid is not None
    assert pid == lookup(redis_client, "acme", "hubspot_contact_id", "501")


def test_mailchimp_email_change_moves_the_person_to_the_new_address(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    from urllib.parse import urlencode

    from connector.profiles import lookup

    token = "?secret=mc_url_secret_9f8e7d"
    form = "application/x-www-form-urlencoded"
    subscribe = urlencode(
        {"type": "subscribe", "fired_at": "2024-01-01 00:00:00", "data[id]": "old-id",
         "data[email]": "old@example.com", "data[list_id]": "L1"}
    ).encode()  # fmt: skip
    upemail = urlencode(
        {"type": "upemail", "fired_at": "2024-01-01 00:00:10", "data[list_id]": "L1",
         "data[new_id]": "new-id", "data[new_email]": "new@example.com", "data[old_email]": "old@example.com"}
    ).encode()  # fmt: skip
    path = "/webhooks/acme/mailchimp" + token
    assert post(client, path, subscribe, {"Content-Type": form}).status_code == 200
    with clock.frozen(FIXED_NOW):
        _drain(redis_client)
    person = lookup(redis_client, "acme", "email", "old@example.com")
    assert person is not None
    res = post(client, path, upemail, {"Content-Type": form})
    assert res.status_code == 200 and res.json["accepted"] == 2
    with clock.frozen(FIXED_NOW):
        _drain(redis_client)
    found = lookup(redis_client, "acme", "email", "new@example.com")
    assert found is not None
    assert found == lookup(redis_client, "acme", "email", "old@example.com")
    assert found == lookup(redis_client, "acme", "mailchimp_member_id", "old-id")
