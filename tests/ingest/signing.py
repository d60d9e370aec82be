"""Correctly signed requests for any route, so that hostile bodies reach the parser."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote_from_bytes, urlencode

from connector.ingest.receivers import REGISTRY
from tests.conftest import ACME_ENV, FIXED_NOW

SECRETS = {
    "segment": ACME_ENV["ACME_SEGMENT_SECRET"],
    "rudderstack": ACME_ENV["ACME_RUDDER_KEY"],
    "shopify": ACME_ENV["ACME_SHOPIFY_SECRET"],
    "klaviyo": ACME_ENV["ACME_KLAVIYO_SECRET"],
    "hubspot": ACME_ENV["ACME_HUBSPOT_SECRET"],
    "standard_webhooks": ACME_ENV["ACME_SW_SECRET"],
    "mandrill": ACME_ENV["ACME_MANDRILL_KEY"],
    "mailchimp": ACME_ENV["ACME_MAILCHIMP_TOKEN"],
}
MANDRILL_URL = "https://hooks.example.com/webhooks/mandrill"
WRITE_KEY = ACME_ENV["ACME_WRITE_KEY"]


def wrap(sender: str, json_bytes: bytes) -> bytes:
    """The body a sender carries a JSON document in (Mandrill: a form field; Mailchimp: a form
    whose ``data[x]`` field is the raw text)."""
    if sender == "mandrill":
        return b"mandrill_events=" + quote_from_bytes(json_bytes).encode()
    if sender == "mailchimp":
        return b"type=subscribe&data[email]=" + quote_from_bytes(json_bytes).encode()
    return json_bytes


def signed(sender: str, body: bytes, topic: str = "orders/create") -> tuple[str, dict[str, str]]:
    """(path, headers) of a genuine-looking delivery of ``body`` to account acme."""
    path = f"/webhooks/acme/{sender}"
    url = MANDRILL_URL if sender == "mandrill" else f"http://localhost{path}"
    headers: dict[str, Any] = REGISTRY[sender].sign(SECRETS[sender], body, url=url, now=FIXED_NOW)
    if sender == "mailchimp":
        path += "?" + urlencode({"secret": SECRETS[sender]})
    if sender == "shopify":
        headers.update({"X-Shopify-Topic": topic, "X-Shopify-Webhook-Id": "w1"})
    if sender == "klaviyo":
        headers["Klaviyo-Webhook-Id"] = "W1"
    return path, headers


def tracking_headers(**extra: str) -> dict[str, str]:
    auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    return {"Content-Type": "application/json", "Authorization": auth, **extra}
