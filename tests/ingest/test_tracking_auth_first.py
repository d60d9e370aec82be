"""The tracking API tells nothing about a body before the write key is known: a key in the Basic
header is checked before the body is decoded, and a body read only to find ``writeKey`` that cannot
be read answers as a missing key does."""

from __future__ import annotations

import base64
import gzip
import json
import logging

import pytest

from connector import clock
from tests.conftest import FIXED_NOW
from tests.helpers import stored_events

KEY = "acme-write-key-7f3a"
UNAUTHORIZED = {"error": "unauthorized", "code": "unauthorized", "message": "unknown or missing write key"}


def basic(userpass: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(userpass.encode()).decode()}


def post(client, path: str, body: bytes, **headers: str):  # type: ignore[no-untyped-def]
    with clock.frozen(FIXED_NOW):
        return client.post(path, data=body, headers={"Content-Type": "application/json", **headers})


def bodies(limit: int) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Bodies an authenticated request is told about (400, 413, 415), with their headers."""
    message = json.dumps({"event": "E", "userId": "u", "writeKey": KEY}).encode()
    bomb = gzip.compress(b" " * (limit * 8))  # small on the wire, 8x the limit inflated
    assert len(bomb) < limit
    return {
        "gzip bomb": (bomb, {"Content-Encoding": "gzip"}),
        "not gzip": (b"not gzip", {"Content-Encoding": "gzip"}),
        "truncated gzip": (gzip.compress(message)[:-12], {"Content-Encoding": "gzip"}),
        "second gzip member": (gzip.compress(message) * 2, {"Content-Encoding": "gzip"}),
        "brotli": (message, {"Content-Encoding": "br"}),
        "xml": (message, {"Content-Type": "application/xml"}),
        "not JSON": (b"{broken", {}),
    }


@pytest.mark.parametrize("credentials", [{}, basic("nope:"), basic(":"), {"Authorization": "Basic"}])
def test_without_a_known_key_every_unreadable_body_is_401(  # type: ignore[no-untyped-def]
    client, app, redis_client, credentials
) -> None:
    for name, (body, headers) in bodies(app.config["MAX_CONTENT_LENGTH"]).items():
        res = post(client, "/v1/batch", body, **headers, **credentials)
        assert (res.status_code, res.json) == (401, UNAUTHORIZED), name
    assert stored_events(redis_client) == []


def test_with_the_key_in_the_header_the_body_is_told_about(client, app, redis_client) -> None:  # type: ignore[no-untyped-def]
    statuses = {
        name: post(client, "/v1/batch", body, **headers, **basic(f"{KEY}:")).status_code
        for name, (body, headers) in bodies(app.config["MAX_CONTENT_LENGTH"]).items()
    }
    assert statuses == {
        "gzip bomb": 413,
        "not gzip": 400,
        "truncated gzip": 400,
        "second gzip member": 400,
        "brotli": 415,
        "xml": 415,
        "not JSON": 400,
    }


def test_the_key_in_the_header_decides_even_when_the_body_names_one(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps({"event": "E", "userId": "u", "messageId": "m1", "writeKey": KEY}).encode()
    assert post(client, "/v1/track", body, **basic("nope:")).status_code == 401
    assert post(client, "/v1/track", body, **basic(":")).status_code == 401
    assert stored_events(redis_client) == []
    assert post(client, "/v1/track", body).json["accepted"] == 1


def test_a_gzip_body_naming_its_key_is_accepted(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    message = {"event": "E", "userId": "u", "messageId": "m2", "writeKey": KEY}
    body = gzip.compress(json.dumps(message).encode())
    res = post(client, "/v1/track", body, **{"Content-Encoding": "gzip", "Content-Type": "text/plain"})
    assert res.status_code == 200 and res.json["accepted"] == 1
    assert len(stored_events(redis_client)) == 1


def test_the_reason_an_unauthenticated_body_was_not_read_is_logged(  # type: ignore[no-untyped-def]
    client, redis_client, caplog
) -> None:
    with caplog.at_level(logging.INFO, logger="connector.ingest.tracking"):
        res = post(client, "/v1/track", b"not gzip", **{"Content-Encoding": "gzip"})
    assert res.status_code == 401
    assert any("body is not valid gzip" in r.getMessage() for r in caplog.records)
    assert "gzip" not in res.get_data(as_text=True)
