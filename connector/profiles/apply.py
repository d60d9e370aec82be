"""Applying a batch of events of one account to its profiles.

1. Each event is checked: without a usable identity it is rejected (kept with its reason).
2. Identities are resolved for the whole batch under the account's identity lock (one pass).
3. The events are applied per profile, one Lua script body per profile, many profiles per script
   call (:mod:`.batched`), all in one round trip.
   A profile merged away meanwhile answers with a redirect; its events go to the survivor.
4. Access requests (``data_request``) are answered last. Erasure requests (``delete``) are not
   carried out here: they are returned in :attr:`Outcome.erasures` for the caller's erasure
   service (:mod:`connector.worker.erasure`), which removes the person from everything the
   connector keeps, the profile store being one part.

Idempotent: applying the same batch twice changes nothing the second time (event ids).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis

from connector.config import Account
from connector.errors import ConnectorError
from connector.event import PRIVILEGED_TYPES, PUBLIC_SOURCES, Event
from connector.profiles import identity, keys, rejected
from connector.profiles.bounds import count_dropped
from connector.profiles.erasure import store_export
from connector.profiles.properties import kept_properties
from connector.profiles.store import (
    APPLY_MANY,
    COMPRESS_AT,
    PROPERTY_PREFIX,
    Prepared,
    name_codes,
    prepare,
    rewrite_histories,
    run_scripts,
)

log = logging.getLogger(__name__)

HISTORY_TYPES = ("track", "page", "screen")
SHOP_REDACT = "shop_redact"
MAX_REDIRECTS = 8
MIN_YEAR, MAX_YEAR = 1970, 2200  # the store's fixed-width time keys hold 13-digit epoch milliseconds


@dataclass
class Outcome:
    applied: int = 0  # history events stored (track, page, screen)
    identified: int = 0  # events applied that keep no history: identify, alias, group (traits, identities)
    duplicates: int = 0
    rejected: int = 0
    dropped: int = 0  # events of a profile erased meanwhile
    expired: int = 0  # history events already older than the account's retention window
    erased: int = 0
    exported: int = 0
    touched: set[str] = field(default_factory=set)
    absorbed: dict[str, str] = field(default_factory=dict)  # merged-away profile -> survivor
    history_dropped: int = 0  # history events removed by the retention bounds (age, count)
    unnamed_properties: int = 0  # properties not kept: their key is new past the account's names cap
    untraited: int = 0  # traits not kept: new to a profile that has the most it keeps (store.MAX_TRAITS)
    oversized_traits: int = 0  # trait values not kept: longer than store.MAX_TRAIT_BYTES
    unlinked: int = 0  # identifiers not linked to their profile: past identity.MAX_IDENTIFIERS
    # erasures asked for: (profile id, source); a profile id of None erases the whole account
    erasures: list[tuple[str | None, str]] = field(default_factory=list)
    applied_to: dict[str, str] = field(default_factory=dict)  # event id -> the profile it went to
    # profile -> (its revision before this batch's first write, after its last)
    revisions: dict[str, tuple[int, int]] = field(default_factory=dict)


def count_drops(counters: Any, outcome: Outcome) -> None:
    """Add what the store's bounds dropped while applying to ``metrics:dropped`` (a pipeline)."""
    count_dropped(counters, "profile_history", outcome.history_dropped)
    count_dropped(counters, "property_names", outcome.unnamed_properties)
    count_dropped(counters, "profile_traits", outcome.untraited)
    count_dropped(counters, "trait_values", outcome.oversized_traits)
    count_dropped(counters, "profile_identifiers", outcome.unlinked)


def _retention(account: Account) -> identity.Retention:
    return identity.Retention(account.retention_max_age_days, account.retention_max_events)


def _check(event: Event, blocked: frozenset[str]) -> tuple[dict[str, str], str | None] | str:
    """Usable identities (and alias' previous id) or the reason the event cannot be stored."""
    if not MIN_YEAR <= event.occurred_at.year <= MAX_YEAR:
        return f"occurred_at outside {MIN_YEAR}..{MAX_YEAR}"
    ids = identity.usable_identities(event.identities, blocked)
    previous = identity.clean_value("previous_id", event.identities.get("previous_id"), blocked)
    if event.type == "alias" and previous is None:
        return "alias without a usable previous id"
    if not ids and previous is None:
        if event.identities:
            return "no usable identity (only blocked or unsupported identity values)"
        return "no identity"
    return ids, previous


