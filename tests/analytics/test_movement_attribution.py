"""Migration counters, overlap, and attribution independent of arrival order (real Redis)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
import redis

from connector import clock
from connector.analytics import attribution, movement, overlap
from connector.analytics.keys import codes_key, day_key, messages_key, person_key
from connector.event import Event
from connector.worker import sizes

T0 = datetime(2024, 3, 1, 12, tzinfo=UTC)
GROUPS = {"lifecycle": ("new", "active", "lapsed")}
NOW = T0 + timedelta(days=40)


def test_migration_matrix_counts_moves_per_group(redis_client: redis.Redis) -> None:
    pipe = redis_client.pipeline()
    movement.record_diff(pipe, "acme", GROUPS, "p1", ["new"], [], T0)
    movement.record_diff(pipe, "acme", GROUPS, "p1", ["active"], ["new"], T0 + timedelta(days=1))
    movement.record_diff(pipe, "acme", GROUPS, "p2", ["active"], ["new"], T0 + timedelta(days=2))
    movement.record_diff(pipe, "acme", GROUPS, "p2", ["lapsed", "vip"], ["active"], T0 + timedelta(days=3))
    pipe.execute()
    matrix = movement.migration(redis_client, "acme", "lifecycle", T0 + timedelta(days=3), days=30)
    assert matrix == {("-", "new"): 1, ("new", "active"): 2, ("active", "lapsed"): 1}
    # a chosen period: only the last two days
    assert movement.migration(redis_client, "acme", "lifecycle", T0 + timedelta(days=3), days=2) == {
        ("new", "active"): 1,
        ("active", "lapsed"): 1,
    }


def test_overlap_is_computed_by_the_job_and_shows_its_freshness(redis_client: redis.Redis) -> None:
    for n in range(30):
        entered = ["a"] + (["b"] if n % 3 == 0 else [])
        sizes.record_transitions(redis_client, "acme", entered, [], T0, profile_id=f"p{n}")
    assert overlap.read(redis_client, "acme", "a", "b").computed_at is None
    assert overlap.refresh(redis_client, "acme", ["a", "b"], T0) == 1
    found = overlap.read(redis_client, "acme", "b", "a")
    assert (found.both, found.computed_at) == (10, T0)


def _event(name: str, n: int, at: datetime, **props: object) -> Event:
    return Event("acme", "test", f"e{n}", "track", name, at, at, {"email": "x@example.com"}, dict(props))


def _counters(conn: redis.Redis) -> dict[str, dict[str, str]]:
    out = {}
    for key in conn.scan_iter("an:{acme}:d:*"):
        row = {k.decode(): v.decode() for k, v in conn.hgetall(key).items()}
        out[key.decode()] = {
            k: (str(round(float(v), 6)) if k.startswith("rq:") else v) for k, v in row.items()
        }
    return out


def _history(conn: redis.Redis) -> None:
    pipe = conn.pipeline()
    movement.record_diff(pipe, "acme", GROUPS, "p1", ["cart"], [], T0)
    movement.record_diff(pipe, "acme", GROUPS, "p1", ["vip"], ["cart"], T0 + timedelta(days=2))
    pipe.execute()


EVENTS = [
    _event("email_delivered", 1, T0 + timedelta(hours=1), message_id="m1"),
    _event("email_opened", 2, T0 + timedelta(hours=2), message_id="m1"),
    _event("email_clicked", 3, T0 + timedelta(hours=3), message_id="m1"),
    _event("email_opened", 4, T0 + timedelta(hours=4), message_id="m1"),  # a second open of m1
    _event("email_delivered", 5, T0 + timedelta(days=3), message_id="m2"),  # after leaving cart
    _event("order_completed", 6, T0 + timedelta(days=1), revenue=40.0),
    _event("order_completed", 7, T0 + timedelta(days=2, hours=1), revenue=25.5),
    _event("order_completed", 8, T0 + timedelta(days=30), revenue=99.0),  # outside the window
    _event("unsubscribed", 9, T0 + timedelta(days=3)),
]


def _apply(conn: redis.Redis, events: list[Event]) -> None:
    for event in events:  # one event per call: the worst case for ordering
        pipe = conn.pipeline()
        attribution.record(pipe, "acme", "p1", [event], ["vip"], {}, now=NOW)
        pipe.execute()


def test_credit_follows_the_rule(redis_client: redis.Redis) -> None:
    _history(redis_client)
    _apply(redis_client, EVENTS)
    day0 = redis_client.hgetall(day_key("acme", T0))
    entry = {k.decode(): v.decode() for k, v in day0.items()}
    assert entry["en:cart:t"] == "1"
    assert (entry["dl:cart:t"], entry["op:cart:t"], entry["ck:cart:t"]) == ("1", "1", "1")
    assert entry["cv:cart:t"] == "1" and entry["rv:cart:t"] == "6550"
    assert float(entry["rq:cart:t"]) == pytest.approx(65.5**2)
    day3 = {
        k.decode(): v.decode()
        for k, v in redis_client.hgetall(day_key("acme", T0 + timedelta(days=3))).items()
    }
    assert day3 == {"dl:vip:t": "1", "un:vip:t": "1"}


def test_shuffled_arrival_gives_the_same_counters(redis_client: redis.Redis) -> None:
    _history(redis_client)
    _apply(redis_client, EVENTS)
    expected = _counters(redis_client)
    for seed in range(5):
        redis_client.flushdb()
        _history(redis_client)
        shuffled = EVENTS[:]
        random.Random(seed).shuffle(shuffled)
        _apply(redis_client, shuffled + shuffled[:3])  # and some delivered twice
        assert _counters(redis_client) == expected


def test_control_members_are_counted_in_their_arm(redis_client: redis.Redis) -> None:
    pipe = redis_client.pipeline()
    movement.record_diff(pipe, "acme", {}, "p9", ["cart"], [], T0, arms={"cart": "c"})
    attribution.record(
        pipe,
        "acme",
        "p9",
        [_event("order_completed", 1, T0 + timedelta(hours=5), revenue=10)],
        [],
        {"cart": "c"},
    )
    pipe.execute()
    row = {k.decode(): v.decode() for k, v in redis_client.hgetall(day_key("acme", T0)).items()}
    assert row["en:cart:c"] == "1" and row["cv:cart:c"] == "1" and row["rv:cart:c"] == "1000"


def test_a_conversion_goes_to_the_arm_the_entry_was_made_in_not_the_person_s_arm_now(
    redis_client: redis.Redis,
) -> None:
    # entered before the segment had a holdout (treated); a holdout added since puts the person in
    # control, then they order: the entry's arm converts, the control arm gains nothing
    movement.record_diff(redis_client, "acme", {}, "p7", ["cart"], [], T0, arms={})
    order = _event("order_completed", 1, T0 + timedelta(hours=5), revenue=199)
    attribution.record(redis_client, "acme", "p7", [order], ["cart"], {"cart": "c"})
    row = {k.decode(): v.decode() for k, v in redis_client.hgetall(day_key("acme", T0)).items()}
    assert row["en:cart:t"] == "1" and row["cv:cart:t"] == "1" and row["rv:cart:t"] == "19900"
    assert not any(field.endswith(":c") for field in row)
    # an entry recorded before arms were kept (the instant only) goes to the person's arm now
    code = _code(redis_client, "cart")
    redis_client.hset(person_key("acme", "p8"), "E" + code.decode(), int(T0.timestamp()))
    late = _event("order_completed", 2, T0 + timedelta(hours=6), revenue=5)
    attribution.record(redis_client, "acme", "p8", [late], ["cart"], {"cart": "c"})
    row = {k.decode(): v.decode() for k, v in redis_client.hgetall(day_key("acme", T0)).items()}
    assert row["cv:cart:c"] == "1" and row["rv:cart:c"] == "500"


def test_the_report_compares_treated_and_control(redis_client: redis.Redis) -> None:
    from connector.analytics import report

    pipe = redis_client.pipeline()
    for n in range(300):
        arm = "c" if n % 10 == 0 else "t"
        pid = f"p{n}"
        sizes.record_transitions(pipe, "acme", ["cart"], [], T0, profile_id=pid)
        movement.record_diff(pipe, "acme", {}, pid, ["cart"], [], T0, arms={"cart": arm})
        if n % 4 == 0:
            order = _event("order_completed", n, T0 + timedelta(days=1), revenue=20.0 + n % 7)
            order = Event(
                "acme",
                "test",
                f"o{n}",
                "track",
                order.name,
                order.occurred_at,
                order.received_at,
                {},
                order.properties,
            )
            attribution.record(pipe, "acme", pid, [order], [], {"cart": arm})
    pipe.execute()
    got = report.segment_report(redis_client, "acme", "cart", T0 + timedelta(days=2), 30)
    assert got["size"] == 300 and got["members"] == 300 and got["conversions"] == 75
    assert got["arms"]["c"]["members"] == 30 and got["arms"]["t"]["members"] == 270
    comparison = got["comparisons"]["t"]
    assert got["baseline"] == "c"
    assert comparison["warning"] is not None and "too few members" in comparison["warning"]
    diff = comparison["conversion_difference"]
    assert diff["low"] < diff["estimate"] < diff["high"]


def _fields(conn: redis.Redis, pid: str = "p1") -> dict[bytes, bytes]:
    return dict(conn.hgetall(person_key("acme", pid)))


def _code(conn: redis.Redis, segment: str) -> bytes:
    found = conn.hget(codes_key("acme"), segment)
    assert found is not None
    return bytes(found)


def test_message_state_written_before_is_still_honoured(redis_client: redis.Redis) -> None:
    """The messages hash of before (``an:{a}:msg:<pid>``, marks ``#`` + the 32 hex digits of the
    event id, deliveries ``<at>|<segments>``) still stops a redelivered event and still gives a
    delivery's segments to its opens; new state goes into the person's hash (an open is counted
    by its message's field, without a mark)."""
    _history(redis_client)
    order, delivered, opened = EVENTS[5], EVENTS[0], EVENTS[1]
    messages = messages_key("acme", "p1")
    redis_client.hset(messages, f"#{order.event_id}", 1)  # credited before
    redis_client.hset(messages, f"#{delivered.event_id}", 1)
    redis_client.hset(messages, "d:m1", f"{int(delivered.occurred_at.timestamp())}|cart")
    _apply(redis_client, [order, delivered, opened])
    day0 = {k.decode(): v.decode() for k, v in redis_client.hgetall(day_key("acme", T0)).items()}
    assert "cv:cart:t" not in day0 and "dl:cart:t" not in day0
    assert day0["op:cart:t"] == "1"  # the open found the delivery stored before
    person = _fields(redis_client)
    assert not [f for f in person if f[:1] in (b"#", b"*")]
    assert person[b"^" + str(attribution.period(NOW)).encode()] == b"\x02m1"  # the open of m1
    assert redis_client.hlen(messages) == 3  # read, never written


def test_the_person_hash_of_before_is_read_and_rewritten(redis_client: redis.Redis) -> None:
    """A person hash of the layout of before (``e:``/``x:``/``r:<segment>``, ``d:``/``op:``/
    ``ck:<message>`` valued with the period, ``#<8 bytes>`` marks) gives the same counters as the
    history recorded now, and the first credit rewrites its segment fields with codes."""
    _history(redis_client)
    _apply(redis_client, EVENTS)
    expected = _counters(redis_client)
    for row in expected.values():  # the entries' counters: not written again below
        for name in [k for k in row if k.startswith("en:") and k != "en:cart:t"]:
            del row[name]
    expected_day0 = redis_client.hgetall(day_key("acme", T0))
    redis_client.flushdb()
    at = str(attribution.period(NOW))
    old = {
        "e:cart": int(T0.timestamp()),
        "x:cart": int((T0 + timedelta(days=2)).timestamp()),
        "e:vip": int((T0 + timedelta(days=2)).timestamp()),
    }
    person = person_key("acme", "p1")
    redis_client.hset(person, mapping=old)
    # the first two engagement events and the first order, credited by the layout of before
    dl = EVENTS[0]
    cart = old["e:cart"]
    redis_client.hset(person, "d:m1", f"{at}|{int(dl.occurred_at.timestamp())}|cart")
    redis_client.hset(person, "op:m1", at)
    redis_client.hset(person, b"#" + attribution.credit_mark(EVENTS[5].event_id), at)
    redis_client.hset(person, "r:cart", 4000)
    day0 = day_key("acme", T0)
    redis_client.hset(day0, mapping={"en:cart:t": 1, "dl:cart:t": 1, "op:cart:t": 1})
    redis_client.hset(day0, mapping={"cv:cart:t": 1, "rv:cart:t": 4000, "rq:cart:t": 1600})
    redis_client.expire(day0, 400 * 86400)
    _apply(redis_client, EVENTS + EVENTS[:2] + EVENTS[5:6])  # the ones credited before come again
    assert _counters(redis_client) == expected
    assert redis_client.hgetall(day0) == expected_day0
    fields = _fields(redis_client)
    assert not [f for f in fields if f[:2] in (b"e:", b"x:", b"r:")]
    c, v = _code(redis_client, "cart"), _code(redis_client, "vip")
    assert fields[b"E" + c] == str(cart).encode() and fields[b"E" + v] == str(old["e:vip"]).encode()
    assert fields[b"R" + c] == b"6550"
    assert b"op:m1" in fields  # message state of before: left to expire; the click of m1 is new
    assert [v for f, v in fields.items() if f[:1] == b"^"] == [b"\x12m1"]


def test_entries_and_exits_over_the_layout_of_before(redis_client: redis.Redis) -> None:
    """Entries and exits write codes and leave the fields of before to the next credit, which reads
    them under the newer ones: an entry since replaces the entry and ends the revenue of before,
    an exit since closes the entry of before."""
    person = person_key("acme", "p1")
    t0 = int(T0.timestamp())
    old = {
        "e:cart": t0 - 50,
        "r:cart": 700,
        "e:vip": t0 - 40,
        "r:vip": 300,
        "e:new": t0 - 30,
        "x:new": t0 - 35,
    }
    redis_client.hset(person, mapping=old)
    movement.record_diff(redis_client, "acme", GROUPS, "p1", ["cart"], ["vip"], T0)  # cart again, vip left
    c, v = _code(redis_client, "cart"), _code(redis_client, "vip")
    stamp = str(t0).encode()
    assert _fields(redis_client) == {
        **{k.encode(): str(x).encode() for k, x in old.items()},
        b"E" + c: stamp + b"t",  # the instant, then the arm entered in (treated)
        b"X" + v: stamp,
    }
    order = _event("order_completed", 1, T0 + timedelta(hours=1), revenue=10.0)
    attribution.record(redis_client, "acme", "p1", [order], ["cart", "new"], {}, now=NOW)
    n = _code(redis_client, "new")
    assert _fields(redis_client) == {
        b"E" + c: stamp + b"t",
        b"R" + c: b"1000",  # a new entry: its own revenue, not the 700 of the entry before
        b"E" + v: str(t0 - 40).encode(),
        b"R" + v: b"1300",  # the same entry as before (left since): its revenue goes on
        b"X" + v: stamp,
        b"E" + n: str(t0 - 30).encode(),
        b"X" + n: str(t0 - 35).encode(),
        b"R" + n: b"1000",
        b"*" + str(attribution.period(NOW)).encode(): attribution.credit_mark(order.event_id),
    }
    row = {k.decode(): v.decode() for k, v in redis_client.hgetall(day_key("acme", T0)).items()}
    assert (row["cv:cart:t"], row["rv:cart:t"], row["cv:new:t"]) == ("1", "1000", "1")
    assert "cv:vip:t" not in row and row["rv:vip:t"] == "1000"  # its conversion was counted before
    assert redis_client.hget(codes_key("acme"), b"#" + c) == b"cart"


def test_marks_are_kept_for_events_without_a_message_only_packed_per_period(
    redis_client: redis.Redis,
) -> None:
    _history(redis_client)
    orders = [_event("order_completed", 100 + n, T0 + timedelta(days=1), revenue=1.0) for n in range(20)]
    orders.append(_event("order_completed", 99, T0 - timedelta(days=1), revenue=5.0))  # credits nothing
    mail = [_event("email_opened", 200 + n, T0, message_id=f"campaign-{n:04d}-long-id") for n in range(5)]
    _apply(redis_client, orders + mail + orders)
    fields = _fields(redis_client)
    packed = {f: v for f, v in fields.items() if f.startswith(b"*")}
    now = str(attribution.period(NOW)).encode()
    assert sorted(packed) == [b"*" + now + b"+" * n for n in range(3)]
    assert sorted(len(v) for v in packed.values()) == [48, 56, 56]  # 20 marks, at most 7 a field
    marks = b"".join(packed.values())
    assert {marks[n : n + 8] for n in range(0, len(marks), 8)} == {
        attribution.credit_mark(o.event_id) for o in orders[:20]
    }
    keys = [attribution.message_key(str(e.properties["message_id"])) for e in mail]
    assert all(len(k) == 8 for k in keys)
    assert fields[b"^" + now] == b"".join(b"\x08" + k for k in keys)  # the opens, in one field
    assert redis_client.object("encoding", person_key("acme", "p1")) in (b"listpack", b"ziplist")
    row = {k.decode(): v.decode() for k, v in redis_client.hgetall(day_key("acme", T0)).items()}
    assert row["cv:cart:t"] == "1" and row["rv:cart:t"] == "2000"


def test_message_state_is_kept_30_days_then_dropped(redis_client: redis.Redis) -> None:
    _history(redis_client)
    pipe = redis_client.pipeline()
    attribution.record(pipe, "acme", "p1", [EVENTS[0], EVENTS[1]], ["vip"], {}, now=NOW)
    pipe.execute()
    person = person_key("acme", "p1")
    flags = b"^" + str(attribution.period(NOW)).encode()
    assert {b"Dm1", flags} <= set(redis_client.hkeys(person))
    pipe = redis_client.pipeline()
    attribution.record(pipe, "acme", "p1", [EVENTS[6]], ["vip"], {}, now=NOW + timedelta(days=30))
    pipe.execute()
    assert {b"Dm1", flags} <= set(redis_client.hkeys(person))  # 30 days: still there
    later = NOW + timedelta(days=48)
    pipe = redis_client.pipeline()
    attribution.record(pipe, "acme", "p1", [EVENTS[8]], ["vip"], {}, now=later)
    pipe.execute()
    fields = _fields(redis_client)
    assert not set(fields) & {b"Dm1", flags}
    marks = {f: v for f, v in fields.items() if f.startswith(b"*")}
    assert marks == {
        f"*{attribution.period(NOW + timedelta(days=d))}".encode(): attribution.credit_mark(e.event_id)
        for d, e in ((30, EVENTS[6]), (48, EVENTS[8]))
    }
    assert {attribution.period(NOW + timedelta(days=d)) for d in range(0, 96, 8)} == set(range(12))
    c, v = _code(redis_client, "cart"), _code(redis_client, "vip")
    assert {b"E" + c, b"X" + c, b"E" + v} <= set(fields)  # the instants are kept
    assert 0 < redis_client.ttl(person) <= 396 * 86400


def test_opens_and_clicks_of_a_period_share_fields_of_at_most_64_bytes(redis_client: redis.Redis) -> None:
    _history(redis_client)
    at = T0 + timedelta(hours=1)
    events = []
    for n in range(30):
        mail = {"message_id": f"m{n}"}
        events += [_event("email_opened", 300 + n, at, **mail), _event("email_clicked", 400 + n, at, **mail)]
    events += [_event("email_delivered", 500 + n, at, message_id=f"m{n}") for n in range(0, 30, 3)]
    _apply(redis_client, events + events[:7])
    fields = _fields(redis_client)
    flags = {f: v for f, v in fields.items() if f.startswith(b"^")}
    assert len(flags) > 1 and all(len(v) <= 64 for v in flags.values())
    assert sum(len(v) for v in flags.values()) == 60 * 3 + 10 * 4  # m0-m9: 2 bytes; m10-m29: 3
    row = {k.decode(): v.decode() for k, v in redis_client.hgetall(day_key("acme", T0)).items()}
    assert (row["dl:cart:t"], row["op:cart:t"], row["ck:cart:t"]) == ("10", "10", "10")
    assert redis_client.object("encoding", person_key("acme", "p1")) in (b"listpack", b"ziplist")


# The period boundary: message state written in the last second of a period is still counted in
# the last second of the 4th period after (32 days on) and gone for every purpose from the first
# second of the 5th. The credits read the instant from the clock seam, pinned here.
def _period_end(moment: datetime) -> datetime:
    days = attribution.PERIOD_DAYS
    start = int(moment.timestamp()) // 86400 // days * days
    return datetime.fromtimestamp((start + days) * 86400 - 1, UTC)


WRITTEN = _period_end(T0 + timedelta(days=3))
LIVE = WRITTEN + timedelta(days=4 * attribution.PERIOD_DAYS)
AGED = LIVE + timedelta(seconds=1)


def _credit_at(conn: redis.Redis, instant: datetime, events: list[Event]) -> None:
    with clock.frozen(instant):
        attribution.record(conn, "acme", "p1", events, ["vip"], {})


def _day(conn: redis.Redis, moment: datetime) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in conn.hgetall(day_key("acme", moment)).items()}


