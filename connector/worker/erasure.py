"""The erasure service: the one place that removes a person from everything the connector keeps.

Called explicitly by the event pipeline when a ``delete`` event (or Shopify's ``shop/redact``) is
applied, and by ``connector profiles delete``. First a journal record (:func:`journal_key`, queue
Redis) of what finishing the erasure needs, deleted as the last step: an erasure interrupted
anywhere is finished from it by the scheduler (:func:`finish_unfinished`) or by the erasure run
again. Then, in order:

0. a tombstone per identifier of the person (:func:`tombstone_key`: a digest of account, identity
   kind and value, holding the erasure instant; for ``shop/redact`` one for the whole account),
   so that their events received before the erasure but still waiting elsewhere (another stream
   shard, a drain that is being retried) do not recreate them: the pipeline drops those
   (:func:`drop_erased`, counted as ``before_erasure``);
1. the profile store (:func:`connector.profiles.erasure.erase_profile`): profile, history, the
   tombstones of profiles merged into it, identity links, identity conflicts, rejected events,
   data exports and the event names containing one of their identifiers (the dedupe markers
   stay: digests of the senders' event ids, so a replay of the person's earlier events remains a
   duplicate);
2. the segment member sets (counted as exits) and the person's analytics state
   (:func:`connector.worker.evaluation.forget_movements`), the membership ledger and its history,
   and the due index, of the profile and of every profile merged into it;
3. dead letters of every kind (queue items and sync changes) that name the person;
4. the sync state: pending changes, applied versions, ownership ledgers, digests, retries; and a
   deletion queued for every destination under each of the person's addresses (when they have
   one), whose outcome is recorded with a digest of the profile id only;
5. the deliveries of the account's live stream (``live:{account}``) that show one of their
   identities, masked (:func:`forget_live`); ``shop/redact`` drops the whole stream.

What remains is the erasure logs' entries and the tombstones, which hold digests, no identifier.
Every step is safe to run twice, so an erasure finished by the scheduler while the worker that
began it still runs ends in the same state.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import redis

from connector import clock, sync
from connector.config import Account
from connector.event import Event
from connector.profiles import erasure as store_erasure
from connector.profiles.erasure import Erased, tombstone_key, tombstone_keys
from connector.profiles.rejected import mentions
from connector.profiles.store import name_codes, read_profile
from connector.sync.deadletters import DeadLetter, DeadLetters
from connector.worker import due, evaluation
from connector.worker.ledger import Ledger

log = logging.getLogger(__name__)

# How long an event can wait between being received and being applied and still be checked
# against the tombstones: a stream's backlog while no worker drains it, a batch retried and then
# dead-lettered and replayed. A tombstone lives this plus the account's dedupe window.
EVENT_WAIT_MAX_SECONDS = 30 * 24 * 3600
DROPPED_OUTCOME = "before_erasure"  # metrics:worker field, connector_worker_events_total{outcome}


def tombstone_seconds(account: Account) -> int:
    return EVENT_WAIT_MAX_SECONDS + account.dedupe_ttl_seconds


def record_tombstones(
    queue_conn: redis.Redis, account: Account, identities: dict[str, list[str]] | None, now: datetime
) -> None:
    """Tombstones for these identities (``None``: the whole account), holding the erasure instant."""
    if identities is None:
        names = [tombstone_key(account.id)]
    else:
        names = [tombstone_key(account.id, k, v) for k, values in identities.items() for v in values]
    pipe = queue_conn.pipeline(transaction=False)
    for name in names:
        pipe.set(name, repr(now.timestamp()), ex=tombstone_seconds(account))
    pipe.execute()


def drop_erased(queue_conn: redis.Redis, events: Sequence[Event]) -> list[Event]:
    """The events without those of an erased person (or account) received at or before the
    erasure; one MGET for the batch. Events received after the erasure are a new relationship and
    are kept. What is dropped is counted (``metrics:worker``, ``before_erasure:{account}``)."""
    per_event = [list(tombstone_keys(event)) for event in events]
    names = sorted({name for names in per_event for name in names})
    if not names:
        return list(events)
    erased_at = {
        name: float(value) for name, value in zip(names, queue_conn.mget(names), strict=True) if value
    }
    if not erased_at:
        return list(events)
    kept: list[Event] = []
    dropped: dict[str, int] = {}
    for event, candidates in zip(events, per_event, strict=True):
        received = event.received_at.timestamp()
        if any(received <= erased_at.get(name, float("-inf")) for name in candidates):
            dropped[event.account] = dropped.get(event.account, 0) + 1
        else:
            kept.append(event)
    _count_dropped(queue_conn, dropped.items())
    return kept


def _count_dropped(queue_conn: redis.Redis, dropped: Iterable[tuple[str, int]]) -> None:
    pipe = queue_conn.pipeline(transaction=False)
    for account_id, count in dropped:
        pipe.hincrby("metrics:worker", f"{DROPPED_OUTCOME}:{account_id}", count)
        log.info(
            "events of an erased person dropped",
            extra={"account": account_id, "events": count, "outcome": DROPPED_OUTCOME},
        )
    pipe.execute()


# The erasure journal (queue Redis): one record per erasure in progress, written before anything is
# erased and deleted once everything is, so that an erasure interrupted anywhere (a process killed,
# a Redis write failing) is finished: by the scheduler (:func:`finish_unfinished`) once the record
# is FINISH_AFTER_SECONDS old, or at once by ``connector profiles delete`` run again. It holds what
# finishing needs and nothing more: the profile ids, the identities (tombstones, dead letters, the
# live stream and the ESPs' deletions are found by them), the erasure instant and its source. It
# expires after JOURNAL_SECONDS even if never finished (the scheduler down that long, the account
# removed from the configuration).
JOURNAL_INDEX = "erasing"  # zset: record key -> the instant from which the scheduler finishes it
JOURNAL_PREFIX = "erasing:"
JOURNAL_SECONDS = 30 * 24 * 3600
FINISH_AFTER_SECONDS = 30  # an erasure in progress takes less; finishing it twice is harmless anyway
RETRY_SECONDS = 60  # a record the scheduler took is taken again this long after (if still there)
# A whole account's erasure (Shopify ``shop/redact``) can run for many minutes: its record is taken
# an hour after it was written (and again an hour after each take), and finished by a job on the
# ``reevaluate`` queue, never in the scheduler's own tick (which fires the due instants).
ACCOUNT_FINISH_AFTER_SECONDS = 3600
FINISH_BATCH = 20  # records finished per scheduler tick, at most

# Takes a record whose instant has come (compare-and-set, so that two schedulers take it once):
# KEYS[1] = the index; ARGV: record key, now, the instant it is due again.
_TAKE = """
local due = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '')
if not due or due > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Unfinished:
    """A journaled erasure: of one person (``erased``), or of a whole account (None)."""

    account: str
    at: datetime  # the erasure instant: the tombstones hold it (later events are a new relationship)
    source: str
    erased: Erased | None
    tombstones: bool = True  # False: one person of an account's erasure (its tombstone covers them)


