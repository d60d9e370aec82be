"""What every receiver shares: the inbound request, the :class:`Receiver` base class, and the
verification and parsing helpers.

Every sender's receiver derives from :class:`Receiver`, whose :meth:`Receiver.handle` cannot be
overridden: it verifies the raw bytes (the subclass's ``verify``), then parses (``parse``), then
admits the events in one place for every route: the event types this sender may deliver, the
privileged ones (erasure, access requests) only where the signature covers them and the account's
file allows them, and nothing the workers would refuse later (see :mod:`.admission`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, final

from connector.config import Account, Secret, SenderConfig
from connector.errors import MalformedPayload, Unauthorized, UnsupportedContentType
from connector.event import EVENT_TYPES, Event
from connector.ingest import admission
from connector.ingest.admission import Proof


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


WHOLE_BODY = Proof()
PROBE = Proof(probe=True)


class Receiver:
    """One sender. Subclasses implement ``verify`` and ``parse``; :meth:`handle` is final.

    Class attributes every receiver declares: ``name`` (the route's sender name), ``methods``,
    ``source`` (the events' source), ``event_types`` (the event types it may deliver),
    ``privileged`` (those among them that erase or export a person: delete, data_request) and
    ``element`` (how a batch element is named in a 400, ``{i}`` its index).
    """

    name: ClassVar[str]
    methods: ClassVar[tuple[str, ...]]
    source: ClassVar[str]
    event_types: ClassVar[frozenset[str]]
    privileged: ClassVar[frozenset[str]] = frozenset()
    # privileged types allowed without ``privileged:`` in the account's file, because the sender's
    # protocol makes them mandatory and the receiver proves them itself (Shopify compliance topics)
    privileged_by_default: ClassVar[frozenset[str]] = frozenset()
    # Segment-spec senders: a message without a usable identity is refused (the spec requires one)
    identity_required: ClassVar[bool] = False
    element: ClassVar[str] = "body[{i}]"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "handle" in cls.__dict__:
            raise TypeError(f"{cls.__name__} must not override handle(): implement verify() and parse()")
        for attr in ("name", "methods", "source", "event_types"):
            if not hasattr(cls, attr):
                raise TypeError(f"{cls.__name__} must declare {attr}")
        if not cls.event_types <= set(EVENT_TYPES) or not cls.privileged <= cls.event_types:
            raise TypeError(f"{cls.__name__}: privileged types must be among its event types")

    @final
    def handle(self, inbound: Inbound, account: Account, sender: SenderConfig, now: datetime) -> list[Event]:
        """Verify, then parse, then admit. The only entry point of a receiver."""
        proof = self.verify(inbound, sender, now)
        if not isinstance(proof, Proof):
            raise TypeError(f"{type(self).__name__}.verify must return a Proof")
        if proof.probe:
            return []
        events = self.parse(inbound, account, sender, now, proof)
        single = self.element == Receiver.element and not inbound.body.lstrip().startswith(b"[")
        admission.admit(self, events, account, sender, proof, single)
        return events

    def verify(self, inbound: Inbound, sender: SenderConfig, now: datetime) -> Proof:
        """Check the request's signature or token; raise :class:`Unauthorized` when it fails."""
        raise NotImplementedError

    def parse(
        self, inbound: Inbound, account: Account, sender: SenderConfig, now: datetime, proof: Proof
    ) -> list[Event]:
        """The verified request's events (raise :class:`MalformedPayload` naming the field)."""
        raise NotImplementedError

    def where(self, index: int) -> str:
        """How the ``index``-th event of a request is named in an answer."""
        return self.element.format(i=index)

    def sign(self, secret: str, body: bytes, *, url: str, now: datetime) -> dict[str, str]:
        """The headers a genuine delivery of ``body`` to ``url`` would carry (for tests and curl)."""
        raise NotImplementedError


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


# JSON deeper than this is refused (400) before it is parsed: nothing the senders deliver comes
# near it, and the parser, the queue's encoder and the worker all recurse per level.
MAX_JSON_DEPTH = 64
_OPENERS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def nested_deeper_than(body: bytes, limit: int) -> bool:
    """Whether the JSON text nests arrays/objects more than ``limit`` levels (strings ignored)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", body).translate(_OPENERS, _NOT_BRACKETS)
    for _ in range(limit):  # each pass removes the innermost level
        inner = brackets.replace(b"[]", b"")
        if not inner:
            return False
        if inner == brackets:
            break  # unbalanced: the parser will say where
        brackets = inner
    return bool(brackets)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise MalformedPayload(f"body has a number out of range: {text[:40]}")
    return value


def _no_constant(text: str) -> Any:
    raise MalformedPayload(f"body has {text}, which is not a JSON number")


def unstorable_text(value: Any, path: str, depth: int = 0) -> str | None:
    """The path of the first string (or key) that is not valid Unicode text (a lone surrogate)."""
    if isinstance(value, str):
        return None if value.isascii() or _encodes(value) else path
    if depth > MAX_JSON_DEPTH:
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not _encodes(key):
                return f"{path} (a key)"
            found = unstorable_text(item, f"{path}.{key}", depth + 1)
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = unstorable_text(item, f"{path}[{i}]", depth + 1)
            if found:
                return found
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_json(body: bytes, what: str = "body") -> Any:
    """JSON from raw bytes; every way it can be unusable is a :class:`MalformedPayload` naming it:
    not UTF-8, not JSON, nested deeper than :data:`MAX_JSON_DEPTH`, an integer too long to parse,
    a number out of range (``1e999``, ``NaN``), or a string with a lone surrogate (``"\\ud800"``),
    which no store can hold as text."""
    if nested_deeper_than(body, MAX_JSON_DEPTH):
        raise MalformedPayload(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        # decoded strictly here: json.loads(bytes) would let UTF-8-encoded surrogates through
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MalformedPayload(f"{what} is not UTF-8 (byte {err.start})") from err
    try:
        value = json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise MalformedPayload(f"{what} is not valid JSON: {err.msg} at position {err.pos}") from err
    except RecursionError as err:
        raise MalformedPayload(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels") from err
    except ValueError as err:  # int() refuses more than sys.get_int_max_str_digits() digits
        raise MalformedPayload(f"{what} has an integer too long to parse") from err
    if _SURROGATE_ESCAPE.search(body):
        found = unstorable_text(value, what)
        if found:
            raise MalformedPayload(f"{found} has a lone surrogate escape (e.g. \\ud800): not text")
    return value


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


# An identity sent as a number is kept as its decimal text; real ids are at most 20 digits (64-bit),
# a longer number is a mistake or an attack, and is refused rather than stored.
MAX_IDENTITY_DIGITS = 64
_IDENTITY_NUMBER_LIMIT = 10**MAX_IDENTITY_DIGITS


def clean_identity(value: Any, what: str = "identity") -> str | None:
    """Identity values as strings; numbers are kept, empty values dropped (blocking is the worker's job).

    Raises :class:`MalformedPayload` naming ``what`` for a value no identity can be: an object or
    an array, a number that is not finite, or one of more than :data:`MAX_IDENTITY_DIGITS` digits."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        return text or None
    if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
        return repr(value)
    if isinstance(value, float) and math.isfinite(value):
        value = int(value)
    if isinstance(value, int):
        if abs(value) >= _IDENTITY_NUMBER_LIMIT:
            raise MalformedPayload(
                f"{what} is a number of more than {MAX_IDENTITY_DIGITS} digits, which no identity has"
            )
        return str(value)
    raise MalformedPayload(f"{what} must be a string or a number")


def email_text(value: Any, where: str, field: str) -> str | None:
    """An email field's value as :func:`identities` takes it: text as is; a number or true/false,
    which no sender means as an address, is left out (``None``). An object or an array, empty or
    not, is refused naming ``{where}.{field}``: no address is one."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        name = f"{where}.{field}" if where else field
        raise MalformedPayload(f"{name} must be a string (an email address)")
    return None


def first_email(where: str, candidates: Iterable[tuple[str, Any]]) -> str | None:
    """The address of a sender that may put it in several fields, ``candidates`` being (field,
    value) in the order they are read: the first value that is set, by :func:`email_text`. Absent,
    empty text, ``0`` and false are not set (the next field is read); an empty object or array is
    (refused like any other)."""
    for field, value in candidates:
        if value or isinstance(value, dict | list):
            return email_text(value, where, field)
    return None


def identities(
    where: str = "body", fields: Mapping[str, str] | None = None, /, **values: Any
) -> dict[str, str]:
    """The identities of ``values`` (kind → raw value), cleaned by :func:`clean_identity`; a value
    that cannot be one is refused naming ``{where}.{field}`` (``fields`` maps a kind to the field
    it came from; the kind itself by default; with an empty ``where`` the field is the whole name)."""
    out: dict[str, str] = {}
    names = fields or {}
    for key, value in values.items():
        field = names.get(key, key)
        cleaned = clean_identity(value, f"{where}.{field}" if where else field)
        if cleaned is not None:
            out[key] = cleaned.lower() if key == "email" else cleaned
    return out
