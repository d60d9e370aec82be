"""Property tests: arbitrary bodies, headers, content types and methods on every route → never a 500.

Two kinds of request per route: unsigned noise (exercises verification and the 401 paths), and
correctly signed near-valid payloads with arbitrary values swapped in (exercises parsing and
normalization behind a valid signature, where a 500 would hide).
"""

from __future__ import annotations

import base64
import gzip
import json
from collections import Counter
from typing import Any
from urllib.parse import quote_from_bytes, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector import clock
from connector.errors import MalformedPayload, Unauthorized
from connector.ingest.receivers import REGISTRY
from connector.ingest.receivers.shopify import TOPICS
from tests.conftest import FIXED_NOW
from tests.ingest.signing import SECRETS, signed, tracking_headers

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
HEADER_NAMES = st.sampled_from(
    [
        "Content-Type", "Content-Encoding", "Authorization", "X-Signature", "X-Segment-Signature",
        "X-Shopify-Hmac-Sha256", "X-Shopify-Topic", "X-Shopify-Webhook-Id", "X-Shopify-Shop-Domain",
        "X-Shopify-Triggered-At", "Klaviyo-Signature", "Klaviyo-Timestamp", "Klaviyo-Webhook-Id",
        "X-HubSpot-Signature", "X-HubSpot-Signature-Version", "X-HubSpot-Signature-v3",
        "X-HubSpot-Request-Timestamp", "X-Mandrill-Signature", "webhook-id", "webhook-timestamp",
        "webhook-signature", "svix-id", "svix-timestamp", "svix-signature", "X-Signing-Key",
    ]
)  # fmt: skip
CONTENT_TYPES = st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded", "application/xml",
     "multipart/form-data; boundary=x", "", "application/json; charset=utf-8"]
)  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
NOISE_BODY = st.one_of(
    st.binary(max_size=300),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=5).map(
        lambda d: urlencode(d).encode()
    ),
)

SENDER_ROUTES = [f"/webhooks/acme/{name}" for name in sorted(REGISTRY)]
OTHER_ROUTES = [
    "/webhooks/nosuch/segment",
    "/webhooks/nosuch/mailchimp",
    "/webhooks/globex/shopify",
    "/webhooks/acme/unknown_sender",
]
TRACKING_ROUTES = [
    f"/v1/{c}" for c in ("track", "identify", "page", "screen", "group", "alias", "batch", "t", "b")
]


# requests sent and 5xx answers seen, per route (printed by test_zz_counts at the end of the module)
SENT: Counter[str] = Counter()
SERVER_ERRORS: Counter[str] = Counter()


def send(client, method: str, path: str, body: bytes, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    with clock.frozen(FIXED_NOW):
        res = client.open(path, method=method, data=body, headers=headers)
    route = path.partition("?")[0]
    SENT[route] += 1
    if res.status_code >= 500:
        SERVER_ERRORS[route] += 1
    return res


@pytest.mark.parametrize("path", SENDER_ROUTES + OTHER_ROUTES + TRACKING_ROUTES)
def test_noise_never_500(client, redis_client, path) -> None:  # type: ignore[no-untyped-def]
    @FUZZ
    @given(
        method=METHODS,
        body=NOISE_BODY,
        headers=st.dictionaries(HEADER_NAMES, HEADER_TEXT, max_size=6),
        content_type=CONTENT_TYPES,
        query=st.sampled_from(["", "?secret=", "?secret=mc_url_secret_9f8e7d", "?a=%FF&b"]),
    )
    def run(method: str, body: bytes, headers: dict[str, str], content_type: str, query: str) -> None:
        res = send(client, method, path + query, body, {"Content-Type": content_type, **headers})
        assert res.status_code < 500, (res.status_code, res.get_data()[:300])

    run()


# --- signed, near-valid payloads ------------------------------------------------------------


# Fields an identity is read from, in every sender's template: besides arbitrary JSON they get
# huge integers (beyond a float's range too), big and fractional floats, and nested values.
IDENTITY_KEYS = frozenset(
    {"userId", "anonymousId", "previousId", "groupId", "user_id", "anonymous_id", "id", "objectId",
     "external_id", "_id", "data[id]", "data[new_id]", "data[email]", "email"}
)  # fmt: skip
IDENTITY_HOSTILE = st.one_of(
    st.integers(min_value=10**18, max_value=10**4000),
    st.integers(min_value=-(10**400), max_value=-(10**18)),
    st.sampled_from([10**64, 10**64 - 1, -(10**64), 2**63, 2**64, 10**308, 10**309]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 1.5, 5e-324, 1e19, 0.0]),
    st.dictionaries(st.text(max_size=5), JSON, max_size=3),
    st.lists(JSON, max_size=3),
)