def apply_events(
    conn: redis.Redis, queue_conn: redis.Redis, account: Account, events: Sequence[Event], now: datetime
) -> Outcome:
    outcome = Outcome()
    keyed = sorted((e.occurred_at, e.event_id, n) for n, e in enumerate(events))
    ordered = [events[n] for _, _, n in keyed]
    event_ids = {id(events[n]): eid for _, eid, n in keyed}
    rejects = conn.pipeline(transaction=False)
    regular, requests = _sort_out(ordered, account, rejects, now, outcome)
    prepared: list[Prepared] = []
    if regular:
        regular, prepared = _prepare_all(conn, account, regular, event_ids, rejects, now, outcome)
    if outcome.rejected:
        rejects.execute()
        rejected.trim(conn, queue_conn, account.id)
    if regular:
        resolution = identity.resolve(
            conn,
            account.id,
            _retention(account),
            [(i, p, e.source in PUBLIC_SOURCES) for e, i, p in regular],
            now,
        )
        groups: dict[str, list[Prepared]] = {}
        for pid, ready in zip(resolution.targets, prepared, strict=True):
            groups.setdefault(pid, []).append(ready)
        outcome.absorbed.update(resolution.absorbed)
        outcome.unlinked += resolution.unlinked
        event_of = {id(ready): item[0].event_id for item, ready in zip(regular, prepared, strict=True)}
        _apply_groups(conn, account, groups, now, outcome, event_of)
    for event, ids in requests:
        _request(conn, queue_conn, account, event, ids, now, outcome)
    return outcome


_Regular = tuple[Event, dict[str, str], str | None]


def _sort_out(
    ordered: Sequence[Event], account: Account, rejects: Any, now: datetime, outcome: Outcome
) -> tuple[list[_Regular], list[tuple[Event, dict[str, str]]]]:
    """Split the events into regular ones and privacy requests; reject the unusable ones."""
    regular: list[_Regular] = []
    requests: list[tuple[Event, dict[str, str]]] = []
    for event in ordered:
        checked = _check(event, account.blocked_identity_values)
        if event.type == "delete" and event.name == SHOP_REDACT:
            requests.append((event, {}))
        elif isinstance(checked, str):
            rejected.record(rejects, event, checked, now)
            outcome.rejected += 1
        elif event.type in PRIVILEGED_TYPES:
            requests.append((event, checked[0]))
        else:
            regular.append((event, checked[0], checked[1]))
    return regular, requests


def _prepare_all(
    conn: redis.Redis,
    account: Account,
    regular: list[_Regular],
    event_ids: dict[int, str],
    rejects: Any,
    now: datetime,
    outcome: Outcome,
) -> tuple[list[_Regular], list[Prepared]]:
    """The regular events that can be stored, each with its prepared form; the others are rejected."""
    props: list[dict[str, Any] | None] = []
    wanted: set[str] = set()
    for event, _, _ in regular:
        kept_props = (
            kept_properties(account.id, event.name, event.properties) if event.type in HISTORY_TYPES else None
        )
        props.append(kept_props)
        if kept_props is not None:  # only the history stores names: identify, alias, group need none
            wanted.add(event.name)
            wanted.update(PROPERTY_PREFIX + key for key in kept_props)
    namer = name_codes(conn)
    codes = namer.codes(account.id, wanted)
    kept: list[_Regular] = []
    prepared: list[Prepared] = []
    for item, kept_props in zip(regular, props, strict=True):
        event = item[0]
        if kept_props is not None and event.name not in codes:
            rejected.record(rejects, event, _PAST_CAP % (event.name, namer.cap), now)
            outcome.rejected += 1
            continue
        unnamed = 0
        if kept_props and len(codes) < len(wanted):
            named = {k: v for k, v in kept_props.items() if PROPERTY_PREFIX + k in codes}
            unnamed, kept_props = len(kept_props) - len(named), named
        try:
            code = codes.get(event.name, "")  # none for an identify, alias or group: not in the history
            ready = prepare(event.occurred_at, event_ids[id(event)], code, kept_props, event.traits, codes)
        except (TypeError, ValueError, OverflowError) as err:
            rejected.record(rejects, event, f"cannot be stored: {err}", now)
            outcome.rejected += 1
            continue
        outcome.unnamed_properties += unnamed
        prepared.append(ready)
        kept.append(item)
    return kept, prepared


_PAST_CAP = (
    "event name `%s` is new and the account has used up its %d event names and property keys "
    '(docs/profiles.md, "Names")'
)


def _created_meanwhile(conn: redis.Redis, account: str, absent: list[str]) -> list[str]:
    """Of the profiles the apply found missing, those that exist once the account's identity lock is
    free: another worker had written the identity index (which this batch read without the lock) and
    not yet the profile's own links. The others were erased after the batch was resolved (erasure
    takes the same lock)."""
    if not absent:
        return []
    with identity.AccountLock(conn, account):
        pipe = conn.pipeline(transaction=False)
        for pid in absent:
            pipe.exists(keys.profile_key(account, pid))
        return [pid for pid, there in zip(absent, pipe.execute(), strict=True) if there]


