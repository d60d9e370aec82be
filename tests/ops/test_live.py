"""Live events: what ingest publishes per delivery (real Redis), and the SSE endpoint."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from connector import clock
from connector.event import Event
from connector.ingest.queue import EventQueue
from connector.ingest.receivers.segment import sign
from connector.ops import live, tokens
from tests.conftest import ACME_ENV
from tests.ingest.signing import signed

SEGMENT_SECRET = ACME_ENV["ACME_SEGMENT_SECRET"]
EVENT: dict[str, Any] = {
    "account": "acme",
    "source": "segment",
    "source_event_id": "s-0",
    "type": "track",
    "name": "order_completed",
    "occurred_at": datetime(2026, 12, 1, tzinfo=UTC),
    "received_at": datetime(2026, 12, 1, tzinfo=UTC),
    "identities": {"user_id": "user-123456", "email": "jane.doe@example.com"},
}


def segment_body(message_id: str, email: str = "jane.doe@example.com") -> bytes:
    return json.dumps(
        {
            "type": "track",
            "event": "Order Completed",
            "messageId": message_id,
            "userId": "user-123456",
            "context": {"traits": {"email": email}},
            "properties": {"revenue": 12.5},
            "timestamp": "2024-01-01T00:00:00Z",
        }
    ).encode()


def post_segment(
    client: Any, body: bytes, account: str = "acme", secret: str = SEGMENT_SECRET, *, flushed: bool = True
) -> Any:
    """Deliver ``body``; ``flushed``: then write what the web process queued for the live stream
    (its flushing thread would within ``live.FLUSH_SECONDS``), each delivery its own stream entry."""
    headers = {"Content-Type": "application/json", "X-Signature": sign(secret.encode(), body)}
    answer = client.post(f"/webhooks/{account}/segment", data=body, headers=headers)
    if flushed:
        flush(client)
    return answer


def entries(conn: redis.Redis, account: str, count: int = 1, wait: float = 2.0) -> list[dict[str, Any]]:
    """The account's live entries once at least ``count`` are there (publishing sends without
    waiting for Redis's reply, so the test polls for the state, up to ``wait`` seconds)."""
    deadline = time.monotonic() + wait
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = [entry for _, entry in live.latest(conn, account, 100)]
        if len(found) >= count:
            break
        time.sleep(0.01)
    return found


def test_masking() -> None:
    assert live.mask("email", "jane.doe@example.com") == "j***@example.com"
    assert live.mask("user_id", "user-123456") == "us***56"
    assert live.mask("anonymous_id", "abc") == "a***"
    assert live.mask("shopify_customer_id", "someone@shop.test") == "s***@shop.test"


def test_nothing_is_published_for_a_stored_delivery_while_nobody_watches(
    client: Any, redis_client: redis.Redis
) -> None:
    assert post_segment(client, segment_body("quiet-1")).status_code == 200
    assert redis_client.hget("metrics:ingest", "accepted:acme") == b"1"
    # a refusal is always published; it marks the end of what was sent before it
    assert post_segment(client, segment_body("quiet-2"), secret="not-the-secret-at-all").status_code == 401
    assert [e["outcome"] for e in entries(redis_client, "acme", 1)] == ["refused"]


def flush(client: Any) -> int:
    """Write what the app's publisher has queued now (its thread would, within FLUSH_SECONDS)."""
    return int(client.application.wsgi_app.observer.flush())


def test_while_watched_each_delivery_and_its_duplicate_are_published_with_masked_identities(
    client: Any, redis_client: redis.Redis
) -> None:
    live.watch(redis_client, "acme")
    body = segment_body("m-1")
    for _ in range(2):
        assert post_segment(client, body, flushed=False).status_code == 200
    assert post_segment(client, segment_body("m-2"), flushed=False).status_code == 200
    assert flush(client) == 3
    first, second, third = entries(redis_client, "acme", 3)
    assert redis_client.xlen("live:acme") == 1  # one write for the three
    assert first["sender"] == "segment"
    assert first["outcome"] == "accepted"
    assert (first["accepted"], first["duplicates"], first["event_count"]) == (1, 0, 1)
    assert first["events"][0]["name"] == "order_completed"
    assert first["events"][0]["identities"] == {"user_id": "us***56", "email": "j***@example.com"}
    assert second["outcome"] == "duplicate"
    assert (second["accepted"], second["duplicates"]) == (0, 1)
    assert first["events"][0]["id"] == second["events"][0]["id"] != third["events"][0]["id"]
    assert {k: v for k, v in third.items() if k not in ("at", "events")} == {
        k: v for k, v in first.items() if k not in ("at", "events")
    }
    raw = json.dumps([first, second, third])
    assert "jane.doe" not in raw and "user-123456" not in raw


