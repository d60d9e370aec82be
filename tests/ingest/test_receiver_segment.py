from __future__ import annotations

import json

from connector.ingest.receivers.segment import sign, sign_whole
from tests.conftest import vector
from tests.helpers import stored_events
from tests.ingest.accounts import client_with


def post(client, account: str, body: bytes, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    return client.post(
        f"/webhooks/{account}/segment", data=body, headers={"Content-Type": "application/json", **headers}
    )


def test_single_vector_accepted_and_stored(client, redis_client, frozen_clock) -> None:  # type: ignore[no-untyped-def]
    v = vector("segment_single")
    res = post(client, "acme", v["body"].encode(), {"X-Signature": v["expected"]["X-Signature"]})
    assert res.status_code == 200, res.json
    assert res.json == {"status": "accepted", "accepted": 1, "duplicates": 0}
    [event] = stored_events(redis_client)
    assert event["name"] == "order_completed"
    assert event["original_name"] == "Order Completed"
    assert event["identities"] == {"user_id": "user-42", "anonymous_id": "anon-123"}
    assert event["occurred_at"] == "2024-01-01T00:00:00.734000Z"
    assert event["properties"]["revenue"] == 39.95
    assert event["raw"] == json.loads(v["body"])


def test_actions_batch_signed_on_first_element_refused_by_default(client, redis_client, frozen_clock) -> None:  # type: ignore[no-untyped-def]
    v = vector("segment_actions_batch")
    res = post(client, "acme", v["body"].encode(), {"X-Signature": v["expected"]["X-Signature"]})
    assert res.status_code == 400
    assert res.json["error"] == "event_not_allowed"
    assert res.json["message"].startswith("body[1] is not covered by the signature")
    assert stored_events(redis_client) == []


def test_actions_batch_accepted_when_the_account_opts_in(
    settings, tmp_path, redis_client, frozen_clock
) -> None:  # type: ignore[no-untyped-def]
    client = client_with(settings, tmp_path / "a", segment={"unsigned_batch_elements": "accept"})
    v = vector("segment_actions_batch")
    res = post(client, "acme", v["body"].encode(), {"X-Signature": v["expected"]["X-Signature"]})
    assert res.status_code == 200
    assert res.json["accepted"] == 2
    names = sorted(e["name"] for e in stored_events(redis_client))
    assert names == ["identify", "order_completed"]


def test_whole_body_signature_header_accepted(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    v = vector("segment_actions_batch")
    res = post(
        client,
        "acme",
        v["body"].encode(),
        {"X-Segment-Signature": "1209d33349b6e03a44077e2a1b72801107e17c55"},
    )
    assert res.status_code == 200


def test_rotated_secret_accepted(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(
        {"type": "track", "event": "Product Viewed", "userId": "u1", "messageId": "m-rot"}
    ).encode()
    res = post(client, "acme", body, {"X-Signature": sign(b"segment_previous_secret_456", body)})
    assert res.status_code == 200
    assert stored_events(redis_client)[0]["name"] == "product_viewed"


def test_tampered_body_wrong_secret_and_cross_account_are_401(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    v = vector("segment_single")
    body = v["body"].encode()
    sig = v["expected"]["X-Signature"]
    tampered = body.replace(b"39.95", b"3995.0")
    answers = [
        post(client, "acme", tampered, {"X-Signature": sig}),
        post(client, "acme", body, {"X-Signature": sign(b"not-the-secret", body)}),
        post(client, "acme", body, {}),
        post(client, "globex", body, {"X-Signature": sig}),  # acme's secret on globex's route
        post(client, "nosuchaccount", body, {"X-Signature": sig}),
    ]
    assert [a.status_code for a in answers] == [401] * 5
    assert all(a.json == {"error": "unauthorized"} for a in answers)
    assert stored_events(redis_client) == []


def test_same_delivery_five_times_stored_once(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    v = vector("segment_single")
    answers = [
        post(client, "acme", v["body"].encode(), {"X-Signature": v["expected"]["X-Signature"]})
        for _ in range(5)
    ]
    assert [a.status_code for a in answers] == [200] * 5
    assert [a.json["status"] for a in answers] == ["accepted"] + ["duplicate"] * 4
    assert len(stored_events(redis_client)) == 1


def test_batch_resent_with_different_split_dedupes_per_event(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    secret = b"segment_shared_secret_123"
    events = [
        {"type": "track", "event": "Product Viewed", "userId": "u7", "messageId": f"m-{i}",
         "timestamp": f"2024-01-01T00:00:0{i}Z"}
        for i in range(5)
    ]  # fmt: skip
    first = json.dumps(events[:3]).encode()
    assert (
        post(client, "acme", first, {"X-Segment-Signature": sign_whole(secret, first)}).json["accepted"] == 3
    )
    for chunk in (events[2:4], events[3:], events[:1]):
        body = json.dumps(chunk).encode()
        assert (
            post(client, "acme", body, {"X-Segment-Signature": sign_whole(secret, body)}).status_code == 200
        )
    ids = sorted(e["source_event_id"] for e in stored_events(redis_client))
    assert ids == [f"m-{i}" for i in range(5)]


def test_malformed_after_valid_signature_is_400_with_reason(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    secret = b"segment_shared_secret_123"
    body = b'{"type": "bogus", "messageId": "x"}'
    res = post(client, "acme", body, {"X-Signature": sign(secret, body)})
    assert res.status_code == 400
    assert res.json["error"] == "malformed_payload"
    assert "type" in res.json["message"]
    body = b"{not json"
    res = post(client, "acme", body, {"X-Signature": sign(secret, body)})
    assert res.status_code == 400 and "not valid JSON" in res.json["message"]


def test_wrong_content_type_is_415(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = b'{"type":"track","event":"x","userId":"u"}'
    res = client.post(
        "/webhooks/acme/segment",
        data=body,
        headers={"Content-Type": "application/xml", "X-Signature": sign(b"segment_shared_secret_123", body)},
    )
    assert res.status_code == 415
    assert "application/json" in res.json["message"]


def test_body_over_limit_is_413(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = b"[" + b" " * (1024 * 1024 + 10) + b"]"
    res = post(client, "acme", body, {"X-Signature": "00"})
    assert res.status_code == 413
    assert res.json["error"] == "payload_too_large"


def test_batch_without_a_first_element_to_verify_is_400_not_401(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Nested deeper than the parser's limit, not JSON, or empty: the body alone decides, so the answer
    is the same 400 whatever the signature and the account (nothing about either is told)."""
    secret = b"segment_shared_secret_123"
    deep = b"[" + b'{"a":' * 70 + b"1" + b"}" * 70 + b"]"
    bodies = {deep: "nested deeper than 64 levels", b"[" * 200_000: "nested deeper than 64 levels",
              b"[nope, 1]": "no first element", b"[]": "no first element"}  # fmt: skip
    for body, reason in bodies.items():
        for signature, account in (
            ("0" * 40, "acme"),
            (sign_whole(secret, body), "acme"),
            ("0" * 40, "nosuch"),
        ):
            headers = {"Content-Type": "application/json", "X-Signature": signature}
            res = post(client, account, body, headers)
            assert res.status_code == 400, (body[:20], account, res.json)
            assert reason in res.json["message"] and "signature" not in res.json["message"]
    assert stored_events(redis_client) == []
