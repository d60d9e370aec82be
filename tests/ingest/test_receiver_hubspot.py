from __future__ import annotations

import copy
import dataclasses
import json
from datetime import UTC, datetime, timedelta

from connector import clock
from connector.ingest.receivers import REGISTRY
from connector.ingest.receivers.hubspot import signature_v1, signature_v2, signature_v3
from tests.conftest import ACME, GLOBEX, write_accounts
from tests.helpers import stored_events

SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"
NOW = datetime(2024, 1, 1, 0, 0, 0, tzinfo=UTC)
URL = "http://localhost/webhooks/acme/hubspot"


def event(event_id: int, kind: str = "contact.creation", object_id: int = 123, **extra: object) -> dict:
    return {"eventId": event_id, "subscriptionId": 12345, "portalId": 62515, "appId": 54321,
            "occurredAt": 1704067100000 + event_id, "subscriptionType": kind, "attemptNumber": 0,
            "objectId": object_id, "changeSource": "CRM", **extra}  # fmt: skip


def v3_headers(body: bytes, url: str = URL, when: datetime = NOW, secret: str = SECRET) -> dict[str, str]:
    ts = str(int(when.timestamp() * 1000))
    return {
        "Content-Type": "application/json",
        "X-HubSpot-Request-Timestamp": ts,
        "X-HubSpot-Signature-v3": signature_v3(secret.encode(), "POST", url, body, ts),
    }


def post(client, body: bytes, hdrs: dict[str, str], path: str = "/webhooks/acme/hubspot"):  # type: ignore[no-untyped-def]
    with clock.frozen(NOW):
        return client.post(path, data=body, headers=hdrs)


def client_for(settings, tmp_path, **options):  # type: ignore[no-untyped-def]
    from connector.app import create_app

    acme = copy.deepcopy(ACME)
    acme["senders"]["hubspot"] = {"secret_env": "ACME_HUBSPOT_SECRET", **options}
    app = create_app(dataclasses.replace(settings, config_dir=write_accounts(tmp_path / "hs", acme, GLOBEX)))
    return app.test_client()


