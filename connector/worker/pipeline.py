"""What the event worker does with a decoded batch: apply it to the profiles, carry out the
erasures it asks for (:mod:`connector.worker.erasure`), then hand every touched profile to rule
evaluation (:mod:`connector.worker.evaluation`). A profile that absorbed another in a merge sends
its current state to the destinations again. Last, the batch's deliveries, opens, clicks,
unsubscribes and orders are credited to the segments of the profiles they were applied to
(:mod:`connector.analytics.attribution`; each event once, so a batch delivered twice counts once).

Idempotent: a batch may be delivered twice (a worker killed before acknowledging); the second
application changes nothing. A bad event is rejected with its reason, never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime

import redis

from connector import livefeed
from connector.analytics import attribution
from connector.config import Account, Accounts
from connector.event import Event
from connector.profiles import rejected
from connector.profiles.apply import HISTORY_TYPES, Outcome, apply_events, count_drops
from connector.runtime import Runtime
from connector.worker import erasure, evaluation

log = logging.getLogger(__name__)


_redelivered: ContextVar[bool] = ContextVar("redelivered", default=False)


@contextmanager
def redelivery(again: bool) -> Iterator[None]:
    """While in it, the batches applied are ones delivered before (``again``): an earlier attempt
    may have recorded results in the ledger and stopped before what follows, which
    :func:`apply_batch` then does again (``reconcile``)."""
    token = _redelivered.set(again)
    try:
        yield
    finally:
        _redelivered.reset(token)


def process(runtime: Runtime, events: Sequence[Event], now: datetime) -> None:
    """Apply a batch of stored events. Must be idempotent: a batch may be delivered twice."""
    apply_batch(events, now, runtime.accounts, runtime.profile_redis, runtime.queue_redis)


def apply_batch(
    events: Sequence[Event],
    now: datetime,
    accounts: Accounts,
    conn: redis.Redis,
    queue_conn: redis.Redis,
) -> dict[str, Outcome]:
    """Apply events (of any accounts) with explicit connections; the outcome per account. Inside
    :func:`redelivery` of a batch delivered before, the evaluation reconciles (see
    :func:`connector.worker.evaluation.evaluate_profiles`)."""
    again = _redelivered.get()
    events = erasure.drop_erased(queue_conn, events)
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
        evaluation.forget_absorbed(conn, queue_conn, account, outcome.absorbed, now)
        count_drops(counters, outcome)
        for name in (
            "applied",
            "identified",
            "duplicates",
            "rejected",
            "dropped",
            "expired",
            "erased",
            "exported",
        ):
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
        account = accounts.get(account_id)
        if outcome.touched and account is not None:
            _evaluate(conn, queue_conn, account, by_account[account_id], outcome, now, again)
    return outcomes


def _evaluate(
    conn: redis.Redis,
    queue_conn: redis.Redis,
    account: Account,
    batch: Sequence[Event],
    outcome: Outcome,
    now: datetime,
    reconcile: bool = False,
) -> None:
    """Evaluate the touched profiles, then credit the batch's engagement and orders to the segments
    (:func:`connector.analytics.attribution.record_batch`) of the profiles they were applied to."""
    restate = set(outcome.absorbed.values()) & outcome.touched
    results = evaluation.evaluate_profiles(
        account,
        set(outcome.touched),
        now,
        conn,
        queue_conn,
        restate=restate,
        changes=None if outcome.history_dropped else added_events(batch, outcome),
        reconcile=reconcile,
    )
    livefeed.landed(queue_conn, account.id, batch, outcome.applied_to, results, now)  # while watched
    credited = [e for e in batch if attribution.kind_of(e) is not None and e.event_id in outcome.applied_to]
    if not credited:
        return
    memberships = {r.profile_id: r.evaluation.segments for r in results if r.evaluation is not None}
    profile_of = {e.event_id: pid for e in credited if (pid := outcome.applied_to[e.event_id]) in memberships}
    counters = evaluation.account_connection(conn, account.id)
    attribution.record_batch(counters, account, credited, memberships, profile_of, now)


def added_events(batch: Sequence[Event], outcome: Outcome) -> dict[str, evaluation.Added | None]:
    """Per profile the batch touched, the names of the events it added to the history and the
    revisions it took the profile through; None when it changed something else as well (an
    identify, traits, an alias), which takes a full evaluation."""
    names: dict[str, set[str] | None] = {}
    for event in batch:
        pid = outcome.applied_to.get(event.event_id)
        if pid is None:
            continue
        held = names.setdefault(pid, set())
        if event.type not in HISTORY_TYPES or event.traits:
            names[pid] = None
        elif held is not None:
            held.add(event.name)
    out: dict[str, evaluation.Added | None] = {}
    for pid, found in names.items():
        revisions = outcome.revisions.get(pid)
        out[pid] = evaluation.Added(frozenset(found), *revisions) if found is not None and revisions else None
    return out


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
