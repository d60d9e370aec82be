from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from connector import clock
from connector.ingest.receivers import REGISTRY
from connector.ingest.receivers.klaviyo import signature
from tests.conftest import vector
from tests.helpers import stored_events

SECRET = "klaviyo_secret_0123456789"
WEBHOOK_ID = "01HWEBHOOKID000000000000000"
NOW = datetime(2024, 1, 1, 0, 0, 30, tzinfo=UTC)
TS = "Mon, 01 Jan 2024 00:00:01 GMT"


def item(external_id: str, topic: str, profile: str | None = "01PROFILE", **props: object) -> dict:
    data: dict = {
        "type": "event",
        "id": external_id,
        "attributes": {"timestamp": 1704067200, "datetime": "2024-01-01T00:00:00+00:00",
                       "uuid": f"uuid-{external_id}", "event_properties": dict(props)},
    }  # fmt: skip
    if profile:
        data["relationships"] = {
            "profile": {"data": {"type": "profile", "id": profile}},
            "metric": {"data": {"type": "metric", "id": "M1"}},
        }
    return {"external_id": external_id, "topic": topic, "payload": {"data": data}}


def body_of(items: list[dict], webhook_id: str = WEBHOOK_ID) -> bytes:
    meta = {"klaviyo_account_id": "AbC123", "klaviyo_webhook_id": webhook_id, "version": "2024-07-15"}
    return json.dumps({"data": items, "meta": meta}).encode()


def headers(body: bytes, ts: str = TS, secret: str = SECRET, webhook_id: str = WEBHOOK_ID) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Klaviyo-Timestamp": ts,
        "Klaviyo-Webhook-Id": webhook_id,
        "Klaviyo-Signature": signature(secret.encode(), body, ts),
    }


def post(client, body: bytes, hdrs: dict[str, str], account: str = "acme"):  # type: ignore[no-untyped-def]
    with clock.frozen(NOW):
        return client.post(f"/webhooks/{account}/klaviyo", data=body, headers=hdrs)


def test_vectors_accepted_and_normalized(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    for name in ("klaviyo_rfc1123_ts", "klaviyo_iso_ts"):
        v = vector(name)
        res = post(client, v["body"].encode(), {**v["headers"], **v["expected"]})
        assert res.status_code == 200, res.json
    [event] = stored_events(redis_client)  # the second vector is the same event: a duplicate
    assert event["name"] == "email_opened"
    assert event["source_event_id"] == "4GsWZDDMxyz"
    assert event["occurred_at"] == "2024-01-01T00:00:00Z"
    assert event["properties"]["$message"] == "01HCAMPAIGN"


def test_topics_identities_and_unknown_topics(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    topics = {
        "event:klaviyo.opened_email": "email_opened",
        "event:klaviyo.clicked_email": "email_clicked",
        "event:klaviyo.received_email": "email_delivered",
        "event:klaviyo.bounced_email": "email_bounced",
        "event:klaviyo.dropped_email": "email_dropped",
        "event:klaviyo.marked_email_as_spam": "email_marked_spam",
        "event:klaviyo.received_sms": "received_sms",
        "event:klaviyo.Subscribed To List": "subscribed_to_list",
    }
    items = [item(f"e{i}", t, **{"$email": "Jane@Example.com"}) for i, t in enumerate(topics)]
    body = body_of(items)
    res = post(client, body, headers(body))
    assert res.status_code == 200 and res.json["accepted"] == len(topics)
    by_topic = {e["original_name"]: e for e in stored_events(redis_client)}
    for topic, name in topics.items():
        assert by_topic[topic]["name"] == name
        ids = by_topic[topic]["identities"]
        assert ids == {"klaviyo_profile_id": "01PROFILE", "email": "jane@example.com"}


def test_batch_resplit_stores_each_event_once(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    items = [item(f"x{i}", "event:klaviyo.clicked_email") for i in range(5)]
    for chunk in (items[:3], items[2:], items[1:2], items):
        body = body_of(chunk)
        assert post(client, body, headers(body)).status_code == 200
    ids = sorted(e["source_event_id"] for e in stored_events(redis_client))
    assert ids == [f"x{i}" for i in range(5)]


def test_same_delivery_five_times(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = body_of([item("d1", "event:klaviyo.opened_email")])
    answers = [post(client, body, headers(body)) for _ in range(5)]
    assert [a.json["accepted"] for a in answers] == [1, 0, 0, 0, 0]
    assert len(stored_events(redis_client)) == 1


def test_rejections_are_401(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = body_of([item("r1", "event:klaviyo.opened_email")])
    good = headers(body)
    stale = (NOW - timedelta(seconds=301)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    future = (NOW + timedelta(seconds=301)).isoformat()
    other_id = body_of([item("r1", "event:klaviyo.opened_email")], webhook_id="01OTHER")
    answers = [
        post(client, body.replace(b"r1", b"r2"), good),
        post(client, body, headers(body, secret="wrong")),
        post(client, body, headers(body, ts=stale)),
        post(client, body, headers(body, ts=future)),
        post(client, body, headers(body, ts="not a date")),
        post(client, body, {k: v for k, v in good.items() if k != "Klaviyo-Signature"}),
        post(client, body, {k: v for k, v in good.items() if k != "Klaviyo-Timestamp"}),
        post(client, body, {k: v for k, v in good.items() if k != "Klaviyo-Webhook-Id"}),
        post(client, other_id, headers(other_id)),  # meta id differs from the header
        post(client, body, good, account="globex"),
        post(client, body, good, account="nosuch"),
    ]
    assert [a.status_code for a in answers] == [401] * len(answers)
    assert all(a.json == {"error": "unauthorized"} for a in answers)
    assert stored_events(redis_client) == []


def test_malformed_items_are_400_naming_the_field(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = body_of([item("ok", "event:klaviyo.opened_email"), {"topic": "event:klaviyo.opened_email"}])
    res = post(client, body, headers(body))
    assert res.status_code == 400
    assert "body.data[1].external_id" in res.json["message"]
    assert stored_events(redis_client) == []


def test_sign_helper_round_trips(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = body_of([item("s1", "event:klaviyo.opened_email")])
    hdrs = REGISTRY["klaviyo"].sign(SECRET, body, url="", now=NOW)
    assert hdrs["Klaviyo-Webhook-Id"] == WEBHOOK_ID
    assert post(client, body, hdrs).status_code == 200


def test_signed_timestamp_that_is_no_number_is_401(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Digits int() takes but a timestamp is not ("²", Arabic-Indic digits) and numbers too long
    to parse are a bad timestamp (401), like any other, after a matching signature."""
    body = body_of([item("ts1", "event:klaviyo.opened_email")])
    for ts in ("\u00b2", "\u00b9\u00b2", "9" * 5000, "1" * 4000, "1" * 21):
        res = post(client, body, headers(body, ts=ts))
        assert res.status_code == 401, (ts[:10], res.json)
        assert res.json == {"error": "unauthorized"}
    assert stored_events(redis_client) == []
