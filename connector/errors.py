"""The product's exception hierarchy.

Everything raised on purpose by the connector derives from :class:`ConnectorError`, except
:class:`ConfigError`, which stays outside so that no handler for runtime errors can swallow a
broken configuration.
"""

from __future__ import annotations

import os
import re

import redis


class ConfigError(Exception):
    """An account file or setting is invalid. Carries the file, the path inside it and the reason."""

    def __init__(self, message: str, *, file: str | None = None, path: str | None = None) -> None:
        self.file = file
        self.path = path
        self.reason = message
        where = ": ".join(part for part in (file, path) if part)
        super().__init__(f"{where}: {message}" if where else message)


class ConnectorError(Exception):
    """Base of every runtime error the connector raises on purpose."""


class RequestRejected(ConnectorError):
    """An inbound request that must not be accepted. ``status`` is the HTTP answer."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(RequestRejected):
    """Missing, bad or stale signature, or an unknown account. The message never reaches the sender."""

    status = 401
    code = "unauthorized"


class MalformedPayload(RequestRejected):
    status = 400
    code = "malformed_payload"


class EventNotAllowed(RequestRejected):
    """A verified request carrying an event this sender may not deliver for this account: a
    privileged type (erasure, access request) the account's file does not allow, one outside the
    signed part of a batch, or a type the route never takes."""

    status = 400
    code = "event_not_allowed"


class UnsupportedContentType(RequestRejected):
    status = 415
    code = "unsupported_content_type"


class PayloadTooLarge(RequestRejected):
    status = 413
    code = "payload_too_large"


class StoreUnavailable(ConnectorError):
    """Redis could not be reached; nothing was acknowledged."""


class UndecodableItem(ConnectorError):
    """A stored queue item that cannot be decoded into an Event."""


class StateMoving(redis.exceptions.TryAgainError):
    """A bucketed structure's state changed under every attempt (or its slot is being moved): try
    again (:mod:`connector.buckets`).

    Defined here, in a module that is never compiled: a class of a compiled module deriving from
    redis-py's exceptions, whose ``__init__`` sets attributes, is laid out without room for them."""


def env_name_shown(name: str) -> str:
    """An environment variable's name for a message: whole when it looks like a name a person wrote
    (upper-case letters, digits and ``_``, starting with a letter, and with an ``_`` or without a
    digit: ``SEG_SECRET``, ``SHOPIFY2_SECRET``, ``MAILCHIMP``), else its first three characters only,
    since a secret written in its place (a ``pk_…`` key, a random ``K7Q2M9X4…``) would otherwise
    reach logs, ``/readyz`` and the dead-letter list."""
    if _WRITTEN_NAME.fullmatch(name) and ("_" in name or not any(c.isdigit() for c in name)):
        return name
    return f"{name[:3]}… (name shortened)"


_WRITTEN_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


def file_name_shown(path: str) -> str:
    """An account file as shown to callers (``/readyz``, ``/metrics``, a refusal's reason): its
    name in the config directory (an account file is one of the directory's own files), never the
    server's path to it. Bytes of the name that are not UTF-8 are written as ``\\xe9``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace").rpartition("/")[2]