def _in_vip(conn: redis.Redis) -> None:
    movement.record_diff(conn, "acme", GROUPS, "p1", ["vip"], [], WRITTEN - timedelta(days=1))


def test_the_period_boundary_is_32_days_after_the_last_second_of_a_period() -> None:
    p = attribution.period(WRITTEN)
    assert attribution.period(WRITTEN + timedelta(seconds=1)) == (p + 1) % attribution.PERIODS
    assert attribution.period(LIVE) == (p + 4) % attribution.PERIODS
    assert attribution.period(AGED) == (p + 5) % attribution.PERIODS


def test_a_delivery_whose_earlier_delivery_aged_out_is_credited(redis_client: redis.Redis) -> None:
    _in_vip(redis_client)
    first = _event("email_delivered", 1, WRITTEN, message_id="m1")
    _credit_at(redis_client, WRITTEN, [first])
    # 4 periods on: the message is still counted, by whichever event names it
    _credit_at(redis_client, LIVE, [first, _event("email_delivered", 2, LIVE, message_id="m1")])
    assert _day(redis_client, WRITTEN) == {"dl:vip:t": "1"}
    assert _day(redis_client, LIVE) == {}
    # 5 periods on: the delivery state of before is gone, a delivery of the message is credited
    _credit_at(redis_client, AGED, [_event("email_delivered", 3, AGED, message_id="m1")])
    assert _day(redis_client, WRITTEN) == {"dl:vip:t": "1"}
    assert _day(redis_client, AGED) == {"dl:vip:t": "1"}
    stored = _fields(redis_client)[b"Dm1"]
    assert stored == f"{attribution.period(AGED)}|{int(AGED.timestamp())}|".encode() + _code(
        redis_client, "vip"
    )


