"""Every vector of tests/vectors/webhooks.json through the real route, byte for byte."""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from connector import clock
from tests.conftest import ACME, GLOBEX, VECTORS, write_accounts
from tests.helpers import stored_events

ALL = json.loads(VECTORS.read_text())["vectors"]
# Bodies of these official vectors are not JSON (the vendor's test signs a Python repr): the
# signature must verify (no 401) and the body is then refused as malformed.
# Vectors whose body verifies but is no event the route stores (a 400 after verification, not a 401):
# the HubSpot SDK bodies are not JSON, and Shopify's SDK body ({"foo": "bar"}) is no resource, so it
# goes as a topic the receiver does not accept.
NOT_JSON = {"hubspot_v1_sdk", "hubspot_v2_sdk", "hubspot_v3_sdk", "shopify_sdk"}
# The topic each Shopify vector's body is a delivery of (the body must have its topic's shape).
SHOPIFY_TOPICS = {"shopify_customers_redact": "customers/redact", "shopify_sdk": "app/uninstalled"}


def make_client(settings, tmp_path: Path, hubspot_url: str | None = None):  # type: ignore[no-untyped-def]
    from connector.app import create_app

    acme = copy.deepcopy(ACME)
    # The Actions batch vector is signed over its first element only: an account opts in to its
    # unsigned elements. The compliance vector names this shop.
    acme["senders"]["segment"]["unsigned_batch_elements"] = "accept"
    acme["senders"]["shopify"]["shop_domain"] = "example-shop.myshopify.com"
    if hubspot_url:
        acme["senders"]["hubspot"]["url"] = hubspot_url
    directory = write_accounts(tmp_path / "vector-accounts", acme, GLOBEX)
    app = create_app(dataclasses.replace(settings, config_dir=directory))
    app.config["TESTING"] = True
    return app.test_client()


def tamper(body: bytes) -> bytes:
    """The body with the case of its first letter flipped (inside the signed bytes)."""
    i = next(i for i, c in enumerate(body) if chr(c).isalpha())
    return body[:i] + bytes([body[i] ^ 0x20]) + body[i + 1 :]


def instant(vector: dict[str, Any]) -> datetime:
    headers = vector.get("headers", {})
    if "webhook-timestamp" in headers:
        return datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC) + timedelta(seconds=10)
    if "X-HubSpot-Request-Timestamp" in headers:
        ms = int(headers["X-HubSpot-Request-Timestamp"])
        return datetime.fromtimestamp(ms / 1000, UTC) + timedelta(seconds=10)
    return datetime(2024, 1, 1, 0, 0, 30, tzinfo=UTC)


def request_for(vector: dict[str, Any]) -> tuple[str, str, dict[str, str], str | None]:
    """(method, path with query, headers, hubspot url option) for a vector."""
    scheme = vector["scheme"]
    headers = {k: v for k, v in vector.get("headers", {}).items()}
    content_type = vector.get("content_type", "application/json")
    expected = {k: v for k, v in vector["expected"].items() if "(" not in k} if "expected" in vector else {}
    headers.update(expected)
    headers["Content-Type"] = content_type
    method = vector.get("method", "POST")
    hubspot_url = None
    if scheme == "segment":
        path = "/webhooks/acme/segment"
    elif scheme == "shopify":
        path = "/webhooks/acme/shopify"
        topic = SHOPIFY_TOPICS.get(vector["name"], "orders/create")
        headers.update({"X-Shopify-Topic": topic, "X-Shopify-Webhook-Id": f"wh-{vector['name']}"})
        headers["X-Shopify-Shop-Domain"] = "example-shop.myshopify.com"
    elif scheme == "klaviyo":
        path = "/webhooks/acme/klaviyo"
    elif scheme == "mandrill":
        path = "/webhooks/acme/mandrill"
    elif scheme == "mailchimp":
        path = "/webhooks/acme/mailchimp?" + urlsplit(vector["url"]).query
    elif scheme == "standard-webhooks":
        path = "/webhooks/acme/standard_webhooks"
    elif scheme.startswith("hubspot"):
        uri = vector.get("uri", "https://hooks.example.com/webhooks/hubspot")
        parts = urlsplit(uri)
        hubspot_url = f"{parts.scheme}://{parts.netloc}{parts.path}"
        path = "/webhooks/acme/hubspot" + (f"?{parts.query}" if parts.query else "")
        if scheme in ("hubspot-v1", "hubspot-v2"):
            headers["X-HubSpot-Signature-Version"] = scheme.split("-")[1]
    else:  # pragma: no cover - a new scheme needs a branch here
        raise AssertionError(f"unknown scheme {scheme}")
    return method, path, headers, hubspot_url


