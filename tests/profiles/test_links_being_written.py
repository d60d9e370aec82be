"""A batch resolved without the identity lock to a profile another worker is still creating: the
identity index (read without the lock) names it before the profile's own links are written."""

from __future__ import annotations

import pytest
import redis

from connector.config import Accounts
from connector.profiles import keys, load_profile, lookup, store
from tests.helpers import before_sent, script_call
from tests.profile_helpers import NOW, apply, ev


def _links_not_written_yet(conn: redis.Redis, accounts: Accounts) -> tuple[str, dict[bytes, bytes], bytes]:
    """A person the index names whose profile keys are not there (what another worker's batch
    leaves between writing the index and writing the profile's links); returns what it removed."""
    apply(conn, accounts, ev("1", anonymous_id="anon-w", props={"n": 1}))
    pid = lookup(conn, "acme", "anonymous_id", "anon-w")
    assert pid is not None
    profile, history = keys.profile_key("acme", pid), keys.history_key("acme", pid)
    fields, packed = conn.hgetall(profile), conn.get(history)
    assert fields and packed is not None
    conn.delete(profile, history)
    return pid, fields, packed


def test_events_for_a_profile_whose_links_are_being_written_wait_for_them_and_are_applied(
    redis_client: redis.Redis, accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid, fields, packed = _links_not_written_yet(redis_client, accounts)
    done: list[bool] = []

    def writer_finishes_first() -> None:
        """The other worker writes the profile's links while it holds the account's lock: they are
        there once this worker's attempt to take the lock (SET NX) goes through."""
        done.append(True)
        redis_client.hset(keys.profile_key("acme", pid), mapping=fields)
        redis_client.set(keys.history_key("acme", pid), packed)

    before_sent(monkeypatch, [b"\r\nSET\r\n", keys.lock_key("acme").encode()], writer_finishes_first)
    applies: list[bool] = []  # the apply script's calls: the first finds no profile, the second applies
    before_sent(
        monkeypatch,
        [script_call(redis_client, store.APPLY_MANY.source)],
        lambda: applies.append(True),
        once=False,
    )
    outcome = apply(redis_client, accounts, ev("2", anonymous_id="anon-w", at=2, props={"n": 2}))
    assert (outcome.applied, outcome.dropped) == (1, 0)
    profile = load_profile(redis_client, "acme", pid, NOW)
    assert profile is not None
    assert sorted(e.properties["n"] for e in profile.events) == [1, 2]
    assert done and len(applies) == 2  # the links came while the lock was being taken, after the first apply


def test_events_for_a_profile_still_missing_under_the_lock_are_dropped_not_stored_bare(
    redis_client: redis.Redis, accounts: Accounts
) -> None:
    pid, _, _ = _links_not_written_yet(redis_client, accounts)
    outcome = apply(redis_client, accounts, ev("2", anonymous_id="anon-w", at=2))
    assert (outcome.applied, outcome.dropped) == (0, 1)
    assert not redis_client.exists(keys.profile_key("acme", pid), keys.history_key("acme", pid))
