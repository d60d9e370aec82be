"""Rule changes: dry-run a new rule file against profiles, and publish (re-evaluate everything).

Publishing re-evaluates every profile of the account in the background (RQ jobs on the
``backfill`` queue, which workers serve after time-based re-evaluations, events and syncs), with a
progress counter; the ledger passes on only the differences to the destinations.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from rq import Queue

import rules
from connector.clock import isoformat
from connector.config import Account
from connector.errors import MalformedPayload, UndecodableItem
from connector.event import load_event
from connector.ingest.receivers.spec import normalize
from connector.profiles import iter_profile_ids, load_profile
from connector.worker.jobs import BACKFILL_QUEUE
from rules import EventRecord, Profile, RuleSet

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


def profiles_from_events(path: Path, account_id: str, now: datetime) -> list[Profile]:
    """Profiles built from a JSON-lines file of events (Segment-spec messages or stored Events).

    People are keyed by user id, else email, else anonymous id; no further identity stitching.
    Raises MalformedPayload naming the file and line of a bad entry.
    """
    people: dict[str, dict[str, Any]] = {}
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
                    event = load_event({**data, "account": account_id})
                except UndecodableItem as err:
                    raise MalformedPayload(f"{where}: {err}") from err
            else:
                event = normalize(data, account=account_id, source="file", received_at=now, where=where)
            ids = event.identities
            key = ids.get("user_id") or ids.get("email") or ids.get("anonymous_id")
            if key is None:
                continue
            entry = people.setdefault(key, {"identities": {}, "traits": {}, "events": []})
            for kind, value in ids.items():
                entry["identities"].setdefault(kind, [])
                if value not in entry["identities"][kind]:
                    entry["identities"][kind].append(value)
            entry["traits"].update(event.traits)
            if event.type in ("track", "page", "screen"):
                entry["events"].append(
                    EventRecord(event.name, event.occurred_at, dict(event.properties), event.event_id)
                )
    return [
        Profile(
            account=account_id,
            profile_id=key,
            identities={k: tuple(v) for k, v in entry["identities"].items()},
            traits=entry["traits"],
            events=tuple(sorted(entry["events"], key=lambda r: (r.occurred_at, r.event_id))),
        )
        for key, entry in sorted(people.items())
    ]


def publish(account: Account, conn: redis.Redis, queue_conn: redis.Redis, now: datetime) -> tuple[str, int]:
    """Queue the re-evaluation of every profile of the account; returns (progress key, total)."""
    key = f"publish:{account.id}:{uuid.uuid4().hex[:12]}"
    queue = Queue(BACKFILL_QUEUE, connection=queue_conn)
    queue_conn.hset(key, mapping={"started": isoformat(now), "done": 0, "total": 0})
    queue_conn.expire(key, PROGRESS_TTL_SECONDS)
    total = 0
    chunk: list[str] = []
    for pid in iter_profile_ids(conn, account.id):
        chunk.append(pid)
        if len(chunk) == PUBLISH_CHUNK:
            total += _enqueue(queue, account.id, chunk, key)
            chunk = []
    if chunk:
        total += _enqueue(queue, account.id, chunk, key)
    queue_conn.hset(key, "total", total)
    return key, total


def _enqueue(queue: Queue, account_id: str, chunk: list[str], key: str) -> int:
    queue.enqueue(
        "connector.worker.jobs.reevaluate",
        account_id,
        list(chunk),
        None,
        key,
        result_ttl=0,
        failure_ttl=24 * 3600,
    )
    return len(chunk)


def progress(queue_conn: redis.Redis, key: str) -> tuple[int, int]:
    done, total = queue_conn.hmget(key, "done", "total")
    return int(done or 0), int(total or 0)
