"""connector.buckets.grow: splitting stops when there is nothing left to split."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import redis

from connector import buckets
from connector.worker import sizes

NOW = datetime(2024, 3, 1, tzinfo=UTC)


def _script_calls(conn: redis.Redis) -> int:
    stats = conn.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def test_growing_a_structure_an_erasure_deleted_meanwhile_takes_one_call(redis_client: redis.Redis) -> None:
    pids = [f"{k * 0x9E3779B97F4A7C15 % 2**64:016x}" for k in range(400)]
    sizes.record_many(redis_client, "acme", [(p, {"a"}, ()) for p in pids], NOW)
    state = sizes.buckets_key("acme")
    level, split = buckets.known(state, "a")
    assert (level, split) != (0, 0)  # it grew: a split was due and made
    redis_client.delete(state, *redis_client.scan_iter(f"{state}:a:*"))
    redis_client.config_resetstat()
    buckets.grow(redis_client, state, "a", f"{state}:a:", "s", sizes.MEMBERS_CAP, level, split)
    assert _script_calls(redis_client) == 1
    assert not redis_client.exists(state)
    assert not list(redis_client.scan_iter(f"{state}:a:*"))  # nothing written back


def test_growing_goes_on_from_the_state_it_finds(redis_client: redis.Redis) -> None:
    pids = [f"{k * 0x9E3779B97F4A7C15 % 2**64:016x}" for k in range(400)]
    sizes.record_many(redis_client, "acme", [(p, {"a"}, ()) for p in pids], NOW)
    state = sizes.buckets_key("acme")
    level, split = buckets.known(state, "a")
    redis_client.config_resetstat()
    # assumed (0, 0): the script says retry with the real state, then nothing is due
    buckets.grow(redis_client, state, "a", f"{state}:a:", "s", sizes.MEMBERS_CAP, 0, 0)
    assert _script_calls(redis_client) == 2
    assert buckets.known(state, "a") == (level, split)
    assert sizes.member_ids(redis_client, "acme", "a") == set(pids)


def test_a_call_answered_retry_every_time_backs_off_then_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first retry goes at once (the reply carried the current state); the next ones pause,
    doubling up to the most, so that another worker's run of splits ends; then StateMoving."""
    pauses: list[float] = []
    monkeypatch.setattr(time, "sleep", pauses.append)
    calls: list[tuple[int, int]] = []

    def script(keys: list[str], args: list[int]) -> list[object]:
        calls.append((args[0], args[1]))
        return [b"retry", 1, len(calls)]  # split once more since the last call, every time

    with pytest.raises(buckets.StateMoving):
        buckets.run(
            script, "state-of-a-test", "f", lambda level, split: (["state-of-a-test"], [level, split])
        )
    assert len(calls) == buckets.TRIES
    assert calls[1:3] == [(1, 1), (1, 2)]  # each call with the state the one before answered
    assert pauses[0] == buckets.BACKOFF_SECONDS and pauses[1] == 2 * buckets.BACKOFF_SECONDS
    assert len(pauses) == buckets.TRIES - 1 and max(pauses) == buckets.BACKOFF_MOST
    assert sum(pauses) < 0.2