def fuzzed(template: Any) -> st.SearchStrategy[Any]:
    """The template with any value possibly replaced by arbitrary JSON, at any depth (identity
    fields: by :data:`IDENTITY_HOSTILE` values too)."""
    if isinstance(template, dict):
        return st.fixed_dictionaries(
            {
                k: st.one_of(fuzzed(v), JSON, IDENTITY_HOSTILE)
                if k in IDENTITY_KEYS
                else st.one_of(fuzzed(v), JSON)
                for k, v in template.items()
            }
        )
    if isinstance(template, list) and template:
        return st.lists(st.one_of(fuzzed(template[0]), JSON), max_size=4)
    return st.one_of(st.just(template), JSON)


SEGMENT_MESSAGE = {
    "type": "track", "event": "Order Completed", "messageId": "m1", "userId": "u1", "anonymousId": "a1",
    "timestamp": "2024-01-01T00:00:00Z", "originalTimestamp": "2024-01-01T00:00:00Z",
    "sentAt": "2024-01-01T00:00:00Z", "properties": {"revenue": 1.5}, "traits": {"email": "a@example.com"},
    "context": {"traits": {"email": "a@example.com"}}, "previousId": "p", "groupId": "g", "name": "n",
}  # fmt: skip
TEMPLATES: dict[str, Any] = {
    "segment": [SEGMENT_MESSAGE],
    "rudderstack": [SEGMENT_MESSAGE],
    "shopify": {
        "id": 1, "email": "a@example.com", "created_at": "2024-01-01T00:00:00Z", "updated_at": 1704067200,
        "total_price": "1.00", "currency": "USD", "token": "t",
        "customer": {"id": 2, "email": "b@example.com"},
        "line_items": [{"id": 1, "price": "1.00", "quantity": 1}], "shop_domain": "s", "first_name": "F",
    },
    "klaviyo": {
        "data": [{"external_id": "e1", "topic": "event:klaviyo.opened_email", "payload": {"data": {
            "id": "e1", "attributes": {"timestamp": 1704067200, "datetime": "2024-01-01T00:00:00+00:00",
                                       "event_properties": {"$email": "a@example.com"}},
            "relationships": {"profile": {"data": {"id": "p1"}}, "metric": {"data": {"id": "m"}}}}}}],
        "meta": {"klaviyo_webhook_id": "W1", "klaviyo_account_id": "A"},
    },
    "hubspot": [{"eventId": 1, "subscriptionId": 2, "portalId": 3, "occurredAt": 1704067200000,
                 "subscriptionType": "contact.propertyChange", "objectId": 4, "propertyName": "x",
                 "propertyValue": "y", "attemptNumber": 0}],
    "standard_webhooks": {"type": "contact.created", "timestamp": "2024-01-01T00:00:00Z",
                          "data": {"email": "a@example.com", "userId": "u", "anonymous_id": "a"}},
    "mandrill": [{"event": "open", "_id": "i", "ts": 1704067200, "msg": {"email": "a@example.com"},
                  "type": "blacklist", "action": "add", "reject": {"email": "b@example.com"}, "url": "u"}],
    "mailchimp": {"type": "subscribe", "fired_at": "2024-01-01 00:00:00", "data[id]": "m1",
                  "data[email]": "a@example.com", "data[list_id]": "L", "data[merges][FNAME]": "F",
                  "data[new_email]": "c@example.com"},
}  # fmt: skip


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def encode(sender: str, value: Any, as_object: bool) -> bytes:
    if sender == "mailchimp":
        if not isinstance(value, dict):
            value = {"type": value}
        return urlencode(
            {str(k): json.dumps(v) if not isinstance(v, str) else v for k, v in value.items()}
        ).encode()
    if sender == "mandrill":
        return urlencode({"mandrill_events": json.dumps(value)}).encode()
    if as_object and isinstance(value, list) and value:
        value = value[0]
    return json.dumps(value).encode()


