"""Segment-compatible HTTP tracking API (``/v1/track`` ...).

Segment's and RudderStack's analytics SDKs send here after changing their host. The write key is
the HTTP Basic username (password empty) or ``writeKey`` in the body; it selects the account
(``senders.tracking.secret_env``). An unknown or missing key is answered like a bad signature, and
nothing about the body is told before the key is known: a key in the header is checked before the
body is decoded, and a body that cannot be decoded to find ``writeKey`` in it is a missing key.

Bodies may be gzip-compressed (``Content-Encoding: gzip``); the decompressed size is bounded by
the same limit as any body (413 above it). Single calls take their type from the path; a batch
is ``{"batch": [...]}`` with a ``type`` per message, and an invalid element is a 400 naming
``batch[i].field``. ``timestamp`` is taken as sent; without it, ``originalTimestamp`` is
corrected for the device's clock skew like Segment does (``now - (sentAt - originalTimestamp)``).
Messages are deduplicated per account on ``messageId``. ``writeKey`` is removed from stored
messages.

The write key is public (it ships in every web page that loads analytics.js), so the tracking API
never erases nor exports: a ``delete`` message (in a batch too) is refused with 400 naming it.
A truncated gzip stream is refused (400), not read as the prefix it inflates to, and so is a body
with anything after its gzip stream: a second gzip member or trailing bytes (400; SDKs send one).
"""

from __future__ import annotations

import base64
import binascii
import logging
import zlib
from datetime import datetime
from typing import Any

from connector.clock import isoformat
from connector.config import Account, Accounts
from connector.errors import (
    MalformedPayload,
    PayloadTooLarge,
    RequestRejected,
    Unauthorized,
    UnsupportedContentType,
)
from connector.event import Event
from connector.ingest.admission import admit_tracking
from connector.ingest.receivers.base import Inbound, parse_json, parse_time
from connector.ingest.receivers.spec import message_id, normalize

log = logging.getLogger(__name__)

SOURCE = "tracking"
CALLS = ("track", "identify", "page", "screen", "group", "alias")
# analytics.js posts to one-letter paths (/v1/t, /v1/p ...) and batches to /v1/b
SHORT = {"t": "track", "i": "identify", "p": "page", "s": "screen", "g": "group", "a": "alias", "b": "batch"}
ROUTES = (*CALLS, "batch")
CONTENT_TYPES = ("application/json", "text/plain", "")


def decoded_body(inbound: Inbound, limit: int) -> bytes:
    raw = inbound.body
    encoding = (inbound.header("Content-Encoding") or "").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "x-gzip"):
        raise UnsupportedContentType(f"Content-Encoding {encoding!r} is not supported (use gzip)")
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error as err:
        raise MalformedPayload("body is not valid gzip") from err
    if len(out) > limit:
        raise PayloadTooLarge(f"decompressed body is larger than the limit of {limit} bytes")
    if not inflater.eof:
        # a cut-off stream inflates to a prefix of the body without an error: refuse it
        raise MalformedPayload("gzip body is truncated (the stream does not end)")
    if inflater.unused_data:
        # zlib stops at the end of the first member: whatever follows would be dropped unseen
        if inflater.unused_data.startswith(b"\x1f\x8b"):
            raise MalformedPayload("gzip body has more than one gzip member (send one)")
        raise MalformedPayload("gzip body has trailing data after the gzip stream")
    return out


def basic_username(inbound: Inbound) -> str | None:
    header = inbound.header("Authorization") or ""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError) as err:
        raise Unauthorized("malformed Basic credentials") from err
    return decoded.partition(":")[0] or None


def find_account(accounts: Accounts, key: str | None, payload: Any) -> Account:
    if key is None and isinstance(payload, dict) and isinstance(payload.get("writeKey"), str):
        key = payload["writeKey"] or None
    if key is None:
        raise Unauthorized("write key missing")
    account = accounts.by_write_key(key)
    if account is None:
        raise Unauthorized("unknown write key")
    return account


RESTAMPED = ("sentAt", "receivedAt")


