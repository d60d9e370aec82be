"""Segment webhook destinations (Classic and Actions).

``X-Signature`` is hex HMAC-SHA1 of the body. In the Actions batch form (a JSON array) Segment
signs only the first element, so the signed bytes are the first element's raw text, cut from the
body without re-serializing. The opt-in ``X-Segment-Signature`` covers the whole body.

What the signature covers is part of the proof: a batch verified by ``X-Signature`` alone covers
its first element only, and admission refuses the other elements unless the account opted in
(``unsigned_batch_elements: accept``, never for privileged types).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import ClassVar

from connector.config import Account, SenderConfig
from connector.errors import MalformedPayload, Unauthorized
from connector.event import Event
from connector.ingest.receivers.base import (
    MAX_JSON_DEPTH,
    WHOLE_BODY,
    Inbound,
    Proof,
    Receiver,
    hmac_digest,
    matches_any,
    nested_deeper_than,
    require_json,
)
from connector.ingest.receivers.spec import SPEC_TYPES, normalize_body

FIRST_ONLY = Proof(covered=1)


def first_element_bytes(body: bytes) -> bytes:
    """The raw bytes of the first element of a JSON array body (what Segment Actions signs).

    Bytes that are not UTF-8 are carried through unchanged (``surrogateescape``), so such a body
    still verifies and is then refused by the parser with a 400 that says so.

    A body with no first element to cut (nested deeper than the parser's limit, not JSON, an empty
    array) is a 400 saying so, before verification: it is a property of the body alone, the same
    whatever the secret or the account, so it tells nothing about either; answering 401 would
    blame a signature for what the parser refuses."""
    if nested_deeper_than(body, MAX_JSON_DEPTH):
        raise MalformedPayload(f"body is nested deeper than {MAX_JSON_DEPTH} levels")
    text = body.decode("utf-8", "surrogateescape")
    start = 1
    while start < len(text) and text[start] in " \t\r\n":
        start += 1
    try:
        _, end = json.JSONDecoder().raw_decode(text, start)
    except (ValueError, RecursionError) as err:
        raise MalformedPayload(
            "batch body has no first element that is JSON (Segment signs the first)"
        ) from err
    return text[start:end].encode("utf-8", "surrogateescape")


def is_batch(body: bytes) -> bool:
    return body.lstrip().startswith(b"[")


def signed_bytes(body: bytes) -> bytes:
    return first_element_bytes(body.lstrip()) if is_batch(body) else body


def sign(secret: bytes, body: bytes) -> str:
    """``X-Signature`` for a body (tests and the ``connector sign`` helper use this)."""
    return hmac_digest("sha1", secret, signed_bytes(body)).hex()


def sign_whole(secret: bytes, body: bytes) -> str:
    """``X-Segment-Signature``: the whole body."""
    return hmac_digest("sha1", secret, body).hex()


class SegmentReceiver(Receiver):
    name: ClassVar[str] = "segment"
    methods: ClassVar[tuple[str, ...]] = ("POST", "PUT", "PATCH")
    source: ClassVar[str] = "segment"
    event_types: ClassVar[frozenset[str]] = frozenset(SPEC_TYPES)
    privileged: ClassVar[frozenset[str]] = frozenset({"delete"})
    identity_required: ClassVar[bool] = True

    def sign(self, secret: str, body: bytes, *, url: str, now: datetime) -> dict[str, str]:
        """Headers a real Segment delivery of ``body`` would carry."""
        del url, now
        return {"X-Signature": sign(secret.encode(), body), "Content-Type": "application/json"}

    def verify(self, inbound: Inbound, sender: SenderConfig, now: datetime) -> Proof:
        del now
        whole = inbound.header("X-Segment-Signature")
        first = inbound.header("X-Signature")
        if not whole and not first:
            raise Unauthorized("signature header missing")
        # Both are computed for every secret (constant work); the whole-body one proves more.
        whole_ok = bool(whole) and matches_any(
            [(whole or "").strip().lower()], [sign_whole(s.bytes, inbound.body) for s in sender.secrets]
        )
        first_ok = bool(first) and matches_any(
            [(first or "").strip().lower()], [sign(s.bytes, inbound.body) for s in sender.secrets]
        )
        if whole_ok:
            return WHOLE_BODY
        if first_ok:
            return FIRST_ONLY if is_batch(inbound.body) else WHOLE_BODY
        raise Unauthorized("signature does not match")

    def parse(
        self, inbound: Inbound, account: Account, sender: SenderConfig, now: datetime, proof: Proof
    ) -> list[Event]:
        return normalize_body(require_json(inbound), account=account.id, source=self.source, received_at=now)