@pytest.mark.parametrize("sender", sorted(TEMPLATES))
def test_signed_payloads_never_500(client, redis_client, sender) -> None:  # type: ignore[no-untyped-def]
    receiver = REGISTRY[sender]
    path = f"/webhooks/acme/{sender}"

    @FUZZ
    @given(
        value=fuzzed(TEMPLATES[sender]),
        as_object=st.booleans(),
        topic=st.one_of(st.sampled_from(sorted(TOPICS)), HEADER_TEXT),
        content_type=CONTENT_TYPES,
    )
    def run(value: Any, as_object: bool, topic: str, content_type: str) -> None:
        body = encode(sender, value, as_object)
        url = (
            "https://hooks.example.com/webhooks/mandrill"
            if sender == "mandrill"
            else f"http://localhost{path}"
        )
        try:
            headers = receiver.sign(SECRETS[sender], body, url=url, now=FIXED_NOW)
        except (Unauthorized, MalformedPayload):
            return  # nothing a sender could sign (e.g. Segment's empty batch)
        target = path
        if sender == "mailchimp":
            target += "?" + urlencode({"secret": SECRETS[sender]})
        if sender == "shopify":
            headers.update({"X-Shopify-Topic": topic or "orders/create", "X-Shopify-Webhook-Id": "w1"})
        if sender == "klaviyo":
            headers["Klaviyo-Webhook-Id"] = "W1"
        if content_type and not content_type.startswith(("application/json", "application/x-www")):
            headers["Content-Type"] = content_type
        res = send(client, "POST", target, body, headers)
        assert res.status_code < 500, (res.status_code, res.get_data()[:300])
        if sender == "klaviyo" and _dict(_dict(value).get("meta")).get("klaviyo_webhook_id") != "W1":
            return  # meta.klaviyo_webhook_id must equal the header: refusing is right
        assert res.status_code != 401, "a correctly signed request was refused"

    run()


@FUZZ
@given(
    value=fuzzed({"batch": [SEGMENT_MESSAGE], "sentAt": "2024-01-01T00:00:00Z", "context": {}}),
    path=st.sampled_from(TRACKING_ROUTES),
    compress=st.booleans(),
)
def test_tracking_payloads_never_500(client, redis_client, value: Any, path: str, compress: bool) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(value).encode()
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Basic " + base64.b64encode(b"acme-write-key-7f3a:").decode(),
    }
    if compress:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    res = send(client, "POST", path, body, headers)
    assert res.status_code < 500, (res.status_code, res.get_data()[:300])
    assert res.status_code != 401


@pytest.mark.parametrize(
    "stamp",
    [
        "9999-12-31T23:59:59-05:00",
        "0001-01-01T00:00:00+05:00",
        "1969-12-31T00:00:00Z",
        "2999-01-01T00:00:00Z",
    ],
)
def test_edge_of_range_timestamps_are_400(client, redis_client, stamp: str) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps({"id": 1, "created_at": stamp}).encode()
    headers = REGISTRY["shopify"].sign(SECRETS["shopify"], body, url="", now=FIXED_NOW)
    headers.update({"X-Shopify-Topic": "orders/create", "X-Shopify-Webhook-Id": "w-edge"})
    res = send(client, "POST", "/webhooks/acme/shopify", body, headers)
    assert res.status_code == 400


# --- hostile inputs, generated: deep nesting, huge integers, lone surrogates, invalid UTF-8 -------

