"""Identity resolution per account (Segment semantics).

A profile is found by any of its identities. Resolution, merges and erasures of one account run
under the account's identity lock (a short Redis lock held for the resolution of one batch, a few
milliseconds), so identities are claimed and profiles merged without races; the event history is
applied afterwards, outside the lock, by per-profile atomic scripts.

A merge first marks the absorbed profile with ``m`` (merged into), then copies its data into the
surviving profile (idempotent), re-points its identities and deletes it. A worker that applies
events to the absorbed profile after the mark is redirected by the apply script; a merge cut short
by a crash is finished by the next resolution that meets the mark.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

import redis

from connector import buckets, clock
from connector.errors import ConnectorError
from connector.profiles import keys
from connector.profiles.batched import Batched
from connector.profiles.bounds import count_dropped
from connector.profiles.store import MERGE, history_entries, rewrite_histories
from connector.redis_conn import cached_script, is_cluster, per_node

log = logging.getLogger(__name__)

LOCK_TTL_MS = 30_000
LOCK_WAIT_SECONDS = 60.0
TOMBSTONE_TTL_SECONDS = 7 * 24 * 3600
CONFLICTS_KEPT = 1000
MAX_IDENTITY_LENGTH = 500
MERGE_TRIES = 8
# Identifiers (of every kind together) one profile is linked to at most; counted in its hash (``in``,
# the number of its ``i:`` fields). Past it a new identifier is not linked (counted,
# ``profile_identifiers``) and no profile is merged into it; the identifiers it has keep working.
# A sender with the public write key could otherwise give one person tens of thousands of anonymous
# ids, which every merge, erasure, access export and person page of theirs reads.
MAX_IDENTIFIERS = 1_000

INDEX_CAP = 40  # mean entries a bucket of the index is split at (a listpack holds 128)

_RANK = {kind: rank for rank, kind in enumerate(keys.KIND_CODES)}
_ANONYMOUS = _RANK["anonymous_id"]
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LockTimeout(ConnectorError):
    """The account's identity lock could not be taken in time; the batch is retried."""


class AccountLock:
    def __init__(self, conn: redis.Redis, account: str) -> None:
        self.conn = conn
        self.key = keys.lock_key(account)
        self.token = uuid.uuid4().hex

    def __enter__(self) -> AccountLock:
        deadline = clock.monotonic() + LOCK_WAIT_SECONDS
        pause = 0.0005
        while not self.conn.set(self.key, self.token, nx=True, px=LOCK_TTL_MS):
            if clock.monotonic() > deadline:
                raise LockTimeout(f"identity lock of {self.key} not acquired")
            time.sleep(pause)
            pause = min(pause * 2, 0.002)
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.conn.eval(_RELEASE, 1, self.key, self.token)


def usable_identities(identities: Mapping[str, object], blocked: frozenset[str]) -> dict[str, str]:
    """The identities that may link: known kinds, trimmed (emails lower-cased), not blocked."""
    out: dict[str, str] = {}
    for kind, raw in identities.items():
        if kind in keys.KIND_CODES:
            value = clean_value(kind, raw, blocked)
            if value is not None:
                out[kind] = value
    return out


def clean_value(kind: str, raw: object, blocked: frozenset[str]) -> str | None:
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        return None
    value = str(raw).strip()
    if kind == "email":
        value = value.lower()
    if not value or value.lower() in blocked or len(value) > MAX_IDENTITY_LENGTH:
        return None
    return value


@dataclass(frozen=True)
class Retention:
    max_age_days: int
    max_events: int

    def cutoff_seconds(self, now: datetime) -> int:
        return int(now.timestamp()) - self.max_age_days * 86400


@dataclass
class _State:
    uid: str | None = None
    merged_into: str | None = None
    erased: bool = False
    ids: int | None = None  # identifiers linked to it (its ``in``); None: not read yet
    # its user id came from an event through the public write key (``uw`` = 1): a signed sender's
    # event naming the profile with another user id takes it (see Resolver._choose)
    uid_public: bool = False


@dataclass
class Resolution:
    """The result of resolving one batch: a profile id per item, plus what happened."""

    targets: list[str] = field(default_factory=list)
    merges: int = 0
    conflicts: int = 0
    created: int = 0
    absorbed: dict[str, str] = field(default_factory=dict)  # merged-away profile -> survivor
    # identifiers of the events not linked to their profile because of MAX_IDENTIFIERS: new to a
    # profile that holds the most it keeps, or naming a profile that could not be merged into it
    unlinked: int = 0


