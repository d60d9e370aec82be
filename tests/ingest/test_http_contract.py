"""The receiver's HTTP contract (DESIGN.md §5) outside the signature checks: Redis down → 503 and
nothing acknowledged, health and readiness, metrics, and JSON errors (never an HTML page)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from connector import redis_conn
from connector.app import create_app
from connector.config import Accounts
from connector.dev.embedded_redis import EmbeddedRedis
from connector.ingest.receivers.segment import sign
from connector.settings import Settings
from tests.helpers import stored_events

SECRET = b"segment_shared_secret_123"  # acme's Segment secret in conftest.ACME_ENV


def segment_body(message_id: str, user: str = "user-1") -> bytes:
    return json.dumps(
        {
            "type": "track",
            "event": "Order Completed",
            "userId": user,
            "messageId": message_id,
            "timestamp": "2024-01-01T00:00:00Z",
            "properties": {"revenue": 12.5, "currency": "EUR"},
        }
    ).encode()


def post_segment(client, account: str, body: bytes):  # type: ignore[no-untyped-def]
    return client.post(
        f"/webhooks/{account}/segment",
        data=body,
        headers={"Content-Type": "application/json", "X-Signature": sign(SECRET, body)},
    )


def assert_json_error(res, status: int, error: str) -> None:  # type: ignore[no-untyped-def]
    assert res.status_code == status
    assert res.mimetype == "application/json", res.data[:200]
    assert b"<html" not in res.data.lower()
    assert res.json["error"] == error


# --- Redis unreachable -------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """An embedded Redis of this test only, so that it can be stopped and started again."""
    server = EmbeddedRedis(tmp_path / "redis").start()
    redis_conn.reset()
    try:
        yield server
    finally:
        server.stop()
        redis_conn.reset()


@pytest.fixture
def own_client(own_redis: EmbeddedRedis, accounts: Accounts, tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = Settings(
        queue_redis_url=own_redis.url,
        profile_redis_url=own_redis.url,
        config_dir=tmp_path / "accounts",
        max_body_bytes=1024,
        event_shards=2,
        public_url=None,
        data_dir=tmp_path,
    )
    app = create_app(settings)
    app.config["TESTING"] = True
    return app.test_client()


def test_redis_down_is_503_and_nothing_is_acknowledged_then_accepted(own_redis, own_client) -> None:  # type: ignore[no-untyped-def]
    body = segment_body("msg-while-down")
    own_redis.stop()

    res = post_segment(own_client, "acme", body)
    assert_json_error(res, 503, "unavailable")
    assert int(res.headers["Retry-After"]) > 0
    assert "retry" in res.json["message"]

    own_redis.start()  # same port, same data dir
    conn = redis.Redis.from_url(own_redis.url)
    assert stored_events(conn) == []
    assert list(conn.scan_iter("dd:*")) == []  # no dedupe marker: the retry is not a "duplicate"

    res = post_segment(own_client, "acme", body)
    assert res.status_code == 200
    assert res.json == {"status": "accepted", "accepted": 1, "duplicates": 0}
    [event] = stored_events(conn)
    assert event["source_event_id"] == "msg-while-down"
    assert post_segment(own_client, "acme", body).json["status"] == "duplicate"
    conn.close()


def test_healthz_without_redis_readyz_follows_redis(own_redis, own_client) -> None:  # type: ignore[no-untyped-def]
    assert own_client.get("/readyz").status_code == 200
    own_redis.stop()
    assert own_client.get("/healthz").status_code == 200
    assert own_client.get("/healthz").json == {"status": "ok"}
    res = own_client.get("/readyz")
    assert_json_error(res, 503, "unavailable")
    assert "Retry-After" in res.headers
    own_redis.start()
    res = own_client.get("/readyz")
    assert res.status_code == 200
    assert res.json == {"status": "ready"}


def test_acknowledged_events_survive_a_restart(own_redis, own_client) -> None:  # type: ignore[no-untyped-def]
    assert post_segment(own_client, "acme", segment_body("msg-durable")).status_code == 200
    own_redis.stop()  # SIGTERM: redis flushes its append-only file
    own_redis.start()
    conn = redis.Redis.from_url(own_redis.url)
    assert [e["source_event_id"] for e in stored_events(conn)] == ["msg-durable"]
    conn.close()
    # the web process's connection went stale with the restart: it is replaced, not answered with 503
    res = post_segment(own_client, "acme", segment_body("msg-after-restart"))
    assert res.status_code == 200, res.json
    assert post_segment(own_client, "acme", segment_body("msg-durable")).json["status"] == "duplicate"


# --- metrics -----------------------------------------------------------------------------------


def test_metrics_counts_accepted_and_duplicates_per_account_and_queue_depth(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    for message_id in ("m-1", "m-2", "m-1"):
        assert post_segment(client, "acme", segment_body(message_id)).status_code == 200
    globex = b"globex_segment_secret_999"
    body = segment_body("g-1")
    res = client.post(
        "/webhooks/globex/segment",
        data=body,
        headers={"Content-Type": "application/json", "X-Signature": sign(globex, body)},
    )
    assert res.status_code == 200

    res = client.get("/metrics")
    assert res.status_code == 200
    assert res.mimetype == "text/plain"
    text = res.get_data(as_text=True)
    assert 'connector_ingest_events_total{account="acme",outcome="accepted"} 2' in text
    assert 'connector_ingest_events_total{account="acme",outcome="duplicate"} 1' in text
    assert 'connector_ingest_events_total{account="globex",outcome="accepted"} 1' in text
    depths = [
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("connector_event_queue_depth{")
    ]
    assert sum(depths) == 3


def test_metrics_count_rejected_requests_by_sender_type_and_status(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = segment_body("m-wrong-secret")
    wrong = {"Content-Type": "application/json", "X-Signature": sign(b"not-the-secret", body)}
    for account in ("acme", "acme", "no-such-account"):
        assert client.post(f"/webhooks/{account}/segment", data=body, headers=wrong).status_code == 401
    assert (
        client.post("/v1/track", data=b"{}", headers={"Content-Type": "application/json"}).status_code == 401
    )
    assert client.post("/webhooks/acme/no-such-sender", data=b"{}").status_code == 404
    assert post_segment(client, "acme", b"{not json").status_code == 400
    text = client.get("/metrics").get_data(as_text=True)
    assert 'connector_ingest_rejected_total{sender="segment",status="401"} 3' in text
    assert 'connector_ingest_rejected_total{sender="segment",status="400"} 1' in text
    assert 'connector_ingest_rejected_total{sender="tracking",status="401"} 1' in text
    assert 'connector_ingest_rejected_total{sender="unknown",status="404"} 1' in text
    assert "no-such" not in text  # what a caller puts in the path never becomes a label


# --- JSON errors -------------------------------------------------------------------------------


def test_unknown_sender_type_is_404_json(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    res = client.post("/webhooks/acme/nosuchsender", data=b"{}")
    assert_json_error(res, 404, "not_found")
    assert "nosuchsender" in res.json["message"]


def test_unknown_path_is_404_json(client) -> None:  # type: ignore[no-untyped-def]
    assert_json_error(client.get("/nowhere"), 404, "not_found")


def test_wrong_method_is_405_json(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    res = client.get("/webhooks/acme/segment")
    assert_json_error(res, 405, "method_not_allowed")
    assert "POST" in res.json["message"]
    res = client.delete("/webhooks/acme/segment")
    assert_json_error(res, 405, "method_not_allowed")
    assert_json_error(client.post("/healthz"), 405, "method_not_allowed")


def test_body_over_the_limit_is_413_json(own_client, own_redis) -> None:  # type: ignore[no-untyped-def]
    body = segment_body("big", user="u" * 2000)  # the limit of own_client's app is 1024 bytes
    res = post_segment(own_client, "acme", body)
    assert_json_error(res, 413, "payload_too_large")
    assert "1024" in res.json["message"]
    conn = redis.Redis.from_url(own_redis.url)
    assert stored_events(conn) == []
    conn.close()


def test_default_limit_is_one_mebibyte(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = segment_body("big", user="u" * (1024 * 1024))
    assert_json_error(post_segment(client, "acme", body), 413, "payload_too_large")
    assert post_segment(client, "acme", segment_body("small")).status_code == 200


# --- the receiving routes' own request handling (connector.ingest.web.Ingress) --------------------------


def call_wsgi(app, environ_extra: dict, body: bytes) -> tuple[str, dict[str, str], bytes]:  # type: ignore[no-untyped-def]
    """Call the app's WSGI callable with a hand-made environ (what a server such as gunicorn passes)."""
    import io

    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/webhooks/acme/segment",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "CONTENT_TYPE": "application/json",
        "HTTP_X_SIGNATURE": sign(SECRET, body),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        **environ_extra,
    }
    seen: dict[str, object] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    out = b"".join(app.wsgi_app(environ, start_response))
    return str(seen["status"]), dict(seen["headers"]), out  # type: ignore[arg-type]


