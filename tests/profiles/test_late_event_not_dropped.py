"""A late event on a compressed history that other writers keep compressing is retried, never dropped."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from connector.config import load_accounts
from connector.errors import ConnectorError
from connector.profiles import apply, load_profile, lookup
from connector.worker.pipeline import apply_batch
from tests.profile_helpers import NOW, ev


def test_a_late_event_on_a_contended_compressed_history_is_retried_not_dropped(
    redis_client: redis.Redis, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts = load_accounts(config_dir)
    for i in range(40):  # in order: the history ends up compressed (plain bytes reach COMPRESS_AT)
        apply_batch([ev(f"e{i}", at=2 * i + 2, user_id="u1")], NOW, accounts, redis_client, redis_client)
    real = apply.rewrite_histories

    def contended(conn, account, pids, compress):  # type: ignore[no-untyped-def]
        done = real(conn, account, pids, compress)
        if not compress:  # another worker's apply compresses the opened history before the retry
            real(conn, account, pids, True)
        return done

    late = ev("late", at=1, user_id="u1")  # before every stored event
    with monkeypatch.context() as m:
        m.setattr(apply, "rewrite_histories", contended)
        with pytest.raises(ConnectorError):
            apply_batch([late], NOW, accounts, redis_client, redis_client)
    # the drain leaves the batch pending and delivers it again: applied then
    outcome = apply_batch([late], NOW, accounts, redis_client, redis_client)["acme"]
    assert (outcome.applied, outcome.dropped) == (1, 0)
    profile = load_profile(redis_client, "acme", lookup(redis_client, "acme", "user_id", "u1"), NOW)
    assert profile is not None and len(profile.events) == 41


def test_a_batch_applied_in_the_last_round_is_not_reported_as_failed(
    redis_client: redis.Redis, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts = load_accounts(config_dir)
    real = apply.run_scripts
    rounds = {"n": 0}

    def contended(conn, script, calls):  # type: ignore[no-untyped-def]
        rounds["n"] += 1
        if rounds["n"] < apply.MAX_REDIRECTS:  # every round but the last finds the history contended
            return [[b"z"] for _ in calls]
        return real(conn, script, calls)

    with monkeypatch.context() as m:
        m.setattr(apply, "run_scripts", contended)
        m.setattr(apply, "rewrite_histories", lambda *a, **k: 0)
        outcome = apply_batch([ev("last", at=5, user_id="u2")], NOW, accounts, redis_client, redis_client)
    assert rounds["n"] == apply.MAX_REDIRECTS
    assert (outcome["acme"].applied, outcome["acme"].dropped) == (1, 0)
