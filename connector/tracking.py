"""Segment-compatible HTTP tracking API (``/v1/track`` ...).

Segment's and RudderStack's analytics SDKs send here after changing their host. The write key is
the HTTP Basic username (password empty) or ``writeKey`` in the body; it selects the account
(``senders.tracking.secret_env``). An unknown or missing key is answered like a bad signature.

Bodies may be gzip-compressed (``Content-Encoding: gzip``); the decompressed size is bounded by
the same limit as any body (413 above it). Single calls take their type from the path; a batch
is ``{"batch": [...]}`` with a ``type`` per message, and an invalid element is a 400 naming
``batch[i].field``. ``timestamp`` is taken as sent; without it, ``originalTimestamp`` is
corrected for the device's clock skew like Segment does (``now - (sentAt - originalTimestamp)``).
Messages are deduplicated per account on ``messageId``. ``writeKey`` is removed from stored
messages.
"""

from __future__ import annotations

import base64
import binascii
import logging
import zlib
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from . import clock
from .clock import isoformat
from .config import Account
from .errors import MalformedPayload, PayloadTooLarge, Unauthorized, UnsupportedContentType
from .event import Event
from .receivers.base import parse_json, parse_time
from .receivers.spec import normalize
from .web import accounts, event_queue

log = logging.getLogger(__name__)

bp = Blueprint("tracking", __name__)

SOURCE = "tracking"
CALLS = ("track", "identify", "page", "screen", "group", "alias")
# analytics.js posts to one-letter paths (/v1/t, /v1/p ...) and batches to /v1/b
SHORT = {"t": "track", "i": "identify", "p": "page", "s": "screen", "g": "group", "a": "alias", "b": "batch"}
CONTENT_TYPES = ("application/json", "text/plain", "")


def decoded_body(limit: int) -> bytes:
    raw = request.get_data(cache=True)
    encoding = (request.headers.get("Content-Encoding") or "").strip().lower()
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
    return out


def basic_username() -> str | None:
    header = request.headers.get("Authorization") or ""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError) as err:
        raise Unauthorized("malformed Basic credentials") from err
    return decoded.partition(":")[0] or None


def find_account(payload: Any) -> Account:
    key = basic_username()
    if key is None and isinstance(payload, dict) and isinstance(payload.get("writeKey"), str):
        key = payload["writeKey"] or None
    if key is None:
        raise Unauthorized("write key missing")
    account = accounts().by_write_key(key)
    if account is None:
        raise Unauthorized("unknown write key")
    return account


def _with_timestamp(message: dict[str, Any], sent_at: Any, now: datetime, where: str) -> dict[str, Any]:
    """Segment's clock-skew correction when the SDK sent no ``timestamp``."""
    message = {k: v for k, v in message.items() if k != "writeKey"}
    message.setdefault("receivedAt", isoformat(now))
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


def _ingest(call: str) -> Response:
    limit = int(current_app.config["MAX_CONTENT_LENGTH"])
    body = decoded_body(limit)
    account = find_account(None) if basic_username() is not None else None
    content_type = (request.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if content_type not in CONTENT_TYPES:
        if account is None:
            raise Unauthorized("write key missing")
        raise UnsupportedContentType(f"expected application/json, got {content_type}")
    try:
        payload = parse_json(body)
    except MalformedPayload:
        if account is None:
            raise Unauthorized("write key missing") from None
        raise
    if account is None:
        account = find_account(payload)
    now = clock.now()
    events = messages_of(call, payload, account.id, now)
    result = event_queue().ingest(account.id, events, account.dedupe_ttl_seconds)
    if events:
        log.info(
            "accepted",
            extra={"account": account.id, "accepted": result.accepted, "duplicates": result.duplicates},
        )
    return jsonify(success=True, accepted=result.accepted, duplicates=result.duplicates)


@bp.route("/v1/<call>", methods=["POST"])
def tracking_call(call: str) -> Response | tuple[Response, int]:
    call = SHORT.get(call, call)
    if call not in (*CALLS, "batch"):
        return jsonify(error="not_found", message=f"no tracking call {call!r}"), 404
    return _ingest(call)
