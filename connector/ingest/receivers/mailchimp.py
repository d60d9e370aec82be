"""Mailchimp Marketing audience (list) webhooks.

Mailchimp signs nothing. The account's secret is a token in the URL registered with Mailchimp
(``/webhooks/<account>/mailchimp?secret=<token>``), compared in constant time against every
configured secret. The token is never stored, logged or echoed: the Event keeps the form body only.

Mailchimp checks a webhook URL on save with a GET (some report an empty POST): both are answered
200 without the token, and store nothing.

Deliveries are ``application/x-www-form-urlencoded`` with bracketed keys (``data[merges][FNAME]``),
parsed into nested dicts. ``fired_at`` (``YYYY-MM-DD HH:MM:SS``) carries no zone; Mailchimp's
servers report UTC, and it is taken as UTC. Mailchimp provides no event id: the dedupe id is a
SHA-256 of (type, fired_at, list_id, member id or email).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit

from connector.config import Account, SenderConfig
from connector.errors import MalformedPayload, Unauthorized, UnsupportedContentType
from connector.event import Event
from connector.ingest.receivers.base import (
    MAX_JSON_DEPTH,
    PROBE,
    WHOLE_BODY,
    Inbound,
    Proof,
    Receiver,
    identities,
    matches_any,
    parse_time,
)
from rules.names import snake_case

TYPES: dict[str, tuple[str, str]] = {
    "subscribe": ("track", "subscribed"),
    "unsubscribe": ("track", "unsubscribed"),
    "profile": ("identify", "profile_updated"),
    "upemail": ("track", "email_changed"),
    "cleaned": ("track", "email_cleaned"),
    "campaign": ("track", "campaign_status"),
}
MERGE_TRAITS = {"FNAME": "first_name", "LNAME": "last_name", "PHONE": "phone", "BIRTHDAY": "birthday"}
FORM = "application/x-www-form-urlencoded"
_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")


def parse_form(body: bytes) -> dict[str, Any]:
    """``a[b][c]=1`` → ``{"a": {"b": {"c": "1"}}}``. Keys that do not nest are kept flat."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MalformedPayload("form body is not UTF-8") from err
    try:
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict")
    except (ValueError, UnicodeDecodeError) as err:
        raise MalformedPayload("form body is not valid URL encoding") from err
    out: dict[str, Any] = {}
    for key, value in pairs:
        match = _KEY.match(key)
        path = [match.group(1), *_PART.findall(match.group(2))] if match else [key]
        if len(path) > MAX_JSON_DEPTH:
            raise MalformedPayload(f"form key {key[:40]!r}... is nested deeper than {MAX_JSON_DEPTH} levels")
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        if not isinstance(node.get(path[-1]), dict):
            node[path[-1]] = value
    return out


