"""The one hand-off from the event worker (and the scheduler) to rule evaluation.

For each touched profile: load it (with its predicted traits, :mod:`connector.predict`), evaluate
the account's rules at ``now``, record the result in the ledger (a diff only when something
changed), put ``next_due`` into the due index, queue the desired state for the destinations when
the ledger changed, and count the segment entries and exits (sizes, :mod:`connector.worker.sizes`;
migrations between the members of exclusive groups and each person's entry and exit instants,
:mod:`connector.analytics.movement`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

import rules
from connector import predict
from connector.analytics import holdout, movement
from connector.config import Account
from connector.profiles.bounds import count_dropped
from connector.profiles.store import load_profiles
from connector.redis_conn import is_cluster
from connector.runtime import Runtime
from connector.sync.submit import Submission, submit_many
from connector.worker import due, sizes
from connector.worker.ledger import Diff, Entry, Ledger, Stored
from rules import Evaluation, Profile, RuleSet, dependencies
from rules.evaluate import evaluate_changed

log = logging.getLogger(__name__)

# Events that state a person's marketing consent, latest wins.
CONSENT_EVENTS = {
    "subscribed": "subscribed",
    "unsubscribed": "unsubscribed",
    "email_cleaned": "unsubscribed",
    "email_marked_spam": "unsubscribed",
}
# Traits that state it when no consent event is known (Segment/Shopify/Klaviyo conventions), the
# first one set winning: Shopify's `email_marketing_consent` object (`{"state": "subscribed", ...}`,
# what current API versions send) before its deprecated `accepts_marketing` boolean.
CONSENT_TRAITS = (
    "email_consent",
    "marketing_consent",
    "email_marketing_consent",
    "accepts_marketing",
    "subscribed",
)
# Shopify's consent states: `not_subscribed` (never asked or never agreed), `pending` (double opt-in
# not confirmed), `redacted` and `invalid` give no consent either way.
_CONSENT_STATES = {"subscribed": "subscribed", "unsubscribed": "unsubscribed"}


@dataclass(frozen=True)
class Added:
    """What a batch did to a profile: it only added events of ``names``, taking the profile's
    revision from ``before`` to ``after``."""

    names: frozenset[str]
    before: int
    after: int


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
        if isinstance(value, dict):  # Shopify's email_marketing_consent
            value = value.get("state")
            if isinstance(value, str):
                return _CONSENT_STATES.get(value.lower(), "unknown")
        if isinstance(value, bool):
            return "subscribed" if value else "unsubscribed"
        if isinstance(value, str) and value.lower() in _CONSENT_STATES:
            return _CONSENT_STATES[value.lower()]
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
EVALUATIONS_KEY = "metrics:evaluations"  # fields "full:<account>", "incremental:<account>"


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
    changes: Mapping[str, Added | None] | None = None,
    reconcile: bool = False,
) -> list[Outcome]:
    """Evaluate, record, schedule and (when ``push``) queue changes for the destinations.

    ``reconcile``: this work ran before and may have stopped after recording the ledger (a batch
    delivered again, a re-evaluation job retried): for the profiles whose result the ledger already
    holds, what follows the ledger is done again (:func:`_reconcile`).

    ``changes``: per profile, what the batch just did to it (:class:`Added`; None: something else
    changed too, a trait, an identity, events removed). A profile whose recorded result came from
    the same rules, from the revision the batch started from, and is not due yet is evaluated
    incrementally from it (:func:`rules.evaluate.evaluate_changed`: only the segments those events
    can affect); the others, and every profile when ``changes`` is None (time passed, rules
    changed), in full.

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
        outcomes.extend(
            _evaluate_chunk(
                account, chunk, now, conn, queue_conn, ruleset, push, restate, changes or {}, reconcile
            )
        )
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
    changes: Mapping[str, Added | None],
    reconcile: bool = False,
) -> list[Outcome]:
    live = load_with_predictions(conn, account.id, pids, now)
    ledger = Ledger(conn)
    stored = ledger.stored_many(account.id, [p.profile_id for p in live])
    fingerprint = dependencies.fingerprint(ruleset)
    evaluated = {
        p.profile_id: _evaluate(
            p, ruleset, now, was, None if p.profile_id in restate else changes.get(p.profile_id), fingerprint
        )
        for p, was in zip(live, stored, strict=True)
    }
    results = {pid: result for pid, (result, _) in evaluated.items()}
    incremental = sum(1 for _, partly in evaluated.values() if partly)
    emails = {p.profile_id: email_of(p) for p in live}

    def entry(p: Profile) -> Entry:
        result = results[p.profile_id]
        contact = contact_of(emails[p.profile_id])
        restated = p.profile_id in restate
        return Entry(
            p.profile_id,
            result.segments,
            result.traits,
            p.revision,
            contact,
            restated,
            result.next_due,
            fingerprint,
        )

    def again(n: int) -> Entry:
        """The ledger moved between read and write (another worker): evaluate in full."""
        results[live[n].profile_id] = rules.evaluate(live[n], ruleset, now, explain=False)
        return entry(live[n])

    held: dict[int, int] = {}  # index in live -> the version the ledger already held this result at
    diffs = dict(
        zip(
            [p.profile_id for p in live],
            ledger.record_many(
                account.id,
                [entry(p) for p in live],
                now,
                stored,
                again=again,
                unchanged=held if reconcile else None,  # only a second run needs them
            ),
            strict=True,
        )
    )
    changed = [p for p in live if diffs[p.profile_id] is not None]
    if push and changed:
        submit_many(
            queue_conn,
            account,
            [_submission(p, diffs[p.profile_id], emails[p.profile_id]) for p in changed],
            now,
        )
    if reconcile:
        _reconcile(conn, queue_conn, account, ruleset, live, held, results, diffs, emails, push, now)
    schedule = queue_conn.pipeline(transaction=False)
    due.schedule_many(schedule, account.id, {pid: _next_due(results.get(pid)) for pid in pids})
    for mode, n in (("incremental", incremental), ("full", len(live) - incremental)):
        if n:
            schedule.hincrby(EVALUATIONS_KEY, f"{mode}:{account.id}", n)
    count_dropped(
        schedule, "ledger_history", sum(diff.trimmed for diff in diffs.values() if diff is not None)
    )
    schedule.execute()
    record_movements(conn, account, ruleset, {p.profile_id: diffs[p.profile_id] for p in changed}, now)
    for p in changed:
        _log_change(account.id, p.profile_id, diffs[p.profile_id])
    return [Outcome(pid, results.get(pid), diffs.get(pid)) for pid in pids]