def test_the_ingest_script_says_whether_the_account_is_watched_and_writes_no_entry(
    redis_client: redis.Redis,
) -> None:
    queue = EventQueue(redis_client, shards=1)
    events = [Event(**{**EVENT, "source_event_id": f"s-{n}"}) for n in range(7)]
    assert queue.ingest("acme", events[:1], 3600).watched is False
    live.watch(redis_client, "acme")
    batch = queue.ingest("acme", events, 3600)  # the first one again: a duplicate
    assert (batch.accepted, batch.duplicates, batch.watched) == (6, 1, True)
    assert not redis_client.exists(live.key("acme"))


def test_the_publisher_writes_each_account_s_deliveries_as_one_entry_a_line_each(
    redis_client: redis.Redis,
) -> None:
    queue = EventQueue(redis_client, shards=1)
    publisher = live.Publisher(redis_client)
    events = [Event(**{**EVENT, "source_event_id": f"s-{n}"}) for n in range(7)]
    live.watch(redis_client, "acme")
    at = datetime(2026, 12, 2, 9, 30, 1, 250000, tzinfo=UTC)
    acme: Any = SimpleNamespace(id="acme")
    for batch in (events[:2], events):  # the first two again: duplicates
        publisher.delivered(acme, batch, queue.ingest("acme", batch, 3600), at)
    unwatched: Any = SimpleNamespace(id="globex")
    publisher.delivered(unwatched, events[:1], queue.ingest("globex", events[:1], 3600), at)
    assert publisher.flush() == 2 and publisher.flush() == 0
    found = entries(redis_client, "acme", 2)
    assert [(e["accepted"], e["duplicates"], e["event_count"]) for e in found] == [(2, 0, 2), (5, 2, 7)]
    expected = live.delivered_entry(events, 5, 2)
    assert found[1] == {**expected, "at": "2026-12-02T09:30:01.250000Z"}
    assert len(found[1]["events"]) == live.MAX_EVENTS_SHOWN
    assert redis_client.xlen(live.key("acme")) == 1 and not redis_client.exists(live.key("globex"))


def test_a_delivery_still_queued_when_its_person_is_erased_is_not_written(redis_client: redis.Redis) -> None:
    """The erasure removes the person's deliveries from the stream (forget_live, after the
    tombstones); one the web process queued before and flushes after must not bring their masked
    identities back, down to a delivery received at the erasure instant itself. Another person's
    delivery of the same flush, the "not shown" counts, and the person's own delivery received
    after the erasure (a new relationship, as the worker keeps it) are written."""
    from connector.worker.erasure import forget_live, record_tombstones

    queue = EventQueue(redis_client, shards=1)
    publisher = live.Publisher(redis_client, flush_seconds=3600, shown_per_second=2)  # flushed below only
    live.watch(redis_client, "acme")
    acme: Any = SimpleNamespace(id="acme", dedupe_ttl_seconds=3600)
    received = datetime(2026, 12, 2, 9, 30, 1, tzinfo=UTC)
    theirs = Event(**{**EVENT, "source_event_id": "theirs", "received_at": received})
    other = {"user_id": "someone-else-77", "email": "other.person@example.org"}
    another = Event(**{**EVENT, "source_event_id": "another", "identities": other, "received_at": received})
    counted = Event(**{**EVENT, "source_event_id": "counted", "received_at": received})  # the third
    for event in (theirs, another, counted):
        publisher.delivered(acme, [event], queue.ingest("acme", [event], 3600), received)
    record_tombstones(redis_client, acme, {"email": ["jane.doe@example.com"]}, received)  # the same instant
    assert forget_live(redis_client, "acme", {"email": ["jane.doe@example.com"]}) == 0  # not written yet
    later = Event(**{**EVENT, "source_event_id": "later", "received_at": received + timedelta(seconds=1)})
    publisher.delivered(acme, [later], queue.ingest("acme", [later], 3600), later.received_at)
    assert publisher.flush() == 4
    found = entries(redis_client, "acme", 3)
    assert [e["events"][0]["id"] for e in found[:2]] == [another.event_id, later.event_id]
    assert [(e["outcome"], e["deliveries"]) for e in found[2:]] == [("not_shown", 1)]
    assert theirs.event_id not in json.dumps([entry for _, entry in live.latest(redis_client, "acme", 100)])