HOSTILE_FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same requests on every run, so the counts below are reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def deep(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(min_value=65, max_value=5000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"b":', b"}]")]))
    return opener * depth + b"1" + closer * depth


@st.composite
def huge_int(draw: st.DrawFn) -> bytes:
    digits = draw(st.integers(min_value=4301, max_value=30000))
    sign = draw(st.sampled_from([b"", b"-"]))
    return sign + b"1" + b"7" * (digits - 1)


@st.composite
def lone_surrogate(draw: st.DrawFn) -> bytes:
    code = draw(st.integers(min_value=0xD800, max_value=0xDFFF))
    prefix = draw(st.text(alphabet="abc ", max_size=5)).encode()
    escape = b"\\u%04x" % code if draw(st.booleans()) else b"\\u%04X" % code
    return b'"' + prefix + escape + b'"'


@st.composite
def invalid_utf8(draw: st.DrawFn) -> bytes:
    bad = draw(
        st.sampled_from([b"\xff", b"\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"])
    )
    return b'"' + draw(st.text(alphabet="xyz", max_size=4)).encode() + bad + b'"'


HOSTILE_VALUE = st.one_of(deep(), huge_int(), lone_surrogate(), invalid_utf8())


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out.extend(_paths(item, (*path, key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out.extend(_paths(item, (*path, i)))
    return out


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {k: _replaced(v, rest, new) if k == head else v for k, v in value.items()}
    return [_replaced(v, rest, new) if i == head else v for i, v in enumerate(value)]


MARKER = "__HOSTILE__"


@st.composite
def hostile_document(draw: st.DrawFn, template: Any) -> bytes:
    """The template as JSON with one value, at any depth, replaced by a hostile one."""
    path = draw(st.sampled_from(_paths(template)[1:]))
    text = json.dumps(_replaced(template, path, MARKER)).encode()
    return text.replace(json.dumps(MARKER).encode(), draw(HOSTILE_VALUE), 1)


def _json_of(sender: str, document: bytes) -> bytes:
    if sender == "mandrill":
        return b"mandrill_events=" + quote_from_bytes(document).encode()
    return document


JSON_SENDERS = sorted(s for s in TEMPLATES if s != "mailchimp")


@pytest.mark.parametrize("sender", JSON_SENDERS)
def test_hostile_signed_bodies_are_400(client, redis_client, sender) -> None:  # type: ignore[no-untyped-def]
    """Correctly signed, so the hostile value reaches the parser: always a 400 naming the problem."""
    template = TEMPLATES[sender][0] if sender in ("segment", "rudderstack") else TEMPLATES[sender]

    @HOSTILE_FUZZ
    @given(document=hostile_document(template))
    def run(document: bytes) -> None:
        body = _json_of(sender, document)
        path, headers = signed(sender, body)
        res = send(client, "POST", path, body, headers)
        assert res.status_code < 500, (res.status_code, res.get_data()[:300])
        assert res.status_code == 400, (res.status_code, res.get_data()[:300], document[:120])
        assert res.json["message"], res.json

    run()


def test_hostile_mailchimp_forms_are_400(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    @HOSTILE_FUZZ
    @given(
        depth=st.integers(min_value=65, max_value=3000),
        bad=st.sampled_from([b"%FF", b"%ED%A0%80", b"\xff", b"%C0%AF"]),
        deep_key=st.booleans(),
    )
    def run(depth: int, bad: bytes, deep_key: bool) -> None:
        form = b"type=subscribe&data"
        body = form + b"[a]" * depth + b"=1" if deep_key else form + b"[email]=" + bad
        path, headers = signed("mailchimp", body)
        res = send(client, "POST", path, body, headers)
        assert res.status_code == 400, (res.status_code, res.get_data()[:300])

    run()


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_hostile_tracking_bodies_are_400(client, redis_client, path: str) -> None:  # type: ignore[no-untyped-def]
    template = {"batch": [SEGMENT_MESSAGE]} if path.endswith("batch") else SEGMENT_MESSAGE

    @HOSTILE_FUZZ
    @given(document=hostile_document(template), compress=st.booleans())
    def run(document: bytes, compress: bool) -> None:
        headers = tracking_headers()
        body = document
        if compress:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        res = send(client, "POST", path, body, headers)
        assert res.status_code == 400, (res.status_code, res.get_data()[:300], document[:120])

    run()


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_truncated_gzip_is_400(client, redis_client, path: str) -> None:  # type: ignore[no-untyped-def]
    payload = {"batch": [SEGMENT_MESSAGE]} if path.endswith("batch") else SEGMENT_MESSAGE
    whole = gzip.compress(json.dumps(payload).encode())

    @HOSTILE_FUZZ
    @given(cut=st.integers(min_value=0, max_value=len(whole) - 1), key_in_header=st.booleans())
    def run(cut: int, key_in_header: bool) -> None:
        headers = tracking_headers(**{"Content-Encoding": "gzip"})
        if not key_in_header:
            headers.pop("Authorization")
        res = send(client, "POST", path, whole[:cut], headers)
        # without the key in the header, the body cannot be read to find one: a missing key
        assert (res.status_code, res.json["error"]) == (
            (400, "malformed_payload") if key_in_header else (401, "unauthorized")
        )
        assert redis_client.keys("q:events:*") == []

    run()


def test_zz_counts(capsys: pytest.CaptureFixture[str]) -> None:
    """One line per route: requests sent and 5xx answers (runs last in this module)."""
    with capsys.disabled():
        for route in sorted(SENT):
            print(f"\nfuzz {route}: {SENT[route]} requests, {SERVER_ERRORS[route]} 5xx", end="")
        print(f"\nfuzz total: {sum(SENT.values())} requests, {sum(SERVER_ERRORS.values())} 5xx")
    assert sum(SERVER_ERRORS.values()) == 0