def test_an_open_or_click_is_not_credited_to_an_aged_out_delivery(redis_client: redis.Redis) -> None:
    _in_vip(redis_client)
    _credit_at(redis_client, WRITTEN, [_event("email_delivered", 1, WRITTEN, message_id="m1")])
    _credit_at(redis_client, LIVE, [_event("email_opened", 2, LIVE, message_id="m1")])
    assert _day(redis_client, WRITTEN) == {"dl:vip:t": "1", "op:vip:t": "1"}  # 4 periods: its delivery's
    _credit_at(redis_client, AGED, [_event("email_clicked", 3, AGED, message_id="m1")])
    assert _day(redis_client, WRITTEN) == {"dl:vip:t": "1", "op:vip:t": "1"}  # 5: not the delivery's
    assert _day(redis_client, AGED) == {}
    assert b"Dm1" not in _fields(redis_client)


def test_aged_out_state_is_deleted_also_when_the_event_is_refused(redis_client: redis.Redis) -> None:
    _in_vip(redis_client)
    order = _event("order_completed", 1, WRITTEN, revenue=5.0)
    _credit_at(redis_client, WRITTEN, [_event("email_delivered", 2, WRITTEN, message_id="m1"), order])
    unsubscribed = _event("unsubscribed", 3, LIVE)
    delivered = _event("email_delivered", 4, LIVE, message_id="m2")
    _credit_at(redis_client, LIVE, [unsubscribed, delivered])
    p, q = (str(attribution.period(t)).encode() for t in (WRITTEN, LIVE))
    assert {b"Dm1", b"*" + p, b"Dm2", b"*" + q} <= set(_fields(redis_client))
    before = _day(redis_client, LIVE)
    _credit_at(redis_client, AGED, [unsubscribed])  # refused: its mark is 1 period back
    assert not {b"Dm1", b"*" + p} & set(_fields(redis_client))
    _credit_at(redis_client, AGED, [delivered])  # refused: its message's delivery is counted
    assert _day(redis_client, LIVE) == before and _day(redis_client, AGED) == {}
    assert {b"Dm2", b"*" + q} <= set(_fields(redis_client))


