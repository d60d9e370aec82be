"""Shopify webhook subscriptions (HTTPS).

``X-Shopify-Hmac-Sha256`` is base64 HMAC-SHA256 of the raw body with the app's client secret.
There is no timestamp in the signature, and the signature covers the body only: ``X-Shopify-Topic``,
``X-Shopify-Webhook-Id`` and ``X-Shopify-Shop-Domain`` are unsigned. So the body must have the
shape of its topic (:func:`check_shape`: an order sent as ``customers/redact``, ``checkouts/create``
or ``carts/update`` is refused), only the topics in :data:`TOPICS` are accepted (any other is a
400 naming it), a compliance request must name the account's configured shop (``shop_domain``),
and the dedupe id is taken from the body and the topic's meaning (:func:`dedupe_id`), never from
the webhook id headers: an order is stored as created once and as paid once, however often and
under whichever order topic its body is delivered. ``X-Shopify-Event-Id``
and ``X-Shopify-Webhook-Id`` are kept in the properties for correlation.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime
from typing import Any, ClassVar

from connector.config import Account, SenderConfig
from connector.errors import EventNotAllowed, MalformedPayload, Unauthorized
from connector.event import Event
from connector.ingest.receivers.base import (
    WHOLE_BODY,
    Inbound,
    Proof,
    Receiver,
    b64,
    clean_identity,
    first_email,
    hmac_digest,
    identities,
    parse_time,
    require_json,
    require_object,
    verify_with_secrets,
)

# topic → (event type, canonical name)
TOPICS: dict[str, tuple[str, str]] = {
    "orders/create": ("track", "order_completed"),
    "orders/paid": ("track", "order_paid"),
    "checkouts/create": ("track", "checkout_started"),
    "checkouts/update": ("track", "checkout_updated"),
    "carts/create": ("track", "cart_updated"),
    "carts/update": ("track", "cart_updated"),
    "customers/create": ("identify", "identify"),
    "customers/update": ("identify", "identify"),
    "customers/data_request": ("data_request", "data_request"),
    "customers/redact": ("delete", "delete"),
    "shop/redact": ("delete", "shop_redact"),
}

# customer fields copied into traits on customers/create|update
TRAIT_FIELDS = (
    "email",
    "first_name",
    "last_name",
    "phone",
    "state",
    "verified_email",
    "tags",
    "currency",
    "orders_count",
    "total_spent",
    "accepts_marketing",
    "email_marketing_consent",
    "created_at",
    "updated_at",
)


def signature(secret: bytes, body: bytes) -> str:
    return b64(hmac_digest("sha256", secret, body))


_DECIMAL = re.compile(r"-?[0-9]{1,30}(?:\.[0-9]{1,30})?")


def _number(value: Any, what: str) -> float | int | None:
    """Shopify money fields are strings ("199.00"); revenue is a number. Absent or empty: ``None``.

    Only a plain decimal is a number: ``"inf"``, ``"nan"``, ``"1e999"`` or a number beyond a
    float's range is refused naming ``what`` (it would reach the queue as ``Infinity``)."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not _DECIMAL.fullmatch(value.strip()):
            raise MalformedPayload(f"{what} is not a decimal amount: {value[:40]!r}")
        return float(value)
    if isinstance(value, int | float):
        try:
            finite = math.isfinite(float(value))
        except OverflowError:
            finite = False
        if not finite:
            raise MalformedPayload(f"{what} is out of range")
        return value
    raise MalformedPayload(f"{what} must be a decimal amount")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class ShopifyReceiver(Receiver):
    name: ClassVar[str] = "shopify"
    methods: ClassVar[tuple[str, ...]] = ("POST",)
    source: ClassVar[str] = "shopify"
    event_types: ClassVar[frozenset[str]] = frozenset({"track", "identify", "delete", "data_request"})
    privileged: ClassVar[frozenset[str]] = frozenset({"delete", "data_request"})
    # mandatory for every Shopify app; proven by the body's shape and the configured shop_domain
    privileged_by_default: ClassVar[frozenset[str]] = frozenset({"delete", "data_request"})
    element: ClassVar[str] = "body"

    def sign(self, secret: str, body: bytes, *, url: str, now: datetime) -> dict[str, str]:
        del url, now
        return {
            "X-Shopify-Hmac-Sha256": signature(secret.encode(), body),
            "Content-Type": "application/json",
        }

    def verify(self, inbound: Inbound, sender: SenderConfig, now: datetime) -> Proof:
        del now
        verify_with_secrets(
            inbound.header("X-Shopify-Hmac-Sha256"),
            sender.secrets,
            lambda key: signature(key, inbound.body),
        )
        for required in ("X-Shopify-Topic", "X-Shopify-Webhook-Id"):
            if not inbound.header(required):
                raise Unauthorized(f"{required} header missing")
        allowed = [d.strip().lower() for d in sender.options.get("shop_domains") or []]
        if allowed:
            shop = (inbound.header("X-Shopify-Shop-Domain") or "").strip().lower()
            if shop not in allowed:
                raise Unauthorized("shop domain not allowed for this account")
        return WHOLE_BODY  # the body only: topic, webhook id and shop domain are unsigned headers

    def parse(
        self, inbound: Inbound, account: Account, sender: SenderConfig, now: datetime, proof: Proof
    ) -> list[Event]:
        payload = require_object(require_json(inbound), "body")
        topic = (inbound.header("X-Shopify-Topic") or "").strip().lower()
        if topic not in TOPICS:
            raise MalformedPayload(
                f"X-Shopify-Topic {topic[:100]!r} is not a topic this receiver accepts "
                f"(known: {', '.join(TOPICS)})"
            )
        check_shape(topic, payload)
        if topic in COMPLIANCE:
            check_compliance_shop(topic, payload, sender)
        shop = (inbound.header("X-Shopify-Shop-Domain") or "").strip().lower()
        kind, name = TOPICS[topic]
        properties: dict[str, Any] = {"topic": topic}
        if shop:
            properties["shop_domain"] = shop
        for header, key in (
            ("X-Shopify-Event-Id", "shopify_event_id"),
            ("X-Shopify-Webhook-Id", "webhook_id"),
            ("X-Shopify-API-Version", "api_version"),
            ("X-Shopify-Triggered-At", "triggered_at"),
        ):
            if inbound.header(header):
                properties[key] = inbound.header(header)
        traits: dict[str, Any] = {}
        customer = _dict(payload.get("customer"))
        if _family(topic) == "customer":
            customer = payload
            traits = {k: payload[k] for k in TRAIT_FIELDS if k in payload and k != "created_at"}
        elif topic.startswith(("orders/", "checkouts/", "carts/")):
            properties.update(_commerce_properties(payload))
        elif topic in COMPLIANCE:
            for key in ("shop_id", "orders_requested", "orders_to_redact", "data_request", "shop_domain"):
                if key in payload:
                    properties[key] = payload[key]
        return [
            Event(
                account=account.id,
                source=self.source,
                source_event_id=dedupe_id(topic, payload, inbound.body),
                type=kind,
                name=name,
                original_name=topic,
                occurred_at=_occurred_at(payload, inbound, topic, now),
                received_at=now,
                identities=_identities(topic, payload, customer),
                properties=properties,
                traits=traits,
                raw=payload,
            )
        ]