def _evaluate(
    profile: Profile,
    ruleset: RuleSet,
    now: datetime,
    was: Stored,
    added: Added | None,
    fingerprint: str,
) -> tuple[Evaluation, bool]:
    """Incrementally from the recorded result when it is reusable (same rules, computed from the
    revision this batch started from, which the profile has not left since but by this batch's
    events, not due yet), else in full; and whether it was incremental."""
    if (
        added is None
        or was.rules != fingerprint
        or was.segments is None
        or was.revision != added.before
        or profile.revision != added.after
        or (was.due is not None and was.due <= now)
    ):
        return rules.evaluate(profile, ruleset, now, explain=False), False
    changed = evaluate_changed(profile, ruleset, now, members=was.members(), due=was.due, names=added.names)
    return changed, True


def load_with_predictions(
    conn: redis.Redis, account_id: str, pids: list[str], now: datetime
) -> list[Profile]:
    """The live profiles among ``pids`` (in that order), each with its predicted traits merged
    (stored traits of the same name win); two round trips for the lot."""
    profiles = load_profiles(conn, account_id, pids, now)
    live = [profile for pid in pids if (profile := profiles[pid]) is not None]
    if not live:
        return live
    predicted = predict.predicted_traits(conn, account_id, [p.profile_id for p in live], now)
    if not predicted:
        return live
    return [predict.with_predictions(p, predicted.get(p.profile_id)) for p in live]


def account_connection(conn: redis.Redis, account_id: str) -> Any:
    """A plain client of the server holding the account's counters (every key of
    :mod:`connector.worker.sizes` and :mod:`connector.analytics` shares the hash tag ``{<account>}``):
    on a cluster, the node that serves that slot (the cluster pipeline refuses scripts)."""
    if not is_cluster(conn):
        return conn
    cluster: Any = conn
    return cluster.get_node_from_key(sizes.size_key(account_id)).redis_connection


def account_pipeline(conn: redis.Redis, account_id: str) -> Any:
    """A plain pipeline to the server holding the account's counters (:func:`account_connection`)."""
    return account_connection(conn, account_id).pipeline(transaction=False)


def record_movements(
    conn: redis.Redis, account: Account, ruleset: RuleSet, diffs: Mapping[str, Diff | None], now: datetime
) -> None:
    """Count the segment entries and exits of the ledger's diffs: sizes and member sets, the
    migrations of the exclusive groups, the entries of the day per holdout arm and each person's
    entry and exit instants; two script calls in one round trip for the lot (the counting is
    idempotent per profile and segment, and the ledger yields each diff once)."""
    moved = [(pid, diff) for pid, diff in diffs.items() if diff is not None and (diff.entered or diff.exited)]
    if not moved:
        return
    found = holdout.settings(account)
    split = holdout.split_segments(account, found)
    pipe = account_pipeline(conn, account.id)
    sizes.record_many(pipe, account.id, [(pid, diff.entered, diff.exited) for pid, diff in moved], now)
    rows = [
        (pid, diff.entered, diff.exited, holdout.arms_of(account, pid, split & diff.entered, found))
        for pid, diff in moved
    ]
    movement.record_many(pipe, account.id, ruleset.groups, rows, now)
    pipe.execute()


