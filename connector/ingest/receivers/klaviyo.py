"""Klaviyo system webhooks.

``Klaviyo-Signature`` is hex HMAC-SHA256(secret, raw body + the ``Klaviyo-Timestamp`` header
string). The timestamp is signed as the opaque header text and parsed leniently (RFC 1123 or
ISO-8601) for the replay window (``tolerance_seconds``, default 300: our policy, Klaviyo states
none). ``meta.klaviyo_webhook_id`` must equal the ``Klaviyo-Webhook-Id`` header. ``data[]`` is a
batch: one Event per element, deduplicated on ``external_id``.
"""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any, ClassVar

from connector.clock import to_utc
from connector.config import Account, SenderConfig
from connector.errors import MalformedPayload, Unauthorized
from connector.event import Event
from connector.ingest.receivers.base import (
    WHOLE_BODY,
    Inbound,
    Proof,
    Receiver,
    check_timestamp,
    first_email,
    hmac_digest,
    identities,
    matches_any,
    parse_json,
    parse_time,
    require_json,
    require_object,
    verify_with_secrets,
)
from rules.names import snake_case

TOPIC_NAMES: dict[str, str] = {
    "event:klaviyo.opened_email": "email_opened",
    "event:klaviyo.clicked_email": "email_clicked",
    "event:klaviyo.received_email": "email_delivered",
    "event:klaviyo.bounced_email": "email_bounced",
    "event:klaviyo.dropped_email": "email_dropped",
    "event:klaviyo.marked_email_as_spam": "email_marked_spam",
}


def topic_name(topic: str) -> str:
    mapped = TOPIC_NAMES.get(topic.strip().lower())
    if mapped:
        return mapped
    tail = topic.split(":", 1)[-1]
    if tail.startswith("klaviyo."):
        tail = tail[len("klaviyo.") :]
    return snake_case(tail) if tail.strip() else "klaviyo_event"


def signature(secret: bytes, body: bytes, timestamp: str) -> str:
    return hmac_digest("sha256", secret, body + timestamp.encode("utf-8")).hex()


