"""Live events: what ingest publishes per delivery (real Redis), and the SSE endpoint."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
import redis

from connector import clock
from connector.ingest.receivers.segment import sign
from connector.ops import live, tokens
from tests.conftest import ACME_ENV
from tests.ingest.signing import signed

SEGMENT_SECRET = ACME_ENV["ACME_SEGMENT_SECRET"]


def segment_body(message_id: str, email: str = "jane.doe@example.com") -> bytes:
    return json.dumps(
        {
            "type": "track",
            "event": "Order Completed",
            "messageId": message_id,
            "userId": "user-123456",
            "context": {"traits": {"email": email}},
            "properties": {"revenue": 12.5},
            "timestamp": "2024-01-01T00:00:00Z",
        }
    ).encode()


def post_segment(client: Any, body: bytes, account: str = "acme", secret: str = SEGMENT_SECRET) -> Any:
    headers = {"Content-Type": "application/json", "X-Signature": sign(secret.encode(), body)}
    return client.post(f"/webhooks/{account}/segment", data=body, headers=headers)


def entries(conn: redis.Redis, account: str, count: int = 1, wait: float = 2.0) -> list[dict[str, Any]]:
    """The account's live entries once at least ``count`` are there (publishing sends without
    waiting for Redis's reply, so the test polls for the state, up to ``wait`` seconds)."""
    deadline = time.monotonic() + wait
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = [entry for _, entry in live.latest(conn, account, 100)]
        if len(found) >= count:
            break
        time.sleep(0.01)
    return found


def test_masking() -> None:
    assert live.mask("email", "jane.doe@example.com") == "j***@example.com"
    assert live.mask("user_id", "user-123456") == "us***56"
    assert live.mask("anonymous_id", "abc") == "a***"
    assert live.mask("shopify_customer_id", "someone@shop.test") == "s***@shop.test"


def test_an_accepted_delivery_then_its_duplicate_are_published_with_masked_identities(
    client: Any, redis_client: redis.Redis
) -> None:
    body = segment_body("m-1")
    assert post_segment(client, body).status_code == 200
    assert post_segment(client, body).status_code == 200
    first, second = entries(redis_client, "acme", 2)
    assert first["sender"] == "segment"
    assert first["outcome"] == "accepted"
    assert (first["accepted"], first["duplicates"], first["event_count"]) == (1, 0, 1)
    assert first["events"][0]["name"] == "order_completed"
    assert first["events"][0]["identities"] == {"user_id": "us***56", "email": "j***@example.com"}
    assert second["outcome"] == "duplicate"
    assert (second["accepted"], second["duplicates"]) == (0, 1)
    raw = json.dumps([first, second])
    assert "jane.doe" not in raw and "user-123456" not in raw


def test_a_refused_delivery_carries_its_real_reason_while_the_sender_gets_a_bare_401(
    client: Any, redis_client: redis.Redis
) -> None:
    path, headers = signed("shopify", b'{"id": 1, "email": "x@example.com"}')
    del headers["X-Shopify-Topic"]
    res = client.post(path, data=b'{"id": 1, "email": "x@example.com"}', headers=headers)
    assert res.status_code == 401
    assert res.json == {"error": "unauthorized"}
    [entry] = entries(redis_client, "acme")
    assert entry["outcome"] == "refused"
    assert entry["sender"] == "shopify"
    assert entry["status"] == 401
    assert "X-Shopify-Topic" in entry["reason"]

    bad = post_segment(client, segment_body("m-2"), secret="not-the-secret-at-all")
    assert bad.status_code == 401
    refused = entries(redis_client, "acme", 2)[-1]
    assert refused["sender"] == "segment" and refused["outcome"] == "refused"
    assert refused["reason"]


def test_refusals_for_unknown_accounts_or_senders_are_published_nowhere(
    client: Any, redis_client: redis.Redis
) -> None:
    assert post_segment(client, segment_body("m-3"), account="nobody").status_code == 401
    path, headers = signed("shopify", b"{}")
    assert client.post(path.replace("acme", "globex"), data=b"{}", headers=headers).status_code == 401
    # a delivery that is published afterwards, on the same kind of connection, marks the end
    assert post_segment(client, segment_body("m-4")).status_code == 200
    assert len(entries(redis_client, "acme")) == 1
    assert [k.decode() for k in redis_client.scan_iter("live:*")] == ["live:acme"]


