"""An anonymous visitor who qualifies reaches the ESPs once they are known (real HTTP to the
sandbox's fakes on loopback), as exactly one contact, the email; never one for the anonymous id."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import redis

from connector import clock
from connector.dev.sandbox import SANDBOX_MAILCHIMP_LIST
from connector.ingest.receivers.segment import sign
from connector.worker import scheduler
from tests.test_end_to_end import SECRET, T0, fakes, run_workers, wired  # noqa: F401  (fixtures)

EMAIL = "late.identified@example.com"
ANON = "anon-visitor-7f3a"


def post(client, message: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(message).encode()
    headers = {"Content-Type": "application/json", "X-Signature": sign(SECRET, body)}
    assert client.post("/webhooks/acme/segment", data=body, headers=headers).status_code == 200


def contacts(apps: dict[str, Any]) -> dict[str, list[str]]:
    return {
        "mailchimp": sorted(apps["mailchimp"].snapshot()["lists"][SANDBOX_MAILCHIMP_LIST]["members"]),
        "hubspot": sorted(apps["hubspot"].snapshot()["contacts"]),
        "klaviyo": sorted(apps["klaviyo"].snapshot()["profiles"]),
    }


def _qualify_anonymously(client, redis_client: redis.Redis, frozen) -> None:  # type: ignore[no-untyped-def]
    post(client, {"type": "track", "event": "Product Added", "anonymousId": ANON, "messageId": "anon-cart",
                  "timestamp": T0.isoformat()})  # fmt: skip
    run_workers(redis_client)
    frozen.advance(timedelta(hours=48, minutes=1))
    assert scheduler.fire_due(redis_client, clock.now()) == 1
    run_workers(redis_client)


def test_anonymous_visitor_in_a_segment_reaches_every_esp_once_identified(
    wired: dict[str, str],  # noqa: F811
    client,  # type: ignore[no-untyped-def]
    redis_client: redis.Redis,
    fakes: dict[str, Any],  # noqa: F811
) -> None:
    apps = fakes["apps"]
    with clock.frozen(T0) as frozen:
        _qualify_anonymously(client, redis_client, frozen)
        assert contacts(apps) == {"mailchimp": [], "hubspot": [], "klaviyo": []}
        post(client, {"type": "identify", "anonymousId": ANON, "userId": "u-late", "messageId": "anon-id",
                      "timestamp": clock.now().isoformat(), "traits": {"email": EMAIL}})  # fmt: skip
        run_workers(redis_client)
    assert contacts(apps) == {"mailchimp": [EMAIL], "hubspot": [EMAIL], "klaviyo": [EMAIL]}
    member = apps["mailchimp"].snapshot()["lists"][SANDBOX_MAILCHIMP_LIST]["members"][EMAIL]
    assert "cart abandoner" in member["tags"]
    assert apps["hubspot"].snapshot()["contacts"][EMAIL]["lists"] == ["Cart abandoners"]
    assert apps["klaviyo"].snapshot()["profiles"][EMAIL]["lists"] == ["Cart abandoners"]
    for name, app in apps.items():
        assert ANON not in json.dumps(app.snapshot(), default=str), name


def test_an_alias_of_the_anonymous_id_reaches_every_esp_too(
    wired: dict[str, str],  # noqa: F811
    client,  # type: ignore[no-untyped-def]
    redis_client: redis.Redis,
    fakes: dict[str, Any],  # noqa: F811
) -> None:
    apps = fakes["apps"]
    with clock.frozen(T0) as frozen:
        _qualify_anonymously(client, redis_client, frozen)
        post(client, {"type": "identify", "userId": "u-late", "messageId": "known-id",
                      "timestamp": clock.now().isoformat(), "traits": {"email": EMAIL}})  # fmt: skip
        run_workers(redis_client)
        assert contacts(apps) == {"mailchimp": [], "hubspot": [], "klaviyo": []}  # in no segment yet
        post(client, {"type": "alias", "userId": "u-late", "previousId": ANON, "messageId": "alias-1",
                      "timestamp": clock.now().isoformat()})  # fmt: skip
        run_workers(redis_client)
    assert contacts(apps) == {"mailchimp": [EMAIL], "hubspot": [EMAIL], "klaviyo": [EMAIL]}
    assert apps["hubspot"].snapshot()["contacts"][EMAIL]["lists"] == ["Cart abandoners"]