# The identifiers a profile is linked to (KEYS: the profile): its ``in``, else (a profile stored
# before the count came in) its ``i:`` fields counted once and kept in ``in``; 0 for a profile that
# is not there or is a tombstone (nothing is written to it).
_COUNT_IDENTIFIERS = """
local st = redis.call('HMGET', KEYS[1], 'in', 'm', 'x')
if st[1] then return tonumber(st[1]) end
if st[2] or st[3] or redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = 0
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == 'i:' then n = n + 1 end
end
redis.call('HSET', KEYS[1], 'in', n)
return n
"""

# HSET of one profile's fields (KEYS: the profile; ARGV: field, value pairs), many per script call;
# 500 pairs per HSET (Lua's unpack stops at a few thousand values)
_HSET_MANY = Batched(
    """
local n = 0
for from = 1, #ARGV, 1000 do
  n = n + redis.call('HSET', KEYS[1], unpack(ARGV, from, math.min(from + 999, #ARGV)))
end
return n
"""
)


class Resolver:
    """Resolves a batch of identity sets of one account. Use only under :class:`AccountLock`."""

    def __init__(
        self, conn: redis.Redis, account: str, retention: Retention, now: datetime, locked: bool = True
    ) -> None:
        self.conn = conn
        self.locked = locked  # without the lock: read only (no merge is finished, nothing written)
        self.account = account
        self.retention = retention
        self.now = now
        self.index: dict[tuple[str, str], str | None] = {}
        self.state: dict[str, _State] = {}
        self.writes: list[tuple[str, str, str]] = []  # (kind, value, pid)
        self.uid_writes: dict[str, tuple[str, str]] = {}  # pid -> (user id, its ``uw``; "": none)
        self.legacy: str | None = None  # the index's ``o`` (None: no index yet)
        self.result = Resolution()
        self._merge_script = cached_script(conn, MERGE)
        self._fresh = b""  # random bytes for new profile ids, drawn from the OS 64 ids at a time

    def _new_pid(self) -> str:
        """A new profile id: 16 random hex digits. The random bytes are drawn from the OS for 64 ids
        at once: a call to the OS per id would also let another drain lane take the interpreter
        once per new person (and wait for it back)."""
        if not self._fresh:
            self._fresh = os.urandom(8 * 64)
        pid, self._fresh = self._fresh[:8].hex(), self._fresh[8:]
        return pid

    # -- loading ----------------------------------------------------------------------------
    def load(self, pairs: set[tuple[str, str]]) -> None:
        todo = sorted(p for p in pairs if p not in self.index)
        if not todo:
            return
        found, self.legacy = read_index(self.conn, self.account, todo, move=self.locked)
        pids = set()
        for pair, pid in zip(todo, found, strict=True):
            self.index[pair] = pid
            if pid:
                pids.add(pid)
        if self.locked:
            # without the lock only the index is read: a merged or erased profile is caught by the
            # apply script (redirect / drop), so its state is not needed here
            self._load_states(pids)
        for pair in todo:
            self.index[pair] = self._follow(self.index[pair])

    def _load_states(self, pids: set[str]) -> None:
        todo = [p for p in pids if p not in self.state]
        merged: list[str] = []
        while todo:
            pipe = self.conn.pipeline(transaction=False)
            for pid in todo:
                pipe.hmget(keys.profile_key(self.account, pid), "uid", "m", "x", "in", "uw")
            nxt = []
            for pid, (uid, into, erased, ids, uid_public) in zip(todo, pipe.execute(), strict=True):
                st = _State(
                    uid=uid.decode() if uid else None,
                    merged_into=into.decode() if into else None,
                    erased=bool(erased),
                    ids=int(ids) if ids is not None else None,
                    uid_public=uid_public == b"1",
                )
                self.state[pid] = st
                if st.merged_into:
                    merged.append(pid)
                    if st.merged_into not in self.state:
                        nxt.append(st.merged_into)
            todo = nxt
        if not merged or not self.locked:
            return
        # a merged profile that still holds data: a merge was cut short; finish it
        pipe = self.conn.pipeline(transaction=False)
        for pid in merged:
            pipe.hlen(keys.profile_key(self.account, pid))
            pipe.exists(keys.history_key(self.account, pid))
        replies = pipe.execute()
        for n, pid in enumerate(merged):
            length, history = replies[2 * n], replies[2 * n + 1]
            into = self.state[pid].merged_into
            if (int(length) > 1 or history) and into:
                target = self._follow(into)
                if target is not None:
                    self.state.setdefault(target, _State()).ids = self._copy_into(pid, target)

    def _follow(self, pid: str | None) -> str | None:
        seen = set()
        while pid is not None:
            st = self.state.get(pid)
            if st is None:
                return pid
            if st.erased:
                return None
            if st.merged_into is None:
                return pid
            if pid in seen:
                return None
            seen.add(pid)
            pid = st.merged_into
        return None

    # -- assigning --------------------------------------------------------------------------
    def known(self, ids: Mapping[str, str]) -> str | None:
        """The one live profile all these identities already point to, else None."""
        found = {self.index.get(pair) for pair in ids.items()}
        if len(found) != 1:
            return None
        return found.pop()

    def assign(self, ids: Mapping[str, str], previous: str | None = None, public: bool = False) -> str:
        """The profile of an event's identities, made, chosen and merged as docs/profiles.md says.
        ``public``: the event came through the account's public write key (the tracking API), which
        anyone may hold: it never merges two profiles that both have an email."""
        pairs = set(ids.items())
        if previous:
            pairs |= {("anonymous_id", previous), ("user_id", previous)}
        self.load(pairs)
        ranks = self._ranks(ids, previous)
        event_uid = ids.get("user_id")
        target = self._choose(ranks, event_uid, public)
        if target is not None and ranks[target] == _ANONYMOUS:
            target = self._not_through_a_device(ranks, target, event_uid, ids.get("email"))
        if target is not None and event_uid:
            target = self._not_through_a_claimed_user_id(target, event_uid, ids.get("email"), public)
        if target is None:
            target = self._new_pid()
            self.state[target] = _State(ids=0)
            self.result.created += 1
        self._absorb(ranks, target, event_uid or self._uid(target), ids.get("email"), pairs, public)
        # the strongest first: a profile with room for only some of them takes those
        for kind, value in sorted(ids.items(), key=lambda pair: _RANK[pair[0]]):
            if self.index.get((kind, value)) is None:
                self._link(kind, value, target)
        unknown_previous = previous and self.index.get(("user_id", previous)) is None
        if previous and unknown_previous and self.index.get(("anonymous_id", previous)) is None:
            self._link("anonymous_id", previous, target)
        # the user id is the profile's only once it is linked to it (not past the cap); a signed
        # sender's replaces one that came through the public write key
        if event_uid and self.index.get(("user_id", event_uid)) == target and event_uid != self._uid(target):
            st = self.state[target]
            if st.uid is None or (st.uid_public and not public):
                # ``uw`` written only where it says something: set, or cleared on a replacement
                self.uid_writes[target] = (event_uid, "1" if public else "0" if st.uid_public else "")
                st.uid, st.uid_public = event_uid, public
        return target

    def _ranks(self, ids: Mapping[str, str], previous: str | None) -> dict[str, int]:
        """The profiles these identities point to, each with the best rank of the kinds naming it
        (a previous id ranks as an anonymous id)."""
        named = list(ids.items())
        if previous:
            named += [("user_id", previous), ("anonymous_id", previous)]
        ranks: dict[str, int] = {}
        for n, (kind, value) in enumerate(named):
            pid = self.index.get((kind, value))
            if pid is not None:
                rank = _RANK[kind] if n < len(ids) else _RANK["anonymous_id"]
                ranks[pid] = min(ranks.get(pid, 99), rank)
        return ranks

    def _choose(self, ranks: Mapping[str, int], event_uid: str | None, public: bool = False) -> str | None:
        """The surviving profile: the user id's own, else the best ranked one that may take it: one
        without a user id, or, for a signed sender's event, one whose user id came through the public
        write key (anyone may send any user id with a customer's email there; the customer's own
        signed events then still reach their profile)."""
        if event_uid:
            target = self.index.get(("user_id", event_uid))
            if target is not None:
                return target
            pool = [p for p in ranks if self._uid(p) is None or (not public and self._uid_public(p))]
        else:
            pool = [p for p in ranks if self._uid(p) is not None] or list(ranks)
        return min(pool, key=lambda p: (ranks[p], p)) if pool else None

    def _absorb(
        self,
        ranks: Mapping[str, int],
        target: str,
        target_uid: str | None,
        email: str | None,
        named: set[tuple[str, str]],
        public: bool = False,
    ) -> None:
        """Merge the other profiles into ``target``; one with another user id is a conflict, and so
        is one named only by an anonymous id (a device's cookie, which anyone may send with any
        email through a public write key) when both it and ``target`` have an email, and one whose
        identifiers would take ``target`` past :data:`MAX_IDENTIFIERS` (the event's identifiers
        that name it stay with it, counted as not linked)."""
        for other in sorted(set(ranks) - {target}):
            other_uid = self._uid(other)
            if other_uid and target_uid and other_uid != target_uid:
                self._conflict(other, target)
                continue
            through_a_device = _ANONYMOUS in (ranks[other], ranks.get(target))
            claimed = self._uid_public(other) or self._uid_public(target)  # a user id of the public key
            if (through_a_device or public or claimed) and self._both_have_emails(
                other, target, email, target not in ranks
            ):
                self._conflict(other, target)
                continue
            if not self._room(target, self._ids(other)):
                self._conflict(other, target, why="identifiers")
                self.result.unlinked += sum(1 for pair in named if self.index.get(pair) == other)
                continue
            self._merge(other, target)
            target_uid = target_uid or other_uid

    def _not_through_a_device(
        self, ranks: Mapping[str, int], target: str, event_uid: str | None, email: str | None
    ) -> str | None:
        """``target`` was reached only through an anonymous id: when a profile the event names by a
        stronger identity cannot be merged into it (both have an email), the event goes to that
        one instead (the device's profile stays as it is). An email no profile holds yet is not
        added to a device's profile that has another one: the event makes a profile of its own
        (None), or anyone could attach their address to a customer by naming the customer's
        device, and receive the customer's segments, data and erasure."""
        if event_uid:
            return target
        named = sorted((p for p in ranks if ranks[p] < _ANONYMOUS), key=lambda p: (ranks[p], p))
        for other in named:
            if self._has_email(other) and self._has_email(target):
                return other
        if email is not None and self.index.get(("email", email)) is None and self._has_email(target):
            return None
        return target

    def _not_through_a_claimed_user_id(
        self, target: str, event_uid: str, email: str | None, public: bool
    ) -> str | None:
        """``target`` was found by a user id someone may have claimed through the public write key:
        a signed sender's event naming it with the email of another customer goes to that customer
        (the claimed id stays where it is, the two are not merged); a public event naming it by a
        user id that is no longer its own (a signed sender's replaced it) does not add a new email
        to it: the event makes a profile of its own (None)."""
        owner = self.index.get(("email", email)) if email is not None else None
        if (
            not public
            and self._uid_public(target)
            and owner not in (None, target)
            and self._has_email(target)
        ):
            return owner
        own = self._uid(target)
        if public and own not in (None, event_uid) and email is not None and owner is None:
            return None if self._has_email(target) else target
        return target

    def _both_have_emails(self, other: str, target: str, email: str | None, made: bool) -> bool:
        """Whether ``other`` has an email and ``target`` has one or is about to take the event's:
        its own, or, for a profile the event ``made``, one no profile holds yet."""
        if not self._has_email(other):
            return False
        takes = (target, None) if made else (target,)
        return (email is not None and self.index.get(("email", email)) in takes) or self._has_email(target)

    def _has_email(self, pid: str) -> bool:
        """Whether the profile holds an email: one this batch knows points to it (loaded, or linked
        by an earlier event of the batch and not written yet), else one stored in it (the index
        has no reverse lookup)."""
        if any(kind == "email" and owner == pid for (kind, _), owner in self.index.items()):
            return True
        match = keys.identity_field("email", "*")
        return any(
            True for _ in self.conn.hscan_iter(keys.profile_key(self.account, pid), match=match, count=1000)
        )

    def _uid(self, pid: str) -> str | None:
        st = self.state.get(pid)
        return st.uid if st else None

    def _uid_public(self, pid: str) -> bool:
        st = self.state.get(pid)
        return st.uid_public if st else False

    def _ids(self, pid: str) -> int:
        """How many identifiers the profile is linked to (read, or counted once, if not known yet)."""
        st = self.state.setdefault(pid, _State())
        if st.ids is None:
            count = _script(self.conn, _COUNT_IDENTIFIERS)
            st.ids = int(count(keys=[keys.profile_key(self.account, pid)], args=[]))
        return st.ids

    def _room(self, pid: str, more: int) -> bool:
        """Whether the profile can be linked to ``more`` identifiers within MAX_IDENTIFIERS."""
        return self._ids(pid) + more <= MAX_IDENTIFIERS

    def _link(self, kind: str, value: str, pid: str) -> None:
        """Link a new identifier to the profile, unless that takes it past MAX_IDENTIFIERS (then the
        identifier stays unknown, and is counted)."""
        if not self._room(pid, 1):
            self.result.unlinked += 1
            return
        self.state[pid].ids = self._ids(pid) + 1
        self.index[(kind, value)] = pid
        self.writes.append((kind, value, pid))

    def _conflict(self, other: str, target: str, why: str | None = None) -> None:
        self.result.conflicts += 1
        key = keys.conflicts_key(self.account)
        entry = {"profile": target, "other": other, "at": str(int(self.now.timestamp()))}
        if why is not None:
            entry["why"] = why
        self.conn.xadd(key, entry)
        # counted in the profile Redis; /metrics reads it there too when the two are split
        count_dropped(
            self.conn, "conflicts", int(self.conn.xtrim(key, maxlen=CONFLICTS_KEPT, approximate=True))
        )
        log.info(
            "identity conflict not merged", extra={"account": self.account, "profile": target, "other": other}
        )

    # -- writing ----------------------------------------------------------------------------
    def flush(self) -> None:
        if not self.writes and not self.uid_writes:
            return
        fields: dict[str, dict[str, str]] = {}
        for kind, value, pid in self.writes:
            fields.setdefault(pid, {})[keys.identity_field(kind, value)] = ""
        for pid, (uid, uid_public) in self.uid_writes.items():
            fields.setdefault(pid, {})["uid"] = uid
            if uid_public:
                fields[pid]["uw"] = uid_public
        for pid in {pid for _, _, pid in self.writes}:  # the count of the identifiers linked to it
            fields[pid]["in"] = str(self.state[pid].ids)
        write_index(self.conn, self.account, {(k, v): pid for k, v, pid in self.writes}, legacy=self.legacy)
        calls = [
            ("HSET", keys.profile_key(self.account, pid), [x for pair in mapping.items() for x in pair])
            for pid, mapping in fields.items()
        ]
        if is_cluster(self.conn):
            per_node(self.conn, calls)
        else:  # one script call per hundred profiles
            _HSET_MANY.run(self.conn, [([key], args) for _, key, args in calls])
        self.writes.clear()
        self.uid_writes.clear()

    def _merge(self, loser: str, target: str) -> None:
        """Merge ``loser`` into ``target`` (both live)."""
        self.flush()
        linked = self._copy_into(loser, target, mark=True)
        st = self.state.setdefault(loser, _State())
        st.merged_into = target
        tst = self.state.setdefault(target, _State())
        tst.uid = tst.uid or st.uid
        tst.ids = linked
        for pair, pid in self.index.items():
            if pid == loser:
                self.index[pair] = target
        self.result.merges += 1
        self.result.absorbed[loser] = target
        log.info("profiles merged", extra={"account": self.account, "profile": target, "merged": loser})

    def _copy_into(self, loser: str, target: str, mark: bool = False) -> int:
        """Copy a profile marked as merged into its target, re-point its identities, drop its data;
        how many identifiers the target is linked to then.

        With ``mark``, first mark it (atomically with reading it). Idempotent: a merge cut short is
        finished by running this again."""
        pkey = keys.profile_key(self.account, loser)
        hkey = keys.history_key(self.account, loser)
        pipe = self.conn.pipeline(transaction=True)  # one slot: the profile's own keys
        if mark:
            pipe.hset(pkey, "m", target)
        pipe.hgetall(pkey)
        pipe.get(hkey)
        fields, packed = pipe.execute(raise_on_error=False)[-2:]
        if isinstance(fields, Exception):
            raise fields
        history = history_entries(self.conn, self.account, loser, packed)
        args: list[bytes | str | int] = [
            self.retention.cutoff_seconds(self.now),
            self.retention.max_events,
            len(history),
            *history,
        ]
        for f, v in fields.items():
            if f not in (b"m", b"x"):
                args.extend((f, v))
        target_keys = [keys.profile_key(self.account, target), keys.history_key(self.account, target)]
        for _ in range(MERGE_TRIES):
            reply = self._merge_script(keys=target_keys, args=args)
            if not (isinstance(reply, list) and reply and reply[0] == b"z"):
                break
            # the survivor's history is compressed: it is opened (rewritten plain) and merged into
            rewrite_histories(self.conn, self.account, [target], compress=False)
        else:
            raise ConnectorError(f"merge into {target}: its history changed under every attempt")
        linked = int(reply[1])
        repoint = {}
        for f in fields:
            parsed = keys.parse_identity_field(f.decode())
            if parsed is not None:
                repoint[parsed] = target
        write_index(self.conn, self.account, repoint, legacy=self.legacy)
        if self.legacy != "0":  # the earlier layout's keys of these identities are replaced
            delete_keys(self.conn, [keys.identity_key(self.account, *pair) for pair in repoint])
        # the survivor names what it absorbed (``g:<pid>``), so that erasing it finds the tombstones
        self.conn.hset(keys.profile_key(self.account, target), f"g:{loser}", "")
        self.result.absorbed[loser] = target
        # the profile's own keys share a slot: replace them by the tombstone atomically
        pipe = self.conn.pipeline(transaction=True)
        pipe.delete(hkey, pkey)
        pipe.hset(pkey, "m", target)
        pipe.expire(pkey, TOMBSTONE_TTL_SECONDS)
        pipe.execute()
        return linked


