"""Shopify webhook subscriptions (HTTPS).

``X-Shopify-Hmac-Sha256`` is base64 HMAC-SHA256 of the raw body with the app's client secret.
There is no timestamp in the signature; the dedupe id is ``shop + topic + X-Shopify-Webhook-Id``
(stable across retries of one delivery). ``X-Shopify-Event-Id`` (shared by every delivery of one
merchant action) is kept in the properties for correlation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from connector.config import Account, SenderConfig
from connector.errors import Unauthorized
from connector.event import Event
from connector.ingest.names import snake_case
from connector.ingest.receivers.base import (
    Inbound,
    b64,
    clean_identity,
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


def _number(value: Any) -> float | int | None:
    """Shopify money fields are strings ("199.00"); revenue is a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class ShopifyReceiver:
    name: ClassVar[str] = "shopify"
    methods: ClassVar[tuple[str, ...]] = ("POST",)
    source: ClassVar[str] = "shopify"

    def sign(self, secret: str, body: bytes, *, url: str, now: datetime) -> dict[str, str]:
        del url, now
        return {
            "X-Shopify-Hmac-Sha256": signature(secret.encode(), body),
            "Content-Type": "application/json",
        }

    def verify(self, inbound: Inbound, sender: SenderConfig) -> None:
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

    def handle(self, inbound: Inbound, account: Account, sender: SenderConfig, now: datetime) -> list[Event]:
        self.verify(inbound, sender)
        payload = require_object(require_json(inbound), "body")
        topic = (inbound.header("X-Shopify-Topic") or "").strip().lower()
        shop = (inbound.header("X-Shopify-Shop-Domain") or "").strip().lower()
        webhook_id = (inbound.header("X-Shopify-Webhook-Id") or "").strip()
        kind, name = TOPICS.get(topic, ("track", _unknown_name(topic)))
        properties: dict[str, Any] = {"topic": topic}
        if shop:
            properties["shop_domain"] = shop
        for header, key in (
            ("X-Shopify-Event-Id", "shopify_event_id"),
            ("X-Shopify-API-Version", "api_version"),
            ("X-Shopify-Triggered-At", "triggered_at"),
        ):
            if inbound.header(header):
                properties[key] = inbound.header(header)
        traits: dict[str, Any] = {}
        customer = _dict(payload.get("customer"))
        if topic.startswith("customers/") and topic not in ("customers/data_request", "customers/redact"):
            customer = payload
            traits = {k: payload[k] for k in TRAIT_FIELDS if k in payload and k != "created_at"}
        elif topic.startswith(("orders/", "checkouts/", "carts/")):
            properties.update(_commerce_properties(payload))
        elif topic in ("customers/data_request", "customers/redact", "shop/redact"):
            for key in ("shop_id", "orders_requested", "orders_to_redact", "data_request"):
                if key in payload:
                    properties[key] = payload[key]
            if payload.get("shop_domain") and "shop_domain" not in properties:
                properties["shop_domain"] = payload["shop_domain"]
        email = payload.get("email") or customer.get("email")
        ids = identities(
            email=email if isinstance(email, str) else None,
            shopify_customer_id=customer.get("id") if customer else None,
        )
        if topic.startswith("carts/") and "shopify_customer_id" not in ids:
            token = clean_identity(payload.get("token") or payload.get("id"))
            if token:
                ids["shopify_cart_token"] = token
        return [
            Event(
                account=account.id,
                source=self.source,
                source_event_id=f"{shop}:{topic}:{webhook_id}"[:500],
                type=kind,
                name=name,
                original_name=topic or None,
                occurred_at=_occurred_at(payload, inbound, topic, now),
                received_at=now,
                identities=ids,
                properties=properties,
                traits=traits,
                raw=payload,
            )
        ]


def _unknown_name(topic: str) -> str:
    return snake_case(topic) if topic else "shopify_webhook"


def _commerce_properties(payload: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, target in (("id", "order_id"), ("name", "order_name"), ("token", "token")):
        if payload.get(key) is not None:
            out[target] = payload[key]
    total = _number(payload.get("total_price"))
    if total is not None:
        out["revenue"] = total
        out["total"] = total
    for key in ("subtotal_price", "total_discounts", "total_tax"):
        value = _number(payload.get(key))
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
        out["line_items"] = [_line_item(item) for item in items if isinstance(item, dict)]
    return out


def _line_item(item: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("id", "product_id", "variant_id", "sku", "title", "name", "vendor", "quantity"):
        if item.get(key) is not None:
            out[key] = item[key]
    price = _number(item.get("price"))
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