def journal_key(account_id: str, profile_id: str | None = None) -> str:
    """``erasing:{account}:{digest of the profile id}``, or ``erasing:{account}:account``."""
    if profile_id is None:
        return f"{JOURNAL_PREFIX}{account_id}:account"
    return f"{JOURNAL_PREFIX}{account_id}:{store_erasure.profile_digest(account_id, profile_id)}"


def write_journal(queue_conn: redis.Redis, unfinished: Unfinished) -> None:
    erased = unfinished.erased
    name = journal_key(unfinished.account, erased.profile_id if erased is not None else None)
    body: dict[str, Any] = {
        "account": unfinished.account,
        "at": unfinished.at.timestamp(),
        "source": unfinished.source,
        "tombstones": unfinished.tombstones,
    }
    if erased is not None:
        body |= {"profile": erased.profile_id, "absorbed": erased.absorbed, "identities": erased.identities}
    pipe = queue_conn.pipeline(transaction=False)
    pipe.set(name, json.dumps(body, sort_keys=True), ex=JOURNAL_SECONDS)
    after = FINISH_AFTER_SECONDS if erased is not None else ACCOUNT_FINISH_AFTER_SECONDS
    pipe.zadd(JOURNAL_INDEX, {name: clock.now().timestamp() + after})
    pipe.execute()


