"""Erasure (GDPR / CCPA) and access requests: the profile store's part.

:func:`erase_profile` removes a person from the profile store: their profile and history, the
tombstones of the profiles merged into theirs, their identity links, the identity conflicts,
rejected events and data exports that name them, and the event names (and property keys) of the
account's name index that contain one of their identifiers. It returns what it removed
(:class:`Erased`: the identities and profile ids) so that the erasure service
(:mod:`connector.worker.erasure`, the one entry point) removes the rest: ledgers, due index,
pending sync changes, dead letters, and the ESPs' copies. What remains is one entry in the
account's erasure log with a digest of the profile id and the time: no identifier.

The dedupe markers of the person's events (``dd:{account}:{event_id}``, queue Redis) are kept: their
names are digests of the sender's event id, they hold no identifier, and deleting them would let
the person's earlier signed events, replayed within the dedupe window, be accepted as new.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis

from connector.clock import isoformat
from connector.event import Event
from connector.profiles import keys, rejected
from connector.profiles.bounds import count_dropped
from connector.profiles.identity import AccountLock, delete_index, usable_identities
from connector.profiles.store import ProfileData, name_codes, read_profile

log = logging.getLogger(__name__)

EXPORTS_KEPT = 1000
EXPORTS_MAX_AGE_SECONDS = 30 * 24 * 3600
ERASURE_LOG_KEPT = 100_000
MIN_NAME_NEEDLE = 5  # letters and digits an identifier needs to be looked for in event names
_NON_WORD = re.compile(r"[^0-9a-z]+")


@dataclass(frozen=True)
class Erasure:
    entry_id: str  # the log's stream id; pass it back as ``after`` to read on
    account: str
    profile_digest: str  # a digest of the erased profile id: no identifier is kept
    at: datetime
    source: str


@dataclass(frozen=True)
class Erased:
    """What one erasure removed from the profile store, for the erasure service to finish."""

    account: str
    profile_id: str
    absorbed: tuple[str, ...]  # profiles merged into it earlier (their tombstones are gone too)
    identities: dict[str, list[str]] = field(default_factory=dict)
    event_ids: frozenset[str] = frozenset()  # 16-hex prefixes of its events' ids

    @property
    def profile_ids(self) -> tuple[str, ...]:
        return (self.profile_id, *self.absorbed)

    @property
    def emails(self) -> list[str]:
        return list(self.identities.get("email", []))

    @property
    def needles(self) -> frozenset[str]:
        """Every identifier of the person, lower-cased: identity values and profile ids."""
        values = {v.lower() for vs in self.identities.values() for v in vs}
        return frozenset(values | {pid.lower() for pid in self.profile_ids})


# Tombstones (queue Redis): one per identifier of an erased person, holding the erasure instant
# (written by connector.worker.erasure.record_tombstones).
_PREVIOUS_ID_KINDS = ("user_id", "anonymous_id")


def tombstone_key(account: str, kind: str | None = None, value: str = "") -> str:
    """``erased:{account}:{digest of account, kind, value}``; without a kind, the whole account's."""
    if kind is None:
        return f"erased:{account}"
    digest = hashlib.sha256(f"{account}\x1f{kind}\x1f{value}".encode()).hexdigest()[:32]
    return f"erased:{account}:{digest}"


def tombstone_keys(event: Event) -> Iterator[str]:
    """Every tombstone that could name this event's person, the account's first (the worker drops
    the events they name, :func:`connector.worker.erasure.drop_erased`; the live view's flush
    leaves out the deliveries: :class:`connector.ops.live.Publisher`)."""
    yield tombstone_key(event.account)
    for kind, value in usable_identities(event.identities, frozenset()).items():
        yield tombstone_key(event.account, kind, value)
    previous = event.identities.get("previous_id")
    if isinstance(previous, str) and previous.strip():
        for kind in _PREVIOUS_ID_KINDS:
            yield tombstone_key(event.account, kind, previous.strip())


def exports_key(account: str) -> str:
    return f"exports:{account}"


def profile_digest(account: str, profile_id: str) -> str:
    """The digest the erasure logs keep instead of a profile id (same as the sync erasure log)."""
    return hashlib.sha256(f"{account}\x1f{profile_id}".encode()).hexdigest()[:24]