def test_after_an_account_is_erased_none_of_its_queued_deliveries_is_written(
    redis_client: redis.Redis,
) -> None:
    """Shopify's shop/redact: the account's tombstone leaves out every delivery received before it."""
    from connector.worker.erasure import record_tombstones

    queue = EventQueue(redis_client, shards=1)
    publisher = live.Publisher(redis_client, flush_seconds=3600)
    live.watch(redis_client, "acme")
    acme: Any = SimpleNamespace(id="acme", dedupe_ttl_seconds=3600)
    received = datetime(2026, 12, 2, 9, 30, 1, tzinfo=UTC)
    events = [Event(**{**EVENT, "source_event_id": f"shop-{n}", "received_at": received}) for n in range(3)]
    for event in events:
        publisher.delivered(acme, [event], queue.ingest("acme", [event], 3600), received)
    record_tombstones(redis_client, acme, None, received + timedelta(seconds=5))
    assert publisher.flush() == 3
    publisher.publish("acme", live.refused_entry("segment", 401, "a marker written after the flush"))
    assert [e["outcome"] for e in entries(redis_client, "acme", 1)] == ["refused"]


def test_a_tombstone_key_that_cannot_be_read_leaves_out_only_the_deliveries_naming_it(
    redis_client: redis.Redis,
) -> None:
    """The flush's replies are not read, so an error would lose the account's whole flush unseen: a
    key where a tombstone should be that holds something else leaves out the deliveries it names
    (unjudged), and the others are written."""
    from connector.profiles.erasure import tombstone_key

    queue = EventQueue(redis_client, shards=1)
    publisher = live.Publisher(redis_client, flush_seconds=3600)
    live.watch(redis_client, "acme")
    acme: Any = SimpleNamespace(id="acme")
    received = datetime(2026, 12, 2, 9, 30, 1, tzinfo=UTC)
    other = {"user_id": "someone-else-77", "email": "other.person@example.org"}
    theirs = Event(**{**EVENT, "source_event_id": "theirs", "received_at": received})
    another = Event(**{**EVENT, "source_event_id": "another", "identities": other, "received_at": received})
    for event in (theirs, another):
        publisher.delivered(acme, [event], queue.ingest("acme", [event], 3600), received)
    redis_client.rpush(tombstone_key("acme", "email", "jane.doe@example.com"), "not a tombstone")
    assert publisher.flush() == 2
    assert [e["events"][0]["id"] for e in entries(redis_client, "acme", 1)] == [another.event_id]


def test_the_flushing_thread_writes_what_was_queued_without_being_asked(redis_client: redis.Redis) -> None:
    publisher = live.Publisher(redis_client, flush_seconds=0)
    live.watch(redis_client, "acme")
    result = EventQueue(redis_client, shards=1).ingest("acme", [Event(**EVENT)], 3600)
    publisher.delivered(SimpleNamespace(id="acme"), [Event(**EVENT)], result, clock.now())  # type: ignore[arg-type]
    assert [e["outcome"] for e in entries(redis_client, "acme", 1)] == ["accepted"]