def test_chunked_body_without_content_length_is_read_to_its_end(app, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = segment_body("msg-chunked")
    status, headers, out = call_wsgi(app, {"wsgi.input_terminated": True}, body)
    assert status == "200 OK"
    assert json.loads(out) == {"status": "accepted", "accepted": 1, "duplicates": 0}
    assert headers["Content-Length"] == str(len(out))
    assert [e["source_event_id"] for e in stored_events(redis_client)] == ["msg-chunked"]


def test_chunked_body_over_the_limit_is_413(own_client, own_redis) -> None:  # type: ignore[no-untyped-def]
    body = segment_body("msg-big-chunked", user="u" * 2000)  # own_client's limit is 1024 bytes
    status, _, out = call_wsgi(own_client.application, {"wsgi.input_terminated": True}, body)
    assert status.startswith("413")
    assert json.loads(out)["error"] == "payload_too_large"
    conn = redis.Redis.from_url(own_redis.url)
    assert stored_events(conn) == []
    conn.close()


def test_body_shorter_than_its_content_length_is_400(app, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = segment_body("msg-cut")
    status, _, out = call_wsgi(app, {"CONTENT_LENGTH": str(len(body) + 10)}, body)
    assert status.startswith("400")
    message = "body is shorter than its Content-Length"
    assert json.loads(out) == {"error": "malformed_payload", "message": message}
    status, _, out = call_wsgi(app, {"CONTENT_LENGTH": "ten"}, body)
    assert status.startswith("400")
    assert "Content-Length" in json.loads(out)["message"]
    assert stored_events(redis_client) == []


def test_head_answers_without_a_body(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    res = client.head("/webhooks/acme/segment")  # Segment accepts POST, PUT, PATCH
    assert res.status_code == 405
    assert res.data == b""
    assert int(res.headers["Content-Length"]) > 0  # the length of the body a GET would have had


def test_an_unexpected_error_is_a_json_500_without_details(client, redis_client, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    from connector.ingest.receivers import REGISTRY

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(REGISTRY["segment"], "handle", broken)
    res = post_segment(client, "acme", segment_body("msg-broken"))
    assert_json_error(res, 500, "internal")
    assert b"secret detail" not in res.data
    assert "secret detail" in caplog.text  # logged for operators, with the traceback
    assert stored_events(redis_client) == []


def test_other_paths_are_served_by_flask(client) -> None:  # type: ignore[no-untyped-def]
    assert_json_error(client.post("/webhooks/acme"), 404, "not_found")
    assert_json_error(client.post("/webhooks/acme/segment/extra"), 404, "not_found")
    assert_json_error(client.post("/v1/track/extra"), 404, "not_found")
    assert client.get("/healthz").json == {"status": "ok"}
