"""Log lines: JSON with an ISO-8601 time, level, logger, message and the call's extra fields, for the
connector, adapters and rules loggers alike; credentials never written."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.change import CONSENT_SUBSCRIBED, Change
from adapters.errors import AuthError
from adapters.klaviyo import KlaviyoAdapter, KlaviyoConfig
from connector.dev.sandbox import SANDBOX_KLAVIYO_KEY, FakeKlaviyo, serving
from connector.ops.logs import LOGGERS, configure_logging

WRONG_KEY = "pk_wrong_key_0123456789abcdef"


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """INFO lines of the three logger trees into a buffer; the loggers' setup restored after."""
    saved = {n: (lg.handlers[:], lg.level, lg.propagate) for n in LOGGERS for lg in [logging.getLogger(n)]}
    stream = io.StringIO()
    configure_logging("INFO", stream)
    yield stream
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def change(email: str) -> Change:
    return Change(
        account="acme",
        destination="klaviyo",
        profile_id="p1",
        version=1,
        email=email,
        tags=frozenset({"vip"}),
        consent=CONSENT_SUBSCRIBED,
    )


def test_an_adapter_error_is_logged_with_a_timestamp_and_without_the_key(log_stream: io.StringIO) -> None:
    fake = FakeKlaviyo(api_keys=[SANDBOX_KLAVIYO_KEY])
    with serving(fake) as server:
        adapter = KlaviyoAdapter(
            KlaviyoConfig(api_key=WRONG_KEY, base_url=server.url), clock=lambda: 0.0, sleep=lambda s: None
        )
        with pytest.raises(AuthError):
            adapter.apply([change("ann@example.com")], {})
    esp_errors = [line for line in lines(log_stream) if line["msg"] == "ESP error"]
    assert esp_errors, log_stream.getvalue()
    line = esp_errors[0]
    assert line["logger"] == "adapters.base" and line["level"] == "info" and line["status"] == 401
    stamp = datetime.fromisoformat(line["time"])
    assert stamp.tzinfo is not None and stamp.utcoffset() == UTC.utcoffset(None)
    assert list(line)[:4] == ["time", "level", "logger", "msg"]
    assert WRONG_KEY not in log_stream.getvalue()


def test_every_line_has_the_records_own_time_and_its_extra_fields(log_stream: io.StringIO) -> None:
    made = datetime(2024, 1, 1, 12, 30, 5, 250_000, tzinfo=UTC)
    for name in ("connector.ingest.web", "adapters.base", "rules.evaluate"):
        record = logging.getLogger(name).makeRecord(
            name, logging.WARNING, __file__, 1, "event %s", ("e-1",), None, extra={"account": "acme"}
        )
        record.created = made.timestamp()
        logging.getLogger(name).handle(record)
    found = lines(log_stream)
    assert [line["logger"] for line in found] == ["connector.ingest.web", "adapters.base", "rules.evaluate"]
    for line in found:
        assert line["time"] == "2024-01-01T12:30:05.250+00:00"
        assert (line["level"], line["msg"], line["account"]) == ("warning", "event e-1", "acme")


def test_credential_fields_are_never_written(log_stream: io.StringIO) -> None:
    logging.getLogger("connector.test").warning(
        "refused",
        extra={
            "account": "acme",
            "api_key": "k-1234567890",
            "headers": {"Authorization": "Bearer pat-1234567890", "Accept": "application/json"},
            "secrets": ["s-1234567890"],
        },
    )
    text = log_stream.getvalue()
    for value in ("k-1234567890", "pat-1234567890", "s-1234567890"):
        assert value not in text
    (line,) = lines(log_stream)
    assert line["account"] == "acme"
    assert line["api_key"] == "***" and line["secrets"] == "***"
    assert line["headers"] == {"Authorization": "***", "Accept": "application/json"}


def test_configuring_twice_keeps_one_handler_per_logger(log_stream: io.StringIO) -> None:
    configure_logging("INFO", log_stream)
    logging.getLogger("rules").info("once")
    assert [line["msg"] for line in lines(log_stream)] == ["once"]
    configure_logging("ERROR", log_stream)
    logging.getLogger("adapters").warning("below the level")
    assert [line["msg"] for line in lines(log_stream)] == ["once"]