def parse_header_time(value: str) -> datetime:
    """RFC 1123 (``Mon, 01 Jan 2024 00:00:01 GMT``) or ISO-8601; epoch seconds as a last resort."""
    text = value.strip()
    try:
        return to_utc(parsedate_to_datetime(text))
    except (TypeError, ValueError, IndexError, OverflowError):
        pass
    # ASCII digits only, and few: int() also takes "²" or "٣" and refuses over 4,300 digits
    epoch = text.isascii() and text.isdigit() and len(text) <= 20
    try:
        return parse_time(int(text) if epoch else text, "Klaviyo-Timestamp")
    except (MalformedPayload, OverflowError) as err:
        raise Unauthorized("Klaviyo-Timestamp is not a timestamp") from err


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class KlaviyoReceiver(Receiver):
    name: ClassVar[str] = "klaviyo"
    methods: ClassVar[tuple[str, ...]] = ("POST",)
    source: ClassVar[str] = "klaviyo"
    event_types: ClassVar[frozenset[str]] = frozenset({"track"})
    element: ClassVar[str] = "body.data[{i}]"

    def sign(self, secret: str, body: bytes, *, url: str, now: datetime) -> dict[str, str]:
        del url
        timestamp = format_datetime(to_utc(now).replace(microsecond=0), usegmt=True)
        headers = {
            "Klaviyo-Timestamp": timestamp,
            "Klaviyo-Signature": signature(secret.encode(), body, timestamp),
            "Content-Type": "application/json",
        }
        try:
            meta = _dict(_dict(parse_json(body)).get("meta"))
        except MalformedPayload:
            meta = {}
        if isinstance(meta.get("klaviyo_webhook_id"), str):
            headers["Klaviyo-Webhook-Id"] = meta["klaviyo_webhook_id"]
        return headers

    def verify(self, inbound: Inbound, sender: SenderConfig, now: datetime) -> Proof:
        timestamp = inbound.header("Klaviyo-Timestamp")
        if not timestamp:
            raise Unauthorized("Klaviyo-Timestamp header missing")
        if not inbound.header("Klaviyo-Webhook-Id"):
            raise Unauthorized("Klaviyo-Webhook-Id header missing")
        verify_with_secrets(
            (inbound.header("Klaviyo-Signature") or "").lower() or None,
            sender.secrets,
            lambda key: signature(key, inbound.body, timestamp),
        )
        tolerance = int(sender.options.get("tolerance_seconds") or 300)
        check_timestamp(parse_header_time(timestamp), now, tolerance)
        return WHOLE_BODY

    def parse(
        self, inbound: Inbound, account: Account, sender: SenderConfig, now: datetime, proof: Proof
    ) -> list[Event]:
        payload = require_object(require_json(inbound), "body")
        meta = _dict(payload.get("meta"))
        webhook_id = meta.get("klaviyo_webhook_id")
        header_id = inbound.header("Klaviyo-Webhook-Id") or ""
        if not isinstance(webhook_id, str) or not matches_any([webhook_id], [header_id.strip()]):
            raise Unauthorized("meta.klaviyo_webhook_id does not match Klaviyo-Webhook-Id")
        data = payload.get("data")
        if not isinstance(data, list):
            raise MalformedPayload("body.data must be an array")
        return [self.normalize(item, account.id, meta, now, f"body.data[{i}]") for i, item in enumerate(data)]

    def normalize(self, item: Any, account: str, meta: dict[str, Any], now: datetime, where: str) -> Event:
        item = require_object(item, where)
        external_id = item.get("external_id")
        event = _dict(_dict(item.get("payload")).get("data"))
        if not isinstance(external_id, str | int) or isinstance(external_id, bool) or not str(external_id):
            external_id = event.get("id")
        if not isinstance(external_id, str | int) or isinstance(external_id, bool) or not str(external_id):
            raise MalformedPayload(f"{where}.external_id is required")
        topic = item.get("topic")
        if not isinstance(topic, str) or not topic.strip():
            raise MalformedPayload(f"{where}.topic is required")
        attributes = _dict(event.get("attributes"))
        relationships = _dict(event.get("relationships"))
        profile = _dict(_dict(relationships.get("profile")).get("data"))
        metric = _dict(_dict(relationships.get("metric")).get("data"))
        properties = dict(_dict(attributes.get("event_properties")))
        email = properties.get("$email")
        if email is None:
            email = properties.get("email")
        if email is None:
            email = attributes.get("email")
        if not (email is None or (email and isinstance(email, str))):  # empty, or not text: read closely
            email = _email(properties, attributes, where)
        for key, value in (
            ("topic", topic),
            ("klaviyo_event_id", event.get("id")),
            ("uuid", attributes.get("uuid")),
            ("metric_id", metric.get("id")),
            ("klaviyo_account_id", meta.get("klaviyo_account_id")),
        ):
            if value not in (None, ""):
                properties.setdefault(key, value)
        return Event(
            account=account,
            source=self.source,
            source_event_id=str(external_id)[:500],
            type="track",
            name=topic_name(topic),
            original_name=topic,
            occurred_at=_occurred_at(attributes, now, where),
            received_at=now,
            identities=identities(
                where,
                {"klaviyo_profile_id": "payload.data.relationships.profile.data.id"},
                klaviyo_profile_id=profile.get("id"),
                email=email,
            ),
            properties=properties,
            raw=item,
        )


def _email(properties: dict[str, Any], attributes: dict[str, Any], where: str) -> str | None:
    """The person's address: the event's ``$email``, then its ``email``, then the event's own."""
    return first_email(
        f"{where}.payload.data.attributes",
        (
            ("event_properties.$email", properties.get("$email")),
            ("event_properties.email", properties.get("email")),
            ("email", attributes.get("email")),
        ),
    )


def _occurred_at(attributes: dict[str, Any], now: datetime, where: str) -> datetime:
    if attributes.get("datetime") not in (None, ""):
        return parse_time(attributes["datetime"], f"{where}.payload.data.attributes.datetime")
    if attributes.get("timestamp") not in (None, ""):
        return parse_time(attributes["timestamp"], f"{where}.payload.data.attributes.timestamp")
    return now