def forget_movements(
    conn: redis.Redis,
    account: Account,
    memberships: Mapping[str, Iterable[str]],
    now: datetime,
    *,
    everywhere: bool = False,
) -> None:
    """Profiles that are gone (erased, merged into another): out of the member sets of the segments
    they held (counted as exits; ``everywhere``: of every segment of the rules too, in case a set
    holds them anyway) and their analytics state dropped; one round trip."""
    if not memberships:
        return
    extra = set(account.ruleset.segment_names) if everywhere else set()
    pipe = account_pipeline(conn, account.id)
    sizes.record_many(
        pipe, account.id, [(pid, (), extra | set(held)) for pid, held in memberships.items()], now
    )
    for pid in memberships:
        movement.forget(pipe, account.id, pid)
    pipe.execute()


def ledger_segments(conn: redis.Redis, account_id: str, pids: Iterable[str]) -> dict[str, frozenset[str]]:
    """The segments the ledger holds for each profile (none for a profile it has no entry for);
    one round trip per server."""
    order = list(pids)
    stored = Ledger(conn).stored_many(account_id, order)
    return {pid: state.members() for pid, state in zip(order, stored, strict=True)}


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
    return _state(profile, diff.version, diff.segments, diff.traits, email)


def _state(
    profile: Profile, version: int, segments: Collection[str], traits: Mapping[str, Any], email: str | None
) -> Submission:
    identities = {kind: values[0] for kind, values in profile.identities.items() if values}
    others = tuple(e for e in profile.identities.get("email", ()) if e != email)
    return Submission(
        profile.profile_id,
        version,
        segments,
        traits,
        email,
        consent_of(profile),
        identities=identities,
        other_emails=others,
    )


def _reconcile(
    conn: redis.Redis,
    queue_conn: redis.Redis,
    account: Account,
    ruleset: RuleSet,
    live: Sequence[Profile],
    held: Mapping[int, int],
    results: Mapping[str, Evaluation],
    diffs: Mapping[str, Diff | None],
    emails: Mapping[str, str | None],
    push: bool,
    now: datetime,
) -> None:
    """What follows the ledger, done again, in case an earlier run of this work recorded results
    and stopped before the rest (killed, or a write that failed: the batch is delivered again, the
    job retried). ``held``: per index in ``live``, the version at which the ledger already held
    that profile's result (a result the ledger ignored as stale is not there). Both writes are
    idempotent:

    * the state of each profile the ledger already held is submitted under that version: a
      destination that applied it, or holds a newer one, takes nothing
      (:func:`connector.sync.submit.submit_many`);
    * the segment member sets of every profile whose result the ledger now holds (held, or just
      changed) are set to its segments (in those, out of every other segment of the rules),
      counted only where a set changes (:mod:`connector.worker.sizes`): a change the earlier run
      recorded is then in the sets even when this run records a further one.

    Not done again: the exclusive groups' migration counts and the entries of the day per holdout
    arm (:mod:`connector.analytics.movement`), which are counters; an interrupted run can leave those
    one short."""
    same = [(live[n], version) for n, version in sorted(held.items())]  # version 0: never recorded
    if push and same:
        states: list[Submission] = []
        for p, version in same:
            result = results[p.profile_id]
            if version > 0:
                states.append(_state(p, version, result.segments, result.traits, emails[p.profile_id]))
        submit_many(queue_conn, account, states, now)
    recorded = [p for p, _ in same] + [p for p in live if diffs[p.profile_id] is not None]
    if not recorded:
        return
    every = set(ruleset.segment_names)
    moves = []
    for p in recorded:
        segments = set(results[p.profile_id].segments)
        moves.append((p.profile_id, segments, every - segments))
    pipe = account_pipeline(conn, account.id)
    sizes.record_many(pipe, account.id, moves, now)
    pipe.execute()


def forget_absorbed(
    conn: redis.Redis, queue_conn: redis.Redis, account: Account, absorbed: Iterable[str], now: datetime
) -> None:
    """Profiles merged away keep no ledger, history, due entry, segment membership or analytics
    state: the survivor carries them on (its evaluation counts its own entries)."""
    pids = list(absorbed)
    if pids:
        forget_movements(conn, account, ledger_segments(conn, account.id, pids), now)
        Ledger(conn).delete_many(account.id, pids)
        due.unschedule(queue_conn, account.id, pids)


def evaluate_touched(
    runtime: Runtime,
    account_id: str,
    profile_ids: set[str],
    now: datetime,
    restate: Collection[str] = (),
    reconcile: bool = False,
) -> None:
    """Evaluate the rules of ``account_id`` for ``profile_ids`` as of ``now`` (``reconcile``: see
    :func:`evaluate_profiles`)."""
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
        reconcile=reconcile,
    )
