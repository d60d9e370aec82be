"""Segment sizes kept as memberships change (connector.worker.sizes): current size, members,
entries and exits per hour and day, idempotence, retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis

from connector.worker import sizes

T = datetime(2024, 3, 1, 10, 20, tzinfo=UTC)


def record(conn: redis.Redis, pid: str, entered=(), exited=(), at: datetime = T) -> None:  # type: ignore[no-untyped-def]
    pipe = conn.pipeline(transaction=False)
    sizes.record_transitions(pipe, "acme", entered, exited, at, profile_id=pid)
    pipe.execute()


def test_sizes_and_members_follow_entries_and_exits(redis_client: redis.Redis) -> None:
    for n in range(5):
        record(redis_client, f"p{n}", entered=["vip", "buyers"])
    record(redis_client, "p0", exited=["vip"])
    assert sizes.sizes(redis_client, "acme") == {"vip": 4, "buyers": 5}
    assert sizes.is_member(redis_client, "acme", "vip", "p1")
    assert not sizes.is_member(redis_client, "acme", "vip", "p0")
    seen: set[str] = set()
    cursor, page = sizes.members(redis_client, "acme", "buyers", None, 2)
    seen |= set(page)
    while cursor is not None:
        assert len(page) == 2
        cursor, page = sizes.members(redis_client, "acme", "buyers", cursor, 2)
        seen |= set(page)
    assert seen == {f"p{n}" for n in range(5)}


def test_a_transition_reported_twice_is_counted_once(redis_client: redis.Redis) -> None:
    record(redis_client, "p1", entered=["vip"])
    record(redis_client, "p1", entered=["vip"])
    record(redis_client, "p1", exited=["vip"])
    record(redis_client, "p1", exited=["vip"])
    assert sizes.sizes(redis_client, "acme") == {}
    hour = sizes.hourly(redis_client, "acme", "vip", T, hours=1)[-1]
    assert (hour.entered, hour.exited, hour.size) == (1, 1, 0)


def test_size_over_time_hourly_and_daily(redis_client: redis.Redis) -> None:
    start = T - timedelta(hours=3)
    for n in range(4):
        record(redis_client, f"a{n}", entered=["vip"], at=start)  # 3 hours ago: 4 in
    record(redis_client, "a0", exited=["vip"], at=start + timedelta(hours=2))  # 1 hour ago: one out
    record(redis_client, "b0", entered=["vip"], at=T)
    record(redis_client, "b1", entered=["vip"], at=T)  # now: two in
    hours = sizes.hourly(redis_client, "acme", "vip", T, hours=5)
    assert [(p.size, p.entered, p.exited) for p in hours] == [
        (0, 0, 0),
        (4, 4, 0),
        (4, 0, 0),
        (3, 0, 1),
        (5, 2, 0),
    ]
    assert hours[-1].start == datetime(2024, 3, 1, 10, tzinfo=UTC)
    days = sizes.daily(redis_client, "acme", "vip", T, days=2)
    assert [(p.size, p.entered, p.exited) for p in days] == [(0, 0, 0), (5, 6, 1)]


def test_counters_expire_after_their_retention(redis_client: redis.Redis) -> None:
    record(redis_client, "p1", entered=["vip"])
    hour_ttl = redis_client.ttl(sizes.hour_key("acme", T))
    day_ttl = redis_client.ttl(sizes.day_key("acme", T))
    assert 14 * 86400 < hour_ttl <= 14 * 86400 + 3600
    assert 396 * 86400 < day_ttl <= 397 * 86400
    assert redis_client.ttl(sizes.size_key("acme")) == -1  # the current sizes stay


@pytest.mark.parametrize("hours", [0, 10_000])
def test_history_windows_are_bounded(redis_client: redis.Redis, hours: int) -> None:
    assert 1 <= len(sizes.hourly(redis_client, "acme", "vip", T, hours=hours)) <= 14 * 24
