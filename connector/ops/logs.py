"""Structured logging: one JSON object per line, through the standard :mod:`logging` module.

Every line carries ``time`` (ISO-8601, UTC, milliseconds: the instant the record was made),
``level``, ``logger`` and ``msg``, then the ``extra`` fields the call passed (``account``,
``event_id``, ``status`` ...) and ``exc`` when there is a traceback. :func:`configure_logging` wires
the product's three logger trees alike: ``connector``, ``adapters`` (ESP requests: "retrying ESP
request", "ESP error") and ``rules``.

Secrets never belong in a log line and no call puts one there; as a second line of defence an
``extra`` field whose name says it holds a credential (``secret``, ``token``, ``api_key``,
``password``, ``authorization``, ``signature``, ``write_key``, ``cookie``), at any depth, is written
as ``"***"``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

LOGGERS = ("connector", "adapters", "rules")
LEVEL_ENV = "CONNECTOR_LOG_LEVEL"
REDACTED = "***"
SENSITIVE = re.compile(
    r"secret|token|passw(or)?d|api[-_]?key|authorization|signature|write[-_]?key|cookie|credential",
    re.IGNORECASE,
)
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


def _redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: REDACTED if SENSITIVE.search(str(k)) else _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    """A record as one JSON line: time, level, logger, msg, then its ``extra`` fields."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}
        data.update(_redact({k: v for k, v in extra.items() if k not in data}))
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class _ConnectorHandler(logging.StreamHandler[IO[str]]):
    """The handler :func:`configure_logging` installs (recognised when it runs again)."""


def configure_logging(level: str | None = None, stream: IO[str] | None = None) -> None:
    """Write the ``connector``, ``adapters`` and ``rules`` loggers as JSON lines to ``stream``
    (stderr by default) at ``level`` (default: ``CONNECTOR_LOG_LEVEL``, else WARNING). Calling it
    again replaces the handler it installed, never adds a second one."""
    chosen = (level or os.environ.get(LEVEL_ENV) or "WARNING").upper()
    handler = _ConnectorHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _ConnectorHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(chosen)
        logger.propagate = False