def read_journal(queue_conn: redis.Redis, name: str) -> Unfinished | None:
    raw = queue_conn.get(name)
    if raw is None:
        return None
    body = json.loads(raw)
    erased = None
    if body.get("profile") is not None:
        identities = {str(k): [str(v) for v in vs] for k, vs in body["identities"].items()}
        erased = Erased(body["account"], body["profile"], tuple(body["absorbed"]), identities)
    at = datetime.fromtimestamp(float(body["at"]), tz=UTC)
    return Unfinished(body["account"], at, body["source"], erased, bool(body["tombstones"]))


def forget_journal(queue_conn: redis.Redis, name: str) -> None:
    pipe = queue_conn.pipeline(transaction=False)
    pipe.delete(name)
    pipe.zrem(JOURNAL_INDEX, name)
    pipe.execute()


def finish_unfinished(now: datetime) -> int:
    """Scheduler task: finish the erasures journaled at least FINISH_AFTER_SECONDS ago."""
    from connector import runtime

    rt = runtime.current()
    return finish_due(rt.profile_redis, rt.queue_redis, rt.account, now)


def finish_due(
    conn: redis.Redis,
    queue_conn: redis.Redis,
    account_of: Callable[[str], Account | None],
    now: datetime,
    limit: int = FINISH_BATCH,
) -> int:
    """Finish the journaled erasures whose instant has come (at most ``limit``); returns how many.
    One that fails is tried again RETRY_SECONDS later; a whole account's is handed to a job
    (:func:`finish_account`)."""
    stamp = now.timestamp()
    finished = 0
    for member in queue_conn.zrangebyscore(JOURNAL_INDEX, "-inf", stamp, start=0, num=limit):
        name = member.decode()
        whole = name.endswith(":account")
        again = stamp + (ACCOUNT_FINISH_AFTER_SECONDS if whole else RETRY_SECONDS)
        if not queue_conn.eval(_TAKE, 1, JOURNAL_INDEX, name, repr(stamp), repr(again)):
            continue  # another scheduler took it
        unfinished = read_journal(queue_conn, name)
        if unfinished is None:  # finished meanwhile, or expired
            queue_conn.zrem(JOURNAL_INDEX, name)
            continue
        if whole:
            _enqueue_account(queue_conn, unfinished.account)
            finished += 1
            continue
        account = account_of(unfinished.account)
        if account is None:
            log.warning("unfinished erasure of an unknown account", extra={"account": unfinished.account})
            continue
        try:
            _resume(conn, queue_conn, account, unfinished)
        except Exception:  # the others are finished all the same; this one is tried again
            log.exception("finishing an erasure failed", extra={"account": account.id})
            continue
        log.info("unfinished erasure finished", extra={"account": account.id, "source": unfinished.source})
        finished += 1
    return finished


FINISH_QUEUE = "reevaluate"  # connector.worker.jobs.REEVALUATE_QUEUE (jobs imports this module)


def _enqueue_account(queue_conn: redis.Redis, account_id: str) -> None:
    from rq import Queue

    Queue(FINISH_QUEUE, connection=queue_conn).enqueue(
        "connector.worker.erasure.finish_account",
        account_id,
        result_ttl=0,
        failure_ttl=24 * 3600,
        job_timeout=ACCOUNT_FINISH_AFTER_SECONDS,  # RQ's default 180 s would cut a large account short
    )


def finish_account(account_id: str) -> bool:
    """Job: finish a whole account's journaled erasure; False when there is none (finished
    meanwhile) or the account is no longer configured."""
    from connector import runtime

    rt = runtime.current()
    unfinished = read_journal(rt.queue_redis, journal_key(account_id))
    account = rt.account(account_id)
    if unfinished is None or account is None:
        return False
    _resume(rt.profile_redis, rt.queue_redis, account, unfinished)
    log.info("unfinished erasure finished", extra={"account": account_id, "source": unfinished.source})
    return True


