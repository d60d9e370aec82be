"""A batch resolved without the identity lock to a profile another worker is still creating: the
identity index (read without the lock) names it before the profile's own links are written."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from connector.config import Accounts
from connector.profiles import identity, keys, load_profile, lookup
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
    real = identity.AccountLock

    class WriterFinishesFirst:
        """The account's lock, held until the other worker has written the profile's links."""

        def __init__(self, conn: redis.Redis, account: str) -> None:
            self.lock = real(conn, account)

        def __enter__(self) -> Any:
            redis_client.hset(keys.profile_key("acme", pid), mapping=fields)
            redis_client.set(keys.history_key("acme", pid), packed)
            return self.lock.__enter__()

        def __exit__(self, *exc: object) -> None:
            self.lock.__exit__(*exc)

    monkeypatch.setattr(identity, "AccountLock", WriterFinishesFirst)
    outcome = apply(redis_client, accounts, ev("2", anonymous_id="anon-w", at=2, props={"n": 2}))
    assert (outcome.applied, outcome.dropped) == (1, 0)
    profile = load_profile(redis_client, "acme", pid, NOW)
    assert profile is not None
    assert sorted(e.properties["n"] for e in profile.events) == [1, 2]


def test_events_for_a_profile_still_missing_under_the_lock_are_dropped_not_stored_bare(
    redis_client: redis.Redis, accounts: Accounts
) -> None:
    pid, _, _ = _links_not_written_yet(redis_client, accounts)
    outcome = apply(redis_client, accounts, ev("2", anonymous_id="anon-w", at=2))
    assert (outcome.applied, outcome.dropped) == (0, 1)
    assert not redis_client.exists(keys.profile_key("acme", pid), keys.history_key("acme", pid))