def erase_profile(
    conn: redis.Redis,
    queue_conn: redis.Redis,
    account: str,
    pid: str,
    now: datetime,
    source: str,
    on_erase: Callable[[Erased], None] | None = None,
) -> Erased | None:
    """Erase one profile from the profile store. None if it did not exist (nothing is logged then).
    ``on_erase`` is given what will be removed before anything is (the erasure journal).

    Callers go through :func:`connector.worker.erasure.erase_person`, which also removes the
    person from the worker's and the sync's keys."""
    with AccountLock(conn, account):
        data = read_profile(conn, name_codes(conn), account, pid)
        if data is None:
            return None
        absorbed = absorbed_of(conn, account, pid)
        erased = Erased(
            account,
            pid,
            absorbed,
            {k: list(v) for k, v in data.identities.items()},
            frozenset({stored.event_id for _, stored in data.events} | set(data.other_event_ids)),
        )
        if on_erase is not None:
            on_erase(erased)
        pairs = [
            (kind, value)
            for kind, values in data.identities.items()
            if kind in keys.KIND_CODES
            for value in values
        ]
        delete_index(conn, account, pairs, (pid, *absorbed))  # the links to these profiles only
        for gone in (pid, *absorbed):
            # the profile's own keys share a slot. No tombstone: the apply script refuses a
            # profile that does not exist, so a batch resolved before this erasure stores nothing
            conn.delete(keys.profile_key(account, gone), keys.history_key(account, gone))
        _log_erasure(conn, queue_conn, account, pid, now, source)
    names = scrub(conn, erased)
    log.info("profile erased", extra={"account": account, "profile": pid, "source": source, "names": names})
    return erased


def absorbed_of(conn: redis.Redis, account: str, pid: str) -> tuple[str, ...]:
    """The profiles merged into this one earlier."""
    fields = conn.hkeys(keys.profile_key(account, pid))
    return tuple(sorted(f.decode()[2:] for f in fields if f.startswith(b"g:")))


def scrub(conn: redis.Redis, erased: Erased) -> int:
    """The rest of the profile store's part, once the profile is gone: the data exports, identity
    conflicts, rejected events and event names that name the person; returns how many names went.
    Safe to run again (an interrupted erasure is finished by running it again)."""
    account = erased.account
    _drop_exports(conn, account, set(erased.profile_ids))
    _drop_conflicts(conn, account, set(erased.profile_ids))
    rejected.purge(conn, account, erased.needles)
    return drop_names(conn, account, erased.needles)


def _log_erasure(
    conn: redis.Redis, queue_conn: redis.Redis, account: str, pid: str, now: datetime, source: str
) -> None:
    key = keys.erasures_key(account)
    conn.xadd(key, {"profile": profile_digest(account, pid), "at": isoformat(now), "source": source})
    count_dropped(queue_conn, "erasure_log", int(conn.xtrim(key, maxlen=ERASURE_LOG_KEPT, approximate=True)))


def erase_account(
    conn: redis.Redis,
    queue_conn: redis.Redis,
    account: str,
    now: datetime,
    source: str,
) -> list[Erased]:
    """Erase every profile of an account (Shopify shop/redact) from the profile store alone (the
    rules dry run's throwaway copy; the service, :func:`connector.worker.erasure.erase_account`,
    erases person by person with its journal). The dedupe markers are kept (the redact's own among
    them: the same signed request replayed later is a duplicate)."""
    from connector.profiles.store import iter_profile_ids

    erased = []
    for pid in list(iter_profile_ids(conn, account)):
        done = erase_profile(conn, queue_conn, account, pid, now, source)
        if done is not None:
            erased.append(done)
    forget_account_remains(conn, account)
    return erased


def forget_account_remains(conn: redis.Redis, account: str) -> None:
    """What an account's erasure removes once its people are erased: the account's exports,
    rejected events and identity conflicts."""
    conn.delete(exports_key(account), keys.rejected_key(account), keys.conflicts_key(account))


def _letters(text: str) -> str:
    return _NON_WORD.sub("", text.lower())


def drop_names(conn: redis.Redis, account: str, needles: frozenset[str]) -> int:
    """Remove from the account's name index (``names:acct``) every event name and property key
    that contains one of the identifiers; returns how many.

    Names are stored snake_cased (``Invited Ann.Lee@example.com`` becomes
    ``invited_ann_lee_example_com``), so names and identifiers are compared by their letters and
    digits only; identifiers of fewer than ``MIN_NAME_NEEDLE`` of them are not looked for (a user
    id ``42`` would match unrelated names). A removed name's code is never given again, and the
    stored events of other profiles that used it read back as ``erased_<code>``. The index's
    generation changes, so every process drops its cached codes of the account."""
    wanted = {w for w in map(_letters, needles) if len(w) >= MIN_NAME_NEEDLE}
    if not wanted:
        return 0
    key = keys.names_key(account)
    doomed: list[bytes] = []
    renamed: dict[str, str] = {}
    for field_name, code in conn.hscan_iter(key, match="n:*", count=1000):
        letters = _letters(field_name.decode()[2:])
        if any(w in letters for w in wanted):
            doomed.append(field_name)
            renamed[f"c:{code.decode()}"] = f"erased_{code.decode()}"
    if doomed:
        made = conn.hget(key, "#gen")  # a new generation of the same kind (keys.made_with_buckets)
        generation = (
            keys.GENERATION_PREFIX if made and keys.made_with_buckets(made) else ""
        ) + uuid.uuid4().hex
        pipe = conn.pipeline(transaction=False)  # one key: one node, in this order
        pipe.hset(key, mapping={**renamed, "#gen": generation})
        pipe.hdel(key, *doomed)
        pipe.execute()
    return len(doomed)


