"""RudderStack Webhook destination.

RudderStack does not sign webhook bodies; it sends static headers configured in the destination.
The account's secret travels in one of them (sender option ``header``, default ``X-Signing-Key``)
and is compared in constant time against every configured secret. The body is one RudderStack
(Segment-spec) message, or an array of them; each is normalized by :mod:`.spec` and
deduplicated on ``messageId``.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from connector.config import Account, SenderConfig
from connector.errors import Unauthorized
from connector.event import Event
from connector.ingest.receivers.base import WHOLE_BODY, Inbound, Proof, Receiver, matches_any, require_json
from connector.ingest.receivers.spec import SPEC_TYPES, normalize_body

DEFAULT_HEADER = "X-Signing-Key"


def header_name(sender: SenderConfig) -> str:
    return str(sender.options.get("header") or DEFAULT_HEADER)


class RudderStackReceiver(Receiver):
    name: ClassVar[str] = "rudderstack"
    methods: ClassVar[tuple[str, ...]] = ("POST", "PUT", "PATCH")
    source: ClassVar[str] = "rudderstack"
    event_types: ClassVar[frozenset[str]] = frozenset(SPEC_TYPES)
    privileged: ClassVar[frozenset[str]] = frozenset({"delete"})
    identity_required: ClassVar[bool] = True

    def sign(self, secret: str, body: bytes, *, url: str, now: datetime) -> dict[str, str]:
        del body, url, now
        return {DEFAULT_HEADER: secret, "Content-Type": "application/json"}

    def headers_for(self, sender: SenderConfig, signed: dict[str, str]) -> dict[str, str]:
        """``signed`` with the secret under the header this account configured (option ``header``)."""
        return {(header_name(sender) if k == DEFAULT_HEADER else k): v for k, v in signed.items()}

    def verify(self, inbound: Inbound, sender: SenderConfig, now: datetime) -> Proof:
        del now
        provided = inbound.header(header_name(sender))
        if not provided:
            raise Unauthorized("secret header missing")
        if not matches_any([provided.strip()], [s.value for s in sender.secrets]):
            raise Unauthorized("secret header does not match")
        return WHOLE_BODY  # a static secret proves the whole request came from the destination

    def parse(
        self, inbound: Inbound, account: Account, sender: SenderConfig, now: datetime, proof: Proof
    ) -> list[Event]:
        return normalize_body(require_json(inbound), account=account.id, source=self.source, received_at=now)
