"""The official server-side SDKs against the tracking API over loopback HTTP: Segment's
analytics-python (``segment-analytics-python``, ``host=``) and RudderStack's Python SDK
(``rudder-sdk-python``, data plane URL), sending to the real app and real Redis. Each test then
reads what was stored for the workers: type, name, ids, properties, the SDK's own timestamps and
messageIds, and a retry of a batch whose answer was lost stored once."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from connector.clock import isoformat
from tests.conftest import ACME_ENV
from tests.helpers import stored_events
from tests.ingest.conftest import WSGIApp, serving

segment = pytest.importorskip(
    "segment.analytics", reason="pip install -e '.[dev]' (segment-analytics-python)"
)
rudder = pytest.importorskip("rudderstack.analytics", reason="pip install -e '.[dev]' (rudder-sdk-python)")
from rudderstack.analytics.client import Client as RudderClient  # noqa: E402
from rudderstack.analytics.request import APIError as RudderAPIError  # noqa: E402
from segment.analytics.client import Client as SegmentClient  # noqa: E402
from segment.analytics.request import APIError as SegmentAPIError  # noqa: E402

KEY = ACME_ENV["ACME_WRITE_KEY"]
API_ERROR = {"segment": SegmentAPIError, "rudderstack": RudderAPIError}
AT = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def sdk_client(sdk: str, host: str, key: str = KEY, **options: Any) -> Any:
    """The SDK's client pointed at ``host`` (Segment: ``host=``; RudderStack: its data plane URL)."""
    cls = SegmentClient if sdk == "segment" else RudderClient
    return cls(key, host=host, **options)


def calls(client: Any) -> list[tuple[dict[str, Any], tuple[str, str, dict[str, str]]]]:
    """Every call of the spec through ``client``: the message the SDK built, and what should be
    stored of it (type, name, identities)."""
    person = {"email": "Jane.Doe@example.com", "first_name": "Jane", "plan": "pro"}
    sent = [
        (
            client.identify("sdk-user-1", traits=person, timestamp=AT),
            ("identify", "identify", {"user_id": "sdk-user-1", "email": "jane.doe@example.com"}),
        ),
        (
            client.track(
                "sdk-user-1",
                "Order Completed",
                {"order_id": "1001", "revenue": 39.5, "currency": "EUR"},
                timestamp=AT.replace(minute=1),
            ),
            ("track", "order_completed", {"user_id": "sdk-user-1"}),
        ),
        (
            client.page(anonymous_id="anon-7", name="Pricing", properties={"path": "/pricing"}, timestamp=AT),
            ("page", "page_viewed", {"anonymous_id": "anon-7"}),
        ),
        (
            client.screen("sdk-user-1", name="Cart", properties={"items": 2}, timestamp=AT),
            ("screen", "screen_viewed", {"user_id": "sdk-user-1"}),
        ),
        (
            client.group("sdk-user-1", "team-42", traits={"plan": "team"}, timestamp=AT),
            ("group", "group", {"user_id": "sdk-user-1", "group_id": "team-42"}),
        ),
        (
            client.alias("anon-7", "sdk-user-1", timestamp=AT),
            ("alias", "alias", {"user_id": "sdk-user-1", "previous_id": "anon-7"}),
        ),
    ]
    out = []
    for answer, expected in sent:
        ok, message = answer
        assert ok, message
        out.append((message, expected))
    return out


def assert_stored(
    conn: redis.Redis, sent: list[tuple[dict[str, Any], tuple[str, str, dict[str, str]]]]
) -> None:
    """Each message the SDK built is stored once, under its messageId, as the spec says."""
    stored = stored_events(conn)
    by_id = {event["source_event_id"]: event for event in stored}
    assert len(stored) == len(by_id) == len(sent)
    for message, (kind, name, ids) in sent:
        event = by_id[message["messageId"]]
        assert (event["account"], event["source"]) == ("acme", "tracking")
        assert (event["type"], event["name"]) == (kind, name)
        assert event["identities"] == ids
        assert event["occurred_at"] == isoformat(datetime.fromisoformat(message["timestamp"]))
        assert "writeKey" not in event["raw"]
        if kind == "track":
            assert event["original_name"] == "Order Completed"
            assert event["properties"] == {"order_id": "1001", "revenue": 39.5, "currency": "EUR"}
        if kind == "identify":
            assert event["traits"] == {"email": "Jane.Doe@example.com", "first_name": "Jane", "plan": "pro"}
        if kind == "page":
            assert event["properties"] == {"path": "/pricing", "name": "Pricing"}
        if kind == "group":
            assert event["traits"] == {"plan": "team"}


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("sdk", ["segment", "rudderstack"])
def test_every_call_of_the_sdk_is_stored(
    tracking_server: str, redis_client: redis.Redis, sdk: str, gzip: bool
) -> None:
    client = sdk_client(sdk, tracking_server, sync_mode=True, gzip=gzip)
    assert_stored(redis_client, calls(client))