def test_an_entry_start_is_the_entry_json_would_write_with_any_characters() -> None:
    odd = Event(
        **{
            **EVENT,
            "name": 'say "hi"\\ \u00e9\u2028\n',
            "identities": {
                "email": "\u00e9l\u00e8ve@\u00e9cole.fr",
                "user_id": "\u4f60\u597d\u4e16\u754c12345",
                "x": 'q"\\',
            },
        }
    )
    with clock.frozen(clock.to_utc(datetime(2026, 12, 2, 3, 4, 5, 6789, tzinfo=UTC))):
        built = json.loads(
            live.entry_start([odd])
            + ',"outcome":"accepted","status":200,"reason":null,"accepted":1,"duplicates":0}'
        )
        assert built == live.delivered_entry([odd], 1, 0)
    assert built["events"][0]["identities"]["email"] == "\u00e9***@\u00e9cole.fr"


@pytest.mark.parametrize(
    "instant",
    [
        datetime(2026, 12, 2, 3, 4, 5, tzinfo=UTC),  # no fraction: ISO writes none
        datetime(2026, 12, 2, 3, 4, 5, 999999, tzinfo=UTC),
        datetime(2026, 12, 2, 3, 4, 6, 1, tzinfo=UTC),  # the next second, after the one remembered
        datetime(2026, 12, 2, 5, 4, 6, 120, tzinfo=timezone(timedelta(hours=2))),  # not in UTC
    ],
)
def test_an_entry_start_shows_the_instant_it_is_given_as_the_clock_would(instant: datetime) -> None:
    event = Event(**EVENT)
    built = json.loads(live.entry_start([event], instant) + ',"outcome":"accepted"}')
    assert built["at"] == clock.isoformat(instant)
    with clock.frozen(instant):
        assert json.loads(live.entry_start([event]) + "}")["at"] == clock.isoformat(instant)


def test_the_stream_reads_the_same_with_a_client_that_decodes_replies(
    client: Any, redis_client: redis.Redis, redis_url: str
) -> None:
    live.watch(redis_client, "acme")
    for n in range(2):
        assert post_segment(client, segment_body(f"text-{n}")).status_code == 200
    entries(redis_client, "acme", 2)
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    text = b"".join(live.sse(decoding, "acme", None, backlog=5)).decode()
    got = frames(text)
    assert [f["outcome"] for f in got] == ["accepted", "accepted"]
    again = b"".join(live.sse(decoding, "acme", got[0]["id"])).decode()
    assert [f["id"] for f in frames(again)] == [got[1]["id"]]


def test_refusals_for_unknown_accounts_or_senders_are_published_nowhere(
    client: Any, redis_client: redis.Redis
) -> None:
    live.watch(redis_client, "acme")
    assert post_segment(client, segment_body("m-3"), account="nobody").status_code == 401
    path, headers = signed("shopify", b"{}")
    assert client.post(path.replace("acme", "globex"), data=b"{}", headers=headers).status_code == 401
    # a delivery that is published afterwards, on the same kind of connection, marks the end
    assert post_segment(client, segment_body("m-4")).status_code == 200
    assert len(entries(redis_client, "acme")) == 1
    assert sorted(k.decode() for k in redis_client.scan_iter("live:*")) == ["live:acme", "live:watch:acme"]


def test_the_stream_is_capped(redis_client: redis.Redis) -> None:
    publisher = live.Publisher(redis_client, maxlen=100)
    for n in range(1000):
        publisher.publish("acme", live.refused_entry("segment", 401, f"n{n}"))
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and live.latest(redis_client, "acme", 1)[0][1]["reason"] != "n999":
        time.sleep(0.01)
    assert live.latest(redis_client, "acme", 1)[0][1]["reason"] == "n999"
    assert 100 <= redis_client.xlen("live:acme") < 300


def test_publishing_never_fails_the_delivery_when_redis_is_gone() -> None:
    publisher = live.Publisher(redis.Redis(host="127.0.0.1", port=9, socket_connect_timeout=0.2))
    publisher.publish("acme", live.refused_entry("segment", 401, "x"))  # no exception


# --- the SSE endpoint ---------------------------------------------------------------------


def bearer(conn: redis.Redis, role: str = "viewer", account: str = "acme") -> dict[str, str]:
    _, secret = tokens.create(conn, [account], role, timedelta(days=1), clock.now())
    return {"Authorization": f"Bearer {secret}"}


def frames(text: str) -> list[dict[str, Any]]:
    """The deliveries of an SSE text, each with the last event id EventSource would report for it
    (a message without ``id`` keeps the one before)."""
    out = []
    last = ""
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != ":")
        last = lines.get("id", last)
        if lines.get("event") == "delivery":
            out.append({"id": last, **json.loads(lines["data"])})
    return out