def _identities(topic: str, payload: dict[str, Any], customer: dict[str, Any]) -> dict[str, str]:
    email = payload.get("email")
    if email is None:
        email = customer.get("email")
    if not (email is None or (email and isinstance(email, str))):  # empty, or not text: read closely
        email = first_email(
            "body", [("email", payload.get("email")), ("customer.email", customer.get("email"))]
        )
    ids = identities(
        "body",
        {"shopify_customer_id": "id" if _family(topic) == "customer" else "customer.id"},
        email=email,
        shopify_customer_id=customer.get("id") if customer else None,
    )
    if topic.startswith("carts/") and "shopify_customer_id" not in ids:
        token = clean_identity(payload.get("token") or payload.get("id"), "body.token")
        if token:
            ids["shopify_cart_token"] = token
    return ids


# --- shapes: the topic header is unsigned, so the signed body must look like its topic ----------

COMPLIANCE = ("customers/data_request", "customers/redact", "shop/redact")
_COMPLIANCE_KEYS = ("orders_to_redact", "orders_requested", "data_request", "shop_id")
# Fields only one REST resource has (Shopify's webhook payloads): an order has its number and
# financial status, a checkout its recovery URL, a refund its refunded lines; a cart's id is its
# token (a string) and it has no cart_token, which orders and checkouts carry.
ORDER_ONLY = (
    "order_number",
    "financial_status",
    "fulfillment_status",
    "checkout_token",
    "checkout_id",
    "confirmation_number",
    "processed_at",
    "order_status_url",
)
CHECKOUT_ONLY = ("abandoned_checkout_url",)
REFUND_ONLY = ("refund_line_items", "order_adjustments", "order_id")
_ORDER_LIKE = ("id", "line_items")
# resource kind → (keys the body must have, keys it must not have)
SHAPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "order": (("id", "line_items"), (*CHECKOUT_ONLY, *REFUND_ONLY, *_COMPLIANCE_KEYS)),
    "checkout": (("token", "line_items"), (*ORDER_ONLY, *REFUND_ONLY, *_COMPLIANCE_KEYS)),
    "cart": (
        ("id", "token", "line_items"),
        ("cart_token", *ORDER_ONLY, *CHECKOUT_ONLY, *REFUND_ONLY, *_COMPLIANCE_KEYS),
    ),
    "customer": (
        ("id",),
        ("customer", "line_items", "token", *ORDER_ONLY, *CHECKOUT_ONLY, *REFUND_ONLY, *_COMPLIANCE_KEYS),
    ),
    "customers/redact": (
        ("shop_id", "shop_domain", "customer", "orders_to_redact"),
        (*_ORDER_LIKE, "orders_requested", "data_request"),
    ),
    "customers/data_request": (
        ("shop_id", "shop_domain", "customer", "orders_requested", "data_request"),
        (*_ORDER_LIKE, "orders_to_redact"),
    ),
    "shop/redact": (
        ("shop_id", "shop_domain"),
        (*_ORDER_LIKE, "customer", "orders_to_redact", "orders_requested", "data_request"),
    ),
}