def test_state_written_one_period_ahead_by_another_worker_is_current(redis_client: redis.Redis) -> None:
    """Two workers either side of a period's end: the one already past it writes the delivery, the
    other credits an open of it a moment later, in the period before: counted to that delivery."""
    _in_vip(redis_client)
    ahead = WRITTEN + timedelta(seconds=1)  # the first second of the next period
    _credit_at(redis_client, ahead, [_event("email_delivered", 1, WRITTEN, message_id="m1")])
    _credit_at(redis_client, WRITTEN, [_event("email_opened", 2, WRITTEN, message_id="m1")])
    assert b"Dm1" in _fields(redis_client)
    assert {**_day(redis_client, WRITTEN), **_day(redis_client, ahead)} == {"dl:vip:t": "1", "op:vip:t": "1"}


def test_message_state_of_the_layout_before_ages_out_by_the_same_rule(redis_client: redis.Redis) -> None:
    """The fields of before (``d:``/``op:``/``ck:<message>``, ``#<8 bytes>`` marks, valued with
    their period) count 4 periods back and are gone 5 periods back, as the fields of now."""
    _in_vip(redis_client)
    aged, live = attribution.period(WRITTEN), (attribution.period(WRITTEN) + 1) % attribution.PERIODS
    at = int(WRITTEN.timestamp())
    again, refused = _event("unsubscribed", 1, WRITTEN), _event("unsubscribed", 2, WRITTEN)
    aged_fields: dict[str | bytes, str] = {
        "d:m1": f"{aged}|{at}|vip",
        "op:m1": str(aged),
        "ck:m1": str(aged),
        b"#" + attribution.credit_mark(again.event_id): str(aged),
    }
    live_fields: dict[str | bytes, str] = {
        "d:m2": f"{live}|{at}|vip",
        "ck:m2": str(live),
        b"#" + attribution.credit_mark(refused.event_id): str(live),
    }
    redis_client.hset(person_key("acme", "p1"), mapping={**aged_fields, **live_fields})
    _credit_at(
        redis_client,
        AGED,
        [
            _event("email_opened", 3, AGED, message_id="m1"),  # not counted before, no delivery
            _event("email_clicked", 4, AGED, message_id="m2"),  # counted 4 periods back: refused
            again,  # its mark is 5 periods back: credited
            refused,  # its mark is 4 periods back
            _event("email_delivered", 5, AGED, message_id="m1"),  # a new delivery, with its open
            _event("email_clicked", 6, AGED, message_id="m1"),  # not counted before: credited with it
        ],
    )
    assert _day(redis_client, WRITTEN) == {"un:vip:t": "1"}
    assert _day(redis_client, AGED) == {"dl:vip:t": "1", "op:vip:t": "1", "ck:vip:t": "1"}
    fields = _fields(redis_client)
    assert not {(k.encode() if isinstance(k, str) else k) for k in aged_fields} & set(fields)
    assert {(k.encode() if isinstance(k, str) else k) for k in live_fields} <= set(fields)


