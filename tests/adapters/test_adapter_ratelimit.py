"""The shared Redis rate limiter: windows, concurrency leases, adaptation, isolation per key."""

from __future__ import annotations

import redis

from adapters.ratelimit import Limits, RateLimiter, Window
from tests.helpers import SimClock


def limiter(conn: redis.Redis, clock: SimClock, **kw: float) -> RateLimiter:
    return RateLimiter(conn, clock=clock, sleep=clock.sleep, **kw)


def test_sliding_window_never_exceeds_the_limit(redis_client: redis.Redis) -> None:
    clock = SimClock()
    rl = limiter(redis_client, clock)
    limits = Limits(windows=(Window(10, 10.0),))
    sent: list[float] = []
    for _ in range(35):
        rl.wait_for_slot("hubspot:a", limits)
        sent.append(clock.t)
    for t in sent:
        in_window = [s for s in sent if t - 10.0 < s <= t]
        assert len(in_window) <= 10
    # and it runs at the allowed rate: 35 requests in a little over 30 s, not more
    assert 30.0 <= sent[-1] - sent[0] <= 31.0


def test_burst_and_steady_windows_combine(redis_client: redis.Redis) -> None:
    clock = SimClock()
    rl = limiter(redis_client, clock)
    limits = Limits(windows=(Window(3, 1.0), Window(6, 60.0)))
    for _ in range(3):
        assert rl.try_take("klaviyo:k", limits) == 0
    assert rl.try_take("klaviyo:k", limits) > 0  # burst used up
    clock.t += 1.0
    for _ in range(3):
        assert rl.try_take("klaviyo:k", limits) == 0
    clock.t += 1.0
    wait = rl.try_take("klaviyo:k", limits)
    assert 57.0 < wait <= 59.0  # the steady window is the limit now


def test_one_throttled_key_does_not_block_another(redis_client: redis.Redis) -> None:
    clock = SimClock()
    rl = limiter(redis_client, clock)
    limits = Limits(windows=(Window(1, 10.0),))
    assert rl.try_take("hubspot:one", limits) == 0
    rl.penalize("hubspot:one", retry_after=300)
    assert rl.try_take("hubspot:one", limits) >= 299
    assert rl.try_take("hubspot:two", limits) == 0


def test_429_halves_the_rate_and_successes_ramp_it_back(redis_client: redis.Redis) -> None:
    clock = SimClock()
    rl = limiter(redis_client, clock, ramp=0.25)
    assert rl.penalize("k") == 0.5
    assert rl.penalize("k") == 0.25
    limits = Limits(windows=(Window(8, 10.0),))
    taken = sum(1 for _ in range(8) if rl.try_take("k", limits) == 0)
    assert taken == 2  # 8 x 0.25
    assert rl.reward("k") == 0.5
    rl.reward("k")
    assert rl.reward("k") == 1.0
    assert rl.reward("k") == 1.0


def test_concurrency_leases_cap_in_flight_requests_and_expire(redis_client: redis.Redis) -> None:
    clock = SimClock()
    rl = limiter(redis_client, clock, lease_seconds=30)
    leases = [rl.try_lease("mailchimp:x", 10) for _ in range(10)]
    assert all(leases)
    assert rl.try_lease("mailchimp:x", 10) is None
    assert rl.try_lease("mailchimp:other", 10) is not None
    rl.release("mailchimp:x", leases[0] or "")
    assert rl.try_lease("mailchimp:x", 10) is not None
    clock.t += 31  # a worker died holding its leases: they expire
    assert rl.in_flight("mailchimp:x") == 0


def test_slot_waits_for_a_free_lease(redis_client: redis.Redis) -> None:
    clock = SimClock()
    rl = limiter(redis_client, clock, lease_seconds=1.0, lease_poll_seconds=0.25)
    held = rl.try_lease("mc", 1)
    assert held
    with rl.slot("mc", Limits(concurrency=1)):
        assert rl.in_flight("mc") == 1
    assert sum(clock.slept) >= 1.0  # waited until the stale lease expired
    assert rl.in_flight("mc") == 0


def test_block_until_holds_every_request_of_the_key(redis_client: redis.Redis) -> None:
    clock = SimClock()
    rl = limiter(redis_client, clock)
    rl.block_until("hubspot:daily", clock.t + 3600)
    waited = rl.wait_for_slot("hubspot:daily", Limits())
    assert 3599 <= waited <= 3600.5


def test_a_429_also_lowers_the_concurrency_of_a_connection_limited_key(redis_client: redis.Redis) -> None:
    clock = SimClock()
    rl = limiter(redis_client, clock)
    rl.penalize("mailchimp:slow")  # a 429 without Retry-After: half the connections
    leases = [rl.try_lease("mailchimp:slow", 10) for _ in range(6)]
    assert sum(1 for lease in leases if lease) == 5
    for _ in range(10):  # successes ramp the factor back up
        rl.reward("mailchimp:slow")
    assert rl.try_lease("mailchimp:slow", 10) is not None  # a sixth connection again


def test_a_block_is_a_finite_instant_and_the_hash_holding_it_expires_after_it(
    redis_client: redis.Redis,
) -> None:
    clock = SimClock()
    rl = limiter(redis_client, clock)
    for bad in (float("inf"), float("nan"), float("-inf")):
        rl.penalize("mailchimp:k", bad)
        rl.block_until("mailchimp:k", bad)
    assert redis_client.hget("rl:mailchimp:k", "blocked_until") is None
    assert rl.try_take("mailchimp:k", Limits()) == 0
    rl.block_until("mailchimp:k", clock.t + 30 * 86400)  # never more than a day and then some
    blocked = float(redis_client.hget("rl:mailchimp:k", "blocked_until") or 0)
    assert blocked == clock.t + rl.max_block_seconds <= clock.t + 26 * 3600
    assert redis_client.ttl("rl:mailchimp:k") >= rl.max_block_seconds


def test_an_infinite_block_stored_by_an_older_release_blocks_nothing(redis_client: redis.Redis) -> None:
    clock = SimClock()
    rl = limiter(redis_client, clock)
    redis_client.hset("rl:mailchimp:k", "blocked_until", "inf")
    assert rl.blocked_for("mailchimp:k") == 0.0
    assert rl.try_take("mailchimp:k", Limits()) == 0
    assert redis_client.hget("rl:mailchimp:k", "blocked_until") is None
