from __future__ import annotations

import base64
import gzip
import json
from datetime import timedelta

import pytest

from connector import clock
from tests.conftest import FIXED_NOW
from tests.helpers import stored_events

KEY = "acme-write-key-7f3a"


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def post(client, path: str, payload: object, key: str | None = KEY, **headers: str):  # type: ignore[no-untyped-def]
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    hdrs = {"Content-Type": "application/json", **(basic(key) if key else {}), **headers}
    with clock.frozen(FIXED_NOW):
        return client.post(path, data=body, headers=hdrs)


@pytest.mark.parametrize(
    ("call", "payload", "name"),
    [
        ("track", {"event": "Product Viewed", "userId": "u1", "properties": {"sku": "s"}}, "product_viewed"),
        ("identify", {"userId": "u1", "traits": {"email": "A@Example.com"}}, "identify"),
        ("page", {"anonymousId": "a1", "name": "Home"}, "page_viewed"),
        ("screen", {"userId": "u1", "name": "Cart"}, "screen_viewed"),
        ("group", {"userId": "u1", "groupId": "g1", "traits": {"plan": "pro"}}, "group"),
        ("alias", {"userId": "u1", "previousId": "a1"}, "alias"),
    ],
)
def test_single_calls(client, redis_client, call, payload, name) -> None:  # type: ignore[no-untyped-def]
    res = post(client, f"/v1/{call}", {**payload, "messageId": f"m-{call}"})
    assert res.status_code == 200, res.json
    assert res.json == {"success": True, "accepted": 1, "duplicates": 0}
    [event] = stored_events(redis_client)
    assert event["name"] == name
    assert event["account"] == "acme"
    assert event["source"] == "tracking"
    assert event["type"] == ("track" if call == "track" else call)


