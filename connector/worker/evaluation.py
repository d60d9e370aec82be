"""The one hand-off from the event worker (and the scheduler) to rule evaluation.

For each touched profile: load it, evaluate the account's rules at ``now``, record the result in
the ledger (a diff only when something changed), put ``next_due`` into the due index, and queue
the desired state for the destinations when the ledger changed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime

import redis

import rules
from connector.config import Account
from connector.profiles.bounds import count_dropped
from connector.profiles.store import load_profiles
from connector.runtime import Runtime
from connector.sync.submit import Submission, submit_many
from connector.worker import due
from connector.worker.ledger import Diff, Entry, Ledger
from rules import Evaluation, Profile, RuleSet

log = logging.getLogger(__name__)

# Events that state a person's marketing consent, latest wins.
CONSENT_EVENTS = {
    "subscribed": "subscribed",
    "unsubscribed": "unsubscribed",
    "email_cleaned": "unsubscribed",
    "email_marked_spam": "unsubscribed",
}
# Traits that state it when no consent event is known (Segment/Shopify/Klaviyo conventions).
CONSENT_TRAITS = ("email_consent", "marketing_consent", "accepts_marketing", "subscribed")


@dataclass(frozen=True)
class Outcome:
    profile_id: str
    evaluation: Evaluation | None
    diff: Diff | None


def consent_of(profile: Profile) -> str:
    latest: tuple[datetime, str] | None = None
    for name, state in CONSENT_EVENTS.items():
        events = profile.events_named(name)
        if events and (latest is None or events[-1].occurred_at >= latest[0]):
            latest = (events[-1].occurred_at, state)
    if latest is not None:
        return latest[1]
    for trait in CONSENT_TRAITS:
        value = profile.traits.get(trait)
        if isinstance(value, bool):
            return "subscribed" if value else "unsubscribed"
        if isinstance(value, str) and value.lower() in ("subscribed", "unsubscribed"):
            return value.lower()
    return "unknown"


def email_of(profile: Profile) -> str | None:
    emails = list(profile.identities.get("email", ()))
    trait = profile.traits.get("email")
    if isinstance(trait, str) and trait.strip().lower() in emails:
        return trait.strip().lower()
    return emails[0] if emails else None


def contact_of(email: str | None) -> str:
    """What the ledger keeps of whom the destinations address: a digest of the email, "" for none."""
    return hashlib.sha256(email.encode()).hexdigest()[:16] if email else ""


CHUNK = 1000  # profiles per round of reads and writes: bounds the size of each pipeline


def evaluate_profiles(
    account: Account,
    profile_ids: Iterable[str],
    now: datetime,
    conn: redis.Redis,
    queue_conn: redis.Redis,
    *,
    ruleset: RuleSet | None = None,
    push: bool = True,
    restate: Collection[str] = (),
) -> list[Outcome]:
    """Evaluate, record, schedule and (when ``push``) queue changes for the destinations.

    The desired state goes to the destinations when the ledger changed: segments or traits, the
    email the destinations address (an anonymous profile that gains one), or a profile in
    ``restate`` (it absorbed another in a merge).

    Batched: per chunk of profiles, one round trip loads them, one records every result in the
    ledger, one queues the desired states for the destinations and one writes the due index."""
    ruleset = account.ruleset if ruleset is None else ruleset
    pids = sorted(profile_ids)
    outcomes: list[Outcome] = []
    for start in range(0, len(pids), CHUNK):
        chunk = pids[start : start + CHUNK]
        outcomes.extend(_evaluate_chunk(account, chunk, now, conn, queue_conn, ruleset, push, restate))
    return outcomes


def _evaluate_chunk(
    account: Account,
    pids: list[str],
    now: datetime,
    conn: redis.Redis,
    queue_conn: redis.Redis,
    ruleset: RuleSet,
    push: bool,
    restate: Collection[str],
) -> list[Outcome]:
    profiles = load_profiles(conn, account.id, pids, now)
    live = [profile for pid in pids if (profile := profiles[pid]) is not None]
    results = {p.profile_id: rules.evaluate(p, ruleset, now, explain=False) for p in live}
    emails = {p.profile_id: email_of(p) for p in live}
    entries = [
        Entry(
            p.profile_id,
            results[p.profile_id].segments,
            results[p.profile_id].traits,
            p.revision,
            contact_of(emails[p.profile_id]),
            p.profile_id in restate,
        )
        for p in live
    ]
    diffs = dict(
        zip([p.profile_id for p in live], Ledger(conn).record_many(account.id, entries, now), strict=True)
    )
    changed = [p for p in live if diffs[p.profile_id] is not None]
    if push and changed:
        submit_many(
            queue_conn,
            account,
            [_submission(p, diffs[p.profile_id], emails[p.profile_id]) for p in changed],
            now,
        )
    schedule = queue_conn.pipeline(transaction=False)
    due.schedule_many(schedule, account.id, {pid: _next_due(results.get(pid)) for pid in pids})
    count_dropped(
        schedule, "ledger_history", sum(diff.trimmed for diff in diffs.values() if diff is not None)
    )
    schedule.execute()
    for p in changed:
        _log_change(account.id, p.profile_id, diffs[p.profile_id])
    return [Outcome(pid, results.get(pid), diffs.get(pid)) for pid in pids]


def _next_due(result: Evaluation | None) -> datetime | None:
    return result.next_due if result is not None else None


def _log_change(account_id: str, pid: str, diff: Diff | None) -> None:
    if diff is not None:
        log.info(
            "segments changed",
            extra={
                "account": account_id,
                "profile": pid,
                "version": diff.version,
                "entered": sorted(diff.entered),
                "exited": sorted(diff.exited),
            },
        )


def _submission(profile: Profile, diff: Diff | None, email: str | None) -> Submission:
    assert diff is not None
    identities = {kind: values[0] for kind, values in profile.identities.items() if values}
    return Submission(
        profile.profile_id,
        diff.version,
        diff.segments,
        diff.traits,
        email,
        consent_of(profile),
        identities=identities,
    )


def forget_absorbed(
    conn: redis.Redis, queue_conn: redis.Redis, account_id: str, absorbed: Iterable[str]
) -> None:
    """Profiles merged away keep no ledger, history or due entry: the survivor carries them on."""
    pids = list(absorbed)
    if pids:
        Ledger(conn).delete_many(account_id, pids)
        due.unschedule(queue_conn, account_id, pids)


def evaluate_touched(
    runtime: Runtime, account_id: str, profile_ids: set[str], now: datetime, restate: Collection[str] = ()
) -> None:
    """Evaluate the rules of ``account_id`` for ``profile_ids`` as of ``now``."""
    account = runtime.account(account_id)
    if account is None:
        log.warning("evaluation skipped: unknown account", extra={"account": account_id})
        return
    evaluate_profiles(
        account,
        profile_ids,
        now,
        runtime.profile_redis,
        runtime.queue_redis,
        restate=restate,
    )
