from __future__ import annotations

import copy
import dataclasses
import json

from connector.ingest.receivers.shopify import signature
from tests.conftest import ACME, GLOBEX, vector, write_accounts
from tests.helpers import stored_events
from tests.ingest.accounts import client_with

SECRET = b"hush_shopify_client_secret"
SHOP = "example-shop.myshopify.com"


def headers(body: bytes, topic: str, webhook_id: str = "wh-1", secret: bytes = SECRET, **extra: str):
    out = {
        "Content-Type": "application/json",
        "X-Shopify-Hmac-Sha256": signature(secret, body),
        "X-Shopify-Topic": topic,
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-Shop-Domain": SHOP,
        "X-Shopify-API-Version": "2024-07",
        "X-Shopify-Event-Id": "ev-1",
        "X-Shopify-Triggered-At": "2024-01-01T17:00:00.000Z",
    }
    out.update(extra)
    return out


def post(client, body: bytes, hdrs: dict[str, str], account: str = "acme"):  # type: ignore[no-untyped-def]
    return client.post(f"/webhooks/{account}/shopify", data=body, headers=hdrs)


def test_orders_create_vector_normalized(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    v = vector("shopify_orders_create")
    body = v["body"].encode()
    hdrs = headers(body, "orders/create")
    assert hdrs["X-Shopify-Hmac-Sha256"] == v["expected"]["X-Shopify-Hmac-Sha256"]
    res = post(client, body, hdrs)
    assert res.status_code == 200, res.json
    [event] = stored_events(redis_client)
    assert event["name"] == "order_completed"
    assert event["type"] == "track"
    # an order is created once: the dedupe id is the order, whatever its updated_at
    assert event["source_event_id"] == "order:820982911946154508"
    assert event["identities"] == {"email": "jon@example.com", "shopify_customer_id": "115310627314723954"}
    props = event["properties"]
    assert props["revenue"] == 199.0 and props["currency"] == "USD"
    assert props["line_items"][0]["price"] == 199.0 and props["line_items"][0]["quantity"] == 1
    assert props["shopify_event_id"] == "ev-1"
    assert event["occurred_at"] == "2024-01-01T17:00:00Z"
    assert event["raw"] == json.loads(body)


def test_topics_mapping(settings, tmp_path, redis_client) -> None:  # type: ignore[no-untyped-def]
    client = client_with(settings, tmp_path / "a", shopify={"shop_domain": SHOP})
    cases = {
        "orders/paid": ({"id": 1, "email": "a@example.com", "total_price": "5.50", "currency": "eur",
                         "line_items": []}, "order_paid", "track"),
        "checkouts/create": ({"token": "ck1", "email": "a@example.com", "created_at": "2024-01-01T00:00:00Z",
                              "line_items": []}, "checkout_started", "track"),
        "checkouts/update": ({"token": "ck1", "email": "a@example.com", "updated_at": "2024-01-02T00:00:00Z",
                              "cart_token": "cart-tok", "line_items": []}, "checkout_updated", "track"),
        "carts/create": ({"id": "c1", "token": "cart-tok", "line_items": []}, "cart_updated", "track"),
        "carts/update": ({"id": "c1", "token": "cart-tok", "line_items": [],
                          "updated_at": "2024-01-02T00:00:00Z"}, "cart_updated", "track"),
        "customers/create": ({"id": 77, "email": "B@Example.com", "first_name": "B"}, "identify", "identify"),
        "customers/update": ({"id": 77, "email": "b@example.com", "tags": "vip"}, "identify", "identify"),
        "customers/data_request": ({"shop_id": 1, "shop_domain": SHOP, "customer": {"id": 191167},
                                    "orders_requested": [], "data_request": {"id": 9999}},
                                   "data_request", "data_request"),
        "customers/redact": ({"shop_id": 1, "shop_domain": SHOP, "orders_to_redact": [1],
                              "customer": {"id": 191167, "email": "john@example.com"}}, "delete", "delete"),
        "shop/redact": ({"shop_id": 1, "shop_domain": SHOP}, "shop_redact", "delete"),
    }  # fmt: skip
    for i, (topic, (payload, _name, _kind)) in enumerate(cases.items()):
        body = json.dumps(payload).encode()
        res = post(client, body, headers(body, topic, webhook_id=f"wh-{i}"))
        assert res.status_code == 200, (topic, res.json)
    events = {e["original_name"]: e for e in stored_events(redis_client)}
    for topic, (_, name, kind) in cases.items():
        assert (events[topic]["name"], events[topic]["type"]) == (name, kind), topic
    assert events["orders/paid"]["properties"]["revenue"] == 5.5
    assert events["orders/paid"]["properties"]["currency"] == "EUR"
    assert events["carts/update"]["identities"] == {"shopify_cart_token": "cart-tok"}
    # a checkout names its cart, but the token is no identity of its customer: anyone at the checkout
    # types any address, so the token would join two customers through one cart
    assert events["checkouts/update"]["identities"] == {"email": "a@example.com"}
    assert events["checkouts/create"]["identities"] == {"email": "a@example.com"}
    assert events["customers/create"]["identities"] == {"email": "b@example.com", "shopify_customer_id": "77"}
    assert events["customers/create"]["traits"]["first_name"] == "B"
    assert events["customers/redact"]["identities"]["shopify_customer_id"] == "191167"
    assert events["checkouts/update"]["occurred_at"] == "2024-01-02T00:00:00Z"


def test_rotated_sdk_secret_accepted(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    v = vector("shopify_sdk")
    body = v["body"].encode()
    hdrs = headers(body, "app/uninstalled", secret=b"test_secret_key")
    assert hdrs["X-Shopify-Hmac-Sha256"] == v["expected"]["X-Shopify-Hmac-Sha256"]
    res = post(client, body, hdrs)
    # verified (a bad signature is a 401); then refused: app/uninstalled is not a topic it accepts
    assert res.status_code == 400, res.json
    assert "app/uninstalled" in res.json["message"]


def test_rejections_are_401_and_store_nothing(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    v = vector("shopify_customers_redact")
    body = v["body"].encode()
    good = headers(body, "customers/redact")
    answers = [
        post(client, body.replace(b"191167", b"191168"), good),
        post(client, body, headers(body, "customers/redact", secret=b"wrong")),
        post(client, body, {k: v for k, v in good.items() if k != "X-Shopify-Hmac-Sha256"}),
        post(client, body, {k: v for k, v in good.items() if k != "X-Shopify-Topic"}),
        post(client, body, {k: v for k, v in good.items() if k != "X-Shopify-Webhook-Id"}),
        post(client, body, good, account="globex"),
        post(client, body, good, account="nosuch"),
    ]
    assert [a.status_code for a in answers] == [401] * len(answers)
    assert all(a.json == {"error": "unauthorized"} for a in answers)
    assert stored_events(redis_client) == []


def test_shop_domain_allow_list(settings, tmp_path, redis_client) -> None:  # type: ignore[no-untyped-def]
    from connector.app import create_app

    acme = copy.deepcopy(ACME)
    acme["senders"]["shopify"]["shop_domains"] = [SHOP]
    app = create_app(dataclasses.replace(settings, config_dir=write_accounts(tmp_path / "a", acme, GLOBEX)))
    client = app.test_client()
    body = b'{"id": 1, "line_items": []}'
    assert post(client, body, headers(body, "orders/create")).status_code == 200
    other = {
        **headers(body, "orders/create", webhook_id="wh-2"),
        "X-Shopify-Shop-Domain": "evil.myshopify.com",
    }
    assert post(client, body, other).status_code == 401
    assert len(stored_events(redis_client)) == 1


def test_same_delivery_five_times_stored_once(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = vector("shopify_orders_create")["body"].encode()
    answers = [post(client, body, headers(body, "orders/create")) for _ in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    assert [a.json["accepted"] for a in answers] == [1, 0, 0, 0, 0]
    assert len(stored_events(redis_client)) == 1
    # the same order delivered as paid is its payment, stored once as well
    assert post(client, body, headers(body, "orders/paid", webhook_id="wh-9")).json["accepted"] == 1
    assert post(client, body, headers(body, "orders/paid", webhook_id="wh-10")).json["duplicates"] == 1
    assert len(stored_events(redis_client)) == 2


def test_malformed_after_signature_is_400(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    for body in (b"{nope", b"[1, 2]", b'{"created_at": "yesterday"}'):
        res = post(client, body, headers(body, "orders/create"))
        assert res.status_code == 400, body
        assert res.json["error"] == "malformed_payload"


ORDER = {
    "id": 820982911946154508,
    "email": "jon@example.com",
    "token": "tok123",
    "cart_token": "ct1",
    "checkout_token": "ck1",
    "order_number": 1001,
    "financial_status": "paid",
    "updated_at": "2024-01-01T00:00:00Z",
    "created_at": "2024-01-01T00:00:00Z",
    "total_price": "199.00",
    "currency": "USD",
    "line_items": [{"id": 1, "price": "199.00", "quantity": 1}],
    "customer": {"id": 115310627314723954, "email": "jon@example.com"},
}


def test_unknown_topics_refused_naming_the_topic(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(ORDER).encode()
    for i, topic in enumerate(
        ["order_completed", "Order Completed", "orders/updated", "refunds/create", "app/uninstalled",
         "orders/create/", "orders//create", "products/update"]
    ):  # fmt: skip
        res = post(client, body, headers(body, topic, webhook_id=f"wh-{i}"))
        assert res.status_code == 400, (topic, res.json)
        assert topic.strip().lower() in res.json["message"] and "orders/create" in res.json["message"]
    assert stored_events(redis_client) == []


def test_order_body_is_not_a_checkout_cart_or_customer(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(ORDER).encode()
    for i, topic in enumerate(["checkouts/create", "checkouts/update", "carts/create", "carts/update",
                               "customers/create", "customers/update"]):  # fmt: skip
        res = post(client, body, headers(body, topic, webhook_id=f"wh-{i}"))
        assert res.status_code == 400, (topic, res.json)
        assert f"shape of a {topic} delivery" in res.json["message"]
    # an order trimmed of its own fields still has an int id, not a cart's token
    trimmed = json.dumps({"id": 1, "email": "a@example.com", "token": "t", "line_items": []}).encode()
    res = post(client, trimmed, headers(trimmed, "carts/update", webhook_id="wh-t"))
    assert res.status_code == 400 and "cart token" in res.json["message"]
    # a checkout is not an order either
    checkout = json.dumps({"id": 5, "token": "ck", "abandoned_checkout_url": "https://x", "line_items": []})
    res = post(client, checkout.encode(), headers(checkout.encode(), "orders/create", webhook_id="wh-c"))
    assert res.status_code == 400 and "abandoned_checkout_url" in res.json["message"]
    assert stored_events(redis_client) == []


def test_an_order_is_stored_as_created_once_and_as_paid_once(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(ORDER).encode()
    answers = [
        post(client, body, headers(body, topic, webhook_id=f"wh-{i}"))
        for i, topic in enumerate(["orders/paid", "orders/create", " ORDERS/CREATE ", "Orders/Paid"])
    ]
    assert [a.status_code for a in answers] == [200] * 4
    # the payment delivered first does not hide the order: templates count order_completed
    assert [a.json["accepted"] for a in answers] == [1, 1, 0, 0]
    stored = {e["name"]: e["source_event_id"] for e in stored_events(redis_client)}
    assert stored == {
        "order_paid": "order:820982911946154508/paid",
        "order_completed": "order:820982911946154508",
    }
    # a later state of the order (a new updated_at) under either topic is the same order: no order is
    # counted twice, whichever topic header a replayed signed body carries
    later = json.dumps({**ORDER, "updated_at": "2024-01-01T00:05:00Z"}).encode()
    for i, topic in enumerate(["orders/create", "orders/paid"]):
        assert post(client, later, headers(later, topic, webhook_id=f"wh-l{i}")).json["duplicates"] == 1
    assert len(stored_events(redis_client)) == 2


def test_a_checkout_is_started_once_and_updated_at_each_change(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    at = "2024-01-01T00:00:00Z"
    checkout = {"id": 5, "token": "ck", "email": "jon@example.com", "abandoned_checkout_url": "https://x",
                "line_items": [], "created_at": at, "updated_at": at}  # fmt: skip
    body = json.dumps(checkout).encode()
    later = json.dumps({**checkout, "updated_at": "2024-01-01T00:05:00Z"}).encode()
    sent = [(body, "checkouts/update"), (body, "checkouts/create"), (later, "checkouts/update"),
            (later, "checkouts/create"), (later, "checkouts/update")]  # fmt: skip
    answers = [
        post(client, b, headers(b, t, webhook_id=f"wh-{i}")).json["accepted"] for i, (b, t) in enumerate(sent)
    ]
    assert answers == [1, 1, 1, 0, 0]
    names = sorted(e["name"] for e in stored_events(redis_client))
    assert names == ["checkout_started", "checkout_updated", "checkout_updated"]


def test_money_strings_must_be_decimals(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    cases = [("total_price", "inf"), ("total_price", "nan"), ("total_price", "1e999"),
             ("total_price", "-inf"), ("total_tax", "Infinity"), ("subtotal_price", "1_000"),
             ("total_price", 10**400)]  # fmt: skip
    for i, (field, value) in enumerate(cases):
        body = json.dumps({"id": i + 1, "line_items": [], field: value}).encode()
        res = post(client, body, headers(body, "orders/create", webhook_id=f"wh-{i}"))
        assert res.status_code == 400, (field, value, res.json)
        assert f"body.{field}" in res.json["message"]
    body = json.dumps({"id": 99, "line_items": [{"id": 1, "price": "nan"}]}).encode()
    res = post(client, body, headers(body, "orders/create", webhook_id="wh-li"))
    assert res.status_code == 400 and "body.line_items[0].price" in res.json["message"]
    assert stored_events(redis_client) == []


def test_huge_customer_id_is_400(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps({**ORDER, "customer": {"id": 10**400}}).encode()
    res = post(client, body, headers(body, "orders/create"))
    assert res.status_code == 400 and "body.customer.id" in res.json["message"]
    body = json.dumps({"id": 10**70, "email": "a@example.com"}).encode()
    res = post(client, body, headers(body, "customers/update", webhook_id="wh-2"))
    assert res.status_code == 400 and "body.id" in res.json["message"]


def test_an_email_that_is_a_list_or_an_object_is_400_naming_the_field(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Acknowledging it would lose it: the worker finds no address in it."""
    no_top_email = {k: v for k, v in ORDER.items() if k != "email"}
    customer = {"id": 77, "email": "b@example.com", "first_name": "B"}
    checkout = {
        "token": "ck1",
        "email": "a@example.com",
        "line_items": [],
        "created_at": "2024-01-01T00:00:00Z",
    }
    cases = [
        ("orders/create", ORDER, ("email",), "body.email"),
        ("orders/paid", ORDER, ("email",), "body.email"),
        ("orders/create", no_top_email, ("customer", "email"), "body.customer.email"),
        ("checkouts/create", checkout, ("email",), "body.email"),
        ("customers/update", customer, ("email",), "body.email"),
    ]
    for i, (topic, payload, field, named) in enumerate(cases):
        for j, value in enumerate((["jon@example.com"], {"address": "jon@example.com"}, [], {})):
            doc = copy.deepcopy(payload)
            target = doc
            for key in field[:-1]:
                target = target[key]
            target[field[-1]] = value
            body = json.dumps(doc).encode()
            res = post(client, body, headers(body, topic, webhook_id=f"wh-{i}-{j}"))
            assert res.status_code == 400, (topic, named, res.json)
            assert res.json["error"] == "malformed_payload"
            assert res.json["message"] == f"{named} must be a string (an email address)", res.json
    assert stored_events(redis_client) == []
    # the official vector still goes through
    body = vector("shopify_orders_create")["body"].encode()
    assert post(client, body, headers(body, "orders/create")).status_code == 200


def test_an_order_without_its_own_email_is_the_customers(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    for i, unset in enumerate((None, "")):
        order = {**ORDER, "id": 1000 + i, "email": unset, "customer": {"id": 5, "email": "Ann@Example.com"}}
        body = json.dumps(order).encode()
        assert post(client, body, headers(body, "orders/create", webhook_id=f"wh-{i}")).status_code == 200
    stored = stored_events(redis_client)
    assert [e["identities"]["email"] for e in stored] == ["ann@example.com", "ann@example.com"]
