"""HubSpot webhooks (app subscriptions, and workflow webhooks signed with v1/v2).

v3 (the default): ``X-HubSpot-Signature-v3`` = base64 HMAC-SHA256(client secret,
``METHOD + URI + body + X-HubSpot-Request-Timestamp``), timestamp in epoch milliseconds, rejected
when more than ``tolerance_seconds`` (default 300) old or ahead. The URI is tried as received and
with the escapes HubSpot's docs list (``%3A`` → ``:`` ...) decoded. v1 (hex SHA-256 of secret + body)
and v2 (hex SHA-256 of secret + METHOD + URI + body) carry no timestamp and are accepted only
when the account lists them in ``signature_versions``.

URI is the sender option ``url`` (the target URL as registered in HubSpot) followed by the
request's query string, or, without it, the URL of the request as received (``CONNECTOR_PUBLIC_URL``
+ path + query behind a proxy).

The body is a JSON array of events, one Event each. HubSpot says ``eventId`` is not unique, so the
dedupe id is the composite (portalId, subscriptionId, eventId, occurredAt, objectId,
subscriptionType, propertyName); ``attemptNumber`` changes on retries and is left out.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, ClassVar

from connector.config import Account, SenderConfig
from connector.errors import MalformedPayload, Unauthorized, UnsupportedContentType
from connector.event import Event
from connector.ingest.receivers.base import (
    WHOLE_BODY,
    Inbound,
    Proof,
    Receiver,
    b64,
    check_timestamp,
    email_text,
    hmac_digest,
    identities,
    matches_any,
    parse_json,
    parse_time,
    require_object,
)
from rules.names import snake_case

NAMES: dict[str, tuple[str, str]] = {
    "contact.creation": ("track", "contact_created"),
    "contact.propertychange": ("identify", "profile_updated"),
    "contact.deletion": ("track", "contact_deleted"),
    "contact.privacydeletion": ("delete", "contact_privacy_deleted"),
}
DEDUPE_FIELDS = (
    "portalId",
    "subscriptionId",
    "eventId",
    "occurredAt",
    "objectId",
    "subscriptionType",
    "propertyName",
)


def signature_v1(secret: bytes, body: bytes) -> str:
    return hashlib.sha256(secret + body).hexdigest()


def signature_v2(secret: bytes, method: str, uri: str, body: bytes) -> str:
    return hashlib.sha256(secret + method.upper().encode() + uri.encode("utf-8") + body).hexdigest()


def signature_v3(secret: bytes, method: str, uri: str, body: bytes, timestamp: str) -> str:
    message = method.upper().encode() + uri.encode("utf-8") + body + timestamp.encode()
    return b64(hmac_digest("sha256", secret, message))


def signed_uri(inbound: Inbound, sender: SenderConfig) -> str:
    configured = sender.options.get("url")
    if not configured:
        return inbound.url
    _, _, query = inbound.url.partition("?")
    return configured + (f"?{query}" if query else "")


# HubSpot's v3 page asks receivers to decode these escapes in the URI before signing; the raw URI
# is tried as well, so either reading of the docs verifies.
_DECODED = {"%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$", "%27": "'",
            "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";"}  # fmt: skip


def uri_variants(uri: str) -> list[str]:
    decoded = uri
    for escape, char in _DECODED.items():
        decoded = decoded.replace(escape, char).replace(escape.lower(), char)
    return [uri] if decoded == uri else [uri, decoded]


def _versions(sender: SenderConfig) -> tuple[str, ...]:
    configured = sender.options.get("signature_versions")
    return tuple(configured) if configured else ("v3",)


class HubSpotReceiver(Receiver):
    name: ClassVar[str] = "hubspot"
    methods: ClassVar[tuple[str, ...]] = ("POST", "GET", "PUT")
    source: ClassVar[str] = "hubspot"
    event_types: ClassVar[frozenset[str]] = frozenset({"track", "identify", "delete"})
    privileged: ClassVar[frozenset[str]] = frozenset({"delete"})

    def sign(self, secret: str, body: bytes, *, url: str, now: datetime) -> dict[str, str]:
        timestamp = str(int(now.timestamp() * 1000))
        return {
            "X-HubSpot-Request-Timestamp": timestamp,
            "X-HubSpot-Signature-v3": signature_v3(secret.encode(), "POST", url, body, timestamp),
            "Content-Type": "application/json",
        }

    def verify(self, inbound: Inbound, sender: SenderConfig, now: datetime) -> Proof:
        versions = _versions(sender)
        uri = signed_uri(inbound, sender)
        v3 = inbound.header("X-HubSpot-Signature-v3")
        legacy = inbound.header("X-HubSpot-Signature")
        if v3 and "v3" in versions:
            timestamp = (inbound.header("X-HubSpot-Request-Timestamp") or "").strip()
            if not timestamp.isdigit():
                raise Unauthorized("X-HubSpot-Request-Timestamp missing or not epoch milliseconds")
            try:
                when = datetime.fromtimestamp(int(timestamp) / 1000, UTC)
            except (OverflowError, OSError, ValueError) as err:
                raise Unauthorized("X-HubSpot-Request-Timestamp out of range") from err
            expected = [
                signature_v3(s.bytes, inbound.method, variant, inbound.body, timestamp)
                for s in sender.secrets
                for variant in uri_variants(uri)
            ]
            if not matches_any([v3.strip()], expected):
                raise Unauthorized("signature does not match")
            check_timestamp(when, now, int(sender.options.get("tolerance_seconds") or 300))
            return WHOLE_BODY
        if legacy:
            stated = (inbound.header("X-HubSpot-Signature-Version") or "").strip().lower()
            allowed = [v for v in ("v1", "v2") if v in versions and (not stated or stated == v)]
            expected = []
            for secret in sender.secrets:
                if "v1" in allowed:
                    expected.append(signature_v1(secret.bytes, inbound.body))
                if "v2" in allowed:
                    expected.append(signature_v2(secret.bytes, inbound.method, uri, inbound.body))
            if allowed and matches_any([legacy.strip().lower()], expected):
                return WHOLE_BODY
            raise Unauthorized("signature does not match or version not enabled")
        raise Unauthorized("signature header missing")

    def parse(
        self, inbound: Inbound, account: Account, sender: SenderConfig, now: datetime, proof: Proof
    ) -> list[Event]:
        if not inbound.body.strip():
            return []  # e.g. a signed v2 GET from a workflow: nothing to store
        if inbound.content_type not in ("application/json", "text/plain", ""):
            raise UnsupportedContentType(f"expected application/json, got {inbound.content_type}")
        payload = parse_json(inbound.body)
        items = payload if isinstance(payload, list) else [payload]
        return [self.normalize(item, account.id, now, f"body[{i}]") for i, item in enumerate(items)]

    def normalize(self, item: Any, account: str, now: datetime, where: str) -> Event:
        item = require_object(item, where)
        subscription = item.get("subscriptionType")
        if not isinstance(subscription, str) or not subscription.strip():
            raise MalformedPayload(f"{where}.subscriptionType is required")
        if item.get("eventId") in (None, ""):
            raise MalformedPayload(f"{where}.eventId is required")
        kind, name = NAMES.get(subscription.strip().lower(), ("track", snake_case(subscription)))
        traits: dict[str, Any] = {}
        prop = item.get("propertyName")
        if kind == "identify" and isinstance(prop, str) and prop:
            traits[prop] = item.get("propertyValue")
        properties = {k: v for k, v in item.items() if k != "attemptNumber"}
        if kind == "identify":
            properties.pop("propertyValue", None)
        is_contact = subscription.lower().startswith("contact.")
        # a contact's email property changed: the new address identifies the contact from now on
        new_email = item.get("propertyValue") if kind == "identify" and prop == "email" else None
        occurred = item.get("occurredAt")
        return Event(
            account=account,
            source=self.source,
            source_event_id=":".join(_part(item.get(k)) for k in DEDUPE_FIELDS)[:500],
            type=kind,
            name=name,
            original_name=subscription,
            occurred_at=parse_time(occurred, f"{where}.occurredAt") if occurred not in (None, "") else now,
            received_at=now,
            identities=identities(
                where,
                {"hubspot_contact_id": "objectId"},
                hubspot_contact_id=item.get("objectId") if is_contact else None,
                email=email_text(new_email, where, "propertyValue") if is_contact else None,
            ),
            properties=properties,
            traits=traits,
            raw=item,
        )


def _part(value: Any) -> str:
    return "" if value is None else str(value).replace(":", "%3A")