# -- the identity index: hashes of up to ~2 x INDEX_CAP identities (see connector.buckets) --------
# Every script declares the state and every bucket it touches, computed from the L s assumed (ARGV),
# finds each field's bucket under the current L s and replies 'retry' with them when one of those
# was not declared (connector.buckets.run). A split elsewhere in the index meanwhile (another
# worker's) does not send a call round again: only one that moved a bucket the call needs.
# KEYS: the index's state, the buckets of the fields. ARGV: the buckets' key prefix, L, s, then
# fields. Reply: 'ok', L, s, the state's ``o`` ('-' when there is no index yet), then each field's
# packed profile id (nil when absent).
_INDEX_GET = (
    buckets.LUA
    + """
local st = redis.call('HMGET', KEYS[1], 'b', 'o')
local L, s = lh_unpack(st[1])
local d = lh_declared(2)
local low, high, prefix = 2 ^ L, 2 ^ (L + 1), ARGV[1]
local out = {'ok', L, s, st[2] or '-'}
for i = 4, #ARGV do
  local h = lh_hash_field(ARGV[i])
  local b = h % low
  if b < s then b = h % high end
  local bucket = prefix .. b
  if not d[bucket] then return {'retry', L, s} end
  out[i + 1] = redis.call('HGET', bucket, ARGV[i])
end
return out
"""
)
# KEYS: the index's state, the buckets of the fields. ARGV: the buckets' key prefix, cap, the ``o``
# of an index created now, '1' to keep a field that is already there (else overwritten), L, s, then
# field, packed id pairs. Reply: 'ok' or 'split' (one is due: connector.buckets.grow), L, s, n.
_INDEX_SET = (
    buckets.LUA
    + """
local packed = redis.call('HGET', KEYS[1], 'b')
local L, s, n = lh_unpack(packed)
local d, into = lh_declared(2), {}
for i = 7, #ARGV, 2 do
  into[i] = lh_name(ARGV[1], lh_bucket(lh_hash_field(ARGV[i]), L, s))
  if not d[into[i]] then return {'retry', L, s} end
end
if not packed and redis.call('HEXISTS', KEYS[1], 'o') == 0 then redis.call('HSET', KEYS[1], 'o', ARGV[3]) end
local keep = ARGV[4] == '1'
for i = 7, #ARGV, 2 do
  if keep then
    n = n + redis.call('HSETNX', into[i], ARGV[i], ARGV[i + 1])
  else
    n = n + redis.call('HSET', into[i], ARGV[i], ARGV[i + 1])
  end
end
redis.call('HSET', KEYS[1], 'b', lh_pack(L, s, n))
return {lh_due(tonumber(ARGV[2]), L, s, n) and 'split' or 'ok', L, s, n}
"""
)
# KEYS: the index's state, the buckets of the fields. ARGV: the buckets' key prefix, L, s, the
# number of owners, the owners (packed ids), then fields: each removed when it names one of the
# owners. Reply: 'ok', L, s, how many were removed. The state stays when the index empties (its
# ``o`` still holds).
_INDEX_DEL = (
    buckets.LUA
    + """
local packed = redis.call('HGET', KEYS[1], 'b')
if not packed then return {'ok', 0, 0, 0} end
local L, s, n = lh_unpack(packed)
local owners, k = {}, tonumber(ARGV[4])
for i = 5, 4 + k do owners[ARGV[i]] = true end
local d, into = lh_declared(2), {}
for i = 5 + k, #ARGV do
  into[i] = lh_name(ARGV[1], lh_bucket(lh_hash_field(ARGV[i]), L, s))
  if not d[into[i]] then return {'retry', L, s} end
end
local gone = 0
for i = 5 + k, #ARGV do
  local owner = redis.call('HGET', into[i], ARGV[i])
  if owner and owners[owner] then gone = gone + redis.call('HDEL', into[i], ARGV[i]) end
end
if gone > 0 then redis.call('HSET', KEYS[1], 'b', lh_pack(L, s, n - gone)) end
return {'ok', L, s, gone}
"""
)


