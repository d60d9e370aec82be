"""The canonical Event (DESIGN.md §3) and its marshmallow schema.

Every receiver normalizes what it gets into :class:`Event`. Events travel through Redis as JSON
(:meth:`Event.to_json` / :func:`load_event`); :class:`EventSchema` is the contract, and is what
the worker uses to decode and validate stored items.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate

from connector import jsonload
from connector.clock import isoformat, to_utc
from connector.errors import UndecodableItem

EVENT_TYPES = ("track", "identify", "page", "screen", "group", "alias", "delete", "data_request")
# Types that erase a person or export them: only with proof (connector/ingest/admission.py).
PRIVILEGED_TYPES = ("delete", "data_request")
# Sources whose events came with an account's public write key (the tracking API), which anyone may
# hold: they cannot merge two profiles that both have an email (docs/profiles.md).
PUBLIC_SOURCES = frozenset({"tracking"})

# Identity kinds a profile can be found by. Receivers may add source-specific ids
# (``shopify_customer_id``, ``klaviyo_profile_id``, ``hubspot_contact_id``, ``mailchimp_member_id``...).
CORE_IDENTITIES = ("user_id", "anonymous_id", "email")


@dataclass(frozen=True, slots=True)
class Event:
    account: str
    source: str
    source_event_id: str
    type: str
    name: str
    occurred_at: datetime
    received_at: datetime
    identities: dict[str, str] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)
    original_name: str | None = None
    raw: Any = None
    # computed once: ingest, the worker's dedupe, erasure and attribution all ask for it
    _event_id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_event_id", event_id(self.source, self.source_event_id))

    @property
    def event_id(self) -> str:
        """Stable id of this event within its account: the same delivery always has the same id."""
        return self._event_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "source": self.source,
            "source_event_id": self.source_event_id,
            "event_id": self.event_id,
            "type": self.type,
            "name": self.name,
            "original_name": self.original_name,
            "occurred_at": isoformat(self.occurred_at),
            "received_at": isoformat(self.received_at),
            "identities": self.identities,
            "properties": self.properties,
            "traits": self.traits,
            "raw": self.raw,
        }

    def to_json(self) -> str:
        """Strict JSON: a NaN or an infinity anywhere raises ``ValueError`` (JSON has neither)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), default=str, allow_nan=False)


def event_id(source: str, source_event_id: str) -> str:
    return hashlib.sha256(f"{source}\x1f{source_event_id}".encode()).hexdigest()[:32]


class AwareDateTime(fields.DateTime):
    """ISO-8601 in, aware UTC out; naive values are taken as UTC."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        parsed = super()._deserialize(value, attr, data, **kwargs)
        return to_utc(parsed)


class EventSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    account = fields.String(required=True, validate=validate.Length(min=1, max=100))
    source = fields.String(required=True, validate=validate.Length(min=1, max=50))
    source_event_id = fields.String(required=True, validate=validate.Length(min=1, max=500))
    event_id = fields.String(load_default=None)
    type = fields.String(required=True, validate=validate.OneOf(EVENT_TYPES))
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    original_name = fields.String(load_default=None, allow_none=True)
    occurred_at = AwareDateTime(required=True)
    received_at = AwareDateTime(required=True)
    identities = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)
    properties = fields.Dict(keys=fields.String(), load_default=dict)
    traits = fields.Dict(keys=fields.String(), load_default=dict)
    raw = fields.Raw(load_default=None, allow_none=True)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> Event:
        data.pop("event_id", None)
        return Event(**data)


_SCHEMA = EventSchema()
_LIMITS = {"account": 100, "source": 50, "source_event_id": 500, "name": 200}


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        return to_utc(datetime.fromisoformat(text))
    except ValueError:
        return None


def _strings(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _fast(data: dict[str, Any]) -> Event | None:
    """The schema's checks, written out for the worker's hot path; None sends the item through
    :class:`EventSchema` (which either accepts it or says what is wrong)."""
    for key, limit in _LIMITS.items():
        value = data.get(key)
        if not isinstance(value, str) or not 1 <= len(value) <= limit:
            return None
    if data.get("type") not in EVENT_TYPES:
        return None
    occurred, received = _time(data.get("occurred_at")), _time(data.get("received_at"))
    original = data.get("original_name")
    identities = data.get("identities", {})
    properties = data.get("properties", {})
    traits = data.get("traits", {})
    if occurred is None or received is None or not (original is None or isinstance(original, str)):
        return None
    if not _strings(identities) or not isinstance(properties, dict) or not isinstance(traits, dict):
        return None
    return Event(
        account=data["account"],
        source=data["source"],
        source_event_id=data["source_event_id"],
        type=data["type"],
        name=data["name"],
        occurred_at=occurred,
        received_at=received,
        identities=identities,
        properties=properties,
        traits=traits,
        original_name=original,
        raw=data.get("raw"),
    )


def load_event(payload: str | bytes | dict[str, Any]) -> Event:
    """Decode and validate one stored event. Raises :class:`UndecodableItem` with the reason."""
    try:
        data = jsonload.loads(payload) if isinstance(payload, str | bytes) else payload
    except (ValueError, UnicodeDecodeError) as err:
        raise UndecodableItem(f"not JSON: {err}") from err
    if not isinstance(data, dict):
        raise UndecodableItem("not a JSON object")
    fast = _fast(data)
    if fast is not None:
        return fast
    try:
        result = _SCHEMA.load(data)
    except ValidationError as err:
        raise UndecodableItem(f"invalid event: {err.messages}") from err
    assert isinstance(result, Event)
    return result
