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
from connector import sync
from connector.config import Account
from connector.profiles import load_profile
from connector.profiles.bounds import count_dropped
from connector.runtime import Runtime
from connector.worker import due
from connector.worker.ledger import Diff, Ledger
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
    ``restate`` (it absorbed another in a merge)."""
    ruleset = account.ruleset if ruleset is None else ruleset
    ledger = Ledger(conn)
    schedule = queue_conn.pipeline(transaction=False)
    outcomes = []
    trimmed = 0
    for pid in sorted(profile_ids):
        profile = load_profile(conn, account.id, pid, now)
        if profile is None:
            due.schedule(schedule, account.id, pid, None)
            outcomes.append(Outcome(pid, None, None))
            continue
        result = rules.evaluate(profile, ruleset, now, explain=False)
        email = email_of(profile)
        diff = ledger.record(
            account.id,
            pid,
            result.segments,
            result.traits,
            now,
            revision=profile.revision,
            contact=contact_of(email),
            force=pid in restate,
        )
        due.schedule(schedule, account.id, pid, result.next_due)
        if diff is not None:
            trimmed += diff.trimmed
            if push:
                _submit(queue_conn, account, profile, diff, email, now)
            log.info(
                "segments changed",
                extra={
                    "account": account.id,
                    "profile": pid,
                    "version": diff.version,
                    "entered": sorted(diff.entered),
                    "exited": sorted(diff.exited),
                },
            )
        outcomes.append(Outcome(pid, result, diff))
    count_dropped(schedule, "ledger_history", trimmed)
    schedule.execute()
    return outcomes


def _submit(
    queue_conn: redis.Redis, account: Account, profile: Profile, diff: Diff, email: str | None, now: datetime
) -> None:
    identities = {kind: values[0] for kind, values in profile.identities.items() if values}
    sync.submit(
        queue_conn,
        account,
        profile.profile_id,
        diff.version,
        diff.segments,
        diff.traits,
        email,
        consent_of(profile),
        now,
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
