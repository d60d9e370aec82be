"""The worker evaluates a profile incrementally when its recorded result can be reused (same rules,
not due yet, only new events), and in full otherwise; either way the ledger and the due index hold
what a full evaluation gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

import rules
from connector.config import Account, Accounts, load_accounts
from connector.event import Event
from connector.profiles.apply import apply_events
from connector.profiles.store import load_profiles
from connector.worker import due, pipeline
from connector.worker.evaluation import EVALUATIONS_KEY
from connector.worker.ledger import Entry, Ledger
from connector.worker.pipeline import apply_batch
from rules import builtin_templates
from tests.conftest import ACME, write_accounts
from tests.profile_helpers import ev

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ACCOUNT = "acme"


def _event(n: int, name: str, at: datetime, kind: str = "track", **traits: Any) -> Event:
    props = {"revenue": 120.0, "category": "shoes", "time_on_page": 40}
    return ev(f"inc-{n}", name, at=at, type=kind, props=props, traits=traits, user_id="u-inc-1")


def _accounts(directory: Path, rules_section: dict[str, Any]) -> Accounts:
    return load_accounts(write_accounts(directory, {**ACME, "rules": rules_section}))


@pytest.fixture
def accounts(config_dir: Path) -> Accounts:
    return _accounts(config_dir, {"include": sorted(builtin_templates())})


def _counts(conn: redis.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in conn.hgetall(EVALUATIONS_KEY).items()}


def _agrees_with_full(conn: redis.Redis, account: Account, now: datetime) -> None:
    (pid,) = [p for p, profile in _profiles(conn).items() if profile is not None]
    profile = load_profiles(conn, ACCOUNT, [pid], now)[pid]
    assert profile is not None
    full = rules.evaluate(profile, account.ruleset, now, explain=False)
    state = Ledger(conn).state(ACCOUNT, pid)
    assert state is not None and state.segments == full.segments
    assert due.due_at(conn, ACCOUNT, pid) == full.next_due


def _profiles(conn: redis.Redis) -> dict[str, Any]:
    prefix = f"ledger:{{{ACCOUNT}:"
    pids = [k.decode()[len(prefix) : -1] for k in conn.scan_iter(prefix + "*")]
    return load_profiles(conn, ACCOUNT, pids, T0) if pids else {}


def test_new_events_are_evaluated_incrementally_and_agree_with_full(
    redis_client: redis.Redis, accounts: Accounts
) -> None:
    account = accounts.get(ACCOUNT)
    assert account is not None
    apply_batch(
        [_event(1, "add_to_cart", T0), _event(2, "product_viewed", T0)],
        T0,
        accounts,
        redis_client,
        redis_client,
    )
    assert _counts(redis_client) == {f"full:{ACCOUNT}": 1}  # nothing recorded yet
    later = T0 + timedelta(hours=1)
    apply_batch([_event(3, "product_viewed", later)], later, accounts, redis_client, redis_client)
    assert _counts(redis_client)[f"incremental:{ACCOUNT}"] == 1
    _agrees_with_full(redis_client, account, later)
    # 3 days on, past the cart's 48 h: the recorded result is due, so the next event takes a full one
    after = T0 + timedelta(days=3)
    apply_batch([_event(4, "email_opened", after)], after, accounts, redis_client, redis_client)
    assert _counts(redis_client) == {f"full:{ACCOUNT}": 2, f"incremental:{ACCOUNT}": 1}
    _agrees_with_full(redis_client, account, after)
    assert "cart_abandoner" in (Ledger(redis_client).state(ACCOUNT, _only(redis_client)) or _none()).segments


def test_traits_and_other_rules_take_a_full_evaluation(
    redis_client: redis.Redis, accounts: Accounts, tmp_path: Path
) -> None:
    account = accounts.get(ACCOUNT)
    assert account is not None
    apply_batch([_event(1, "product_viewed", T0)], T0, accounts, redis_client, redis_client)
    later = T0 + timedelta(minutes=5)
    apply_batch(
        [_event(2, "identify", later, kind="identify", plan="pro")],
        later,
        accounts,
        redis_client,
        redis_client,
    )
    assert f"incremental:{ACCOUNT}" not in _counts(redis_client)  # a trait changed
    other = _accounts(tmp_path / "other", {"include": ["activity", "vip"]})
    again = later + timedelta(minutes=5)
    apply_batch([_event(3, "order_completed", again)], again, other, redis_client, redis_client)
    assert _counts(redis_client) == {f"full:{ACCOUNT}": 3}  # recorded under other rules
    changed = other.get(ACCOUNT)
    assert changed is not None
    _agrees_with_full(redis_client, changed, again)


def _only(conn: redis.Redis) -> str:
    (pid,) = list(_profiles(conn))
    return pid


def _none() -> Any:
    raise AssertionError("no ledger state")


TWO = {
    "segments": [
        {"name": "did_a", "when": {"count": {"event": "a_done", "gte": 1}}},
        {"name": "did_b", "when": {"count": {"event": "b_done", "gte": 1}}},
    ]
}


def test_a_batch_evaluated_after_a_later_one_leaves_what_a_full_evaluation_gives(
    redis_client: redis.Redis, config_dir: Path, tmp_path: Path
) -> None:
    """Worker 1 applies a batch; worker 2 applies and evaluates a later batch of the same person
    before worker 1 evaluates: worker 2's recorded result was not computed from the revision its
    batch started from, so it evaluates in full (incrementally it would miss worker 1's event)."""
    accounts = _accounts(tmp_path / "two", TWO)
    account = accounts.get(ACCOUNT)
    assert account is not None
    apply_batch([_event(1, "b_done", T0)], T0, accounts, redis_client, redis_client)
    t1, t2 = T0 + timedelta(seconds=10), T0 + timedelta(seconds=11)
    first = [_event(2, "a_done", t1)]
    applied = apply_events(redis_client, redis_client, account, first, t1)
    apply_batch([_event(3, "b_done", t2)], t2, accounts, redis_client, redis_client)
    assert _counts(redis_client) == {f"full:{ACCOUNT}": 2}  # the second batch: not incremental
    pipeline._evaluate(redis_client, redis_client, account, first, applied, t1)  # stale: ignored
    _agrees_with_full(redis_client, account, t2)
    assert (Ledger(redis_client).state(ACCOUNT, _only(redis_client)) or _none()).segments == {
        "did_a",
        "did_b",
    }


def test_an_incremental_result_whose_ledger_moved_is_evaluated_again_in_full(
    redis_client: redis.Redis, config_dir: Path, tmp_path: Path
) -> None:
    accounts = _accounts(tmp_path / "two", TWO)
    account = accounts.get(ACCOUNT)
    assert account is not None
    apply_batch([_event(1, "b_done", T0)], T0, accounts, redis_client, redis_client)
    pid = _only(redis_client)
    entries: list[Entry] = []

    def again(n: int) -> Entry:
        entries.append(Entry(pid, frozenset({"did_b", "recomputed"}), {}, 9))
        return entries[-1]

    stale = Ledger(redis_client).stored_many(ACCOUNT, [pid])
    Ledger(redis_client).record(ACCOUNT, pid, frozenset({"moved"}), {}, T0, revision=5)
    diffs = Ledger(redis_client).record_many(
        ACCOUNT, [Entry(pid, frozenset({"x"}), {}, 6)], T0, stale, again=again
    )
    assert len(entries) == 1 and diffs[0] is not None and diffs[0].segments == {"did_b", "recomputed"}
