"""What every receiver shares: the inbound request, the interface, and the verification helpers.

A receiver verifies the raw bytes first and parses second: nothing from an unverified body is
read, logged or stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

from connector.config import Account, Secret, SenderConfig
from connector.errors import MalformedPayload, Unauthorized, UnsupportedContentType


@dataclass(frozen=True)
class Inbound:
    """One HTTP request as received: raw body bytes, case-insensitive headers."""

    method: str
    url: str  # the URL as the sender addressed it (public base URL + path + query)
    args: Mapping[str, str]
    headers: Any  # case-insensitive: werkzeug Headers, or any mapping with .get
    body: bytes

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return value if value else None


class Receiver(Protocol):
    """One sender. ``handle`` verifies, then normalizes; it returns the events to store."""

    name: ClassVar[str]
    methods: ClassVar[tuple[str, ...]]

    def handle(
        self, inbound: Inbound, account: Account, sender: SenderConfig, now: datetime
    ) -> list[Any]: ...

    def sign(self, secret: str, body: bytes, *, url: str, now: datetime) -> dict[str, str]:
        """The headers a genuine delivery of ``body`` to ``url`` would carry (for tests and curl)."""
        ...


# --- verification helpers ------------------------------------------------------------------


def hmac_digest(algorithm: str, key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, getattr(hashlib, algorithm)).digest()


def matches_any(candidates: Iterable[str], expected: Iterable[str]) -> bool:
    """Constant-time comparison of every candidate against every expected value."""
    found = False
    expected_list = [e.encode() for e in expected]
    for candidate in candidates:
        cand = candidate.encode()
        for exp in expected_list:
            # no short-circuit: every pair is compared
            found |= hmac.compare_digest(cand, exp)
    return found


def verify_with_secrets(
    provided: str | None,
    secrets: Iterable[Secret],
    sign: Callable[[bytes], str],
    reason: str = "signature does not match",
) -> None:
    """Raise :class:`Unauthorized` unless ``provided`` equals ``sign(secret)`` for some secret."""
    if not provided:
        raise Unauthorized("signature header missing")
    if not matches_any([provided.strip()], [sign(s.bytes) for s in secrets]):
        raise Unauthorized(reason)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def check_timestamp(when: datetime, now: datetime, tolerance_seconds: int) -> None:
    skew = abs((now - when).total_seconds())
    if skew > tolerance_seconds:
        raise Unauthorized("timestamp outside the accepted window")


def epoch_seconds(value: str) -> datetime:
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (ValueError, OverflowError, OSError) as err:
        raise Unauthorized("timestamp is not an integer") from err


# --- parsing helpers -----------------------------------------------------------------------


def require_json(inbound: Inbound) -> Any:
    if inbound.content_type not in ("application/json", "text/plain", ""):
        raise UnsupportedContentType(f"expected application/json, got {inbound.content_type}")
    return parse_json(inbound.body)


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except UnicodeDecodeError as err:
        raise MalformedPayload("body is not UTF-8") from err
    except json.JSONDecodeError as err:
        raise MalformedPayload(f"body is not valid JSON: {err.msg} at position {err.pos}") from err


def require_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedPayload(f"{what} must be a JSON object")
    return value


# Instants outside this range are refused: arithmetic on them (windows, due times) would overflow.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def parse_time(value: Any, what: str) -> datetime:
    """ISO-8601 string, or epoch seconds / milliseconds as a number; aware UTC, 1970 to 2200."""
    if isinstance(value, bool):
        raise MalformedPayload(f"{what} is not a timestamp")
    try:
        if isinstance(value, int | float):
            seconds = value / 1000 if value > 10_000_000_000 else value
            parsed = datetime.fromtimestamp(seconds, UTC)
        elif isinstance(value, str):
            text = value.strip()
            if text.endswith("Z"):
                text = text[:-1] + "+00:00"
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError as err:
                raise MalformedPayload(f"{what}: {value!r} is not an ISO-8601 timestamp") from err
            parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        else:
            raise MalformedPayload(f"{what} is not a timestamp")
    except (OverflowError, OSError, ValueError) as err:
        raise MalformedPayload(f"{what} is out of range") from err
    if not EARLIEST <= parsed < LATEST:
        raise MalformedPayload(f"{what} is out of range (1970 to 2200)")
    return parsed


def clean_identity(value: Any) -> str | None:
    """Identity values as strings; numbers are kept, empty values dropped (blocking is the worker's job)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, str):
        text = value.strip()
        return text or None
    return None


def identities(**values: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in values.items():
        cleaned = clean_identity(value)
        if cleaned is not None:
            out[key] = cleaned.lower() if key == "email" else cleaned
    return out
