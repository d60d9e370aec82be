"""Segment webhook destinations (Classic and Actions).

``X-Signature`` is hex HMAC-SHA1 of the body. In the Actions batch form (a JSON array) Segment
signs only the first element, so the signed bytes are the first element's raw text, cut from the
body without re-serializing. The opt-in ``X-Segment-Signature`` covers the whole body.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import ClassVar

from connector.config import Account, SenderConfig
from connector.errors import Unauthorized
from connector.event import Event
from connector.ingest.receivers.base import Inbound, hmac_digest, matches_any, require_json
from connector.ingest.receivers.spec import normalize_body


def first_element_bytes(body: bytes) -> bytes:
    """The raw bytes of the first element of a JSON array body (what Segment Actions signs)."""
    text = body.decode("utf-8")
    start = 1
    while start < len(text) and text[start] in " \t\r\n":
        start += 1
    try:
        _, end = json.JSONDecoder().raw_decode(text, start)
    except ValueError as err:
        raise Unauthorized("batch body has no signable first element") from err
    return text[start:end].encode("utf-8")


def signed_bytes(body: bytes) -> bytes:
    stripped = body.lstrip()
    if stripped.startswith(b"["):
        try:
            return first_element_bytes(stripped)
        except UnicodeDecodeError as err:
            raise Unauthorized("body is not UTF-8") from err
    return body


def sign(secret: bytes, body: bytes) -> str:
    """``X-Signature`` for a body (tests and the ``connector sign`` helper use this)."""
    return hmac_digest("sha1", secret, signed_bytes(body)).hex()


class SegmentReceiver:
    name: ClassVar[str] = "segment"
    methods: ClassVar[tuple[str, ...]] = ("POST", "PUT", "PATCH")
    source: ClassVar[str] = "segment"

    def sign(self, secret: str, body: bytes, *, url: str, now: datetime) -> dict[str, str]:
        """Headers a real Segment delivery of ``body`` would carry."""
        del url, now
        return {"X-Signature": sign(secret.encode(), body), "Content-Type": "application/json"}

    def verify(self, inbound: Inbound, sender: SenderConfig) -> None:
        whole = inbound.header("X-Segment-Signature")
        first = inbound.header("X-Signature")
        if not whole and not first:
            raise Unauthorized("signature header missing")
        candidates: list[str] = []
        expected: list[str] = []
        for secret in sender.secrets:
            if whole:
                candidates.append(whole.strip().lower())
                expected.append(hmac_digest("sha1", secret.bytes, inbound.body).hex())
            if first:
                candidates.append(first.strip().lower())
                expected.append(sign(secret.bytes, inbound.body))
        if not matches_any(candidates, expected):
            raise Unauthorized("signature does not match")

    def handle(self, inbound: Inbound, account: Account, sender: SenderConfig, now: datetime) -> list[Event]:
        self.verify(inbound, sender)
        return normalize_body(require_json(inbound), account=account.id, source=self.source, received_at=now)
