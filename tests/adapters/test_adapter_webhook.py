"""The webhook destination over real HTTP: signed Standard Webhooks requests, one per transition,
the same webhook-id on a retry or replay, nothing for a control member; Mailchimp journey triggers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from adapters.change import APPLIED, FAILED, Change, OwnedState
from adapters.mailchimp import MailchimpAdapter, MailchimpConfig
from adapters.webhook import WebhookAdapter, WebhookConfig, message_id
from connector.analytics import assign
from connector.destinations import destinations
from connector.dev.sandbox.fake_mailchimp import FakeMailchimp
from connector.dev.sandbox.server import ServerThread, serving
from connector.ingest.receivers.standard_webhooks import signature

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NOW = 1_704_067_230.0


class Receiver:
    """A WSGI endpoint that records what it gets; ``fail`` answers 503 that many times first."""

    def __init__(self, fail: int = 0) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.fail = fail

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        headers = {k[5:].lower().replace("_", "-"): v for k, v in environ.items() if k.startswith("HTTP_")}
        if self.fail:
            self.fail -= 1
            start_response("503 Service Unavailable", [("Content-Type", "application/json")])
            return [b'{"error":"busy"}']
        self.requests.append((headers, body))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, ServerThread]]:
    app = Receiver()
    with serving(app) as server:
        yield app, server


def _adapter(url: str, **kw: Any) -> WebhookAdapter:
    return WebhookAdapter(WebhookConfig(secret=SECRET, url=url), clock=lambda: NOW, **kw)


def _change(version: int, segments: set[str]) -> Change:
    return Change("acme", "hook", "p1", version, "ann@example.com", segments=frozenset(segments))


def test_each_transition_is_one_signed_request_the_receiver_verifies(receiver: Any) -> None:
    app, server = receiver
    adapter = _adapter(server.url + "/hooks/segments?src=connector")
    before = OwnedState(segments=frozenset({"vip"}))
    [result] = adapter.apply([_change(7, {"cart"})], {"p1": before})
    assert result.status == APPLIED and result.owned is not None and result.owned.segments == {"cart"}
    assert len(app.requests) == 2
    kinds = []
    for headers, body in app.requests:
        expected = signature(SECRET, headers["webhook-id"], headers["webhook-timestamp"], body)
        assert headers["webhook-signature"] == expected  # what the connector's receiver checks
        assert headers["webhook-timestamp"] == str(int(NOW))
        data = json.loads(body)
        kinds.append((data["type"], data["data"]["segment"]))
        direction = data["type"].split(".")[1]
        assert headers["webhook-id"] == message_id("acme", data["data"]["segment"], "p1", 7, direction)
    assert kinds == [("segment.entered", "cart"), ("segment.exited", "vip")]


def test_nothing_is_sent_when_no_segment_moved(receiver: Any) -> None:
    app, server = receiver
    same = OwnedState(segments=frozenset({"cart"}))
    [result] = _adapter(server.url).apply([_change(8, {"cart"})], {"p1": same})
    assert result.status == APPLIED and app.requests == []


def test_a_retry_and_a_replay_carry_the_same_webhook_id() -> None:
    app = Receiver(fail=10)  # more failures than the in-call retries
    with serving(app) as server:
        adapter = _adapter(server.url)
        [failed] = adapter.apply([_change(3, {"cart"})], {})
        assert failed.status == FAILED
        app.fail = 0
        [replayed] = adapter.apply([_change(3, {"cart"})], {})  # the dead letter replayed
        [again] = adapter.apply([_change(3, {"cart"})], {})  # and replayed once more
    assert replayed.status == APPLIED and again.status == APPLIED
    ids = {headers["webhook-id"] for headers, _ in app.requests}
    assert ids == {message_id("acme", "cart", "p1", 3, "entered")}


def _hook_account(url: str, cart: dict[str, Any]) -> Any:
    """An account with one webhook destination mapping the segment ``cart`` as given."""
    hook = {
        "type": "webhook",
        "api_key_env": "HOOK_SECRET",
        "url": url,
        "sandbox": True,
        "segments": {"cart": cart},
    }
    return type("A", (), {"id": "acme", "file": "acme.yaml", "destinations": {"hook": hook}})()


def test_a_control_member_never_triggers(receiver: Any) -> None:
    app, server = receiver
    account = _hook_account(server.url, {"holdout": 50})
    dest = destinations(account)["hook"]
    people = [f"p{n}" for n in range(40)]
    control = [p for p in people if assign.is_control("acme", "cart", p, 50)]
    treated = [p for p in people if p not in control]
    adapter = _adapter(server.url)
    changes = [dest.change(p, 1, ["cart"], {}, f"{p}@example.com") for p in control + treated]
    adapter.apply(changes, {})
    notified = {json.loads(body)["data"]["profile_id"] for _, body in app.requests}
    assert notified == set(treated)


def test_a_plain_http_url_needs_sandbox() -> None:
    from connector.errors import ConfigError

    account = type(
        "A",
        (),
        {
            "id": "acme",
            "file": "f",
            "destinations": {"hook": {"type": "webhook", "api_key_env": "X", "url": "http://h/x"}},
        },
    )()
    with pytest.raises(ConfigError, match="https"):
        destinations(account)


def test_mailchimp_journey_step_is_triggered_once_on_entry() -> None:
    fake = FakeMailchimp(api_keys=["key-us6"], lists=["a1"])
    with serving(fake) as server:
        cfg = MailchimpConfig(
            api_key="key-us6", list_id="a1", base_url=server.url + "/3.0", journeys={"cart": ("12", "34")}
        )
        adapter = MailchimpAdapter(cfg, clock=lambda: NOW)
        change = Change(
            "acme",
            "mailchimp",
            "p1",
            1,
            "ann@example.com",
            tags=frozenset({"cart"}),
            segments=frozenset({"cart"}),
        )
        [first] = adapter.apply([change], {})
        assert first.status == APPLIED, first.error
        assert first.owned is not None
        [second] = adapter.apply(
            [
                Change(
                    "acme",
                    "mailchimp",
                    "p1",
                    2,
                    "ann@example.com",
                    tags=frozenset({"cart"}),
                    segments=frozenset({"cart"}),
                )
            ],
            {"p1": first.owned},
        )
        assert second.status == APPLIED
    assert fake.journey_triggers == [("12", "34", "ann@example.com")]


def test_a_contact_s_first_entry_is_sent_through_the_sync(receiver: Any, redis_client: Any) -> None:
    """A webhook destination's change carries segments only (no tag, list or field): a contact's
    first entry must not be taken for "nothing to send" and dropped as unchanged."""
    from datetime import UTC, datetime, timedelta

    from connector import sync

    app, server = receiver
    account = _hook_account(server.url, {})
    dest = destinations(account)["hook"]
    now = datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert sync.submit(redis_client, account, "p1", 1, ["cart"], {}, "ann@example.com", "unknown", now) == [
        "hook"
    ]
    counts = sync.Flusher(redis_client, dest, _adapter(server.url)).flush(now + timedelta(seconds=2))
    assert counts == {"applied": 1}
    [(_, body)] = app.requests
    assert json.loads(body)["type"] == "segment.entered" and json.loads(body)["data"]["segment"] == "cart"
