from __future__ import annotations

import logging
from urllib.parse import urlencode

from connector.ingest.receivers.mailchimp import parse_form
from tests.conftest import vector
from tests.helpers import stored_events

TOKEN = "mc_url_secret_9f8e7d"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def post(client, body: bytes, query: str = f"secret={TOKEN}", account: str = "acme"):  # type: ignore[no-untyped-def]
    return client.post(f"/webhooks/{account}/mailchimp?{query}", data=body, headers=FORM)


def form(kind: str, fired_at: str = "2024-01-01 12:34:56", **data: str) -> bytes:
    return urlencode(
        {"type": kind, "fired_at": fired_at, **{f"data[{k}]": v for k, v in data.items()}}
    ).encode()


def test_subscribe_vector_normalized(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    v = vector("mailchimp_subscribe")
    res = post(client, v["body"].encode())
    assert res.status_code == 200, res.json
    [event] = stored_events(redis_client)
    assert event["name"] == "subscribed"
    assert event["identities"] == {"email": "api@example.com", "mailchimp_member_id": "8a25ff1d98"}
    assert event["occurred_at"] == "2024-01-01T12:34:56Z"  # fired_at taken as UTC
    assert event["traits"] == {"first_name": "Mailchimp", "last_name": "API"}
    assert event["properties"]["list_id"] == "a6b5da1054"
    assert event["raw"]["data"]["merges"]["FNAME"] == "Mailchimp"
    assert event["source_event_id"].startswith("sha256:")
    assert TOKEN not in str(event)


def test_bracket_keys_nest() -> None:
    parsed = parse_form(b"a=1&data%5Bmerges%5D%5BFNAME%5D=X&data%5Bid%5D=7&data=flat&data%5Bmerges%5D=s")
    assert parsed == {"a": "1", "data": {"merges": {"FNAME": "X"}, "id": "7"}}


def test_type_mapping(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    cases = {
        "subscribe": ("subscribed", {"id": "m1", "email": "a@example.com"}),
        "unsubscribe": ("unsubscribed", {"id": "m1", "email": "a@example.com", "action": "unsub"}),
        "profile": ("profile_updated", {"id": "m1", "email": "a@example.com"}),
        "upemail": (
            "email_changed",
            {"new_id": "m2", "new_email": "b@example.com", "old_email": "a@example.com"},
        ),
        "cleaned": ("email_cleaned", {"email": "a@example.com", "reason": "hard"}),
        "campaign": ("campaign_status", {"id": "c1", "status": "sent", "subject": "Hi"}),
        "somethingNew": ("something_new", {"id": "m1"}),
    }
    for kind, (_, data) in cases.items():
        assert post(client, form(kind, list_id="L1", **data)).status_code == 200, kind
    by_type = {e["original_name"]: e for e in stored_events(redis_client)}
    for kind, (name, _) in cases.items():
        assert by_type[kind]["name"] == name
    assert by_type["upemail"]["identities"] == {"email": "b@example.com", "mailchimp_member_id": "m2"}
    assert by_type["upemail"]["properties"]["old_email"] == "a@example.com"
    assert by_type["campaign"]["identities"] == {}
    assert by_type["profile"]["type"] == "identify"


def test_validation_probes_answer_200_without_token(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/webhooks/acme/mailchimp").status_code == 200
    assert client.head("/webhooks/acme/mailchimp").status_code == 200
    assert client.post("/webhooks/acme/mailchimp", data=b"", headers=FORM).status_code == 200
    # unknown accounts answer the same (no enumeration)
    assert client.get("/webhooks/nosuch/mailchimp").status_code == 200
    assert stored_events(redis_client) == []


def test_rejections_are_401(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = vector("mailchimp_subscribe")["body"].encode()
    answers = [
        post(client, body, query="secret=wrong"),
        post(client, body, query=f"secret={TOKEN}x"),
        post(client, body, query=""),
        post(client, body, query=f"token={TOKEN}"),
        post(client, body, account="globex"),
        post(client, body, account="nosuch"),
    ]
    assert [a.status_code for a in answers] == [401] * len(answers)
    assert all(a.json == {"error": "unauthorized"} for a in answers)
    assert stored_events(redis_client) == []


def test_same_delivery_five_times(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = vector("mailchimp_subscribe")["body"].encode()
    answers = [post(client, body) for _ in range(5)]
    assert [a.json["accepted"] for a in answers] == [1, 0, 0, 0, 0]
    assert len(stored_events(redis_client)) == 1
    # a later event of the same type for the same member is new
    assert (
        post(client, form("subscribe", "2024-01-02 00:00:00", id="8a25ff1d98", list_id="a6b5da1054")).json[
            "accepted"
        ]
        == 1
    )


def test_bad_bodies_are_4xx(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    assert post(client, b"fired_at=2024-01-01+00%3A00%3A00").status_code == 400  # no type
    assert post(client, b"type=subscribe&fired_at=yesterday").status_code == 400
    assert post(client, b"type=subscribe&data%5Bemail%5D=%FF").status_code == 400
    res = client.post(
        f"/webhooks/acme/mailchimp?secret={TOKEN}",
        data=b'{"type":"x"}',
        headers={"Content-Type": "application/json"},
    )
    assert res.status_code == 415


def test_token_never_logged(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    logger = logging.getLogger("connector")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        body = vector("mailchimp_subscribe")["body"].encode()
        post(client, body)
        post(client, body, query=f"secret={TOKEN}-nope")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert records
    for record in records:
        assert TOKEN not in record.getMessage()
        assert TOKEN not in str(record.__dict__)
