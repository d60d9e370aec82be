from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from connector import clock
from connector.ingest.receivers import REGISTRY
from connector.ingest.receivers.standard_webhooks import signature
from tests.conftest import vector
from tests.helpers import stored_events

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD = "whsec_b2xkLWtleS0wMTIzNDU2Nzg5YWJjZGVmZ2hpag=="
NOW = datetime(2024, 1, 1, tzinfo=UTC)


def headers(body: bytes, msg_id: str = "msg_1", when: datetime = NOW, secret: str = SECRET,
            prefix: str = "webhook") -> dict[str, str]:  # fmt: skip
    ts = str(int(when.timestamp()))
    return {
        "Content-Type": "application/json",
        f"{prefix}-id": msg_id,
        f"{prefix}-timestamp": ts,
        f"{prefix}-signature": signature(secret, msg_id, ts, body),
    }


def post(client, body: bytes, hdrs: dict[str, str], account: str = "acme"):  # type: ignore[no-untyped-def]
    with clock.frozen(NOW):
        return client.post(f"/webhooks/{account}/standard_webhooks", data=body, headers=hdrs)


BODY = json.dumps(
    {"type": "Order Completed", "timestamp": "2023-12-31T23:00:00Z",
     "data": {"email": "Ann@Example.com", "userId": "u-1", "anonymous_id": "a-1", "revenue": 10}}
).encode()  # fmt: skip


def test_event_normalized(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    res = post(client, BODY, headers(BODY))
    assert res.status_code == 200, res.json
    [event] = stored_events(redis_client)
    assert event["name"] == "order_completed"
    assert event["source_event_id"] == "msg_1"
    assert event["identities"] == {"email": "ann@example.com", "user_id": "u-1", "anonymous_id": "a-1"}
    assert event["occurred_at"] == "2023-12-31T23:00:00Z"
    assert event["properties"]["revenue"] == 10


def test_svix_aliases_rotation_and_unknown_versions(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    assert post(client, BODY, headers(BODY, "msg_svix", prefix="svix")).status_code == 200
    hdrs = headers(BODY, "msg_rot", secret=OLD)
    hdrs["webhook-signature"] = "v1a,AAAA v2,zzz v1,bm90LWl0 " + hdrs["webhook-signature"]
    assert post(client, BODY, hdrs).status_code == 200
    assert len(stored_events(redis_client)) == 2


def test_rotation_vector_with_either_secret(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    v = vector("standard_webhooks_rotation")
    ts = datetime.fromtimestamp(int(v["headers"]["webhook-timestamp"]), UTC)
    with clock.frozen(ts):
        res = client.post(
            "/webhooks/acme/standard_webhooks",
            data=v["body"].encode(),
            headers={"Content-Type": "application/json", **v["headers"], **v["expected"]},
        )
    assert res.status_code == 200
    [event] = stored_events(redis_client)
    assert event["name"] == "contact_created"


def test_rejections_are_401(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    good = headers(BODY)
    answers = [
        post(client, BODY.replace(b"10", b"99"), good),
        post(client, BODY, headers(BODY, secret="whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB")),
        post(client, BODY, headers(BODY, when=NOW - timedelta(seconds=301))),
        post(client, BODY, headers(BODY, when=NOW + timedelta(seconds=301))),
        post(client, BODY, {**good, "webhook-id": "msg_other"}),
        post(client, BODY, {**good, "webhook-timestamp": "abc"}),
        post(client, BODY, {**good, "webhook-signature": "v2," + good["webhook-signature"][3:]}),
        post(client, BODY, {k: v for k, v in good.items() if k != "webhook-signature"}),
        post(client, BODY, {k: v for k, v in good.items() if k != "webhook-timestamp"}),
        post(client, BODY, {k: v for k, v in good.items() if k != "webhook-id"}),
        post(client, BODY, good, account="globex"),
        post(client, BODY, good, account="nosuch"),
    ]
    assert [a.status_code for a in answers] == [401] * len(answers)
    assert all(a.json == {"error": "unauthorized"} for a in answers)
    assert stored_events(redis_client) == []


def test_same_delivery_five_times(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    answers = [post(client, BODY, headers(BODY, "msg_dup")) for _ in range(5)]
    assert [a.json["accepted"] for a in answers] == [1, 0, 0, 0, 0]
    assert len(stored_events(redis_client)) == 1


def test_malformed_after_signature_is_4xx(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    for body in (b"[1]", b"{bad"):
        assert post(client, body, headers(body, "msg_bad")).status_code == 400
    untyped = b'{"data": {"email": "x@example.com"}}'
    assert post(client, untyped, headers(untyped, "msg_untyped")).status_code == 200
    assert stored_events(redis_client)[0]["name"] == "webhook_received"


def test_sign_helper_round_trips(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    hdrs = REGISTRY["standard_webhooks"].sign(SECRET, BODY, url="", now=NOW)
    assert post(client, BODY, hdrs).status_code == 200