@pytest.mark.parametrize("vector", ALL, ids=[v["name"] for v in ALL])
def test_vector_through_route(vector, settings, tmp_path, redis_client) -> None:  # type: ignore[no-untyped-def]
    method, path, headers, hubspot_url = request_for(vector)
    client = make_client(settings, tmp_path, hubspot_url)
    body = vector["body"].encode("utf-8")
    with clock.frozen(instant(vector)):
        res = client.open(path, method=method, data=body, headers=headers)
        if vector["name"] in NOT_JSON:
            assert res.status_code == 400, res.json
            assert res.json["error"] == "malformed_payload"
            return
        assert res.status_code == 200, res.json
        stored = stored_events(redis_client)
        assert len(stored) == res.json["accepted"]
        if body and method != "GET":
            assert res.json["accepted"] >= 1
        # the same bytes with one byte changed are refused
        if body and vector["scheme"] != "mailchimp":
            tampered = tamper(body)
            again = client.open(path, method=method, data=tampered, headers=headers)
            assert again.status_code == 401
            assert again.json == {"error": "unauthorized"}
        assert len(stored_events(redis_client)) == len(stored)


def test_hubspot_v3_vector_v1_and_v2_headers(settings, tmp_path, redis_client) -> None:  # type: ignore[no-untyped-def]
    """The computed v3 vector also carries the same request's v1 and v2 signatures."""
    vector = next(v for v in ALL if v["name"] == "hubspot_v3")
    client = make_client(settings, tmp_path, "https://hooks.example.com/webhooks/hubspot")
    for version in ("v1", "v2"):
        redis_client.flushdb()
        res = client.post(
            "/webhooks/acme/hubspot?portal=62515",
            data=vector["body"].encode(),
            headers={
                "Content-Type": "application/json",
                "X-HubSpot-Signature": vector["expected"][f"X-HubSpot-Signature({version})"],
                "X-HubSpot-Signature-Version": version,
            },
        )
        assert res.status_code == 200, (version, res.json)
        assert res.json["accepted"] == 1


def test_sign_helpers_reproduce_vectors() -> None:
    from connector.ingest.receivers import REGISTRY
    from connector.ingest.receivers.hubspot import signature_v1, signature_v2, signature_v3
    from connector.ingest.receivers.klaviyo import signature as klaviyo_sig
    from connector.ingest.receivers.mandrill import form_pairs
    from connector.ingest.receivers.mandrill import signature as mandrill_sig
    from connector.ingest.receivers.shopify import signature as shopify_sig
    from connector.ingest.receivers.standard_webhooks import signature as sw_sig

    for v in ALL:
        body = v["body"].encode()
        exp = v.get("expected", {})
        scheme = v["scheme"]
        if scheme == "shopify":
            assert shopify_sig(v["secret"].encode(), body) == exp["X-Shopify-Hmac-Sha256"]
        elif scheme == "klaviyo":
            ts = v["headers"]["Klaviyo-Timestamp"]
            assert klaviyo_sig(v["secret"].encode(), body, ts) == exp["Klaviyo-Signature"]
        elif scheme == "mandrill":
            got = mandrill_sig(v["secret"].encode(), v["url"], form_pairs(body))
            assert got == exp["X-Mandrill-Signature"]
            now = datetime(2024, 1, 1, tzinfo=UTC)
            signed = REGISTRY["mandrill"].sign(v["secret"], body, url=v["url"], now=now)
            assert signed["X-Mandrill-Signature"] == exp["X-Mandrill-Signature"]
        elif scheme == "hubspot-v1":
            assert signature_v1(v["secret"].encode(), body) == exp["X-HubSpot-Signature"]
        elif scheme == "hubspot-v2":
            got = signature_v2(v["secret"].encode(), v["method"], v["uri"], body)
            assert got == exp["X-HubSpot-Signature"]
        elif scheme == "hubspot-v3":
            ts = v["headers"]["X-HubSpot-Request-Timestamp"]
            got = signature_v3(v["secret"].encode(), v["method"], v["uri"], body, ts)
            assert got == exp["X-HubSpot-Signature-v3"]
        elif scheme == "standard-webhooks":
            secrets = v.get("secrets") or [v["secret"]]
            h = v["headers"]
            sigs = {sw_sig(s, h["webhook-id"], h["webhook-timestamp"], body) for s in secrets}
            assert sigs == set(exp["webhook-signature"].split())
