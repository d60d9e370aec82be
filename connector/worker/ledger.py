"""The membership ledger: each profile's current segments and computed traits, with a version.

Evaluation results are recorded here; only a result that differs from the stored one bumps the
version and yields a :class:`Diff` (entered / exited segments, changed traits), which feeds the
destinations and the audit trail (``connector segments history``).

Keys (profile Redis, hash-tagged with the profile):

- ``ledger:{acct:pid}``, a string of two lines: the segments JSON (sorted names); then the rest of
  the state, separated by spaces: version, profile revision, the instant evaluated (epoch seconds,
  followed by ``,<next due>,<rules fingerprint>`` when the result came from the worker's evaluation:
  what incremental evaluation needs to reuse it), contact digest, traits JSON. A string costs about
  half of the hash it replaces (a hash whose segments JSON passes 64 bytes is a hash table).
- ``lhist:{acct:pid}``, the history: a list of changes, oldest first, capped at ``HISTORY_MAXLEN``
  (what the cap drops is counted). An entry holds only what changed, in one string: the version,
  the instant evaluated (microseconds since the epoch) and the segment moves, separated by spaces:
  ``+name`` entered, ``-name`` exited (comma-separated), then, after a record separator, the changed
  computed traits as compact JSON (omitted when none changed).

Ledgers of the earlier layouts, hashes (``s`` and ``x`` in pieces, or ``v``, ``s``, ``t``, ``r``,
``e``, ``c``), are read as they are and rewritten as the string the next time the profile is
recorded. Histories written earlier as streams (entries ``v``, ``at``, ``d``, or the whole old and
new state) are still read and take the new entries as stream entries.

Recording many profiles is one round trip per Redis server: the stored states are read in one
pipeline, the diffs computed here, and one script per profile compares the state it finds with the
one the diff was computed from before it writes (a state changed in between is read again).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from connector.clock import isoformat
from connector.redis_conn import grouped_by_node, is_cluster

HISTORY_MAXLEN = 500
ATTEMPTS = 5  # reads of a profile's stored state before a concurrently changing ledger is an error
TRAITS_SEP = "\x1e"

# KEYS: ledger, history. ARGV: segments json, traits json, revision, at (epoch µs), maxlen,
# at (epoch seconds), contact, force, expected segments json, expected traits json, history entry,
# ",<next due epoch seconds or empty>,<rules fingerprint>" (stored after the instant; "" for none).
# A result computed from an older profile revision (or an earlier instant) than the one already
# recorded is ignored, so two workers evaluating the same profile concurrently can never roll the
# ledger back. The expected segments and traits are the stored ones the caller computed its diff
# from ("" for none): when they changed meanwhile the reply is {-2} and the caller reads them again.
# The version is bumped when the segments or traits changed, when the contact the destinations
# address (``c``: a digest of the email) changed, or when ``force`` is set (a merge); the history
# gets an entry only when segments or traits changed, and never for a first evaluation without
# any segment. Reply: {version, entries trimmed from the history}, or {0} (nothing changed) /
# {-1} (stale) / {-2} (the stored state is not the expected one).
_RECORD = """
local raw = redis.pcall('GET', KEYS[1])
local cur = {}
if type(raw) == 'string' then
  local one = string.find(raw, '\\n', 1, true)
  cur[2] = string.sub(raw, 1, one - 1)
  cur[7] = string.sub(raw, one + 1)
elseif type(raw) == 'table' and raw.err then
  -- an earlier layout: fields, the rest in pieces; rewritten as the string below
  cur = redis.call('HMGET', KEYS[1], 'v', 's', 't', 'r', 'e', 'c', 'x')
  local function joined(name, first)
    local parts, n = {first}, 0
    while true do
      local piece = redis.call('HGET', KEYS[1], name .. (n + 1))
      if not piece then break end
      n = n + 1
      parts[n + 1] = piece
    end
    return table.concat(parts)
  end
  if cur[7] then cur[7] = joined('x', cur[7]) elseif cur[3] then cur[3] = joined('t', cur[3]) end