def test_the_endpoint_needs_a_token_of_the_account(client: Any, redis_client: redis.Redis) -> None:
    assert client.get("/api/v1/accounts/acme/live").status_code == 401
    res = client.get("/api/v1/accounts/acme/live", headers=bearer(redis_client, account="globex"))
    assert res.status_code == 404
    assert res.json["error"] == "not_found"
    res = client.get("/api/v1/accounts/acme/live?window=99", headers=bearer(redis_client))
    assert res.status_code == 422
    res = client.get("/api/v1/accounts/acme/live", headers={**bearer(redis_client), "Last-Event-ID": "x"})
    assert res.status_code == 422


def test_the_endpoint_streams_the_backlog_then_resumes_after_last_event_id(
    client: Any, redis_client: redis.Redis
) -> None:
    live.watch(redis_client, "acme")
    for n in range(3):
        post_segment(client, segment_body(f"b-{n}", email=f"p{n}@example.com"))
    entries(redis_client, "acme", 3)
    auth = bearer(redis_client)
    res = client.get("/api/v1/accounts/acme/live?window=1&backlog=2", headers=auth)
    assert res.status_code == 200
    assert res.mimetype == "text/event-stream"
    got = frames(res.get_data(as_text=True))
    assert [f["events"][0]["identities"]["email"] for f in got] == ["p***@example.com"] * 2
    assert len(got) == 2
    res = client.get("/api/v1/accounts/acme/live?window=1", headers={**auth, "Last-Event-ID": got[0]["id"]})
    assert [f["id"] for f in frames(res.get_data(as_text=True))] == [got[1]["id"]]


def test_deliveries_made_after_a_stream_opened_reach_it(
    client: Any, app: Any, redis_client: redis.Redis
) -> None:
    """Nobody watched before the stream opened: opening it is what makes deliveries published.
    (How soon they arrive is measured by bench/ingest --live-client, docs/benchmarks.md.)"""
    assert post_segment(client, segment_body("before-1")).status_code == 200
    seen: list[dict[str, Any]] = []
    opened = threading.Event()

    def watch() -> None:
        reader = app.test_client()
        res = reader.get("/api/v1/accounts/acme/live?window=5&backlog=10", headers=bearer(redis_client))
        text = ""
        for chunk in res.response:
            text += chunk.decode() if isinstance(chunk, bytes) else chunk
            opened.set()
            seen[:] = frames(text)
            if len(seen) >= 3:
                break
        res.close()

    thread = threading.Thread(target=watch)
    thread.start()
    assert opened.wait(5)
    assert 0 < redis_client.ttl(live.watch_key("acme")) <= live.WATCH_TTL_SECONDS
    for n in range(2):
        assert post_segment(client, segment_body(f"late-{n}")).status_code == 200
    assert post_segment(client, segment_body("late-x"), secret="not-the-secret-at-all").status_code == 401
    thread.join(10)
    assert [f["outcome"] for f in seen] == ["accepted", "accepted", "refused"]
    assert [f["events"][0]["identities"]["user_id"] for f in seen[:2]] == ["us***56"] * 2


def test_by_default_an_answer_sends_what_is_new_and_ends_and_the_next_resumes_from_it(
    client: Any, redis_client: redis.Redis
) -> None:
    auth = bearer(redis_client)
    first = client.get("/api/v1/accounts/acme/live?backlog=0", headers=auth)  # nothing shown yet
    assert first.status_code == 200
    # where to read on from, as an event the page does not show (EventSource keeps its id)
    assert first.get_data(as_text=True) == "retry: 500\n\nid: 0-0\nevent: position\ndata: {}\n\n"
    assert 0 < redis_client.ttl(live.watch_key("acme")) <= live.WATCH_TTL_SECONDS
    for n in range(2):
        assert post_segment(client, segment_body(f"poll-{n}")).status_code == 200
    resumed = {**auth, "Last-Event-ID": "0-0"}
    got = frames(client.get("/api/v1/accounts/acme/live?backlog=0", headers=resumed).get_data(as_text=True))
    assert [f["outcome"] for f in got] == ["accepted", "accepted"]
    nothing = client.get("/api/v1/accounts/acme/live", headers={**auth, "Last-Event-ID": got[-1]["id"]})
    assert nothing.get_data(as_text=True) == "retry: 500\n\n"
    assert post_segment(client, segment_body("poll-0")).status_code == 200
    after = client.get("/api/v1/accounts/acme/live", headers={**auth, "Last-Event-ID": got[-1]["id"]})
    assert [f["outcome"] for f in frames(after.get_data(as_text=True))] == ["duplicate"]
    again = client.get("/api/v1/accounts/acme/live", headers={**auth, "Last-Event-ID": got[-1]["id"]})
    assert len(frames(again.get_data(as_text=True))) == 1


