"""What the event worker does with a decoded batch: apply it to the profiles, carry out the
erasures it asks for (:mod:`connector.worker.erasure`), then hand every touched profile to rule
evaluation (:mod:`connector.worker.evaluation`). A profile that absorbed another in a merge sends
its current state to the destinations again.

Idempotent: a batch may be delivered twice (a worker killed before acknowledging); the second
application changes nothing. A bad event is rejected with its reason, never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import redis

from connector import redis_conn
from connector.config import Account, Accounts
from connector.event import Event
from connector.profiles import rejected
from connector.profiles.apply import Outcome, apply_events
from connector.profiles.bounds import count_dropped
from connector.settings import Settings
from connector.worker import accounts as account_cache
from connector.worker import erasure, evaluation

log = logging.getLogger(__name__)


def accounts_for(config_dir: Path) -> Accounts:
    """The accounts of a config directory, reloaded when one of its files changes; a file that
    became invalid keeps its last valid version serving, reported in ``config:errors``."""
    return account_cache.CACHE.get(config_dir, _queue_conn)


def _queue_conn() -> redis.Redis:
    return redis_conn.connection(Settings.from_env().queue_redis_url)


def process(events: Sequence[Event], now: datetime) -> None:
    """Apply a batch of stored events. Must be idempotent: a batch may be delivered twice."""
    settings = Settings.from_env()
    apply_batch(
        events,
        now,
        accounts_for(settings.config_dir),
        redis_conn.connection(settings.profile_redis_url),
        redis_conn.connection(settings.queue_redis_url),
    )


def apply_batch(
    events: Sequence[Event], now: datetime, accounts: Accounts, conn: redis.Redis, queue_conn: redis.Redis
) -> dict[str, Outcome]:
    """Apply events (of any accounts) with explicit connections; the outcome per account."""
    by_account: dict[str, list[Event]] = {}
    for event in events:
        by_account.setdefault(event.account, []).append(event)
    outcomes: dict[str, Outcome] = {}
    counters = queue_conn.pipeline(transaction=False)
    for account_id, batch in sorted(by_account.items()):
        account = accounts.get(account_id)
        if account is None:
            pipe = conn.pipeline(transaction=False)
            for event in batch:
                rejected.record(pipe, event, "unknown account", now)
            pipe.execute()
            rejected.trim(conn, queue_conn, account_id)
            counters.hincrby("metrics:worker", f"rejected:{account_id}", len(batch))
            continue
        outcome = apply_events(conn, queue_conn, account, batch, now)
        outcomes[account_id] = outcome
        _erase(conn, queue_conn, account, outcome, now)
        evaluation.forget_absorbed(conn, queue_conn, account_id, outcome.absorbed)
        count_dropped(counters, "profile_history", outcome.history_dropped)
        for name in ("applied", "duplicates", "rejected", "dropped", "expired", "erased", "exported"):
            value = getattr(outcome, name)
            if value:
                counters.hincrby("metrics:worker", f"{name}:{account_id}", value)
        log.info(
            "batch applied",
            extra={
                "account": account_id,
                "events": len(batch),
                "applied": outcome.applied,
                "duplicates": outcome.duplicates,
                "rejected": outcome.rejected,
                "profiles": len(outcome.touched),
            },
        )
    counters.execute()
    for account_id, outcome in outcomes.items():
        if outcome.touched:
            restate = set(outcome.absorbed.values()) & outcome.touched
            evaluation.evaluate_touched(account_id, set(outcome.touched), now, restate=restate)
    return outcomes


def _erase(
    conn: redis.Redis, queue_conn: redis.Redis, account: Account, outcome: Outcome, now: datetime
) -> None:
    """The erasures the batch asked for, through the erasure service."""
    for pid, source in outcome.erasures:
        if pid is None:
            outcome.erased += erasure.erase_account(conn, queue_conn, account, now, source)
            outcome.touched.clear()
        else:
            outcome.erased += erasure.erase_person(conn, queue_conn, account, pid, now, source)
            outcome.touched.discard(pid)