end
if cur[7] then
  cur[1], cur[4], cur[5], cur[6], cur[3] = string.match(cur[7], '^(%d+) (%-?%d+) (%S+) (%S*) (.*)$')
  cur[5] = string.match(cur[5], '^[^,]+')  -- the instant; after it, the result's next due and rules
end
local rev = tonumber(ARGV[3])
local at = tonumber(ARGV[6])
if cur[4] then
  local crev = tonumber(cur[4])
  if crev > rev or (crev == rev and tonumber(cur[5] or '0') > at) then return {-1} end
end
if (cur[2] or '') ~= ARGV[9] or (cur[3] or '') ~= ARGV[10] then return {-2} end
local same = cur[2] == ARGV[1] and cur[3] == ARGV[2]
local first = not cur[2]
local v = tonumber(cur[1] or '0')
if first and ARGV[1] == '[]' and ARGV[2] == '{}' then same = true end
local trimmed = 0
if not (same and (cur[6] or '') == ARGV[7] and ARGV[8] ~= '1') then
  v = v + 1
  if not same and not (first and ARGV[1] == '[]') then
    local cap = tonumber(ARGV[5])
    local n = redis.pcall('RPUSH', KEYS[2], v .. ' ' .. ARGV[4] .. ' ' .. ARGV[11])
    if type(n) == 'number' then
      if n > cap then
        redis.call('LTRIM', KEYS[2], n - cap, -1)
        trimmed = n - cap
      end
    else
      -- a history kept as a stream (an earlier form) goes on as one
      redis.call('XADD', KEYS[2], '*', 'v', v, 'at', ARGV[4], 'd', ARGV[11])
      if v > cap then trimmed = redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', cap) end
    end
  end
end
local x = v .. ' ' .. ARGV[3] .. ' ' .. ARGV[6] .. ARGV[12] .. ' ' .. ARGV[7] .. ' ' .. ARGV[2]
redis.call('SET', KEYS[1], ARGV[1] .. '\\n' .. x)
if v == tonumber(cur[1] or '0') then return {0} end
return {v, trimmed}
"""

# The stored state, whichever layout: {"s", string} or {"h", HGETALL as a flat list} or {}.
_READ = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'string' then return {'s', redis.call('GET', KEYS[1])} end
if kind == 'hash' then return {'h', redis.call('HGETALL', KEYS[1])} end
return {}
"""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def ledger_key(account: str, profile_id: str) -> str:
    return f"ledger:{{{account}:{profile_id}}}"


def history_key(account: str, profile_id: str) -> str:
    return f"lhist:{{{account}:{profile_id}}}"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Diff:
    version: int
    segments: frozenset[str]
    traits: Mapping[str, Any]
    entered: frozenset[str] = frozenset()
    exited: frozenset[str] = frozenset()
    changed_traits: Mapping[str, Any] = field(default_factory=dict)
    trimmed: int = 0  # history entries dropped at the cap by this record


@dataclass(frozen=True)
class LedgerState:
    version: int
    segments: frozenset[str]
    traits: Mapping[str, Any]


@dataclass(frozen=True)
class Entry:
    """One profile's evaluation result, as the ledger records it."""

    profile_id: str
    segments: frozenset[str]
    traits: Mapping[str, Any]
    revision: int = 0
    contact: str = ""
    force: bool = False
    due: datetime | None = None  # the result's next_due
    rules: str = ""  # fingerprint of the rules that computed it ("": not reusable)


@dataclass(frozen=True)
class Stored:
    """A profile's recorded result as read before recording a new one (None/"" when none)."""

    segments: bytes | None = None  # the segments JSON
    traits: bytes | None = None  # the traits JSON
    due: datetime | None = None
    rules: str = ""  # fingerprint of the rules that computed it; "" when it cannot be reused
    revision: int | None = None  # the profile revision it was computed from

    def members(self) -> frozenset[str]:
        return frozenset(json.loads(self.segments)) if self.segments else frozenset()