# the form fields identities come from, as an answer names them
_FIELDS = {"email": "form field data[email]", "mailchimp_member_id": "form field data[id]"}
_NEW_FIELDS = {"email": "form field data[new_email]", "mailchimp_member_id": "form field data[new_id]"}
_OLD_FIELDS = {"email": "form field data[old_email]", "mailchimp_member_id": "form field data[new_id]"}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def fired_at(value: Any, now: datetime) -> datetime:
    if not isinstance(value, str) or not value.strip():
        return now
    try:
        return datetime.strptime(value.strip(), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return parse_time(value, "fired_at")


def dedupe_id(form: dict[str, Any]) -> str:
    data = _dict(form.get("data"))
    member = data.get("id") or data.get("new_id") or data.get("email") or data.get("new_email") or ""
    parts = [form.get("type", ""), form.get("fired_at", ""), data.get("list_id", ""), member]
    text = "\x1f".join(p if isinstance(p, str) else "" for p in parts)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def token_from(inbound: Inbound) -> str | None:
    value = inbound.args.get("secret")
    return value if value else None


class MailchimpReceiver(Receiver):
    name: ClassVar[str] = "mailchimp"
    methods: ClassVar[tuple[str, ...]] = ("GET", "HEAD", "POST")
    source: ClassVar[str] = "mailchimp"
    event_types: ClassVar[frozenset[str]] = frozenset({"track", "identify"})
    element: ClassVar[str] = "body"

    def sign(self, secret: str, body: bytes, *, url: str, now: datetime) -> dict[str, str]:
        """Mailchimp signs nothing: the secret goes in the URL (``?secret=``), see :func:`signed_url`."""
        del secret, body, url, now
        return {"Content-Type": FORM}

    @staticmethod
    def signed_url(secret: str, url: str) -> str:
        return url + ("&" if urlsplit(url).query else "?") + urlencode({"secret": secret})

    def verify(self, inbound: Inbound, sender: SenderConfig, now: datetime) -> Proof:
        del now
        if inbound.method in ("GET", "HEAD") or not inbound.body.strip():
            return PROBE  # Mailchimp's URL validation probe
        token = token_from(inbound)
        if token is None:
            raise Unauthorized("secret token missing from the URL")
        if not matches_any([token], [s.value for s in sender.secrets]):
            raise Unauthorized("secret token does not match")
        return WHOLE_BODY

    def parse(
        self, inbound: Inbound, account: Account, sender: SenderConfig, now: datetime, proof: Proof
    ) -> list[Event]:
        if inbound.content_type not in (FORM, ""):
            raise UnsupportedContentType(f"expected {FORM}, got {inbound.content_type}")
        form = parse_form(inbound.body)
        event = self.normalize(form, account.id, now)
        link = email_link(event, form)
        return [event] if link is None else [link, event]

    def normalize(self, form: dict[str, Any], account: str, now: datetime) -> Event:
        kind_raw = form.get("type")
        if not isinstance(kind_raw, str) or not kind_raw.strip():
            raise MalformedPayload("form field 'type' is required")
        kind, name = TYPES.get(kind_raw.strip().lower(), ("track", snake_case(kind_raw)))
        data = _dict(form.get("data"))
        merges = _dict(data.get("merges"))
        traits: dict[str, Any] = {}
        for key, value in merges.items():
            if key.upper() in ("EMAIL", "INTERESTS", "GROUPINGS"):
                continue
            traits[MERGE_TRAITS.get(key.upper(), key.lower())] = value
        properties = {k: v for k, v in data.items() if k not in ("merges",)}
        ids: dict[str, str]
        if name == "campaign_status":
            ids = {}
        elif name == "email_changed":
            ids = identities(
                "", _NEW_FIELDS, email=data.get("new_email"), mailchimp_member_id=data.get("new_id")
            )
        else:
            ids = identities("", _FIELDS, email=data.get("email"), mailchimp_member_id=data.get("id"))
        return Event(
            account=account,
            source=self.source,
            source_event_id=dedupe_id(form),
            type=kind,
            name=name,
            original_name=kind_raw,
            occurred_at=fired_at(form.get("fired_at"), now),
            received_at=now,
            identities=ids,
            properties=properties,
            traits=traits,
            raw=form,
        )


def email_link(event: Event, form: dict[str, Any]) -> Event | None:
    """For ``upemail``: an identify that ties the new member id to the person's old address, so
    that the person's profile (found by the old address) takes the new address as an identity.

    Mailchimp sends ``old_email``, ``new_email`` and ``new_id`` (not the old member id): the change
    event itself carries the new address and id, this one the old address and the new id; the
    worker resolves both to one profile."""
    if event.name != "email_changed":
        return None
    data = _dict(form.get("data"))
    old = identities("", _OLD_FIELDS, email=data.get("old_email"), mailchimp_member_id=data.get("new_id"))
    if "email" not in old or "mailchimp_member_id" not in old:
        return None
    new_email = event.identities.get("email")
    return Event(
        account=event.account,
        source=event.source,
        source_event_id=f"{event.source_event_id}:link",
        type="identify",
        name="identify",
        original_name=event.original_name,
        occurred_at=event.occurred_at,
        received_at=event.received_at,
        identities=old,
        properties={},
        traits={"email": new_email} if new_email else {},
        raw=event.raw,
    )