def test_batch_with_write_key_in_body_and_skew_correction(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    payload = {
        "writeKey": KEY,
        "sentAt": "2024-01-01T00:10:00Z",  # device clock 10 minutes ahead
        "batch": [
            {"type": "track", "event": "Order Completed", "userId": "u2", "messageId": "b1",
             "originalTimestamp": "2024-01-01T00:09:00Z", "properties": {"revenue": 3}},
            {"type": "identify", "userId": "u2", "messageId": "b2", "traits": {"plan": "pro"},
             "timestamp": "2023-12-31T00:00:00Z"},
        ],
    }  # fmt: skip
    res = post(client, "/v1/batch", payload, key=None)
    assert res.json == {"success": True, "accepted": 2, "duplicates": 0}
    events = {e["source_event_id"]: e for e in stored_events(redis_client)}
    # 00:00:30 (now) - (00:10:00 - 00:09:00)
    assert events["b1"]["occurred_at"] == "2023-12-31T23:59:30Z"
    assert events["b2"]["occurred_at"] == "2023-12-31T00:00:00Z"
    assert "writeKey" not in json.dumps(events["b1"]["raw"])


def test_gzip_body_and_duplicates(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    batch = {
        "batch": [{"type": "track", "event": "E", "userId": "u", "messageId": f"g{i}"} for i in range(3)]
    }
    body = gzip.compress(json.dumps(batch).encode())
    res = post(client, "/v1/batch", body, **{"Content-Encoding": "gzip"})
    assert res.json == {"success": True, "accepted": 3, "duplicates": 0}
    again = {
        "batch": [*batch["batch"][1:], {"type": "track", "event": "E", "userId": "u", "messageId": "g3"}]
    }
    assert post(client, "/v1/batch", again).json == {"success": True, "accepted": 1, "duplicates": 2}
    assert [post(client, "/v1/track", batch["batch"][0]).json["duplicates"] for _ in range(5)] == [1] * 5
    assert len(stored_events(redis_client)) == 4


def test_short_paths_used_by_analytics_js(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    assert post(client, "/v1/t", {"event": "E", "userId": "u", "messageId": "s1"}).status_code == 200
    assert (
        post(client, "/v1/b", {"batch": [{"type": "page", "userId": "u", "messageId": "s2"}]}).status_code
        == 200
    )
    assert len(stored_events(redis_client)) == 2


def test_unknown_or_missing_write_key_is_401(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    msg = {"event": "E", "userId": "u", "messageId": "k1"}
    answers = [
        post(client, "/v1/track", msg, key=None),
        post(client, "/v1/track", msg, key="nope"),
        post(client, "/v1/track", {**msg, "writeKey": "nope"}, key=None),
        post(client, "/v1/track", msg, key=None, Authorization="Basic !!!"),
        post(client, "/v1/track", msg, key=None, Authorization="Bearer " + KEY),
        post(client, "/v1/track", b"{broken", key=None),
    ]
    assert [a.status_code for a in answers] == [401] * len(answers)
    unauthorized = {
        "error": "unauthorized",
        "code": "unauthorized",
        "message": "unknown or missing write key",
    }
    assert all(a.json == unauthorized for a in answers)
    assert stored_events(redis_client) == []


def test_write_keys_select_their_account(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    post(client, "/v1/track", {"event": "E", "userId": "u", "messageId": "x"}, key="globex-write-key-1b2c")
    assert stored_events(redis_client)[0]["account"] == "globex"


def test_invalid_batch_element_is_400_naming_it(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    batch = {"batch": [{"type": "track", "event": "E", "userId": "u"}, {"type": "track", "userId": "u"}]}
    res = post(client, "/v1/batch", batch)
    assert res.status_code == 400
    assert "batch[1].event" in res.json["message"]
    res = post(client, "/v1/batch", {"batch": [{"type": "bogus"}]})
    assert res.status_code == 400 and "batch[0].type" in res.json["message"]
    res = post(client, "/v1/batch", {"batch": "x"})
    assert res.status_code == 400 and "body.batch" in res.json["message"]
    res = post(client, "/v1/track", {"event": "E", "userId": "u", "timestamp": "someday"})
    assert res.status_code == 400 and "body.timestamp" in res.json["message"]
    assert stored_events(redis_client) == []


@pytest.mark.parametrize(
    ("properties", "named"),
    [
        ({"revenue": 1e307}, "properties.revenue is 1e+307"),
        ({"total": -(10**13)}, "properties.total is -10000000000000"),
        ({"price": "1e300"}, "properties.price is 1e300"),
        ({"revenue": 10**400}, "properties.revenue is"),
    ],
)
def test_an_amount_no_order_has_is_refused(client, redis_client, properties, named) -> None:  # type: ignore[no-untyped-def]
    # such a number broke the sums the rules and the analytics keep, failing the worker's whole batch
    batch = {
        "batch": [{"type": "track", "event": "Order Completed", "userId": "u", "properties": properties}]
    }
    res = post(client, "/v1/batch", batch)
    assert res.status_code == 400, res.json
    assert res.json["message"].startswith(f"batch[0]: {named}")
    assert "beyond the ±1,000,000,000,000 an amount may be" in res.json["message"]
    assert stored_events(redis_client) == []
    ok = {
        "event": "Order Completed",
        "userId": "u",
        "properties": {"revenue": 10**12, "order_id": 10**18, "value": 1_717_171_717_171},
    }
    assert post(client, "/v1/track", ok).status_code == 200


def test_a_time_more_than_a_day_ahead_is_refused(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    # it would pin latest-wins traits and keep windows open until then
    ahead = (FIXED_NOW + timedelta(hours=24, seconds=1)).isoformat()
    res = post(client, "/v1/identify", {"userId": "u", "traits": {"first_name": "Ann"}, "timestamp": ahead})
    assert res.status_code == 400
    assert "more than 24 hours from now" in res.json["message"]
    assert stored_events(redis_client) == []
    within = (FIXED_NOW + timedelta(hours=23)).isoformat()
    assert post(client, "/v1/identify", {"userId": "u", "timestamp": within}).status_code == 200


def test_a_client_received_at_does_not_move_the_event(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    res = post(client, "/v1/track", {"event": "E", "userId": "u", "receivedAt": "2199-01-01T00:00:00Z"})
    assert res.status_code == 200
    [event] = stored_events(redis_client)
    assert event["occurred_at"].startswith(FIXED_NOW.strftime("%Y-%m-%dT%H:%M"))


def test_a_retry_without_message_id_is_a_duplicate_when_it_has_its_time(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    timed = {"event": "Order Completed", "userId": "u", "timestamp": "2023-12-31T10:00:00Z"}
    # an SDK stamps each send: a retry's sentAt differs
    sends = [{**timed, "sentAt": f"2023-12-31T10:00:0{n}Z"} for n in range(3)]
    answers = [post(client, "/v1/track", send).json for send in sends]
    assert [(a["accepted"], a["duplicates"]) for a in answers] == [(1, 0), (0, 1), (0, 1)]
    assert len(stored_events(redis_client)) == 1


def test_content_type_encoding_and_size(client, app, redis_client) -> None:  # type: ignore[no-untyped-def]
    msg = json.dumps({"event": "E", "userId": "u"}).encode()
    assert post(client, "/v1/track", msg, **{"Content-Type": "application/xml"}).status_code == 415
    assert post(client, "/v1/track", msg, **{"Content-Encoding": "br"}).status_code == 415
    assert post(client, "/v1/track", b"not gzip", **{"Content-Encoding": "gzip"}).status_code == 400
    assert post(client, "/v1/track", msg, **{"Content-Type": "text/plain"}).status_code == 200
    limit = app.config["MAX_CONTENT_LENGTH"]
    bomb = gzip.compress(b" " * (limit * 8))  # small on the wire, 8x the limit inflated
    assert len(bomb) < limit
    res = post(client, "/v1/batch", bomb, **{"Content-Encoding": "gzip"})
    assert res.status_code == 413 and res.json["error"] == "payload_too_large"
    assert post(client, "/v1/unknown", msg).status_code == 404
    assert client.get("/v1/track").status_code == 405


def test_gzip_with_a_second_member_or_trailing_data_is_400(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    first = gzip.compress(json.dumps({"batch": [{"type": "track", "event": "A", "userId": "u1"}]}).encode())
    second = gzip.compress(json.dumps({"batch": [{"type": "track", "event": "B", "userId": "u2"}]}).encode())
    cases = {
        first + second: "more than one gzip member",
        first + b"garbage": "trailing data after the gzip stream",
        first + b"\x00": "trailing data after the gzip stream",
    }
    for body, reason in cases.items():
        res = post(client, "/v1/batch", body, **{"Content-Encoding": "gzip"})
        assert res.status_code == 400, res.json
        assert reason in res.json["message"]
    assert stored_events(redis_client) == []
    assert post(client, "/v1/batch", first, **{"Content-Encoding": "gzip"}).json["accepted"] == 1


PREFLIGHT = {
    "Origin": "https://shop.example.com",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type,x-retry-count",
}


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch", "/v1/t", "/v1/b"])
def test_a_cors_preflight_of_a_tracking_call_is_answered(client, redis_client, path) -> None:  # type: ignore[no-untyped-def]
    # analytics.js names its write key in an Authorization header: the browser asks first
    res = client.options(path, headers=PREFLIGHT)
    assert res.status_code == 204
    assert res.data == b""
    assert "Content-Length" not in res.headers and "Content-Type" not in res.headers
    assert res.headers["Access-Control-Allow-Origin"] == "*"
    assert res.headers["Access-Control-Allow-Methods"] == "POST"
    assert res.headers["Access-Control-Allow-Headers"] == "authorization, content-type, x-retry-count"
    assert res.headers["Access-Control-Max-Age"] == "7200"
    assert "Access-Control-Allow-Credentials" not in res.headers
    assert stored_events(redis_client) == []


def test_a_preflight_is_told_only_well_formed_header_names(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    asked = {**PREFLIGHT, "Access-Control-Request-Headers": "authorization, x-a b, ,x-site-header"}
    res = client.options("/v1/track", headers=asked)
    assert res.headers["Access-Control-Allow-Headers"] == "authorization, x-site-header"
    res = client.options("/v1/track", headers={"Origin": "https://shop.example.com"})
    assert res.status_code == 204 and "Access-Control-Allow-Headers" not in res.headers


def test_every_tracking_answer_may_be_read_by_any_origin(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    origin = {"Origin": "https://shop.example.com"}
    answers = {
        200: post(client, "/v1/t", {"event": "E", "userId": "u", "writeKey": KEY}, key=None, **origin),
        401: post(client, "/v1/track", {"event": "E", "userId": "u"}, key="nope", **origin),
        400: post(client, "/v1/track", {"userId": "u"}, **origin),
        415: post(client, "/v1/track", b"{}", **{"Content-Type": "application/xml"}, **origin),
        404: client.post("/v1/nope", data=b"{}", headers=origin),
        405: client.get("/v1/track", headers=origin),
    }
    for status, res in answers.items():
        assert res.status_code == status, res.json
        assert res.headers["Access-Control-Allow-Origin"] == "*", status
        assert "Access-Control-Allow-Credentials" not in res.headers
    assert client.options("/v1/nope", headers=PREFLIGHT).headers["Access-Control-Allow-Origin"] == "*"


def test_cors_is_answered_on_the_tracking_api_only(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    # the admin API, the console, the webhooks and health stay closed to other origins' pages
    origin = {"Origin": "https://shop.example.com"}
    answers = [
        client.get("/api/v1/accounts", headers={**origin, "Authorization": "Bearer x"}),
        client.options("/api/v1/accounts", headers=PREFLIGHT),
        client.get("/console/", headers=origin),
        client.options("/console/", headers=PREFLIGHT),
        client.options("/webhooks/acme/segment", headers=PREFLIGHT),
        client.post("/webhooks/acme/segment", data=b"{}", headers=origin),
        client.get("/healthz", headers=origin),
        client.options("/v1/track/extra", headers=PREFLIGHT),
    ]
    assert [
        name for res in answers for name, _ in res.headers if name.lower().startswith("access-control")
    ] == []


def test_tracking_errors_name_their_code_as_the_sdks_read_it(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    res = post(client, "/v1/batch", {"batch": [{"type": "track", "userId": "u"}]})
    assert res.status_code == 400
    assert res.json == {
        "error": "malformed_payload",
        "code": "malformed_payload",
        "message": "batch[0].event is required for a track call",
    }
    res = post(client, "/v1/track", b"{}", **{"Content-Type": "application/xml"})
    assert (res.status_code, res.json["code"]) == (415, res.json["error"])
    # a webhook's error keeps the contract's body
    assert "code" not in client.post("/webhooks/acme/segment", data=b"{}").json


def test_an_identify_with_its_traits_in_the_context_keeps_them(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    # RudderStack's SDKs send an identify's traits in context.traits only
    traits = {"email": "Jane.Doe@example.com", "plan": "pro"}
    post(client, "/v1/identify", {"userId": "u1", "messageId": "r1", "context": {"traits": traits}})
    # traits of its own win over the context's
    own = {"userId": "u2", "messageId": "r2", "traits": {"plan": "team"}, "context": {"traits": traits}}
    post(client, "/v1/identify", own)
    events = {e["source_event_id"]: e for e in stored_events(redis_client)}
    assert events["r1"]["traits"] == traits
    assert events["r1"]["identities"] == {"user_id": "u1", "email": "jane.doe@example.com"}
    assert events["r2"]["traits"] == {"plan": "team"}