@dataclass(frozen=True)
class _Change:
    """A result against the stored state it was compared with (b"" for none)."""

    entry: Entry
    new_s: str
    new_t: str
    traits: dict[str, Any]
    old_s: bytes
    old_t: bytes
    entered: frozenset[str]
    exited: frozenset[str]
    changed: dict[str, Any]

    @classmethod
    def of(cls, entry: Entry, old_s: bytes | None, old_t: bytes | None) -> _Change:
        segments = frozenset(entry.segments)
        new_s = _canonical(sorted(segments))
        new_t = _canonical(dict(entry.traits))
        if new_s.encode() == old_s and new_t.encode() == old_t:  # the usual case: nothing moved
            traits = dict(entry.traits) if _plain(entry.traits) else json.loads(new_t)
            return cls(entry, new_s, new_t, traits, old_s, old_t, frozenset(), frozenset(), {})
        traits = json.loads(new_t)
        old_segments = frozenset(json.loads(old_s)) if old_s else frozenset()
        old_traits: dict[str, Any] = json.loads(old_t) if old_t else {}
        changed = {k: v for k, v in traits.items() if old_traits.get(k, _MISSING) != v}
        changed.update({k: None for k in old_traits if k not in traits})
        entered, exited = segments - old_segments, old_segments - segments
        return cls(entry, new_s, new_t, traits, old_s or b"", old_t or b"", entered, exited, changed)

    def history_entry(self) -> str:
        """``+entered,-exited`` and, after TRAITS_SEP, the changed traits with their new values (a
        removed trait is not listed)."""
        moves = [f"+{name}" for name in sorted(self.entered)] + [f"-{name}" for name in sorted(self.exited)]
        traits = {k: v for k, v in self.changed.items() if k in self.traits}
        return ",".join(moves) + (TRAITS_SEP + _canonical(traits) if traits else "")

    def args(self, now: datetime) -> list[Any]:
        return [
            self.new_s,
            self.new_t,
            self.entry.revision,
            (now - _EPOCH) // _MICROSECOND,
            HISTORY_MAXLEN,
            repr(now.timestamp()),
            self.entry.contact,
            "1" if self.entry.force else "0",
            self.old_s,
            self.old_t,
            self.history_entry(),
            _suffix(self.entry),
        ]

    def diff(self, reply: Sequence[Any]) -> Diff:
        return Diff(
            version=int(reply[0]),
            segments=frozenset(self.entry.segments),
            traits=self.traits,
            entered=self.entered,
            exited=self.exited,
            changed_traits=self.changed,
            trimmed=int(reply[1]),
        )


def _suffix(entry: Entry) -> str:
    """``,<next due>,<rules fingerprint>`` after the instant ("" when the result is not reusable)."""
    if not entry.rules:
        return ""
    return f",{repr(entry.due.timestamp()) if entry.due is not None else ''},{entry.rules}"


def _plain(traits: Mapping[str, Any]) -> bool:
    """Whether the values are what JSON gives back as they are (no conversion on the way)."""
    return all(value is None or type(value) in (str, int, float, bool) for value in traits.values())