@pytest.mark.parametrize(
    ("revenue", "expected"),
    [
        (19.99, 1999),
        ("12", 1200),  # a number sent as text counts, as in the rules' sums (lifetime_revenue)
        ("55.00", 5500),
        ("fifty", 0),
        ("inf", 0),
        ("1e307", 0),
        (float("inf"), 0),
        (float("nan"), 0),
        (1e307, 0),
        (10**12, 10**14),
        (-(10**13), 0),
    ],
)
def test_an_order_amount_no_order_has_credits_no_revenue(revenue: object, expected: int) -> None:
    # stored before the ingest refused such amounts: credited as nothing, never a failed batch
    at = datetime(2026, 1, 1, tzinfo=UTC)
    assert attribution.cents(_event("order_completed", 1, at, revenue=revenue)) == expected


def test_the_order_that_put_a_person_in_a_segment_is_not_its_conversion(redis_client: redis.Redis) -> None:
    """The worker records an entry at the instant it evaluated the person, in whole seconds: an order
    and the entry it causes share that second (or the order is earlier); a later order converts."""
    entered = T0 + timedelta(days=5)
    movement.record_diff(redis_client, "acme", GROUPS, "p1", ["vip"], [], entered)
    causing = _event("order_completed", 20, entered + timedelta(milliseconds=400), revenue=1500.0)
    earlier = _event("order_completed", 21, entered - timedelta(seconds=30), revenue=800.0)
    _apply(redis_client, [causing, earlier])
    day = {k.decode(): v.decode() for k, v in redis_client.hgetall(day_key("acme", entered)).items()}
    assert day == {"en:vip:t": "1"}
    _apply(redis_client, [_event("order_completed", 22, entered + timedelta(seconds=1), revenue=60.0)])
    day = {k.decode(): v.decode() for k, v in redis_client.hgetall(day_key("acme", entered)).items()}
    assert (day["cv:vip:t"], day["rv:vip:t"]) == ("1", "6000")