def _numeric_id(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and value.isascii() and value.isdigit()
    )


# The id of each resource in Shopify's payloads: a number (or its digits, as in CSV exports), except
# a cart's, which is its token (hex letters and digits).
_ID_CHECKS: dict[str, tuple[Any, str]] = {
    "order": (_numeric_id, "a number"),
    "customer": (_numeric_id, "a number"),
    "cart": (lambda value: isinstance(value, str) and not _numeric_id(value), "a string (the cart token)"),
}


def _family(topic: str) -> str:
    """The resource a known topic delivers: order, checkout, cart, customer, or the compliance topic."""
    if topic in COMPLIANCE:
        return topic
    prefix = topic.partition("/")[0]
    return {"orders": "order", "checkouts": "checkout", "carts": "cart", "customers": "customer"}[prefix]


def check_shape(topic: str, payload: dict[str, Any]) -> None:
    """Refuse a body whose shape is not its topic's (e.g. an order sent as ``customers/redact`` or
    as ``checkouts/create``): the required keys, none of another resource's own keys, the id's type."""
    family = _family(topic)
    required, forbidden = SHAPES[family]
    missing = [key for key in required if payload.get(key) in (None, "")]
    extra = [key for key in forbidden if key in payload]
    if missing or extra:
        what = f"lacks {', '.join(missing)}" if missing else f"has {', '.join(extra)}"
        raise MalformedPayload(f"body does not have the shape of a {topic} delivery: it {what}")
    id_check = _ID_CHECKS.get(family)
    if id_check is not None and not id_check[0](payload["id"]):
        raise MalformedPayload(f"body.id of a {topic} delivery must be {id_check[1]}")
    if family in ("order", "checkout", "cart") and not isinstance(payload["line_items"], list):
        raise MalformedPayload("body.line_items must be an array")
    if family in ("customers/redact", "customers/data_request"):
        if not isinstance(payload["customer"], dict) or payload["customer"].get("id") in (None, ""):
            raise MalformedPayload("body.customer.id is required")
        orders = "orders_to_redact" if family == "customers/redact" else "orders_requested"
        if not isinstance(payload[orders], list):
            raise MalformedPayload(f"body.{orders} must be an array")


