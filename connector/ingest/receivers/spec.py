"""Normalization of Segment-spec messages (Segment webhooks, the tracking API, RudderStack)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from connector.errors import MalformedPayload
from connector.event import Event
from connector.ingest.receivers.base import first_email, identities, parse_time
from rules.names import canonical

SPEC_TYPES = ("track", "identify", "page", "screen", "group", "alias", "delete")
_FIXED_NAMES = {
    "identify": "identify",
    "page": "page_viewed",
    "screen": "screen_viewed",
    "group": "group",
    "alias": "alias",
    "delete": "delete",
}


SPEC_FIELDS = {
    "user_id": "userId",
    "anonymous_id": "anonymousId",
    "previous_id": "previousId",
    "group_id": "groupId",
}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _email(
    kind: str, traits: dict[str, Any], context: dict[str, Any], properties: dict[str, Any], where: str
) -> str | None:
    """The person's address, read field by field: the traits (an identify's or a group's own,
    then the context's), then the properties; a list or an object is refused naming its field."""
    candidates = [
        ("context.traits.email", _dict(context.get("traits")).get("email")),
        ("properties.email", properties.get("email")),
    ]
    if kind in ("identify", "group"):
        candidates.insert(0, ("traits.email", traits.get("email")))
    return first_email(where, candidates)


def message_id(message: dict[str, Any]) -> str:
    """``messageId``, or a digest of the message when a sender left it out (retries still dedupe)."""
    mid = message.get("messageId")
    if isinstance(mid, str | int) and not isinstance(mid, bool) and str(mid).strip():
        return str(mid).strip()[:500]
    canonical_json = json.dumps(message, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical_json.encode()).hexdigest()


def occurred_at(message: dict[str, Any], received_at: datetime, where: str) -> datetime:
    for key in ("timestamp", "originalTimestamp"):
        if message.get(key) not in (None, ""):
            return parse_time(message[key], f"{where}.{key}")
    if message.get("receivedAt") not in (None, ""):
        return parse_time(message["receivedAt"], f"{where}.receivedAt")
    return received_at


def normalize(
    message: Any, *, account: str, source: str, received_at: datetime, where: str = "body"
) -> Event:
    """One Segment-spec message → Event. Raises :class:`MalformedPayload` naming the bad field."""
    if not isinstance(message, dict):
        raise MalformedPayload(f"{where} must be a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str) or kind.lower() not in SPEC_TYPES:
        raise MalformedPayload(f"{where}.type must be one of {', '.join(SPEC_TYPES)}")
    kind = kind.lower()
    context = _dict(message.get("context"))
    properties = _dict(message.get("properties"))
    traits = _dict(message.get("traits")) if kind in ("identify", "group") else _dict(context.get("traits"))
    if kind == "identify" and not traits:
        # RudderStack's SDKs send an identify's traits in context.traits only
        traits = _dict(context.get("traits"))
    if kind == "track":
        original = message.get("event")
        if not isinstance(original, str) or not original.strip():
            raise MalformedPayload(f"{where}.event is required for a track call")
        name = canonical(original)
    else:
        original = message.get("name") if isinstance(message.get("name"), str) else None
        name = _FIXED_NAMES[kind]
        if kind in ("page", "screen") and original:
            properties = {**properties, "name": original}
    email = traits.get("email")
    if email is None and kind in ("identify", "group"):
        email = _dict(context.get("traits")).get("email")
    if email is None:
        email = properties.get("email")
    if not (email is None or (email and isinstance(email, str))):  # empty, or not text: read closely
        email = _email(kind, traits, context, properties, where)
    ids = identities(
        where,
        SPEC_FIELDS,
        user_id=message.get("userId"),
        anonymous_id=message.get("anonymousId"),
        email=email,
        previous_id=message.get("previousId") if kind == "alias" else None,
        group_id=message.get("groupId") if kind == "group" else None,
    )
    return Event(
        account=account,
        source=source,
        source_event_id=message_id(message),
        type="track" if kind in ("track",) else kind,
        name=name,
        original_name=original if isinstance(original, str) else None,
        occurred_at=occurred_at(message, received_at, where),
        received_at=received_at,
        identities=ids,
        properties=properties,
        traits=traits,
        raw=message,
    )


def normalize_body(payload: Any, *, account: str, source: str, received_at: datetime) -> list[Event]:
    """A webhook body of Segment-spec messages: one object, or an array of them (a batch)."""
    if isinstance(payload, list):
        if not payload:
            raise MalformedPayload("batch body is an empty array")
        return [
            normalize(m, account=account, source=source, received_at=received_at, where=f"body[{i}]")
            for i, m in enumerate(payload)
        ]
    return [normalize(payload, account=account, source=source, received_at=received_at)]
