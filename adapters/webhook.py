"""Webhook: a signed notification to a URL of the account's choosing when a person enters or exits
a segment (Standard Webhooks, https://www.standardwebhooks.com).

One ``POST <url>`` per (person, segment, direction), JSON body::

    {"type": "segment.entered", "timestamp": "2024-01-01T00:00:30Z",
     "data": {"account": "acme", "segment": "cart_abandoner", "profile_id": "...",
              "email": "...", "version": 7}}

with the headers ``webhook-id`` (stable per account, segment, profile, ledger version and
direction: a retry or a replay of the same transition carries the same id, so the receiver drops
the second one), ``webhook-timestamp`` (epoch seconds of the send) and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 over ``{id}.{timestamp}.{body}`` with the base64-decoded ``whsec_``
secret; the connector's own Standard Webhooks receiver verifies exactly this).

Which transitions: the change's segments against the segments last applied for the contact (the
ownership ledger), so a notification goes out once per transition the destination sees; a control
member's segment is never in a change (see docs/analytics.md). Transient failures (5xx, 429,
timeouts) are retried by the sync worker, permanent ones go to the dead letters, 401/403 pause the
destination. Nothing is kept at the receiver by the connector, so an erasure has nothing to delete.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import httpx

from .base import BatchState, EspAdapter, EspClient, Transport, credential_key, json_body, status_error
from .change import APPLIED, Change, OwnedState, Result
from .errors import AdapterError

ENTERED = "entered"
EXITED = "exited"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret: its base64 payload (a secret that is not base64 is used
    as its UTF-8 bytes, like the connector's receiver)."""
    text = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return text.encode()


def sign(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    content = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(secret_key(secret), content, hashlib.sha256).digest()).decode()


def message_id(account: str, segment: str, profile_id: str, version: int, direction: str) -> str:
    """The ``webhook-id`` of one transition: the same transition always has the same id."""
    text = f"{account}\x1f{segment}\x1f{profile_id}\x1f{version}\x1f{direction}"
    return "msg_" + hashlib.sha256(text.encode()).hexdigest()[:32]


def map_error(response: httpx.Response) -> AdapterError:
    body = json_body(response)
    detail = str(body.get("error") or body.get("detail") or "") if isinstance(body, dict) else ""
    return status_error(response, None, detail or response.text[:200])


@dataclass(frozen=True)
class WebhookConfig:
    secret: str = field(repr=False)
    url: str
    triggers: tuple[str, ...] = (ENTERED, EXITED)


class WebhookClient(EspClient):
    """An :class:`EspClient` whose request body is ``(headers, raw bytes)``: the signature covers
    the exact bytes, so they are sent as they are, with that notification's headers."""

    def _send(self, method: str, path: str, body: Any, params: Mapping[str, Any] | None) -> httpx.Response:
        headers, raw = body
        self.requests += 1
        return self.http.request(method, path, content=raw, headers=headers, params=params)


class WebhookAdapter(EspAdapter):
    name = "webhook"
    batch_size = 50
    erased_note = "nothing kept at the receiver"

    def __init__(self, config: WebhookConfig, transport: Transport | None = None, **kw: Any) -> None:
        self.config = config
        parts = urlsplit(config.url)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        transport = transport or Transport(
            base_url=f"{parts.scheme}://{parts.netloc}",
            headers={"Content-Type": "application/json", "User-Agent": "segment-connector"},
            limiter_key=credential_key("webhook", config.secret),
            error_mapper=map_error,
            **kw,
        )
        self.client = WebhookClient(transport)

    def transitions(self, change: Change, before: OwnedState) -> list[tuple[str, str]]:
        """(segment, direction) due for this change, in a stable order."""
        out: list[tuple[str, str]] = []
        if ENTERED in self.config.triggers:
            out += [(s, ENTERED) for s in sorted(change.segments - before.segments)]
        if EXITED in self.config.triggers:
            out += [(s, EXITED) for s in sorted(before.segments - change.segments)]
        return out

    def write(self, batch: BatchState) -> None:
        for change in batch.pending():
            before = batch.before(change)
            for segment, direction in self.transitions(change, before):
                if not batch.attempt(change, partial(self.send, change, segment, direction)):
                    break

    def request(self, change: Change, segment: str, direction: str) -> tuple[dict[str, str], bytes]:
        """The headers and body of one notification (signed at the injected clock's time)."""
        now = self.client.t.clock()
        body = {
            "type": f"segment.{direction}",
            "timestamp": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
            "data": {
                "account": change.account,
                "segment": segment,
                "profile_id": change.profile_id,
                "email": change.email,
                "version": change.version,
            },
        }
        raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        msg_id = message_id(change.account, segment, change.profile_id, change.version, direction)
        timestamp = str(int(now))
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": sign(self.config.secret, msg_id, timestamp, raw),
        }
        return headers, raw

    def send(self, change: Change, segment: str, direction: str) -> None:
        # the shared limiter, in-call retries and error mapping; the signed bytes go as they are
        self.client.request("POST", self.path, json=self.request(change, segment, direction))

    def erase(self, change: Change) -> Result:
        return Result(change.profile_id, change.version, APPLIED, None, note=self.erased_note)