def check_compliance_shop(topic: str, payload: dict[str, Any], sender: SenderConfig) -> None:
    """A compliance request erases or exports: it must name the shop this account serves."""
    configured = sender.options.get("shop_domain")
    if not configured:
        raise EventNotAllowed(
            f"{topic} is refused: this account has no senders.shopify.shop_domain, so the shop the "
            "request names cannot be checked"
        )
    named = payload.get("shop_domain")
    if not isinstance(named, str) or named.strip().lower() != str(configured).strip().lower():
        raise EventNotAllowed(f"body.shop_domain of this {topic} is not this account's shop")


# Things that happen once to a resource: its key is the resource alone, whatever its ``updated_at``
ONCE = {"orders/create": "", "checkouts/create": "", "orders/paid": "/paid"}


def dedupe_id(topic: str, payload: dict[str, Any], body: bytes) -> str:
    """What is signed, never an unsigned header: the resource's kind (checked against the body's
    shape) and id, and what happened to it. An order is created once and paid once, a checkout
    started once: those keys are the resource (``order:<id>``, ``order:<id>/paid``,
    ``checkout:<id>``), so no delivery, retry or replay under any topic stores a second order, and
    ``orders/create`` and ``orders/paid`` are both stored whichever arrives first. Updates (carts,
    checkouts, customers) are keyed by the resource and its ``updated_at``; a digest of the body
    when there is no such pair."""
    kind = _family(topic)
    resource = payload.get("id") if payload.get("id") not in (None, "") else payload.get("token")
    stamp = payload.get("updated_at")
    if kind in COMPLIANCE or resource in (None, ""):
        key = f"{kind}:sha256:{hashlib.sha256(body).hexdigest()}"
    elif topic in ONCE:
        key = f"{kind}:{_text(resource)}{ONCE[topic]}"
    elif stamp not in (None, ""):
        key = f"{kind}:{_text(resource)}@{_text(stamp)}"
    else:
        key = f"{kind}:sha256:{hashlib.sha256(body).hexdigest()}"
    return key[:500]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _commerce_properties(payload: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, target in (("id", "order_id"), ("name", "order_name"), ("token", "token")):
        if payload.get(key) is not None:
            out[target] = payload[key]
    total = _number(payload.get("total_price"), "body.total_price")
    if total is not None:
        out["revenue"] = total
        out["total"] = total
    for key in ("subtotal_price", "total_discounts", "total_tax"):
        value = _number(payload.get(key), f"body.{key}")
        if value is not None:
            out[key.replace("_price", "")] = value
    currency = payload.get("currency") or payload.get("presentment_currency")
    if isinstance(currency, str) and currency:
        out["currency"] = currency.upper()
    for key in ("financial_status", "abandoned_checkout_url", "discount_codes", "source_name"):
        if payload.get(key) not in (None, "", []):
            out[key] = payload[key]
    items = payload.get("line_items")
    if isinstance(items, list):
        out["line_items"] = [
            _line_item(item, f"body.line_items[{i}]")
            for i, item in enumerate(items)
            if isinstance(item, dict)
        ]
    return out


def _line_item(item: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("id", "product_id", "variant_id", "sku", "title", "name", "vendor", "quantity"):
        if item.get(key) is not None:
            out[key] = item[key]
    price = _number(item.get("price"), f"{where}.price")
    if price is not None:
        out["price"] = price
    return out


def _occurred_at(payload: dict[str, Any], inbound: Inbound, topic: str, now: datetime) -> datetime:
    later = topic.endswith("/update") or topic == "orders/paid"
    keys = ("updated_at", "created_at") if later else ("created_at", "updated_at")
    for key in keys:
        if payload.get(key) not in (None, ""):
            return parse_time(payload[key], f"body.{key}")
    triggered = inbound.header("X-Shopify-Triggered-At")
    if triggered:
        return parse_time(triggered, "X-Shopify-Triggered-At")
    return now