class Ledger:
    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn
        self._record = conn.register_script(_RECORD)
        self._read = conn.register_script(_READ)

    def record(
        self,
        account: str,
        profile_id: str,
        segments: frozenset[str],
        traits: Mapping[str, Any],
        now: datetime,
        revision: int = 0,
        *,
        contact: str = "",
        force: bool = False,
    ) -> Diff | None:
        """Store the result; return what changed, or None when nothing did.

        ``contact`` identifies whom the destinations address (a digest of the email, "" for none):
        when it changes, the version is bumped with the same segments, so the current state goes
        to the destinations again. ``force`` bumps it regardless (the profile absorbed another)."""
        entry = Entry(profile_id, segments, traits, revision, contact, force)
        return self.record_many(account, [entry], now)[0]

    def record_many(
        self,
        account: str,
        entries: Sequence[Entry],
        now: datetime,
        stored: Sequence[Stored] | None = None,
        *,
        again: Callable[[int], Entry] | None = None,
    ) -> list[Diff | None]:
        """:meth:`record` for many profiles of one account, in two round trips per Redis server
        (read the stored states, record; one when ``stored`` holds what :meth:`stored_many` read for
        these entries); the diffs in the order of ``entries``. An entry whose stored state moved
        meanwhile is recorded again against the new one; ``again(n)`` gives the entry to record
        then (a result computed from the state it read must be computed anew)."""
        entries = list(entries)
        out: list[Diff | None] = [None] * len(entries)
        todo = list(range(len(entries)))
        known = list(stored) if stored is not None else None
        for _ in range(ATTEMPTS):
            if not todo:
                return out
            todo = self._attempt(account, entries, todo, now, out, known)
            known = None
            if again is not None:
                for n in todo:
                    entries[n] = again(n)
        if todo:
            raise RuntimeError(f"ledger of {len(todo)} profiles kept changing while being recorded")
        return out

    def _attempt(
        self,
        account: str,
        entries: Sequence[Entry],
        todo: list[int],
        now: datetime,
        out: list[Diff | None],
        known: list[Stored] | None,
    ) -> list[int]:
        """Record entries ``todo`` against the states read now (or ``known``, read for all entries
        just before); the ones whose state moved meanwhile."""
        stored = (
            known if known is not None else self.stored_many(account, [entries[n].profile_id for n in todo])
        )
        changes = [
            _Change.of(entries[n], state.segments, state.traits)
            for n, state in zip(todo, stored, strict=True)
        ]
        calls = [
            ([ledger_key(account, c.entry.profile_id), history_key(account, c.entry.profile_id)], c.args(now))
            for c in changes
        ]
        replies = grouped_by_node(
            self.conn,
            [keys[0] for keys, _ in calls],
            lambda pipe, n: self._record(keys=calls[n][0], args=calls[n][1], client=pipe),
            lambda n: self._record(keys=calls[n][0], args=calls[n][1], client=self.conn),
        )
        again = []
        for n, change, reply in zip(todo, changes, replies, strict=True):
            version = int(reply[0])
            if version == -2:
                again.append(n)
            elif version > 0:
                out[n] = change.diff(reply)
        return again

    def stored_many(self, account: str, pids: Sequence[str]) -> list[Stored]:
        """What is recorded for each profile, in the order of ``pids``; one round trip per server."""
        return [_stored(raw) for raw in self._raw(account, pids)]

    def _raw(self, account: str, pids: Sequence[str]) -> list[_Raw]:
        keys = [ledger_key(account, pid) for pid in pids]
        if not is_cluster(self.conn):
            # one GET each; a ledger of the earlier layout (a hash) answers WRONGTYPE and is read again
            pipe = self.conn.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
            got = pipe.execute(raise_on_error=False)
            legacy = [n for n, reply in enumerate(got) if isinstance(reply, redis.ResponseError)]
            if legacy:
                again = self.conn.pipeline(transaction=False)
                for n in legacy:
                    again.hgetall(keys[n])
                for n, fields in zip(legacy, again.execute(), strict=True):
                    got[n] = ("h", [item for pair in fields.items() for item in pair])
            return [_Raw.of(("s", reply) if isinstance(reply, bytes) else reply) for reply in got]
        replies = grouped_by_node(
            self.conn,
            keys,
            lambda pipe, n: self._read(keys=[keys[n]], client=pipe),
            lambda n: self._read(keys=[keys[n]], client=self.conn),
        )
        return [_Raw.of(reply) for reply in replies]

    def state(self, account: str, profile_id: str) -> LedgerState | None:
        raw = self._raw(account, [profile_id])[0]
        if raw.version is None:
            return None
        return LedgerState(
            int(raw.version), frozenset(json.loads(raw.segments or b"[]")), json.loads(raw.traits or b"{}")
        )

    def history(self, account: str, profile_id: str, count: int = 100) -> list[dict[str, Any]]:
        """The latest ``count`` changes, oldest first: version, instant, segments entered and exited,
        computed traits changed (with their new values)."""
        out = []
        for line in self._history(account, profile_id, count):
            if isinstance(line, dict):
                out.append(
                    {"version": int(line["v"]), **(_read(line) if "d" in line else _read_legacy(line))}
                )
                continue
            version, at, change = line.split(" ", 2)
            out.append({"version": int(version), **_read({"at": at, "d": change})})
        return out

    def _history(self, account: str, profile_id: str, count: int) -> list[str | dict[str, str]]:
        """The latest ``count`` entries: the history list's items, or an earlier layout's stream
        entries."""
        key = history_key(account, profile_id)
        kind = self.conn.type(key)
        found: list[str | dict[str, str]] = []
        if kind in (b"list", "list"):
            found.extend(item.decode() for item in self.conn.lrange(key, -count, -1))
        elif kind in (b"stream", "stream"):
            rows = self.conn.xrevrange(key, count=count)
            found.extend({k.decode(): v.decode() for k, v in f.items()} for _, f in reversed(rows))
        return found[-count:] if count > 0 else []

    def history_length(self, account: str, profile_id: str) -> int:
        key = history_key(account, profile_id)
        kind = self.conn.type(key)
        if kind in (b"stream", "stream"):
            return int(self.conn.xlen(key))
        return int(self.conn.llen(key)) if kind in (b"list", "list") else 0

    def delete(self, account: str, profile_id: str) -> None:
        self.conn.delete(ledger_key(account, profile_id), history_key(account, profile_id))

    def delete_many(self, account: str, profile_ids: Iterable[str]) -> None:
        for pid in profile_ids:  # each profile's keys share a slot, not the others'
            self.delete(account, pid)