def test_the_stream_is_capped(redis_client: redis.Redis) -> None:
    publisher = live.Publisher(redis_client, maxlen=100)
    for n in range(1000):
        publisher.publish("acme", live.refused_entry("segment", 401, f"n{n}"))
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and live.latest(redis_client, "acme", 1)[0][1]["reason"] != "n999":
        time.sleep(0.01)
    assert live.latest(redis_client, "acme", 1)[0][1]["reason"] == "n999"
    assert 100 <= redis_client.xlen("live:acme") < 300


def test_publishing_never_fails_the_delivery_when_redis_is_gone() -> None:
    publisher = live.Publisher(redis.Redis(host="127.0.0.1", port=9, socket_connect_timeout=0.2))
    publisher.publish("acme", live.refused_entry("segment", 401, "x"))  # no exception


# --- the SSE endpoint ---------------------------------------------------------------------


def bearer(conn: redis.Redis, role: str = "viewer", account: str = "acme") -> dict[str, str]:
    _, secret = tokens.create(conn, [account], role, timedelta(days=1), clock.now())
    return {"Authorization": f"Bearer {secret}"}


def frames(text: str) -> list[dict[str, Any]]:
    out = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != ":")
        if "data" in lines:
            out.append({"id": lines["id"], **json.loads(lines["data"])})
    return out


def test_the_endpoint_needs_a_token_of_the_account(client: Any, redis_client: redis.Redis) -> None:
    assert client.get("/api/v1/accounts/acme/live").status_code == 401
    res = client.get("/api/v1/accounts/acme/live", headers=bearer(redis_client, account="globex"))
    assert res.status_code == 404
    assert res.json["error"] == "not_found"
    res = client.get("/api/v1/accounts/acme/live?window=99", headers=bearer(redis_client))
    assert res.status_code == 422
    res = client.get("/api/v1/accounts/acme/live", headers={**bearer(redis_client), "Last-Event-ID": "x"})
    assert res.status_code == 422


def test_the_endpoint_streams_the_backlog_then_resumes_after_last_event_id(
    client: Any, redis_client: redis.Redis
) -> None:
    for n in range(3):
        post_segment(client, segment_body(f"b-{n}", email=f"p{n}@example.com"))
    entries(redis_client, "acme", 3)
    auth = bearer(redis_client)
    res = client.get("/api/v1/accounts/acme/live?window=1&backlog=2", headers=auth)
    assert res.status_code == 200
    assert res.mimetype == "text/event-stream"
    got = frames(res.get_data(as_text=True))
    assert [f["events"][0]["identities"]["email"] for f in got] == ["p***@example.com"] * 2
    assert len(got) == 2
    res = client.get("/api/v1/accounts/acme/live?window=1", headers={**auth, "Last-Event-ID": got[0]["id"]})
    assert [f["id"] for f in frames(res.get_data(as_text=True))] == [got[1]["id"]]


def test_a_delivery_appears_on_an_open_stream_within_a_second(
    client: Any, app: Any, redis_client: redis.Redis
) -> None:
    seen: list[tuple[float, str]] = []
    opened = threading.Event()

    def watch() -> None:
        reader = app.test_client()
        res = reader.get("/api/v1/accounts/acme/live?window=3&backlog=0", headers=bearer(redis_client))
        for chunk in res.response:
            text = chunk.decode() if isinstance(chunk, bytes) else chunk
            opened.set()
            if text.startswith("id: "):
                seen.append((time.monotonic(), text))
                break
        res.close()

    thread = threading.Thread(target=watch)
    thread.start()
    assert opened.wait(5)
    assert post_segment(client, segment_body("late-1")).status_code == 200
    acknowledged = time.monotonic()
    thread.join(5)
    assert seen, "no event reached the open stream"
    arrived, text = seen[0]
    assert arrived - acknowledged <= 1.0
    assert '"outcome":"accepted"' in text


@pytest.mark.parametrize("role", ["viewer", "editor", "admin"])
def test_every_role_may_watch(client: Any, redis_client: redis.Redis, role: str) -> None:
    res = client.get("/api/v1/accounts/acme/live?window=1&backlog=0", headers=bearer(redis_client, role))
    assert res.status_code == 200
    assert res.get_data(as_text=True).startswith("retry: 500")
