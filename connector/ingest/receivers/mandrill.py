"""Mailchimp Transactional (Mandrill) webhooks.

``X-Mandrill-Signature`` = base64 HMAC-SHA1(webhook key, URL + each POST key + value, keys sorted),
where URL is the webhook URL exactly as registered (sender option ``url``, required: behind a
proxy the URL the connector sees is not the one Mandrill signed). Mandrill checks the URL with a
HEAD request first: answered 200, nothing stored.

The only POST field is ``mandrill_events``, a JSON array: one Event per element, deduplicated on
``_id`` + ``event`` + ``ts``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode

from connector.config import Account, SenderConfig
from connector.errors import MalformedPayload, Unauthorized, UnsupportedContentType
from connector.event import Event
from connector.ingest.receivers.base import (
    PROBE,
    WHOLE_BODY,
    Inbound,
    Proof,
    Receiver,
    b64,
    first_email,
    hmac_digest,
    identities,
    parse_json,
    parse_time,
    verify_with_secrets,
)
from rules.names import snake_case

NAMES: dict[str, str] = {
    "open": "email_opened",
    "click": "email_clicked",
    "send": "email_delivered",
    "deferral": "email_deferred",
    "hard_bounce": "email_bounced",
    "soft_bounce": "email_bounced",
    "spam": "email_marked_spam",
    "unsub": "unsubscribed",
    "reject": "email_rejected",
}
FORM = "application/x-www-form-urlencoded"
MESSAGE_FIELDS = ("subject", "sender", "tags", "metadata", "state", "template", "bounce_description", "diag")


def form_pairs(body: bytes, errors: str = "surrogateescape") -> dict[str, str]:
    """The form's fields. With ``errors="surrogateescape"`` (verification) bytes that are not
    UTF-8 are carried through unchanged, so such a body still verifies and is then refused with a
    400 by the strict reading (``errors="strict"``)."""
    try:
        return dict(parse_qsl(body.decode("utf-8", errors), keep_blank_values=True, errors=errors))
    except (UnicodeDecodeError, ValueError) as err:
        raise MalformedPayload("form body is not valid URL-encoded UTF-8") from err


def signature(secret: bytes, url: str, params: dict[str, str]) -> str:
    message = url + "".join(key + params[key] for key in sorted(params))
    return b64(hmac_digest("sha1", secret, message.encode("utf-8", "surrogateescape")))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class MandrillReceiver(Receiver):
    name: ClassVar[str] = "mandrill"
    methods: ClassVar[tuple[str, ...]] = ("HEAD", "POST")
    source: ClassVar[str] = "mandrill"
    event_types: ClassVar[frozenset[str]] = frozenset({"track"})
    element: ClassVar[str] = "mandrill_events[{i}]"

    def sign(self, secret: str, body: bytes, *, url: str, now: datetime) -> dict[str, str]:
        """``body`` is the form body (``mandrill_events=...``); ``url`` the URL as registered."""
        del now
        return {
            "X-Mandrill-Signature": signature(secret.encode(), url, form_pairs(body)),
            "Content-Type": FORM,
        }

    @staticmethod
    def form_body(events: list[dict[str, Any]]) -> bytes:
        return urlencode({"mandrill_events": json.dumps(events)}).encode()

    def verify(self, inbound: Inbound, sender: SenderConfig, now: datetime) -> Proof:
        del now
        if inbound.method == "HEAD":
            return PROBE  # Mandrill's URL check
        url = sender.options.get("url") or inbound.url.partition("?")[0]
        provided = inbound.header("X-Mandrill-Signature")
        if not provided:
            raise Unauthorized("signature header missing")
        try:
            params = form_pairs(inbound.body)
        except MalformedPayload as err:
            raise Unauthorized("form body cannot be read to verify it") from err
        verify_with_secrets(provided, sender.secrets, lambda key: signature(key, url, params))
        return WHOLE_BODY

    def parse(
        self, inbound: Inbound, account: Account, sender: SenderConfig, now: datetime, proof: Proof
    ) -> list[Event]:
        if inbound.content_type not in (FORM, ""):
            raise UnsupportedContentType(f"expected {FORM}, got {inbound.content_type}")
        params = form_pairs(inbound.body, "strict")
        if "mandrill_events" not in params:
            raise MalformedPayload("form field 'mandrill_events' is required")
        events = parse_json(params["mandrill_events"].encode("utf-8"), "mandrill_events")
        if not isinstance(events, list):
            raise MalformedPayload("mandrill_events must be a JSON array")
        return [self.normalize(e, account.id, now, f"mandrill_events[{i}]") for i, e in enumerate(events)]

    def normalize(self, item: Any, account: str, now: datetime, where: str) -> Event:
        if not isinstance(item, dict):
            raise MalformedPayload(f"{where} must be a JSON object")
        original = item.get("event")
        if not isinstance(original, str) or not original.strip():
            sync_type = item.get("type")  # sync events (whitelist/blacklist) carry type + action
            if not isinstance(sync_type, str) or not sync_type.strip():
                raise MalformedPayload(f"{where}.event is required")
            action = item.get("action") if isinstance(item.get("action"), str) else ""
            original = f"{sync_type}_{action}" if action else sync_type
        msg = _dict(item.get("msg"))
        reject = _dict(item.get("reject"))
        email = msg.get("email")
        if email is None:
            email = reject.get("email")
        if not (email is None or (email and isinstance(email, str))):  # empty, or not text: read closely
            email = first_email(
                where, [("msg.email", msg.get("email")), ("reject.email", reject.get("email"))]
            )
        properties: dict[str, Any] = {"event": original}
        if item.get("_id") not in (None, ""):
            properties["message_id"] = item["_id"]
        for key in MESSAGE_FIELDS:
            if msg.get(key) not in (None, "", [], {}):
                properties[key] = msg[key]
        for key in ("url", "ip", "user_agent", "location"):
            if item.get(key) not in (None, ""):
                properties[key] = item[key]
        if original in ("hard_bounce", "soft_bounce"):
            properties["bounce_type"] = "hard" if original == "hard_bounce" else "soft"
        ts = item.get("ts")
        return Event(
            account=account,
            source=self.source,
            source_event_id=_dedupe_id(item, original),
            type="track",
            name=NAMES.get(original.strip().lower(), snake_case(original)),
            original_name=original,
            occurred_at=parse_time(ts, f"{where}.ts") if ts not in (None, "") else now,
            received_at=now,
            identities=identities(email=email),
            properties=properties,
            raw=item,
        )


def _dedupe_id(item: dict[str, Any], original: str) -> str:
    mid = item.get("_id")
    if isinstance(mid, str | int) and not isinstance(mid, bool) and str(mid):
        return f"{mid}:{original}:{item.get('ts', '')}"[:500]
    digest = hashlib.sha256(json.dumps(item, sort_keys=True, default=str).encode()).hexdigest()
    return f"sha256:{digest}"