def test_v3_batch_split_and_normalized(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    items = [
        event(1),
        event(2, "contact.propertyChange", propertyName="lifecyclestage", propertyValue="customer"),
        event(3, "contact.deletion"),
        event(4, "deal.creation", object_id=999),
    ]
    body = json.dumps(items).encode()
    res = post(client, body, v3_headers(body))
    assert res.status_code == 200, res.json
    assert res.json["accepted"] == 4
    by_name = {e["name"]: e for e in stored_events(redis_client)}
    assert set(by_name) == {"contact_created", "profile_updated", "contact_deleted", "deal_creation"}
    assert by_name["contact_created"]["identities"] == {"hubspot_contact_id": "123"}
    assert by_name["contact_created"]["occurred_at"] == "2023-12-31T23:58:20.001000Z"
    assert by_name["profile_updated"]["traits"] == {"lifecyclestage": "customer"}
    assert by_name["profile_updated"]["type"] == "identify"
    assert by_name["deal_creation"]["identities"] == {}
    assert by_name["deal_creation"]["properties"]["objectId"] == 999
    assert "attemptNumber" not in by_name["contact_created"]["properties"]


def test_header_name_is_case_insensitive(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps([event(1)]).encode()
    hdrs = v3_headers(body)
    hdrs["X-HubSpot-Signature-V3"] = hdrs.pop("X-HubSpot-Signature-v3")
    assert post(client, body, hdrs).status_code == 200


def test_configured_url_plus_query_is_signed(settings, tmp_path, redis_client) -> None:  # type: ignore[no-untyped-def]
    client = client_for(settings, tmp_path, url="https://hooks.example.com/webhooks/hubspot")
    body = json.dumps([event(1)]).encode()
    hdrs = v3_headers(body, url="https://hooks.example.com/webhooks/hubspot?portal=1&a=b")
    assert post(client, body, hdrs, path="/webhooks/acme/hubspot?portal=1&a=b").status_code == 200
    assert post(client, body, hdrs, path="/webhooks/acme/hubspot?a=b&portal=1").status_code == 401


def test_retries_and_resplit_batches_store_each_event_once(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    items = [event(i) for i in range(5)]
    for chunk in (items[:2], items[1:4], items):
        body = json.dumps(chunk).encode()
        assert post(client, body, v3_headers(body)).status_code == 200
    retry = [{**e, "attemptNumber": 3} for e in items]  # attemptNumber changes on retries
    body = json.dumps(retry).encode()
    answer = post(client, body, v3_headers(body)).json
    assert answer == {"status": "duplicate", "accepted": 0, "duplicates": 5}
    assert len(stored_events(redis_client)) == 5
    # eventId is not unique: another property change with the same eventId is its own event
    same_id = [event(0, "contact.propertyChange", propertyName="email", propertyValue="a@example.com")]
    body = json.dumps(same_id).encode()
    assert post(client, body, v3_headers(body)).json["accepted"] == 1


def test_same_delivery_five_times(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps([event(7)]).encode()
    answers = [post(client, body, v3_headers(body)) for _ in range(5)]
    assert [a.json["accepted"] for a in answers] == [1, 0, 0, 0, 0]
    assert len(stored_events(redis_client)) == 1


def test_rejections_are_401(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps([event(1)]).encode()
    good = v3_headers(body)
    answers = [
        post(client, body.replace(b"123", b"124"), good),
        post(client, body, v3_headers(body, secret="wrong")),
        post(client, body, v3_headers(body, when=NOW - timedelta(seconds=301))),
        post(client, body, v3_headers(body, when=NOW + timedelta(seconds=301))),
        post(client, body, v3_headers(body, url="http://localhost/webhooks/other/hubspot")),
        post(client, body, {k: v for k, v in good.items() if k != "X-HubSpot-Signature-v3"}),
        post(client, body, {k: v for k, v in good.items() if k != "X-HubSpot-Request-Timestamp"}),
        post(client, body, {**good, "X-HubSpot-Request-Timestamp": "soon"}),
        post(client, body, good, path="/webhooks/globex/hubspot"),
        post(client, body, good, path="/webhooks/nosuch/hubspot"),
    ]
    assert [a.status_code for a in answers] == [401] * len(answers)
    assert all(a.json == {"error": "unauthorized"} for a in answers)
    assert stored_events(redis_client) == []


def test_v1_v2_only_when_configured(settings, tmp_path, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps([event(1)]).encode()
    v1 = {"Content-Type": "application/json", "X-HubSpot-Signature-Version": "v1",
          "X-HubSpot-Signature": signature_v1(SECRET.encode(), body)}  # fmt: skip
    v2 = {"Content-Type": "application/json", "X-HubSpot-Signature-Version": "v2",
          "X-HubSpot-Signature": signature_v2(SECRET.encode(), "POST", URL, body)}  # fmt: skip
    default = client_for(settings, tmp_path)  # v3 only
    assert post(default, body, v1).status_code == 401
    assert post(default, body, v2).status_code == 401
    assert stored_events(redis_client) == []
    v2_only = client_for(settings, tmp_path, signature_versions=["v2"])
    assert post(v2_only, body, v1).status_code == 401
    assert post(v2_only, body, v2).status_code == 200
    # the stated version must be the one that matches
    assert post(v2_only, body, {**v2, "X-HubSpot-Signature-Version": "v1"}).status_code == 401


def test_malformed_after_signature_is_400(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    for bad, field in ((b"[{}]", "body[0].subscriptionType"), (b"[1]", "body[0]"), (b"{no", "JSON")):
        res = post(client, bad, v3_headers(bad))
        assert res.status_code == 400, bad
        assert field in res.json["message"]


def test_sign_helper_round_trips(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps([event(11)]).encode()
    assert post(client, body, REGISTRY["hubspot"].sign(SECRET, body, url=URL, now=NOW)).status_code == 200


def test_v3_uri_with_decoded_escapes_verifies(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps([event(21)]).encode()
    path = "/webhooks/acme/hubspot?next=a%3Ab%40c"
    hdrs = v3_headers(body, url="http://localhost/webhooks/acme/hubspot?next=a:b@c")
    assert post(client, body, hdrs, path=path).status_code == 200


def test_v3_signs_the_public_url_when_one_is_configured(settings, tmp_path, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Behind a proxy the request arrives at another host: HubSpot signed the public URL."""
    import dataclasses

    from connector.app import create_app

    public = dataclasses.replace(settings, public_url="https://hooks.example.com/")
    app = create_app(dataclasses.replace(public, config_dir=write_accounts(tmp_path / "pub", ACME, GLOBEX)))
    client = app.test_client()
    body = json.dumps([event(41)]).encode()
    path = "/webhooks/acme/hubspot?portal=62515"
    signed_public = v3_headers(body, url="https://hooks.example.com/webhooks/acme/hubspot?portal=62515")
    assert post(client, body, v3_headers(body, url="http://localhost" + path), path).status_code == 401
    res = post(client, body, signed_public, path)
    assert res.status_code == 200, res.json
    assert res.json["accepted"] == 1
