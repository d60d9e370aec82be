"""Identity fields holding what no identity can be (a number beyond a float's range or of more
than 64 digits, an object, an array) are a 400 naming the field on every route, never a 500."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from connector import clock
from tests.conftest import FIXED_NOW
from tests.helpers import stored_events
from tests.ingest.signing import signed, tracking_headers
from tests.ingest.test_fuzz_routes import SEGMENT_MESSAGE, TEMPLATES, encode

BAD_VALUES = [10**400, -(10**400), 10**64, 1e308, {"id": 1}, [1, 2]]
GOOD_NUMBERS = [(2**63, str(2**63)), (10**64 - 1, "9" * 64), (42.0, "42"), (-7, "-7")]


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    doc = copy.deepcopy(doc)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


TRACK = {**SEGMENT_MESSAGE, "type": "track"}
KLAVIYO_PROFILE = ("data", 0, "payload", "data", "relationships", "profile", "data", "id")
# (sender, template, path to the identity field, shopify topic, what the 400 names)
CASES = [
    ("segment", [TRACK], (0, "userId"), None, "body[0].userId"),
    ("segment", [TRACK], (0, "anonymousId"), None, "body[0].anonymousId"),
    ("segment", [{**TRACK, "type": "alias"}], (0, "previousId"), None, "body[0].previousId"),
    ("segment", [{**TRACK, "type": "group"}], (0, "groupId"), None, "body[0].groupId"),
    ("rudderstack", [TRACK], (0, "userId"), None, "body[0].userId"),
    ("shopify", TEMPLATES["shopify"], ("customer", "id"), "orders/create", "body.customer.id"),
    ("shopify", {"id": 5, "email": "a@example.com"}, ("id",), "customers/update", "body.id"),
    ("hubspot", [{**TEMPLATES["hubspot"][0], "subscriptionType": "contact.creation"}], (0, "objectId"),
     None, "body[0].objectId"),
    ("klaviyo", TEMPLATES["klaviyo"], KLAVIYO_PROFILE, None,
     "body.data[0].payload.data.relationships.profile.data.id"),
    ("standard_webhooks", TEMPLATES["standard_webhooks"], ("data", "userId"), None, "body.data.userId"),
    ("standard_webhooks", {"type": "x", "data": {"user_id": "u"}}, ("data", "user_id"), None,
     "body.data.user_id"),
    ("standard_webhooks", TEMPLATES["standard_webhooks"], ("data", "anonymous_id"), None,
     "body.data.anonymous_id"),
]  # fmt: skip


def post(client, path: str, body: bytes, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    with clock.frozen(FIXED_NOW):
        return client.post(path, data=body, headers=headers)


@pytest.mark.parametrize(("sender", "template", "field", "topic", "named"), CASES, ids=[c[4] for c in CASES])
def test_signed_identity_values_refused_naming_the_field(  # type: ignore[no-untyped-def]
    client, redis_client, sender, template, field, topic, named
) -> None:
    for value in BAD_VALUES:
        body = json.dumps(_set(template, field, value)).encode()
        path, headers = signed(sender, body, topic or "orders/create")
        res = post(client, path, body, headers)
        assert res.status_code == 400, (value if not isinstance(value, int) else "big int", res.json)
        assert named in res.json["message"], res.json
        assert str(value)[:30] not in res.json["message"] or isinstance(value, dict | list)
    assert stored_events(redis_client) == []


@pytest.mark.parametrize(
    ("call", "field", "named"),
    [("track", "userId", "body.userId"), ("track", "anonymousId", "body.anonymousId"),
     ("alias", "previousId", "body.previousId"), ("group", "groupId", "body.groupId"),
     ("batch", "userId", "batch[0].userId")],
)  # fmt: skip
def test_tracking_identity_values_refused_naming_the_field(client, redis_client, call, field, named) -> None:  # type: ignore[no-untyped-def]
    message = {k: v for k, v in SEGMENT_MESSAGE.items() if k != "type"}
    for value in BAD_VALUES:
        doc: dict[str, Any] = {**message, field: value}
        if call == "batch":
            doc = {"batch": [{**doc, "type": "track"}]}
        res = post(client, f"/v1/{call}", json.dumps(doc).encode(), tracking_headers())
        assert res.status_code == 400, res.json
        assert named in res.json["message"], res.json
    # the write key in the body, no Authorization header: the same 400 (not a 500, not a 401)
    doc = {"writeKey": "acme-write-key-7f3a", **message, "userId": 10**400}
    res = post(client, "/v1/track", json.dumps(doc).encode(), {"Content-Type": "text/plain"})
    assert res.status_code == 400 and "body.userId" in res.json["message"]
    assert stored_events(redis_client) == []


def test_numeric_identities_kept_as_decimal_text(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    message = {k: v for k, v in SEGMENT_MESSAGE.items() if k != "type"}
    for i, (value, _) in enumerate(GOOD_NUMBERS):
        doc = {**message, "messageId": f"n{i}", "userId": value}
        res = post(client, "/v1/track", json.dumps(doc).encode(), tracking_headers())
        assert res.status_code == 200, res.json
    stored = sorted(stored_events(redis_client), key=lambda e: e["source_event_id"])
    assert [e["identities"]["user_id"] for e in stored] == [text for _, text in GOOD_NUMBERS]


def test_mailchimp_nested_identity_field_is_400(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = b"type=subscribe&data[email]=a@example.com&data[id][x]=1"
    path, headers = signed("mailchimp", body)
    res = post(client, path, body, {**headers, "Content-Type": "application/x-www-form-urlencoded"})
    assert res.status_code == 400 and "data[id]" in res.json["message"], res.json


CONTEXT_EMAIL = ("context", "traits", "email")
KLAVIYO_EVENT = ("data", 0, "payload", "data")
KLAVIYO_NO_EMAIL = _set(TEMPLATES["klaviyo"], (*KLAVIYO_EVENT, "attributes", "event_properties"), {})
MANDRILL = TEMPLATES["mandrill"][0]
# (sender, template, path to the email field, shopify topic, what the 400 names); a field read
# first holding a list or an object is refused even when a later one holds an address
EMAIL_CASES = [
    ("segment", [{**TRACK, "type": "identify"}], (0, "traits", "email"), None, "body[0].traits.email"),
    ("segment", [TRACK], (0, *CONTEXT_EMAIL), None, "body[0].context.traits.email"),
    ("segment", [{**TRACK, "properties": {"email": "p@example.com"}}], (0, *CONTEXT_EMAIL), None,
     "body[0].context.traits.email"),
    ("segment", [{**TRACK, "context": {}}], (0, "properties", "email"), None, "body[0].properties.email"),
    ("rudderstack", [TRACK], (0, *CONTEXT_EMAIL), None, "body[0].context.traits.email"),
    ("rudderstack", [{**TRACK, "type": "group"}], (0, "traits", "email"), None, "body[0].traits.email"),
    ("rudderstack", [{**TRACK, "context": {}}], (0, "properties", "email"), None,
     "body[0].properties.email"),
    ("shopify", TEMPLATES["shopify"], ("email",), "orders/create", "body.email"),
    ("shopify", {"id": 5, "email": "a@example.com"}, ("email",), "customers/update", "body.email"),
    ("hubspot", [{**TEMPLATES["hubspot"][0], "subscriptionType": "contact.propertyChange",
                  "propertyName": "email"}], (0, "propertyValue"), None, "body[0].propertyValue"),
    ("klaviyo", TEMPLATES["klaviyo"], (*KLAVIYO_EVENT, "attributes", "event_properties", "$email"),
     None, "body.data[0].payload.data.attributes.event_properties.$email"),
    ("klaviyo", KLAVIYO_NO_EMAIL, (*KLAVIYO_EVENT, "attributes", "event_properties", "email"),
     None, "body.data[0].payload.data.attributes.event_properties.email"),
    ("klaviyo", KLAVIYO_NO_EMAIL, (*KLAVIYO_EVENT, "attributes", "email"),
     None, "body.data[0].payload.data.attributes.email"),
    ("standard_webhooks", TEMPLATES["standard_webhooks"], ("data", "email"), None, "body.data.email"),
    ("mandrill", TEMPLATES["mandrill"], (0, "msg", "email"), None, "mandrill_events[0].msg.email"),
    ("mandrill", [{**MANDRILL, "msg": {}}], (0, "reject", "email"), None,
     "mandrill_events[0].reject.email"),
]  # fmt: skip
NOT_AN_ADDRESS = (["a@example.com"], {"address": "a@example.com"}, [], {})


@pytest.mark.parametrize(
    ("sender", "template", "field", "topic", "named"), EMAIL_CASES, ids=[c[4] for c in EMAIL_CASES]
)
def test_an_email_that_is_a_list_or_an_object_is_refused_naming_the_field(  # type: ignore[no-untyped-def]
    client, redis_client, sender, template, field, topic, named
) -> None:
    for value in NOT_AN_ADDRESS:
        doc = _set(template, field, value)
        body = encode(sender, doc, as_object=False)
        path, headers = signed(sender, body, topic or "orders/create")
        res = post(client, path, body, headers)
        assert res.status_code == 400, (value, res.json)
        assert res.json["error"] == "malformed_payload", res.json
        assert f"{named} must be a string (an email address)" in res.json["message"], (value, res.json)
    assert stored_events(redis_client) == []


@pytest.mark.parametrize(
    ("call", "field", "named"),
    [("identify", ("traits", "email"), "body.traits.email"),
     ("track", CONTEXT_EMAIL, "body.context.traits.email"),
     ("batch", ("properties", "email"), "batch[0].properties.email")],
)  # fmt: skip
def test_tracking_email_that_is_a_list_or_an_object_is_refused(  # type: ignore[no-untyped-def]
    client, redis_client, call, field, named
) -> None:
    message = {k: v for k, v in SEGMENT_MESSAGE.items() if k != "type"}
    if call == "batch":
        message = {**message, "type": "track", "context": {}}
    for value in NOT_AN_ADDRESS:
        doc = _set(message, field, value)
        if call == "batch":
            doc = {"batch": [doc]}
        res = post(client, f"/v1/{call}", json.dumps(doc).encode(), tracking_headers())
        assert res.status_code == 400, (value, res.json)
        assert f"{named} must be a string (an email address)" in res.json["message"], (value, res.json)
    assert stored_events(redis_client) == []


def test_an_email_that_is_a_number_is_left_out(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps([{**TRACK, "context": {"traits": {"email": 42}}}]).encode()
    path, headers = signed("segment", body)
    assert post(client, path, body, headers).status_code == 200
    [event] = stored_events(redis_client)
    assert "email" not in event["identities"] and event["identities"]["user_id"] == "u1"


@pytest.mark.parametrize("unset", [None, "", 0, False])
def test_an_email_field_left_unset_gives_way_to_the_next(client, redis_client, unset) -> None:  # type: ignore[no-untyped-def]
    message = {**TRACK, "type": "identify", "traits": {"email": unset},
               "context": {"traits": {"email": "B@Example.com"}}}  # fmt: skip
    body = json.dumps([message]).encode()
    path, headers = signed("segment", body)
    assert post(client, path, body, headers).status_code == 200
    [event] = stored_events(redis_client)
    assert event["identities"]["email"] == "b@example.com"