def erase_person(
    conn: redis.Redis,
    queue_conn: redis.Redis,
    account: Account,
    profile_id: str,
    now: datetime,
    source: str,
) -> bool:
    """Erase one person (found by their live profile id). False if the profile does not exist and
    no erasure of theirs is unfinished (one that is, is finished now)."""
    before = read_profile(conn, name_codes(conn), account.id, profile_id)
    if before is None:
        unfinished = read_journal(queue_conn, journal_key(account.id, profile_id))
        if unfinished is None or unfinished.erased is None:
            return False
        _resume(conn, queue_conn, account, unfinished)
        return True
    absorbed = store_erasure.absorbed_of(conn, account.id, profile_id)
    erased = Erased(account.id, profile_id, absorbed, {k: list(v) for k, v in before.identities.items()})
    unfinished = Unfinished(account.id, now, source, erased)
    write_journal(queue_conn, unfinished)  # before anything is erased: whatever stops it, it is finished
    # first, so that a batch of another shard checking the tombstones while the profile store
    # erases the person already drops their earlier events
    record_tombstones(queue_conn, account, before.identities, now)
    _resume(conn, queue_conn, account, unfinished)
    return True


def erase_account(
    conn: redis.Redis, queue_conn: redis.Redis, account: Account, now: datetime, source: str
) -> int:
    """Erase every person of an account (Shopify ``shop/redact``); returns how many. The people
    are those of the account when it starts (after its tombstone): their ids go to
    ``erasing:{account}:todo`` first, and finishing an interrupted pass erases only those left in
    it, not a person who came after the redact (a new relationship); only a pass stopped before
    its list was whole takes the list again when it is finished."""
    unfinished = Unfinished(account.id, now, source, None)
    write_journal(queue_conn, unfinished)
    record_tombstones(queue_conn, account, None, now)
    _snapshot(conn, queue_conn, account.id)
    return _erase_everyone(conn, queue_conn, account, unfinished)


SNAPSHOT_DONE = ""  # the member that ends a complete snapshot of an account's people


def _snapshot(conn: redis.Redis, queue_conn: redis.Redis, account_id: str) -> None:
    """The account's profile ids into ``todo_key``, then :data:`SNAPSHOT_DONE`; one already
    complete is kept (an interrupted pass goes on from it)."""
    from connector.profiles.store import iter_profile_ids

    todo = todo_key(account_id)
    if queue_conn.sismember(todo, SNAPSHOT_DONE):
        return
    pids = list(iter_profile_ids(conn, account_id))
    pipe = queue_conn.pipeline(transaction=False)
    for start in range(0, len(pids), 1000):
        pipe.sadd(todo, *pids[start : start + 1000])
    pipe.sadd(todo, SNAPSHOT_DONE)
    pipe.expire(todo, JOURNAL_SECONDS)
    pipe.execute()


def todo_key(account_id: str) -> str:
    """The profile ids an account's erasure has still to erase (queue Redis)."""
    return f"{JOURNAL_PREFIX}{account_id}:todo"


def _erase_everyone(conn: redis.Redis, queue_conn: redis.Redis, account: Account, whole: Unfinished) -> int:
    """The people of ``todo_key`` one by one, each finished (and its record gone) before the
    next, then the account's own remains."""
    queue_conn.delete(live_key(account.id))
    todo = todo_key(account.id)

    def journal(erased: Erased) -> None:  # the account's tombstone covers each of them
        write_journal(queue_conn, Unfinished(account.id, whole.at, whole.source, erased, tombstones=False))

    count = 0
    for raw in queue_conn.sscan_iter(todo, count=500):
        pid = raw.decode() if isinstance(raw, bytes) else str(raw)
        if pid == SNAPSHOT_DONE:
            continue
        erased = store_erasure.erase_profile(
            conn, queue_conn, account.id, pid, whole.at, whole.source, journal
        )
        if erased is not None:
            _finish(conn, queue_conn, account, erased, whole.at, tombstones=False)
            forget_journal(queue_conn, journal_key(account.id, erased.profile_id))
            count += 1
        queue_conn.srem(todo, pid)
    store_erasure.forget_account_remains(conn, account.id)
    forget_journal(queue_conn, journal_key(account.id))
    queue_conn.delete(todo)  # after the record: a record left always finds its snapshot
    return count