@dataclass
class _Round:
    """What one round of apply replies leaves to do: the events to send again per profile (merged
    away, a history to open first, a profile whose links were being written), and the profiles to
    open, compress, settle or look for again."""

    again: dict[str, list[Prepared]] = field(default_factory=dict)
    moved: set[str] = field(default_factory=set)
    opened: list[str] = field(default_factory=list)
    grown: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)


def _count_applied(
    outcome: Outcome, pid: str, items: list[Prepared], reply: Any, event_of: dict[int, str]
) -> None:
    outcome.applied += int(reply[1])
    outcome.duplicates += int(reply[2])
    stored = sum(1 for item in items if item.member)
    outcome.identified += len(items) - stored
    outcome.expired += stored - int(reply[1]) - int(reply[2])
    outcome.history_dropped += int(reply[3])
    outcome.untraited += int(reply[6])
    outcome.oversized_traits += sum(item.oversized for item in items)
    outcome.touched.add(pid)
    after = int(reply[5])
    outcome.revisions[pid] = (outcome.revisions.get(pid, (after - 1, 0))[0], after)
    outcome.applied_to.update((event_of[id(item)], pid) for item in items)


def _sort_replies(
    order: list[str],
    replies: list[Any],
    groups: dict[str, list[Prepared]],
    outcome: Outcome,
    event_of: dict[int, str],
) -> _Round:
    done = _Round()
    for pid, reply in zip(order, replies, strict=True):
        status = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if status == "ok":
            if int(reply[4]) >= COMPRESS_AT:
                done.grown.append(pid)
            _count_applied(outcome, pid, groups[pid], reply, event_of)
        elif status == "z":  # a compressed history that must be opened for these events
            done.opened.append(pid)
            done.again.setdefault(pid, []).extend(groups[pid])
        elif status == "m":
            done.again.setdefault(reply[1].decode(), []).extend(groups[pid])
            done.moved.add(pid)
        elif status == "n":
            done.absent.append(pid)
        else:  # erased
            outcome.dropped += len(groups[pid])
    return done


def _apply_groups(
    conn: redis.Redis,
    account: Account,
    groups: dict[str, list[Prepared]],
    now: datetime,
    outcome: Outcome,
    event_of: dict[int, str],
) -> None:
    script = APPLY_MANY
    retention = _retention(account)
    head: list[bytes | str | int] = [retention.cutoff_seconds(now), retention.max_events]
    for _ in range(MAX_REDIRECTS):
        if not groups:
            return
        order = sorted(groups)
        calls = []
        for pid in order:
            args = list(head)
            for item in groups[pid]:
                args.extend(item.args())
            calls.append(([keys.profile_key(account.id, pid), keys.history_key(account.id, pid)], args))
        done = _sort_replies(order, run_scripts(conn, script, calls), groups, outcome, event_of)
        created = set(_created_meanwhile(conn, account.id, done.absent))
        for pid in done.absent:
            if pid in created:
                done.again.setdefault(pid, []).extend(groups[pid])
            else:  # erased after the batch was resolved
                outcome.dropped += len(groups[pid])
        rewrite_histories(conn, account.id, done.grown, compress=True)
        rewrite_histories(conn, account.id, done.opened, compress=False)
        if done.moved:
            identity.settle(conn, account.id, retention, now, done.moved)
        groups = done.again
    if not groups:  # the last round applied everything
        return
    # never acknowledged as if applied: the drain leaves the batch pending and retries it (the
    # apply is idempotent), instead of losing events whose profile was contended or merged on
    log.error("too many redirects; the batch is retried", extra={"account": account.id})
    raise ConnectorError(f"events of {len(groups)} profile(s) not applied after {MAX_REDIRECTS} redirects")


def _request(
    conn: redis.Redis,
    queue_conn: redis.Redis,
    account: Account,
    event: Event,
    ids: dict[str, str],
    now: datetime,
    outcome: Outcome,
) -> None:
    source = f"{event.source}:{event.name}"
    if event.type == "delete" and event.name == SHOP_REDACT:
        outcome.erasures.append((None, source))
        return
    pids = {pid for kind, value in ids.items() if (pid := identity.lookup(conn, account.id, kind, value))}
    for pid in sorted(pids):
        if event.type == "delete":
            outcome.erasures.append((pid, source))
            outcome.touched.discard(pid)
        else:
            outcome.exported += store_export(conn, queue_conn, account.id, pid, event.event_id, now)
    if not pids:
        log.info(
            "privacy request for an unknown person",
            extra={"account": account.id, "event_id": event.event_id, "type": event.type},
        )
