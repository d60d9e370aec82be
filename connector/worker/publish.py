"""Rule changes: dry-run a new rule file against profiles, and publish (re-evaluate everything).

Publishing re-evaluates every profile of the account in the background (RQ jobs on the
``backfill`` queue, which workers serve after time-based re-evaluations, events and syncs), with a
progress counter; the ledger passes on only the differences to the destinations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import redis
from rq import Queue

import rules
from connector import clock
from connector.clock import isoformat
from connector.config import Account
from connector.destinations import destinations as parse_destinations
from connector.dev.embedded_redis import EmbeddedRedis
from connector.errors import MalformedPayload, UndecodableItem
from connector.event import Event, load_event
from connector.ingest.receivers.spec import normalize
from connector.profiles import iter_profile_ids, load_profile
from connector.profiles.apply import apply_events
from connector.profiles.erasure import erase_account, erase_profile
from connector.worker import jobs
from connector.worker.jobs import BACKFILL_QUEUE
from rules import Profile, RuleSet
from rules.dependencies import fingerprint as rules_fingerprint

log = logging.getLogger(__name__)

PUBLISH_CHUNK = 500
PROGRESS_TTL_SECONDS = 7 * 24 * 3600


@dataclass
class SegmentDelta:
    entering: list[str] = field(default_factory=list)
    exiting: list[str] = field(default_factory=list)


@dataclass
class DryRun:
    profiles: int = 0
    segments: dict[str, SegmentDelta] = field(default_factory=dict)

    def add(self, who: str, before: frozenset[str], after: frozenset[str]) -> None:
        self.profiles += 1
        for name in after - before:
            self.segments.setdefault(name, SegmentDelta()).entering.append(who)
        for name in before - after:
            self.segments.setdefault(name, SegmentDelta()).exiting.append(who)


def person(profile: Profile) -> str:
    """How a person is shown in a report: email, else user id, else the profile id."""
    for kind in ("email", "user_id", "anonymous_id"):
        values = profile.identities.get(kind)
        if values:
            return values[0]
    return profile.profile_id


def dry_run(current: RuleSet, candidate: RuleSet, profiles: Iterable[Profile], now: datetime) -> DryRun:
    report = DryRun()
    for profile in profiles:
        before = rules.evaluate(profile, current, now, explain=False).segments
        after = rules.evaluate(profile, candidate, now, explain=False).segments
        report.add(person(profile), before, after)
    return report


def stored_profiles(conn: redis.Redis, account_id: str, now: datetime) -> Iterator[Profile]:
    for pid in iter_profile_ids(conn, account_id):
        profile = load_profile(conn, account_id, pid, now)
        if profile is not None:
            yield profile


def profiles_from_events(path: Path, account: Account, now: datetime) -> list[Profile]:
    """Profiles built from a JSON-lines file of events (Segment-spec messages or stored Events).

    The events go through the worker's own code (identity resolution and merges, the kept
    properties, retention, erasure requests) against a throwaway Redis started for the purpose, so
    a dry run stitches identities exactly as production does: an anonymous visitor who later
    identifies is one person. Raises MalformedPayload naming the file and line of a bad entry.
    """
    events = read_events(path, account.id, now)
    with (
        tempfile.TemporaryDirectory(prefix="connector-dry-run-") as tmp,
        EmbeddedRedis(Path(tmp), appendonly=False) as server,
    ):
        conn = redis.Redis.from_url(server.url)
        try:
            return _stitched(conn, account, events, now)
        finally:
            conn.close()


def _stitched(conn: redis.Redis, account: Account, events: list[Event], now: datetime) -> list[Profile]:
    outcome = apply_events(conn, conn, account, events, now)
    for pid, source in outcome.erasures:
        if pid is None:
            erase_account(conn, conn, account.id, now, source)
        else:
            erase_profile(conn, conn, account.id, pid, now, source)
    return sorted(stored_profiles(conn, account.id, now), key=lambda p: (person(p), p.profile_id))


def read_events(path: Path, account_id: str, now: datetime) -> list[Event]:
    """The events of a JSON-lines file; MalformedPayload names the file and line of a bad one."""
    events = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as err:
                raise MalformedPayload(f"{where}: not JSON: {err.msg}") from err
            if isinstance(data, dict) and "occurred_at" in data and "source" in data:
                try:
                    events.append(load_event({**data, "account": account_id}))
                except UndecodableItem as err:
                    raise MalformedPayload(f"{where}: {err}") from err
            else:
                events.append(
                    normalize(data, account=account_id, source="file", received_at=now, where=where)
                )
    return events


def publish(
    account: Account, conn: redis.Redis, queue_conn: redis.Redis, now: datetime, *, restate: bool = False
) -> tuple[str, int]:
    """Queue the re-evaluation of every profile of the account; returns (progress key, total).
    ``restate``: every profile's state goes to the destinations again, changed or not (a mapping of
    a destination changed: the sync sends only the contacts whose mapped state differs)."""
    key = f"publish:{account.id}:{uuid.uuid4().hex[:12]}"
    queue = Queue(BACKFILL_QUEUE, connection=queue_conn)
    queue_conn.hset(key, mapping={"started": isoformat(now), "done": 0, "total": 0})
    queue_conn.expire(key, PROGRESS_TTL_SECONDS)
    total = 0
    chunk: list[str] = []
    for pid in iter_profile_ids(conn, account.id):
        chunk.append(pid)
        if len(chunk) == PUBLISH_CHUNK:
            total += _enqueue(queue, account.id, chunk, key, restate)
            chunk = []
    if chunk:
        total += _enqueue(queue, account.id, chunk, key, restate)
    queue_conn.hset(key, "total", total)
    # once every chunk is queued: the rules every profile is now being re-evaluated with
    queue_conn.set(rules_key(account.id), rules_fingerprint(account.ruleset))
    return key, total


def _enqueue(queue: Queue, account_id: str, chunk: list[str], key: str, restate: bool) -> int:
    queue.enqueue(
        "connector.worker.jobs.reevaluate",
        account_id,
        list(chunk),
        None,
        key,
        restate,
        result_ttl=0,
        failure_ttl=24 * 3600,
        retry=jobs.reevaluate_retry(),
        meta=jobs.reevaluate_meta(),
    )
    return len(chunk)


def progress(queue_conn: redis.Redis, key: str) -> tuple[int, int]:
    done, total = queue_conn.hmget(key, "done", "total")
    # a chunk whose worker died after counting is run again (RQ's retry) and counted twice
    return min(int(done or 0), int(total or 0)) if total else int(done or 0), int(total or 0)


def mapping_digest(account: Account) -> str:
    """What the account's destinations do with a profile's state (their types, segment mappings,
    fields, lists and options), not how they send it (batching, retries, the key's variable)."""
    shown = {
        name: [dest.type, dest.enabled, dest.segments, dest.fields, dest.options]
        for name, dest in sorted(parse_destinations(account).items())
    }
    text = json.dumps(shown, sort_keys=True, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _plain(value: object) -> object:
    if isinstance(value, frozenset | set):
        return sorted(value, key=str)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return str(value)


# per process and per kind ("mapping", "rules"): each account as last looked at, and its digest (the
# account object is kept, so the next tick recognises it unchanged without computing the digest again)
_seen: dict[str, dict[str, tuple[Account, str]]] = {"mapping": {}, "rules": {}}


def rules_key(account_id: str) -> str:
    """The fingerprint of the rules every profile of the account was last re-evaluated with."""
    return f"rules:{account_id}:evaluated"


def _queue_on_change(
    kind: str,
    key_of: Callable[[str], str],
    digest_of: Callable[[Account], str],
    job: Callable[[str, str], int],
) -> list[Account]:
    """For each account whose digest of ``kind`` differs from the one kept in ``key_of(account)``
    (swapped atomically: of two schedulers one sees the change), queue ``job(account, digest)`` on
    the ``backfill`` queue (its scan of the account's profiles never holds up the scheduler's tick).
    An account met for the first time only records its digest. Returns the accounts queued."""
    from connector import runtime as process_runtime

    rt = process_runtime.current()
    seen_of_kind = _seen[kind]
    queued: list[Account] = []
    for account in rt.accounts:
        seen = seen_of_kind.get(account.id)
        if seen is not None and seen[0] is account:
            continue
        digest = digest_of(account)
        if seen is not None and seen[1] == digest:
            seen_of_kind[account.id] = (account, digest)
            continue
        key = key_of(account.id)
        before = rt.queue_redis.set(key, digest, get=True)
        if before is not None and before.decode() != digest:
            try:
                Queue(BACKFILL_QUEUE, connection=rt.queue_redis).enqueue(
                    job,
                    account.id,
                    digest,
                    result_ttl=0,
                    failure_ttl=24 * 3600,
                    retry=jobs.reevaluate_retry(),
                )
            except Exception:
                seen_of_kind.pop(account.id, None)  # looked at again at the next tick
                rt.queue_redis.set(key, before)
                raise
            queued.append(account)
        seen_of_kind[account.id] = (account, digest)
    return queued


def _rules_digest(account: Account) -> str:
    return rules_fingerprint(account.ruleset)


def resend_changed_mappings(now: datetime) -> int:
    """Scheduler task: when an account's destination mappings changed (a tag renamed, a segment
    mapped to another list), every profile's state goes to the destinations again; the sync sends
    only the contacts whose mapped state differs. The digest each account's mapping had is kept in
    ``sync:{account}:mapping``; the work is :func:`restate_job`, which re-evaluates with the rules
    in force as well: rules changed in the same edit are recorded as taken care of, so the edit
    re-evaluates the account once. Returns how many accounts were queued."""
    from connector import runtime as process_runtime

    queued = _queue_on_change("mapping", lambda a: f"sync:{a}:mapping", mapping_digest, restate_job)
    for account in queued:
        digest = _rules_digest(account)
        process_runtime.current().queue_redis.set(rules_key(account.id), digest)
        _seen["rules"][account.id] = (account, digest)
        log.info(
            "destination mappings changed: every profile's state goes again", extra={"account": account.id}
        )
    return len(queued)


def reevaluate_changed_rules(now: datetime) -> int:
    """Scheduler task: when the rules in force of an account changed without a publish (its file's
    ``rules:`` edited and deployed, which also supersedes an API version), every profile is
    re-evaluated with them, as a publish does, so memberships the new rules no longer hold end
    without waiting for each person's next event. A publish records the fingerprint it re-evaluates
    with in ``rules:{account}:evaluated``, so it is not re-evaluated twice. Returns how many
    accounts were queued."""
    queued = _queue_on_change("rules", rules_key, _rules_digest, reevaluate_job)
    for account in queued:
        log.info("the rules in force changed: every profile is re-evaluated", extra={"account": account.id})
    return len(queued)


class RulesNotYetHere(RuntimeError):
    """The worker does not see yet the rules the scheduler saw change (its look at the account files
    is older, or its machine's files are not deployed yet): the job is retried."""


def _rerun(account_id: str, digest_of: Callable[[Account], str], expected: str | None, restate: bool) -> int:
    """Re-evaluate every profile of the account as the scheduler saw it change: the account files
    are looked at now, and the job is retried (never run with what was there before) while the
    ``digest_of`` this process sees is not ``expected``; how many profiles were queued."""
    from connector import runtime as process_runtime

    rt = process_runtime.current()
    rt.provider.refresh_rules(force=True)
    account = rt.account(account_id)
    if account is None:
        return 0
    if expected is not None and digest_of(account) != expected:
        raise RulesNotYetHere(f"the account file of {account_id} in force here is not yet the edited one")
    _, total = publish(account, rt.profile_redis, rt.queue_redis, clock.now(), restate=restate)
    return total


def reevaluate_job(account_id: str, fingerprint: str | None = None) -> int:
    """RQ job: re-evaluate every profile of the account with the rules in force (they changed
    without a publish, to ``fingerprint``); how many profiles were queued."""
    return _rerun(account_id, _rules_digest, fingerprint, False)


def restate_job(account_id: str, mapping: str | None = None) -> int:
    """RQ job: re-evaluate every profile of the account with its state sent again (its mappings
    changed, to the ``mapping`` digest the scheduler saw); how many profiles were queued."""
    return _rerun(account_id, mapping_digest, mapping, True)
