from __future__ import annotations

from connector.ingest.receivers.mandrill import MandrillReceiver, form_pairs, signature
from tests.conftest import vector
from tests.helpers import stored_events

KEY = b"mandrill_webhook_key_abc123"
URL = "https://hooks.example.com/webhooks/mandrill"
FORM = "application/x-www-form-urlencoded"


def signed(body: bytes, key: bytes = KEY, url: str = URL) -> dict[str, str]:
    return {"Content-Type": FORM, "X-Mandrill-Signature": signature(key, url, form_pairs(body))}


def post(client, body: bytes, hdrs: dict[str, str], account: str = "acme"):  # type: ignore[no-untyped-def]
    return client.post(f"/webhooks/{account}/mandrill", data=body, headers=hdrs)


def ev(kind: str, mid: str, ts: int = 1704067200, email: str = "jane@example.com", **extra: object) -> dict:
    return {"event": kind, "_id": mid, "ts": ts, "msg": {"email": email, "subject": "Hi"}, **extra}


def test_vector_accepted_and_normalized(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    v = vector("mandrill")
    res = post(client, v["body"].encode(), {"Content-Type": FORM, **v["expected"]})
    assert res.status_code == 200, res.json
    [event] = stored_events(redis_client)
    assert event["name"] == "email_opened"
    assert event["identities"] == {"email": "jane@example.com"}
    assert event["source_event_id"] == "5c8a1e2b3d4f:open:1704067200"
    assert event["occurred_at"] == "2024-01-01T00:00:00Z"
    assert event["properties"]["subject"] == "Hi"


def test_names_and_batch_split(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    names = {
        "open": "email_opened", "click": "email_clicked", "send": "email_delivered",
        "hard_bounce": "email_bounced", "soft_bounce": "email_bounced", "spam": "email_marked_spam",
        "unsub": "unsubscribed", "reject": "email_rejected", "deferral": "email_deferred",
        "inbound_thing": "inbound_thing",
    }  # fmt: skip
    events = [ev(kind, f"id-{i}", url="https://example.com/x") for i, kind in enumerate(names)]
    events.append(
        {"type": "blacklist", "action": "add", "reject": {"email": "x@example.com"}, "ts": 1704067200}
    )
    body = MandrillReceiver.form_body(events)
    res = post(client, body, signed(body))
    assert res.status_code == 200, res.json
    assert res.json["accepted"] == len(events)
    stored = {e["original_name"]: e for e in stored_events(redis_client)}
    for kind, name in names.items():
        assert stored[kind]["name"] == name
    assert stored["hard_bounce"]["properties"]["bounce_type"] == "hard"
    assert stored["click"]["properties"]["url"] == "https://example.com/x"
    assert stored["blacklist_add"]["identities"] == {"email": "x@example.com"}


def test_head_probe_answered(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    assert client.head("/webhooks/acme/mandrill").status_code == 200
    assert client.head("/webhooks/nosuch/mandrill").status_code == 200
    assert stored_events(redis_client) == []


def test_rejections_are_401(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = MandrillReceiver.form_body([ev("open", "r1")])
    good = signed(body)
    answers = [
        post(client, body.replace(b"r1", b"r2"), good),
        post(client, body, signed(body, key=b"wrong")),
        post(client, body, signed(body, url="https://hooks.example.com/webhooks/mandrill/")),
        post(client, body, {"Content-Type": FORM}),
        post(client, body + b"&extra=1", good),  # every POST field is signed
        post(client, body, good, account="globex"),
        post(client, body, good, account="nosuch"),
    ]
    assert [a.status_code for a in answers] == [401] * len(answers)
    assert all(a.json == {"error": "unauthorized"} for a in answers)
    assert stored_events(redis_client) == []


def test_same_delivery_five_times_and_resplit(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    events = [ev("open", f"m{i}") for i in range(4)]
    body = MandrillReceiver.form_body(events[:2])
    answers = [post(client, body, signed(body)) for _ in range(5)]
    assert [a.json["accepted"] for a in answers] == [2, 0, 0, 0, 0]
    body = MandrillReceiver.form_body(events[1:])
    assert post(client, body, signed(body)).json["accepted"] == 2
    assert len(stored_events(redis_client)) == 4


def test_bad_bodies_are_400(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    for body, words in (
        (b"other=1", "mandrill_events"),
        (b"mandrill_events=%7Bnope", "JSON"),
        (b"mandrill_events=%7B%7D", "array"),
        (b"mandrill_events=%5B%7B%7D%5D", "mandrill_events[0].event"),
    ):
        res = post(client, body, signed(body))
        assert res.status_code == 400, body
        assert words in res.json["message"]