def _resume(conn: redis.Redis, queue_conn: redis.Redis, account: Account, unfinished: Unfinished) -> None:
    """Carry out (or finish) a journaled erasure: each step is safe to run again, so an erasure
    interrupted anywhere, or finished by the scheduler while the worker that began it still runs,
    ends in the same state. The journal record goes last."""
    if unfinished.erased is None:
        record_tombstones(queue_conn, account, None, unfinished.at)  # again: it may not have been
        _snapshot(conn, queue_conn, account.id)  # taken now if the pass stopped before it was whole
        _erase_everyone(conn, queue_conn, account, unfinished)
        return
    known = unfinished.erased

    def journal(erased: Erased) -> None:  # the store's own view, before it removes anything
        write_journal(queue_conn, replace(unfinished, erased=_union(known, erased)))

    found = store_erasure.erase_profile(
        conn, queue_conn, account.id, known.profile_id, unfinished.at, unfinished.source, journal
    )
    if found is None:  # erased from the store by an earlier attempt: its remains may be left
        store_erasure.scrub(conn, known)
        known = _not_back(conn, account.id, known)
    erased = _union(known, found)
    _finish(conn, queue_conn, account, erased, unfinished.at, tombstones=unfinished.tombstones)
    forget_journal(queue_conn, journal_key(account.id, erased.profile_id))


def _not_back(conn: redis.Redis, account_id: str, erased: Erased) -> Erased:
    """``erased`` without the addresses that belong to a live profile again (the person came back
    after the erasure, a new relationship, before it was finished): the ESPs' deletions go out
    under the others only, so the new contact is not deleted."""
    from connector.profiles import lookup

    emails = erased.emails
    back = {e for e in emails if lookup(conn, account_id, "email", e) not in (None, *erased.profile_ids)}
    if not back:
        return erased
    identities = {k: [v for v in vs if k != "email" or v not in back] for k, vs in erased.identities.items()}
    return replace(erased, identities=identities)


def _union(known: Erased, found: Erased | None) -> Erased:
    if found is None:
        return known
    identities = {k: list(v) for k, v in known.identities.items()}
    for kind, values in found.identities.items():
        held = identities.setdefault(kind, [])
        held.extend(v for v in values if v not in held)
    absorbed = tuple(sorted({*known.absorbed, *found.absorbed}))
    return Erased(known.account, known.profile_id, absorbed, identities, found.event_ids)


def _finish(
    conn: redis.Redis,
    queue_conn: redis.Redis,
    account: Account,
    erased: Erased,
    now: datetime,
    *,
    tombstones: bool = True,
) -> None:
    pids = erased.profile_ids
    if tombstones:  # again: identities linked between the first tombstones and the erasure
        record_tombstones(queue_conn, account, erased.identities, now)
        forget_live(queue_conn, account.id, erased.identities, erased.profile_ids)
    held = evaluation.ledger_segments(conn, account.id, pids)
    evaluation.forget_movements(conn, account, held, now, everywhere=True)
    Ledger(conn).delete_many(account.id, pids)
    due.unschedule(queue_conn, account.id, pids)
    removed = purge_dead_letters(queue_conn, account.id, erased)
    sync.erase(queue_conn, account, erased.profile_id, erased.emails, now, absorbed=erased.absorbed)
    log.info(
        "person erased",
        extra={"account": account.id, "profile": erased.profile_id, "dead_letters": removed},
    )


def live_key(account_id: str) -> str:
    """The account's live stream of deliveries (:mod:`connector.ops.live`, queue Redis)."""
    from connector.ops import live

    return live.key(account_id)


def _masks(identities: Mapping[str, Iterable[str]]) -> set[tuple[str, str]]:
    from connector.ops.live import mask

    out = set()
    for kind, values in identities.items():
        for value in values:
            out.add((kind, mask(kind, value)))
            if kind == "email":  # other kinds holding an address are masked the same way
                out.update((other, mask(other, value)) for other in ("email", "anonymous_id", "user_id"))
    return out


def _concerns(entry: Mapping[str, Any], masks: set[tuple[str, str]], needles: frozenset[str]) -> bool:
    for event in entry.get("events") or ():
        shown = event.get("identities") if isinstance(event, dict) else None
        if isinstance(shown, dict) and any((k, str(v)) in masks for k, v in shown.items()):
            return True
    for item in [*(entry.get("profiles") or ()), *(entry.get("results") or ())]:  # worker and sync entries
        if isinstance(item, dict) and str(item.get("profile") or "").lower() in needles:
            return True
    reason = str(entry.get("reason") or "").lower()
    return any(needle in reason for needle in needles)