def _index_call(
    conn: redis.Redis,
    account: str,
    source: str,
    fields: Sequence[bytes],
    head: Sequence[Any],
    tail: Sequence[Any],
) -> tuple[str, int, int, list[Any]]:
    """Run an index script: KEYS the state and the fields' buckets, ARGV the prefix, ``head``, the
    L and s assumed, ``tail`` (connector.buckets.run)."""
    state = keys.index_key(account)
    prefix = f"{state}:"
    hashes = [buckets.field_hash(f) for f in fields]

    def make(level: int, split: int) -> tuple[list[str], list[Any]]:
        return [state, *buckets.names(prefix, hashes, level, split)], [prefix, *head, level, split, *tail]

    return buckets.run(_script(conn, source), state, "b", make)


def _script(conn: redis.Redis, source: str) -> Any:
    return cached_script(conn, source)


def read_index(
    conn: redis.Redis, account: str, pairs: Sequence[tuple[str, str]], move: bool = False
) -> tuple[list[str | None], str | None]:
    """The profile id each (kind, value) points to (not following merges), and the index's ``o``
    (None: no index yet). Identities not in the buckets are looked for in the earlier layout unless
    ``o`` says none is left; with ``move`` (under the account's lock) those found are moved."""
    if not pairs:
        return [], None
    fields = [keys.index_field(kind, value) for kind, value in pairs]
    _, _, _, (legacy_raw, *found) = _index_call(conn, account, _INDEX_GET, fields, (), fields)
    text = legacy_raw.decode() if isinstance(legacy_raw, bytes) else str(legacy_raw)
    legacy = None if text == "-" else text
    out = [buckets.unpack_pid(pid) if pid is not None else None for pid in found]
    missing = [n for n, pid in enumerate(out) if pid is None]
    if legacy != "0" and missing:
        old = [keys.identity_key(account, *pairs[n]) for n in missing]
        moved: dict[tuple[str, str], str] = {}
        for n, pid in zip(missing, mget_keys(conn, old), strict=True):
            if pid is not None:
                out[n] = moved[pairs[n]] = pid.decode()
        if move and moved:
            write_index(conn, account, moved, legacy=legacy, keep=True)
            delete_keys(conn, [keys.identity_key(account, *pair) for pair in moved])
    return out, legacy


