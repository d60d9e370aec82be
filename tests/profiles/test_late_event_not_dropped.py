"""A late event on a compressed history that other writers keep compressing is retried, never dropped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from connector.config import Accounts, load_accounts
from connector.errors import ConnectorError
from connector.profiles import apply, keys, load_profile, lookup, store
from connector.worker.pipeline import apply_batch
from tests.helpers import before_sent, script_call
from tests.profile_helpers import NOW, ev


def _before_each_apply(
    monkeypatch: pytest.MonkeyPatch, conn: redis.Redis, meanwhile: Callable[[], None]
) -> None:
    """Run ``meanwhile()`` just before each call of the event apply script is sent (what another
    worker does while this one reads the replies of the round before)."""
    before_sent(monkeypatch, [script_call(conn, store.APPLY_MANY.source)], meanwhile, once=False)


def _compressed_history(conn: redis.Redis, accounts: Accounts, user: str) -> str:
    """A profile whose history is compressed whole (events in order: the apply compresses a history
    once its plain bytes reach COMPRESS_AT; the newest may still be plain)."""
    for i in range(40):
        apply_batch([ev(f"{user}-{i}", at=2 * i + 2, user_id=user)], NOW, accounts, conn, conn)
    pid = lookup(conn, "acme", "user_id", user)
    assert pid is not None
    store.rewrite_histories(conn, "acme", [pid], compress=True)
    raw = conn.get(keys.history_key("acme", pid))
    assert isinstance(raw, bytes) and raw[0] == store.COMPRESSED
    return pid


def test_a_late_event_on_a_contended_compressed_history_is_retried_not_dropped(
    redis_client: redis.Redis, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts = load_accounts(config_dir)
    pid = _compressed_history(redis_client, accounts, "u1")
    late = ev("late", at=1, user_id="u1")  # before every stored event

    rounds: list[bool] = []

    def compress() -> None:  # another worker's apply compresses the history the apply opened
        rounds.append(True)
        store.rewrite_histories(redis_client, "acme", [pid], True)

    with monkeypatch.context() as m:
        _before_each_apply(m, redis_client, compress)
        with pytest.raises(ConnectorError, match="redirects"):
            apply_batch([late], NOW, accounts, redis_client, redis_client)
    assert len(rounds) == apply.MAX_REDIRECTS  # every round found the history compressed again
    # the drain leaves the batch pending and delivers it again: applied then
    outcome = apply_batch([late], NOW, accounts, redis_client, redis_client)["acme"]
    assert (outcome.applied, outcome.dropped) == (1, 0)
    profile = load_profile(redis_client, "acme", pid, NOW)
    assert profile is not None and len(profile.events) == 41


def test_a_batch_applied_in_the_last_round_is_not_reported_as_failed(
    redis_client: redis.Redis, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts = load_accounts(config_dir)
    pid = _compressed_history(redis_client, accounts, "u2")
    rounds = {"n": 0}

    def contended() -> None:
        rounds["n"] += 1
        if rounds["n"] < apply.MAX_REDIRECTS:  # every round but the last finds the history compressed
            store.rewrite_histories(redis_client, "acme", [pid], True)

    with monkeypatch.context() as m:
        _before_each_apply(m, redis_client, contended)
        outcome = apply_batch([ev("last", at=1, user_id="u2")], NOW, accounts, redis_client, redis_client)
    assert rounds["n"] == apply.MAX_REDIRECTS
    assert (outcome["acme"].applied, outcome["acme"].dropped) == (1, 0)