def forget_live(
    queue_conn: redis.Redis,
    account_id: str,
    identities: Mapping[str, Iterable[str]],
    profile_ids: Iterable[str] = (),
) -> int:
    """Remove from the account's live stream every delivery that shows one of the person's
    identities (masked as the stream shows them: ``j***@example.com``; another person whose
    identity masks the same way loses that entry too, the live view being only an aid) or names
    one in its refusal reason, and every worker or sync entry naming one of ``profile_ids``
    (:mod:`connector.livefeed`); returns how many stream entries went (one holding several
    deliveries goes whole, the others with it). The stream is capped (about 1,000 entries)."""
    masks = _masks(identities)
    needles = frozenset(v.lower() for values in [*identities.values(), profile_ids] for v in values)
    if not needles:
        return 0
    doomed = []
    for entry_id, fields in queue_conn.xrange(live_key(account_id)):
        raw = fields.get(b"d") or fields.get("d")
        # a stream entry of stored deliveries holds several, one per line: it goes if one of them does
        for line in (raw if isinstance(raw, bytes) else str(raw or "").encode()).split(b"\n"):
            try:
                entry = json.loads(line) if line else {}
            except ValueError:  # not an entry the live view wrote: nothing to judge it by
                continue
            if isinstance(entry, dict) and _concerns(entry, masks, needles):
                doomed.append(entry_id)
                break
    if doomed:
        queue_conn.xdel(live_key(account_id), *doomed)
    return len(doomed)


def purge_dead_letters(queue_conn: redis.Redis, account_id: str, erased: Erased) -> int:
    """Remove the dead letters that name the person: sync changes of their profiles, and queue
    items (of their account, or of no known account) holding any of their identifiers. Another
    person's sync change stays (it is that person's data, still to be sent): where its reason or
    its error quotes the erased person's identifiers (an ESP refusing a whole batch names one
    contact in every change of it), the quotes are replaced by ``[erased]``; the change itself
    (the other person's profile, email and state) is left as it is, so a replay sends it."""
    needles = erased.needles
    pids = set(erased.profile_ids)

    def change_of(item: DeadLetter) -> dict[str, Any] | None:
        change = item.payload.get("change") if isinstance(item.payload, dict) else None
        return change if isinstance(change, dict) else None

    def doomed(item: DeadLetter) -> bool:
        if item.account not in (account_id, None):
            return False
        change = change_of(item)
        if change is not None:
            return change.get("profile_id") in pids
        # the reason read as a value, with the payload's rules: a short identifier only whole
        return mentions(item.payload, needles) or mentions([item.reason], needles)

    def scrub(item: DeadLetter) -> DeadLetter | None:
        if item.account not in (account_id, None) or change_of(item) is None:
            return None
        rest = {k: v for k, v in item.payload.items() if k != "change"}
        if not (mentions(rest, needles) or mentions([item.reason], needles)):
            return None
        payload = {**redacted(rest, needles), "change": item.payload["change"]}
        return replace(item, reason=redacted(item.reason, needles), payload=payload)

    return DeadLetters(queue_conn).purge(doomed, scrub=scrub)


def redacted(value: Any, needles: Collection[str]) -> Any:
    """``value`` with the erased person's identifiers replaced by ``[erased]`` in its strings, at any
    depth, as :func:`connector.profiles.rejected.mentions` finds them: a string or number that is
    one of them, and inside a string those of 6 characters or more (a short one, such as a user id
    ``42``, would take digits out of every date and id around it)."""
    long = sorted((n for n in needles if len(n) >= 6), key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, long)), re.IGNORECASE) if long else None

    def clean(item: Any) -> Any:
        if isinstance(item, str):
            if item.lower() in needles:
                return "[erased]"
            return pattern.sub("[erased]", item) if pattern is not None else item
        if isinstance(item, int | float) and not isinstance(item, bool) and str(item) in needles:
            return "[erased]"
        if isinstance(item, dict):
            return {clean(k): clean(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [clean(v) for v in item]
        return item

    return clean(value) if needles else value