def write_index(
    conn: redis.Redis,
    account: str,
    mapping: Mapping[tuple[str, str], str],
    legacy: str | None = None,
    keep: bool = False,
) -> None:
    """Point each (kind, value) at its profile id (``keep``: only those not in the index yet). Under
    the account's lock. ``legacy`` is the index's ``o`` as read (None: no index yet; an index made
    now for an account whose names dictionary an earlier version made may have keys of the earlier
    layout)."""
    if not mapping:
        return
    if legacy is None:  # a new index: keys of the earlier layout only if the account is older
        fresh = "0" if keys.made_with_buckets(conn.hget(keys.names_key(account), "#gen")) else "1"
    else:
        fresh = legacy
    fields = {keys.index_field(kind, value): pid for (kind, value), pid in mapping.items()}
    _write_fields(conn, account, fields, fresh, keep)


def delete_index(
    conn: redis.Redis, account: str, pairs: Sequence[tuple[str, str]], owners: Sequence[str]
) -> int:
    """Remove the identities that point to one of ``owners`` (both layouts); how many of the
    current layout. Under the account's lock."""
    if not pairs:
        return 0
    packed = [buckets.pack_pid(pid) for pid in owners]
    fields = [keys.index_field(kind, value) for kind, value in pairs]
    _, _, _, (gone,) = _index_call(conn, account, _INDEX_DEL, fields, (), [len(packed), *packed, *fields])
    gone = int(gone)
    old = [keys.identity_key(account, kind, value) for kind, value in pairs]
    mine = {pid.encode() for pid in owners}
    delete_keys(conn, [name for name, owner in zip(old, mget_keys(conn, old), strict=True) if owner in mine])
    return gone