@pytest.mark.parametrize("role", ["viewer", "editor", "admin"])
def test_every_role_may_watch(client: Any, redis_client: redis.Redis, role: str) -> None:
    res = client.get("/api/v1/accounts/acme/live?window=1&backlog=0", headers=bearer(redis_client, role))
    assert res.status_code == 200
    assert res.get_data(as_text=True).startswith("retry: 500")


def test_an_entry_holding_several_deliveries_streams_one_message_each_and_resumes_after_it(
    client: Any, redis_client: redis.Redis
) -> None:
    live.watch(redis_client, "acme")
    for n in range(3):
        post_segment(client, segment_body(f"row-{n}", email=f"r{n}@example.com"), flushed=False)
    assert flush(client) == 3
    post_segment(client, segment_body("row-3", email="r3@example.com"))
    first_row, second_row = [i.decode() for i, _ in redis_client.xrange(live.key("acme"))]
    auth = bearer(redis_client)
    text = client.get("/api/v1/accounts/acme/live?backlog=10", headers=auth).get_data(as_text=True)
    # one message per delivery; only the last of an entry says where to resume
    assert text.count("event: delivery") == 4 and text.count("\nid: ") + text.startswith("id: ") == 2
    got = frames(text)
    assert [f["events"][0]["identities"]["email"] for f in got] == ["r***@example.com"] * 4
    assert [f["id"] for f in got] == ["", "", first_row, second_row]
    resumed = client.get("/api/v1/accounts/acme/live", headers={**auth, "Last-Event-ID": first_row})
    assert [f["id"] for f in frames(resumed.get_data(as_text=True))] == [second_row]
    # a backlog counts deliveries: the last two are the row's last and the next row
    two = frames(client.get("/api/v1/accounts/acme/live?backlog=2", headers=auth).get_data(as_text=True))
    assert [f["accepted"] for f in two] == [1, 1] and [f["id"] for f in two] == [first_row, second_row]
    assert [f["at"] for f in two] == [f["at"] for f in got[2:]]
    assert [e["at"] for _, e in live.latest(redis_client, "acme", 3)] == [f["at"] for f in got[1:]]


def test_a_publishing_connection_idle_too_long_is_replaced_before_writing(redis_client: redis.Redis) -> None:
    """Nothing is read from the connection (replies off): one the server closed while idle would
    swallow the next write unnoticed, so an idle one is replaced first."""
    publisher = live.Publisher(redis_client)
    publisher.publish("acme", live.refused_entry("segment", 401, "first"))
    assert [e["reason"] for e in entries(redis_client, "acme", 1)] == ["first"]
    redis_client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")  # the server drops it
    publisher._local.used -= live.IDLE_SECONDS + 1  # as if it had been idle since
    publisher.publish("acme", live.refused_entry("segment", 401, "after the idle time"))
    assert [e["reason"] for e in entries(redis_client, "acme", 2)] == ["first", "after the idle time"]