@dataclass(frozen=True)
class _Raw:
    """A recorded state as read, either layout: segments JSON, the packed rest."""

    segments: bytes | None = None
    packed: bytes | None = None  # "version revision at[,due,rules] contact traits"
    legacy_traits: bytes | None = None  # the traits JSON of the oldest hash layout
    legacy_version: bytes | None = None

    @classmethod
    def of(cls, reply: Any) -> _Raw:
        if not reply:
            return cls()
        kind = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if kind == "s":
            segments, _, packed = bytes(reply[1]).partition(b"\n")
            return cls(segments, packed)
        flat = list(reply[1])
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        return cls(fields.get(b"s"), _joined(fields, b"x"), _joined(fields, b"t"), fields.get(b"v"))

    @property
    def version(self) -> bytes | None:
        return self.packed.split(b" ", 1)[0] if self.packed is not None else self.legacy_version

    @property
    def traits(self) -> bytes | None:
        return self.packed.split(b" ", 4)[4] if self.packed is not None else self.legacy_traits


def _joined(fields: Mapping[bytes, bytes], name: bytes) -> bytes | None:
    """A value from its pieces ``name``, ``name1``, ``name2`` ... (None when none is stored)."""
    first = fields.get(name)
    if first is None:
        return None
    pieces = [first]
    while (piece := fields.get(b"%s%d" % (name, len(pieces)))) is not None:
        pieces.append(piece)
    return b"".join(pieces)


def _stored(raw: _Raw) -> Stored:
    if raw.packed is None:
        return Stored(raw.segments, raw.traits)
    _version, revision, at, _ = raw.packed.split(b" ", 3)
    _, due, rules = [*at.decode().split(","), "", ""][:3]
    return Stored(
        raw.segments,
        raw.traits,
        datetime.fromtimestamp(float(due), UTC) if due else None,
        rules,
        int(revision),
    )


def _read(item: Mapping[str, str]) -> dict[str, Any]:
    moves, _, traits = item["d"].partition(TRAITS_SEP)
    names = [move for move in moves.split(",") if move]
    return {
        "at": isoformat(_EPOCH + int(item["at"]) * _MICROSECOND),
        "entered": sorted(move[1:] for move in names if move[0] == "+"),
        "exited": sorted(move[1:] for move in names if move[0] == "-"),
        "traits": json.loads(traits) if traits else {},
    }


def _read_legacy(item: Mapping[str, str]) -> dict[str, Any]:
    """An entry written with the whole old and new state."""
    old_s, new_s = set(json.loads(item["old_s"])), set(json.loads(item["new_s"]))
    old_t, new_t = json.loads(item["old_t"]), json.loads(item["new_t"])
    return {
        "at": item["at"],
        "entered": sorted(new_s - old_s),
        "exited": sorted(old_s - new_s),
        "traits": {k: v for k, v in new_t.items() if old_t.get(k, _MISSING) != v},
    }


_MISSING = object()
