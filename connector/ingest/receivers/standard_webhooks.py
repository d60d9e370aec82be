"""Standard Webhooks (and Svix): the generic signed entry for any other source.

Headers ``webhook-id``, ``webhook-timestamp`` (epoch seconds) and ``webhook-signature``, or their
``svix-*`` aliases. Signed content: ``{id}.{timestamp}.{body}``; signature ``v1,`` + base64
HMAC-SHA256 with key = base64-decode of the secret without its ``whsec_`` prefix (a secret that is
not base64 is used as its UTF-8 bytes). The signature header is a space-separated list: accepted
when any ``v1`` entry matches any configured secret; other versions (``v1a`` ...) are skipped.
Timestamps more than ``tolerance_seconds`` (default 300) old or ahead are rejected. ``webhook-id``
is the dedupe id.

Body: ``{"type": "...", "timestamp": "...", "data": {...}}``; the name is the canonical form of
``type`` (``webhook_received`` when the body has none), identities come from ``data``
(``email``, ``user_id``/``userId``, ``anonymous_id``/``anonymousId``).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, ClassVar

from adapters.webhook import sign as sign_standard_webhook
from connector.config import Account, SenderConfig
from connector.errors import Unauthorized
from connector.event import Event
from connector.ingest.receivers.base import (
    Inbound,
    Proof,
    Receiver,
    check_timestamp,
    email_text,
    epoch_seconds,
    identities,
    matches_any,
    parse_time,
    require_json,
    require_object,
)
from rules.names import canonical

UNTYPED_NAME = "webhook_received"


# One definition of the scheme: the webhook trigger destination signs with it, this receiver checks it.
signature = sign_standard_webhook


def _header(inbound: Inbound, name: str) -> str | None:
    return inbound.header(f"webhook-{name}") or inbound.header(f"svix-{name}")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class StandardWebhooksReceiver(Receiver):
    name: ClassVar[str] = "standard_webhooks"
    methods: ClassVar[tuple[str, ...]] = ("POST",)
    source: ClassVar[str] = "standard_webhooks"
    event_types: ClassVar[frozenset[str]] = frozenset({"track"})
    element: ClassVar[str] = "body"

    def sign(
        self, secret: str, body: bytes, *, url: str, now: datetime, msg_id: str | None = None
    ) -> dict[str, str]:
        del url
        msg_id = msg_id or "msg_" + hashlib.sha256(body).hexdigest()[:24]
        timestamp = str(int(now.timestamp()))
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": signature(secret, msg_id, timestamp, body),
            "Content-Type": "application/json",
        }

    def verify(self, inbound: Inbound, sender: SenderConfig, now: datetime) -> Proof:
        msg_id, timestamp, header = (_header(inbound, n) for n in ("id", "timestamp", "signature"))
        if not msg_id or not timestamp or not header:
            raise Unauthorized("webhook-id, webhook-timestamp or webhook-signature header missing")
        when = epoch_seconds(timestamp.strip())
        candidates = [entry.partition(",")[2] for entry in header.split() if entry.partition(",")[0] == "v1"]
        if not candidates:
            raise Unauthorized("no v1 signature in the header")
        expected = [
            signature(s.value, msg_id, timestamp.strip(), inbound.body).partition(",")[2]
            for s in sender.secrets
        ]
        if not matches_any(candidates, expected):
            raise Unauthorized("signature does not match")
        check_timestamp(when, now, int(sender.options.get("tolerance_seconds") or 300))
        return Proof(detail=msg_id.strip())  # webhook-id is signed: a sound dedupe id

    def parse(
        self, inbound: Inbound, account: Account, sender: SenderConfig, now: datetime, proof: Proof
    ) -> list[Event]:
        msg_id = proof.detail
        payload = require_object(require_json(inbound), "body")
        kind = payload.get("type")
        if not isinstance(kind, str) or not kind.strip():
            kind = None  # the spec asks senders for a type; a signed body without one is still kept
        data = _dict(payload.get("data"))
        email = data.get("email")
        stamp = payload.get("timestamp")
        header_time = epoch_seconds((_header(inbound, "timestamp") or "").strip())
        return [
            Event(
                account=account.id,
                source=self.source,
                source_event_id=msg_id[:500],
                type="track",
                name=canonical(kind) if kind else UNTYPED_NAME,
                original_name=kind,
                occurred_at=parse_time(stamp, "body.timestamp") if stamp not in (None, "") else header_time,
                received_at=now,
                identities=identities(
                    "body.data",
                    {
                        "user_id": "user_id" if "user_id" in data else "userId",
                        "anonymous_id": "anonymous_id" if "anonymous_id" in data else "anonymousId",
                    },
                    email=email_text(email, "body.data", "email"),
                    user_id=data.get("user_id", data.get("userId")),
                    anonymous_id=data.get("anonymous_id", data.get("anonymousId")),
                ),
                properties=data,
                traits=_dict(data.get("traits")),
                raw=payload,
            )
        ]