def _with_timestamp(message: dict[str, Any], sent_at: Any, now: datetime, where: str) -> dict[str, Any]:
    """Segment's clock-skew correction when the SDK sent no ``timestamp``. ``receivedAt`` is always
    this receipt's (a client's would move the event's time); a message with its own time but no
    ``messageId`` is named by a digest of what the client sent, so its retries are duplicates."""
    message = {k: v for k, v in message.items() if k != "writeKey"}
    timed = any(message.get(k) for k in ("timestamp", "originalTimestamp"))
    if timed and message.get("messageId") in (None, ""):
        # what a retry may change (an SDK stamps each send) is left out of what names it
        message["messageId"] = message_id({k: v for k, v in message.items() if k not in RESTAMPED})
    message["receivedAt"] = isoformat(now)
    if message.get("timestamp") in (None, ""):
        original = message.get("originalTimestamp")
        sent = message.get("sentAt", sent_at)
        if original not in (None, "") and sent not in (None, ""):
            skew = parse_time(sent, f"{where}.sentAt") - parse_time(original, f"{where}.originalTimestamp")
            try:
                message["timestamp"] = isoformat(now - skew)
            except OverflowError as err:
                raise MalformedPayload(f"{where}.sentAt is out of range") from err
    return message


def messages_of(call: str, payload: Any, account: str, now: datetime) -> list[Event]:
    if not isinstance(payload, dict):
        raise MalformedPayload("body must be a JSON object")
    if call != "batch":
        message = _with_timestamp({**payload, "type": call}, None, now, "body")
        return [normalize(message, account=account, source=SOURCE, received_at=now, where="body")]
    batch = payload.get("batch")
    if not isinstance(batch, list):
        raise MalformedPayload("body.batch must be an array")
    context = payload.get("context") if isinstance(payload.get("context"), dict) else None
    events = []
    for i, item in enumerate(batch):
        where = f"batch[{i}]"
        if not isinstance(item, dict):
            raise MalformedPayload(f"{where} must be a JSON object")
        if context is not None and "context" not in item:
            item = {**item, "context": context}
        message = _with_timestamp(item, payload.get("sentAt"), now, where)
        events.append(normalize(message, account=account, source=SOURCE, received_at=now, where=where))
    return events


def receive(
    call: str, inbound: Inbound, accounts: Accounts, limit: int, now: datetime
) -> tuple[Account, list[Event]]:
    """One tracking call (``call`` already resolved from the path): its account and its events.

    Nothing about the body is told before authentication: a request with Basic credentials has its
    key checked before the body is decoded; one without has its body decoded to find ``writeKey``,
    and any failure to decode it is answered as a missing key (the reason is logged)."""
    if has_basic_credentials(inbound):
        account = find_account(accounts, basic_username(inbound), None)
        if inbound.content_type not in CONTENT_TYPES:
            raise UnsupportedContentType(f"expected application/json, got {inbound.content_type}")
        payload = parse_json(decoded_body(inbound, limit))
    else:
        payload = _unauthenticated_payload(inbound, limit)
        account = find_account(accounts, None, payload)
    events = messages_of(call, payload, account.id, now)
    admit_tracking(events, account, (lambda i: f"batch[{i}]") if call == "batch" else (lambda i: "body"))
    return account, events


def has_basic_credentials(inbound: Inbound) -> bool:
    """Whether the request names its write key in an ``Authorization: Basic`` header."""
    scheme, _, _ = (inbound.header("Authorization") or "").strip().partition(" ")
    return scheme.lower() == "basic"


def _unauthenticated_payload(inbound: Inbound, limit: int) -> Any:
    """The body of a request without Basic credentials, read only to find its ``writeKey``: a body
    that cannot be read (content type, encoding, size, JSON) is a 401, as a missing key is."""
    try:
        if inbound.content_type not in CONTENT_TYPES:
            raise UnsupportedContentType(f"expected application/json, got {inbound.content_type}")
        return parse_json(decoded_body(inbound, limit))
    except RequestRejected as err:
        log.info("tracking body unread before authentication: %s", err.message)
        raise Unauthorized("write key missing") from None