def _drop_exports(conn: redis.Redis, account: str, pids: set[str]) -> None:
    doomed = [
        entry_id
        for entry_id, fields in conn.xrange(exports_key(account))
        if fields.get(b"profile", b"").decode() in pids
    ]
    if doomed:
        conn.xdel(exports_key(account), *doomed)


def _drop_conflicts(conn: redis.Redis, account: str, pids: set[str]) -> None:
    doomed = [
        entry_id
        for entry_id, fields in conn.xrange(keys.conflicts_key(account))
        if fields.get(b"profile", b"").decode() in pids or fields.get(b"other", b"").decode() in pids
    ]
    if doomed:
        conn.xdel(keys.conflicts_key(account), *doomed)


def erasures_since(
    conn: redis.Redis,
    account: str,
    since: datetime | None = None,
    after: str | None = None,
    count: int = 1000,
) -> list[Erasure]:
    """Erasures logged at or after ``since`` (or strictly after the entry id ``after``), oldest first."""
    if after is not None:
        start = f"({after}"
    elif since is not None:
        start = str(int(since.timestamp() * 1000))
    else:
        start = "-"
    out = []
    for entry_id, fields in conn.xrange(keys.erasures_key(account), min=start, count=count):
        out.append(
            Erasure(
                entry_id=entry_id.decode(),
                account=account,
                profile_digest=fields[b"profile"].decode(),
                at=datetime.fromisoformat(fields[b"at"].decode().replace("Z", "+00:00")),
                source=fields[b"source"].decode(),
            )
        )
    return out


def export_document(data: ProfileData) -> dict[str, Any]:
    """Everything stored about a person, as a JSON-able document."""
    return {
        "account": data.account,
        "profile_id": data.profile_id,
        "identities": dict(sorted(data.identities.items())),
        "traits": data.traits,
        "trait_updated_at": {k: isoformat(v) for k, v in sorted(data.trait_times.items())},
        "first_seen": {k: isoformat(v) for k, v in sorted(data.first_seen.items())},
        "last_seen": {k: isoformat(v) for k, v in sorted(data.last_seen.items())},
        "identify_event_id_prefixes": sorted(data.other_event_ids),
        "events": [
            {
                "name": name,
                "occurred_at": isoformat(stored.occurred_at),
                "event_id_prefix": stored.event_id,
                "properties": stored.properties,
            }
            for name, stored in data.events
        ],
    }


def export_profile(conn: redis.Redis, account: str, pid: str) -> dict[str, Any] | None:
    data = read_profile(conn, name_codes(conn), account, pid)
    return export_document(data) if data is not None else None


def store_export(
    conn: redis.Redis, queue_conn: redis.Redis, account: str, pid: str, request_id: str, now: datetime
) -> bool:
    """Answer a data request: keep the export for an operator to hand over (30 days, at most
    ``EXPORTS_KEPT``; what either bound drops is counted as ``exports``)."""
    document = export_profile(conn, account, pid)
    if document is None:
        return False
    key = exports_key(account)
    conn.xadd(
        key, {"profile": pid, "request": request_id, "at": isoformat(now), "data": json.dumps(document)}
    )
    oldest = int((now.timestamp() - EXPORTS_MAX_AGE_SECONDS) * 1000)
    dropped = int(conn.xtrim(key, minid=oldest)) + int(conn.xtrim(key, maxlen=EXPORTS_KEPT, approximate=True))
    count_dropped(queue_conn, "exports", dropped)
    return True


def stored_exports(conn: redis.Redis, account: str, count: int = 100) -> list[dict[str, Any]]:
    out = []
    for entry_id, fields in conn.xrevrange(exports_key(account), count=count):
        out.append(
            {
                "id": entry_id.decode(),
                "profile": fields[b"profile"].decode(),
                "request": fields[b"request"].decode(),
                "at": fields[b"at"].decode(),
                "data": json.loads(fields[b"data"]),
            }
        )
    return out