def test_the_flushing_thread_goes_on_after_a_delivery_it_cannot_show(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = live.Publisher(redis_client, flush_seconds=0)
    live.watch(redis_client, "acme")
    queue = EventQueue(redis_client, shards=1)
    acme: Any = SimpleNamespace(id="acme")
    broken = SimpleNamespace(**{**EVENT, "name": None, "event_id": "e" * 32})  # not a string: no entry
    publisher.delivered(acme, [broken], SimpleNamespace(watched=True, accepted=1, duplicates=0), clock.now())
    deadline = time.monotonic() + 2
    while publisher._pending and time.monotonic() < deadline:
        time.sleep(0.01)
    publisher.delivered(acme, [Event(**EVENT)], queue.ingest("acme", [Event(**EVENT)], 3600), clock.now())
    assert [e["outcome"] for e in entries(redis_client, "acme", 1)] == ["accepted"]
    assert "live entries not published" in caplog.text


def test_past_the_deliveries_shown_a_second_the_rest_are_counted_in_one_not_shown_line_per_sender(
    redis_client: redis.Redis,
) -> None:
    publisher = live.Publisher(redis_client, shown_per_second=3)
    queue = EventQueue(redis_client, shards=1)
    live.watch(redis_client, "acme")
    acme: Any = SimpleNamespace(id="acme")
    second = datetime(2026, 12, 2, 9, 30, 1, tzinfo=UTC)
    stored = []
    for n in range(8):  # eight deliveries within one second; the last two repeat the first event
        event = Event(**{**EVENT, "source_event_id": f"s-{n % 6}"})
        stored.append(queue.ingest("acme", [event], 3600))
        publisher.delivered(acme, [event], stored[-1], second + timedelta(milliseconds=100 * n))
    shopify = Event(**{**EVENT, "source": "shopify", "source_event_id": "shop-1"})
    publisher.delivered(
        acme, [shopify], queue.ingest("acme", [shopify], 3600), second + timedelta(seconds=0.9)
    )
    later = Event(**{**EVENT, "source_event_id": "s-later"})
    publisher.delivered(acme, [later], queue.ingest("acme", [later], 3600), second + timedelta(seconds=1))
    assert publisher.flush() == 10
    found = entries(redis_client, "acme", 6)
    assert [e["outcome"] for e in found] == ["accepted"] * 4 + ["not_shown"] * 2
    assert [e["events"][0]["id"] for e in found[:3]] == [
        e.event_id for e in [Event(**{**EVENT, "source_event_id": f"s-{n}"}) for n in range(3)]
    ]
    assert found[3]["events"][0]["id"] == later.event_id  # the next second shows again
    segment, shop = found[4], found[5]
    assert (segment["sender"], segment["deliveries"], segment["accepted"], segment["duplicates"]) == (
        "segment",
        5,
        3,
        2,
    )
    assert segment["event_count"] == 5 and segment["events"] == []
    assert "3 deliveries a second" in segment["reason"]
    assert (shop["sender"], shop["deliveries"], shop["accepted"]) == ("shopify", 1, 1)
    assert publisher.flush() == 0  # the counts went out with the flush


def test_counts_not_shown_go_out_once_a_second_and_none_is_lost_to_concurrent_requests(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Request threads (gthread) count while the flushing thread writes: every delivery ends up
    shown or counted exactly once, and the counts go out once per COUNTED_SECONDS."""
    import sys

    publisher = live.Publisher(redis_client, shown_per_second=20)
    lines: list[dict[str, Any]] = []

    def written(stream: str, maxlen: int, flushed: list[tuple[str, float, list[str]]]) -> tuple[str]:
        lines.extend(json.loads(line) for line, _, _ in flushed)
        return ("PING",)

    monkeypatch.setattr(live, "_flush_command", written)
    moment = [1000.0]
    monkeypatch.setattr(live.clock, "monotonic", lambda: moment[0])
    acme: Any = SimpleNamespace(id="acme")
    result = SimpleNamespace(watched=True, accepted=1, duplicates=0)
    event = Event(**EVENT)
    at = datetime(2026, 12, 2, 9, 30, 1, tzinfo=UTC)
    threads, each = 4, 5000
    stop = threading.Event()

    def deliver() -> None:
        for n in range(each):
            publisher.delivered(acme, [event], result, at + timedelta(milliseconds=n // 10))

    def flushing() -> None:
        while not stop.is_set():
            publisher.flush(final=True)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show at once
    try:
        flusher = threading.Thread(target=flushing)
        flusher.start()
        workers = [threading.Thread(target=deliver) for _ in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        stop.set()
        flusher.join()
    finally:
        sys.setswitchinterval(interval)
    publisher.flush()
    shown = sum(1 for line in lines if line["outcome"] == "accepted")
    counted = sum(line["deliveries"] for line in lines if line["outcome"] == "not_shown")
    assert shown == 20  # every instant is within one second
    assert shown + counted == threads * each


def test_the_flushing_thread_writes_the_counts_not_shown_at_most_once_a_second(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher = live.Publisher(redis_client, shown_per_second=1)
    moment = [1000.0]
    monkeypatch.setattr(live.clock, "monotonic", lambda: moment[0])
    live.watch(redis_client, "acme")
    acme: Any = SimpleNamespace(id="acme")
    result = SimpleNamespace(watched=True, accepted=1, duplicates=0)
    at = datetime(2026, 12, 2, 9, 30, 1, tzinfo=UTC)
    for _ in range(3):
        publisher.delivered(acme, [Event(**EVENT)], result, at)
    assert publisher.flush(final=False) == 3  # one shown, two counted: the first counts go out
    publisher.delivered(acme, [Event(**EVENT)], result, at)
    moment[0] += live.COUNTED_SECONDS / 2
    assert publisher.flush(final=False) == 0  # held back: within the second of the last ones
    moment[0] += live.COUNTED_SECONDS / 2
    assert publisher.flush(final=False) == 1
    found = entries(redis_client, "acme", 3)
    assert [(e["outcome"], e.get("deliveries")) for e in found] == [
        ("accepted", None),
        ("not_shown", 2),
        ("not_shown", 1),
    ]


def test_every_delivery_is_shown_when_the_setting_says_0_and_a_negative_one_is_refused(
    config_dir: Any, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector import runtime
    from connector.app import create_app
    from connector.errors import ConfigError
    from connector.settings import Settings
    from tests.conftest import fresh_runtime

    monkeypatch.setenv("CONNECTOR_LIVE_SHOWN_PER_SECOND", "0")
    fresh_runtime()
    publisher = create_app(runtime=runtime.current()).wsgi_app.observer  # type: ignore[attr-defined]
    assert publisher.shown_per_second == live.EVERY_DELIVERY
    live.watch(redis_client, "acme")
    acme: Any = SimpleNamespace(id="acme")
    result = SimpleNamespace(watched=True, accepted=1, duplicates=0)
    at = datetime(2026, 12, 2, 9, 30, 1, tzinfo=UTC)
    for n in range(60):
        publisher.delivered(acme, [Event(**{**EVENT, "source_event_id": f"all-{n}"})], result, at)
    assert publisher.flush() == 60
    assert [e["outcome"] for e in entries(redis_client, "acme", 60)] == ["accepted"] * 60
    monkeypatch.setenv("CONNECTOR_LIVE_SHOWN_PER_SECOND", "-1")
    with pytest.raises(ConfigError, match="CONNECTOR_LIVE_SHOWN_PER_SECOND must be 0"):
        Settings.from_env()


def test_held_answers_are_capped_so_they_never_take_the_workers_webhooks_need(
    client: Any, app: Any, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A viewer asking for held answers (``window``) gets at most a quarter of the web workers; past
    that, the answer ends at once (``X-Live-Window: 0``) instead of holding a worker."""
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert live.max_held() == 0  # with fewer than four workers no answer is held
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    assert live.max_held() == 1
    auth = bearer(redis_client)
    first = app.test_client().get(
        "/api/v1/accounts/acme/live?window=20&backlog=0", headers=auth, buffered=False
    )
    assert first.headers["X-Live-Window"] == "20"
    assert redis_client.zcard(live.HELD_KEY) == 1
    second = client.get("/api/v1/accounts/acme/live?window=20&backlog=0", headers=auth)
    assert (second.status_code, second.headers["X-Live-Window"]) == (200, "0")
    assert second.get_data(as_text=True).startswith("retry: ")  # a whole answer, ended at once
    first.close()  # the client leaves: its place is free again
    assert redis_client.zcard(live.HELD_KEY) == 0
    third = app.test_client().get(
        "/api/v1/accounts/acme/live?window=20&backlog=0", headers=auth, buffered=False
    )
    assert third.headers["X-Live-Window"] == "20"
    third.close()