def test_the_rudderstack_module_with_its_data_plane_url(
    tracking_server: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as RudderStack's docs set it up: module settings, then the module's calls
    for name, value in {"write_key": KEY, "dataPlaneUrl": tracking_server, "sync_mode": True}.items():
        monkeypatch.setattr(rudder, name, value)
    monkeypatch.setattr(rudder, "default_client", None)
    rudder.track("sdk-user-2", "Product Viewed", {"sku": "sku-9"}, timestamp=AT)
    [event] = stored_events(redis_client)
    assert (event["name"], event["identities"], event["properties"]) == (
        "product_viewed",
        {"user_id": "sdk-user-2"},
        {"sku": "sku-9"},
    )


class LostFirstAnswer:
    """A proxy in front of the app that loses the app's first answer (502 after the app stored the
    batch), as a timeout between the SDK and the connector does; it records every request."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.seen: list[tuple[dict[str, str], dict[str, Any]]] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        status: list[str] = []
        body = b"".join(self.app(environ, lambda s, h, *a: status.append(s)))
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
        self.seen.append((headers, json.loads(body)))
        if len(self.seen) == 1:
            start_response("502 Bad Gateway", [("Content-Type", "text/plain")])
            return [b"upstream answer lost\n"]
        start_response(status[0], [("Content-Type", "application/json")])
        return [body]


@pytest.fixture
def lossy(app: Any) -> Iterator[tuple[str, LostFirstAnswer]]:
    proxy = LostFirstAnswer(app)
    with serving(proxy) as base:
        yield base, proxy


@pytest.mark.parametrize("sdk", ["segment", "rudderstack"])
def test_a_retried_batch_is_stored_once(
    lossy: tuple[str, LostFirstAnswer], redis_client: redis.Redis, sdk: str
) -> None:
    base, proxy = lossy
    client = sdk_client(sdk, base, upload_size=3, max_retries=2)
    try:
        sent = [
            client.track(
                f"buyer-{n}", "Order Completed", {"order_id": f"o-{n}", "revenue": 10.0 * n}, timestamp=AT
            )
            for n in (1, 2, 3)
        ]
        client.flush()
    finally:
        client.join()  # the SDK's consumer thread stops
    ids = sorted(message["messageId"] for _, message in sent)
    assert sorted(e["source_event_id"] for e in stored_events(redis_client)) == ids
    (_, lost), (retry_headers, retry) = proxy.seen[:2]
    assert lost["accepted"] > 0  # stored, and the answer lost on its way
    assert (retry["accepted"], retry["duplicates"]) == (0, lost["accepted"])
    assert sum(answer["accepted"] for _, answer in proxy.seen) == 3
    if sdk == "segment":  # analytics-python numbers its attempts
        assert retry_headers.get("X-Retry-Count") == "1"


@pytest.mark.parametrize("sdk", ["segment", "rudderstack"])
def test_a_refused_batch_is_the_sdk_api_error(
    tracking_server: str, redis_client: redis.Redis, sdk: str
) -> None:
    # the SDKs read `code` and `message` from the JSON error; a refused batch is not retried
    client = sdk_client(sdk, tracking_server, sync_mode=True)
    with pytest.raises(API_ERROR[sdk]) as refused:
        client.track("sdk-user-3", "Order Completed", {"order_id": "1", "revenue": 1e307}, timestamp=AT)
    err = refused.value
    assert (err.status, err.code) == (400, "malformed_payload")
    assert err.message.startswith("batch[0]: properties.revenue is 1e+307")
    assert stored_events(redis_client) == []


@pytest.mark.parametrize("sdk", ["segment", "rudderstack"])
def test_an_unknown_write_key_is_the_sdk_api_error(
    tracking_server: str, redis_client: redis.Redis, sdk: str
) -> None:
    client = sdk_client(sdk, tracking_server, key="not-a-write-key", sync_mode=True)
    with pytest.raises(API_ERROR[sdk]) as refused:
        client.track("sdk-user-3", "Order Completed", {"order_id": "1"}, timestamp=AT)
    assert refused.value.status == 401
    assert stored_events(redis_client) == []