def migrate_index(conn: redis.Redis, account: str, batch: int = 1000) -> int:
    """Move every identity of the earlier layout (one key each) into the buckets, a batch at a time
    under the account's lock, then record that none is left (lookups stop looking there). Returns
    how many were moved. Safe to run while the workers run, and again."""
    moved = 0
    for chunk in _chunks(conn.scan_iter(match=keys.legacy_identity_match(account), count=1000), batch):
        with AccountLock(conn, account):
            pids = mget_keys(conn, [k.decode() for k in chunk])
            mapping: dict[bytes, str] = {}
            for name, pid in zip(chunk, pids, strict=True):
                field_name = keys.index_field_of_legacy_key(name)
                if field_name is not None and pid is not None:
                    mapping[field_name] = pid.decode()
            _write_fields(conn, account, mapping, "1", keep=True)
            delete_keys(conn, [k.decode() for k in chunk if keys.index_field_of_legacy_key(k) is not None])
            moved += len(mapping)
    # only processes of the earlier version write such keys, and none runs any more (docs/deploy.md)
    if not any(True for _ in conn.scan_iter(match=keys.legacy_identity_match(account), count=1000)):
        conn.hset(keys.index_key(account), "o", "0")
    return moved


def _chunks(names: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    """The key names SCAN gives, ``size`` at a time (never all of them in memory)."""
    chunk: list[bytes] = []
    for name in names:
        chunk.append(name)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _write_fields(
    conn: redis.Redis, account: str, mapping: Mapping[bytes, str], fresh: str, keep: bool
) -> None:
    if not mapping:
        return
    pairs: list[Any] = []
    for field_name, pid in mapping.items():
        pairs += [field_name, buckets.pack_pid(pid)]
    head = (INDEX_CAP, fresh, "1" if keep else "0")
    tag, level, split, _ = _index_call(conn, account, _INDEX_SET, list(mapping), head, pairs)
    if tag == "split":
        state = keys.index_key(account)
        buckets.grow(conn, state, "b", f"{state}:", "h", INDEX_CAP, level, split)


def delete_keys(conn: redis.Redis, names: list[str]) -> None:
    """DEL of keys in many slots: one pipeline of DELs per node on a cluster."""
    if not names:
        return
    if is_cluster(conn):
        per_node(conn, [("DEL", name, ()) for name in names])
    else:
        conn.delete(*names)


def mget_keys(conn: redis.Redis, names: list[str]) -> list[bytes | None]:
    """MGET; on Redis Cluster the keys span nodes: one pipeline of GETs per node."""
    if not names:
        return []
    if is_cluster(conn):
        return per_node(conn, [("GET", name, ()) for name in names])
    return list(conn.mget(names))


def resolve(
    conn: redis.Redis,
    account: str,
    retention: Retention,
    items: Sequence[tuple[Mapping[str, str], str | None, bool]],
    now: datetime,
) -> Resolution:
    """Assign a profile id to each (identities, previous id, public) item (``public``: the event
    came through the public write key, see :meth:`Resolver.assign`).

    Items whose identities all already point to one live profile (a returning person, the common
    case) are resolved without the lock; the others, in order, under the account's lock."""
    pairs: set[tuple[str, str]] = set()
    for ids, _, _ in items:
        pairs |= set(ids.items())
    reader = Resolver(conn, account, retention, now, locked=False)
    reader.load(pairs)
    targets: list[str | None] = [
        reader.known(ids) if previous is None else None for ids, previous, _ in items
    ]
    slow = [n for n, target in enumerate(targets) if target is None]
    result = Resolution()
    if slow:
        with AccountLock(conn, account):
            resolver = Resolver(conn, account, retention, now)
            wanted: set[tuple[str, str]] = set()
            for n in slow:
                ids, previous, _ = items[n]
                wanted |= set(ids.items())
                if previous:
                    wanted |= {("anonymous_id", previous), ("user_id", previous)}
            resolver.load(wanted)
            for n in slow:
                targets[n] = resolver.assign(*items[n])
            resolver.flush()
            result = resolver.result
    result.targets = [t for t in targets if t is not None]
    return result


def settle(conn: redis.Redis, account: str, retention: Retention, now: datetime, pids: set[str]) -> None:
    """Wait for the merges of these (marked) profiles to finish, finishing any that was cut short.

    A merge marks the absorbed profile before it copies its data into the survivor. Events applied
    to the survivor in between and also found in the copied data would be counted twice (the copy
    deduplicates the history, not the count), so a worker redirected by the mark waits here: every
    merge runs under the account's lock, and a locked resolver finishes a merge it finds undone."""
    with AccountLock(conn, account):
        Resolver(conn, account, retention, now)._load_states(pids)


def lookup(conn: redis.Redis, account: str, kind: str, value: str) -> str | None:
    """The live profile id of one identity (following merges), or None."""
    [pid], legacy = read_index(conn, account, [(kind, value)])
    if pid is None and legacy != "0":  # moved from the earlier layout between the two reads
        [pid], _ = read_index(conn, account, [(kind, value)])
    for _ in range(16):
        if pid is None:
            return None
        merged, erased = conn.hmget(keys.profile_key(account, pid), "m", "x")
        if erased:
            return None
        if not merged:
            return pid
        pid = merged.decode()
    return None
