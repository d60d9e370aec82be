"""The membership ledger: each profile's current segments and computed traits, with a version.

Evaluation results are recorded here; only a result that differs from the stored one bumps the
version and yields a :class:`Diff` (entered / exited segments, changed traits), which feeds the
destinations and the audit trail (``connector segments history``).

One key per profile (profile Redis, hash-tagged with the profile), ``ledger:{acct:pid}``, a string
whose first line is the state and each further line a change, oldest first:

- the state, separated by spaces: version, profile revision, the instant evaluated (microseconds
  since the epoch in base 36, followed by ``,<next due>,<rules fingerprint>`` when the result came
  from the worker's evaluation: what incremental evaluation needs to reuse it; the due instant in
  the same base-36 microseconds, the fingerprint by its code), contact digest, the number of changes
  below it in the string, the segments (codes, comma-separated), the computed traits
  (``<codes>=<JSON array of their values>``, by name order; empty when none).
- the latest changes (at most ``INLINE``): version, instant (as in the state), segment moves
  (``+<code>`` entered, ``-<code>`` exited) and the traits that changed, *as they were before*
  (``<codes absent before>/<codes>=<JSON array of the earlier values>``; ``*`` when there was no
  state before): the traits after each change are those of the state with the later changes undone,
  so a change costs only what it changed.

The older changes, in the same form, are in a list beside it, ``lold:{acct:pid}`` (oldest first;
no key until a profile has had more than ``INLINE`` changes): when a record would leave more than
``INLINE`` changes in the string, all but the newest ``KEEP`` move to the list (17 at a time with
32 and 16), so an evaluation reads and writes a string of bounded size whatever the history holds,
and the list is written once every 17 changes. The history as a whole (list and string) is capped
at ``HISTORY_MAXLEN`` changes: the list's oldest are dropped when changes move in (between
``HISTORY_MAXLEN - INLINE + KEEP`` and ``HISTORY_MAXLEN`` are kept), and what the cap drops is
counted (``ledger_history``). Reading the history reads the string and as much of the list as the
changes asked for need, in one script, and undoes the traits across both as one sequence.
Evaluation reads only the first ``STATE_PREFIX`` bytes of each ledger (the state line; a longer one
is read whole in a second round trip).

Segment names, computed trait names and rules fingerprints are short codes of a per-account
dictionary, ``lnames:acct`` (:class:`connector.profiles.store.NameCodes`, as the event names have;
a dictionary of its own, which an erasure's scrub of event names never renames).

Earlier layouts are read as they are and rewritten in this one the next time the profile is
recorded: a string of two lines (segments JSON; version, revision, instant in seconds, contact,
traits JSON) or a hash (``s`` and ``x`` in pieces, or ``v``, ``s``, ``t``, ``r``, ``e``, ``c``), with
the history beside it in ``lhist:{acct:pid}`` (a list of ``<version> <µs> <+name,-name>\\x1e<traits>``
entries, or a stream of those or of whole old and new states), whose entries move into the ledger
as they are (read as before; the older ones on to ``lold``) and whose key is then deleted. A string
holding more than ``INLINE`` changes (written before the list existed, up to ``HISTORY_MAXLEN``) is
read as it is and moves its older changes to the list at its next record (one without a change
moves only what the list has room for: nothing is dropped uncounted).

Recording many profiles is one round trip per Redis server: the stored states are read in one
pipeline, the diffs computed here, and one script body per profile (many profiles per script call,
:mod:`connector.profiles.batched`) compares the state it finds with the one the diff was computed
from before it writes (a state changed in between is read again).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import redis

from connector.profiles.batched import Batched
from connector.profiles.store import NameCodes
from connector.redis_conn import cached_script, grouped_by_node, is_cluster, pipelined
from connector.worker.ledger_codec import (
    Diff,
    Entry,
    LedgerState,
    Stored,
    _Change,
    _changes,
    _Codes,
    _entry,
    _generation,
    _micros,
    _Raw,
    _state_line,
    _stored,
)

HISTORY_MAXLEN = 500
INLINE = 32  # the most changes the ledger string holds; the older ones are in the list beside it
KEEP = 16  # the changes the string keeps when its oldest move to that list (17 at a time)
STATE_PREFIX = 1024  # bytes read of each ledger for an evaluation (the state line; read whole if longer)
ATTEMPTS = 5  # reads of a profile's stored state before a concurrently changing ledger is an error

# KEYS: ledger, history of the earlier layouts, older changes. ARGV: 1 segments, 2 traits,
# 3 revision, 4 instant (epoch µs in base 36), 5 ",<next due>,<rules fingerprint>" after the
# instant ("" for none), 6 contact, 7 the stored segments and traits the caller read
# ("<segments>\n<traits>" as stored, "" for none), 8 "1" when the result's segments and traits are
# the stored ones, 9 force, 10 the history entry after its version ("" for none), 11 maxlen, 12 the
# most changes the string holds, 13 the changes it keeps when its oldest move to the list beside.
# A result computed from an older profile revision (or an earlier instant) than the one already
# recorded is ignored, so two workers evaluating the same profile concurrently can never roll the
# ledger back. When the stored segments and traits are not the ones the caller read the reply is
# {-2} and the caller reads them again. The version is bumped when the segments or traits changed,
# when the contact the destinations address (a digest of the email) changed, or when ``force`` is
# set (a merge). A ledger of an earlier layout is rewritten in this one, its history list or stream
# moved into it (entries prefixed ``L``, or ``W`` for whole states). When the string would hold
# more than its most changes, all but the newest ``keep`` move to the list of older ones, whose
# oldest go beyond the cap (counted); a record without a change moves only as many as the list
# has room for (its reply carries no count). Reply: {version, changes trimmed from the history}, or
# {0, version} (nothing changed: the ledger holds this result at that version) / {-1} (stale) / {-2}
# (not the expected state).
_RECORD = """
local raw = redis.pcall('GET', KEYS[1])
local v, r, at, c, n, s, t
local src, from, seconds = '', nil, false  -- the history: src from index from (at a newline)
local function split(packed)
  return string.match(packed, '^(%d+) (%-?%d+) (%S+) (%S*) (.*)$')
end
if type(raw) == 'string' then
  local one = string.find(raw, '\\n', 1, true)
  if string.byte(raw, 1) == 91 then  -- '[': the string of the earlier layout
    s = string.sub(raw, 1, one - 1)
    v, r, at, c, t = split(string.sub(raw, one + 1))
    seconds = true
  else
    local line = raw
    if one then line, src, from = string.sub(raw, 1, one - 1), raw, one end
    v, r, at, c, n, s, t = string.match(line, '^(%d+) (%-?%d+) (%S+) (%S*) (%d+) (%S*) (.*)$')
  end
elseif type(raw) == 'table' and raw.err then
  -- a hash of the earlier layouts: fields, the rest in pieces
  local f = redis.call('HMGET', KEYS[1], 'v', 's', 't', 'r', 'e', 'c', 'x')
  local function joined(name, first)
    local parts, k = {first}, 0
    while true do
      local piece = redis.call('HGET', KEYS[1], name .. (k + 1))
      if not piece then break end
      k = k + 1
      parts[k + 1] = piece
    end
    return table.concat(parts)
  end
  s = f[2]
  if f[7] then
    v, r, at, c, t = split(joined('x', f[7]))
  else
    v, r, at, c = f[1], f[4], f[5], f[6]
    if f[3] then t = joined('t', f[3]) end
  end
  seconds = true
end
if r then
  local crev, rev = tonumber(r), tonumber(ARGV[3])
  if crev > rev then return {-1} end
  if crev == rev and at then
    local instant = string.match(at, '^[^,]*')
    local cur = seconds and math.floor((tonumber(instant) or 0) * 1000000 + 0.5) or tonumber(instant, 36)
    if (cur or 0) > tonumber(ARGV[4], 36) then return {-1} end
  end
end
local found = ''
if s then found = s .. '\\n' .. (t or '') end
if found ~= ARGV[7] then return {-2} end
if seconds then
  -- the history beside an earlier ledger moves into it
  local kind, moved = redis.call('TYPE', KEYS[2]).ok, {}
  if kind == 'list' then
    for _, item in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do moved[#moved + 1] = 'L' .. item end
  elseif kind == 'stream' then
    for _, entry in ipairs(redis.call('XRANGE', KEYS[2], '-', '+')) do
      local e = {}
      for i = 1, #entry[2], 2 do e[entry[2][i]] = entry[2][i + 1] end
      if e.d then
        moved[#moved + 1] = 'L' .. (e.v or '0') .. ' ' .. (e.at or '0') .. ' ' .. e.d
      else
        moved[#moved + 1] = 'W' .. table.concat({e.v or '0', e.at or '', e.old_s or '[]', e.new_s or '[]',
          e.old_t or '{}', e.new_t or '{}'}, '\\31')
      end
    end
  end
  if kind ~= 'none' then redis.call('DEL', KEYS[2]) end
  if #moved > 0 then src, from = '\\n' .. table.concat(moved, '\\n'), 1 end
  n = #moved
end
local old = tonumber(v or '0')
local version = old
if ARGV[8] ~= '1' or (c or '') ~= ARGV[6] or ARGV[9] == '1' then version = old + 1 end
n = tonumber(n or '0')
local add = ''
if ARGV[10] ~= '' then
  add = '\\n' .. version .. ' ' .. ARGV[10]
  n = n + 1
end
local trimmed, cap, most, keep = 0, tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local function take()  -- the oldest change left in the string, which leaves it
  local nxt = string.find(src, '\\n', from + 1, true)
  local line = string.sub(src, from + 1, (nxt or 0) - 1)
  from = nxt
  return line
end
if n > cap then  -- a history of before longer than the cap: its oldest changes go
  trimmed = n - cap
  for _ = 1, trimmed do take() end
  n = cap
end
if n > most then  -- the oldest changes of the string move to the list of older ones, but the newest keep
  local held = redis.call('LLEN', KEYS[3])
  local room = cap - most - held
  local out = n - keep
  if add == '' then out = math.min(out, math.max(room, 0)) end  -- no change: nothing dropped
  if out > 0 then
    local over = math.max(out - room, 0)  -- beyond the list's bound: the oldest go, counted
    local gone = math.min(over, held)
    if gone > 0 then redis.call('LTRIM', KEYS[3], gone, -1) end
    for _ = 1, over - gone do take() end
    local lines = {}
    for i = 1, out - (over - gone) do lines[i] = take() end
    for i = 1, #lines, 200 do redis.call('RPUSH', KEYS[3], unpack(lines, i, math.min(i + 199, #lines))) end
    trimmed, n = trimmed + over, n - out
  end
end
redis.call('SET', KEYS[1], version .. ' ' .. ARGV[3] .. ' ' .. ARGV[4] .. ARGV[5] .. ' ' .. ARGV[6] .. ' ' ..
  n .. ' ' .. ARGV[1] .. ' ' .. ARGV[2] .. (from and string.sub(src, from) or '') .. add)
if version == old then return {0, old} end
return {version, trimmed}
"""

# _RECORD for many profiles in one script call (per slot on a cluster)
_RECORD_MANY = Batched(_RECORD)

# The stored state, whichever layout: {"s", string (the state line only in this layout)} or
# {"h", HGETALL as a flat list} or {}.
_READ = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'string' then
  local value = redis.call('GET', KEYS[1])
  local one = string.find(value, '\\n', 1, true)
  if one and string.byte(value, 1) ~= 91 then value = string.sub(value, 1, one - 1) end
  return {'s', value}
end
if kind == 'hash' then return {'h', redis.call('HGETALL', KEYS[1])} end
return {}
"""

# KEYS: ledger, older changes. ARGV: count. Reply: {the ledger string, the latest of the older
# changes that the latest ``count`` changes need}, or {} when the ledger is not a string.
_TAIL = """
local value = redis.pcall('GET', KEYS[1])
if type(value) ~= 'string' then return {} end
local inline = tonumber(string.match(value, '^%d+ %-?%d+ %S+ %S* (%d+) ') or '0')
local need = tonumber(ARGV[1]) - inline
if need <= 0 then return {value, {}} end
return {value, redis.call('LRANGE', KEYS[2], -need, -1)}
"""


def ledger_key(account: str, profile_id: str) -> str:
    return f"ledger:{{{account}:{profile_id}}}"


def history_key(account: str, profile_id: str) -> str:
    """The history of the earlier layouts (moved into the ledger when the profile is recorded)."""
    return f"lhist:{{{account}:{profile_id}}}"


def older_key(account: str, profile_id: str) -> str:
    """The ledger's changes older than the ones its string holds (a list, oldest first)."""
    return f"lold:{{{account}:{profile_id}}}"


def names_key(account: str) -> str:
    """The account's codes of segment names, computed trait names and rules fingerprints."""
    return f"lnames:{account}"


_NAMES: dict[int, NameCodes] = {}


def ledger_names(conn: redis.Redis) -> NameCodes:
    """The ledger's name codes, cached per connection (process-wide)."""
    found = _NAMES.get(id(conn))
    if found is None or found.conn is not conn:
        found = _NAMES[id(conn)] = NameCodes(conn, key=names_key)
    return found


def _bounds() -> tuple[int, int, int]:
    """The cap of the history, the most changes the string holds and the ones it keeps."""
    most = max(1, min(INLINE, HISTORY_MAXLEN))
    return HISTORY_MAXLEN, most, max(1, min(KEEP, most))


class Ledger:
    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn
        self.names = ledger_names(conn)
        self._read = cached_script(conn, _READ)
        self._tail = cached_script(conn, _TAIL)

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
        unchanged: dict[int, int] | None = None,
    ) -> list[Diff | None]:
        """:meth:`record` for many profiles of one account, in two round trips per Redis server
        (read the stored states, record; one when ``stored`` holds what :meth:`stored_many` read for
        these entries); the diffs in the order of ``entries``. An entry whose stored state moved
        meanwhile is recorded again against the new one; ``again(n)`` gives the entry to record
        then (a result computed from the state it read must be computed anew). ``unchanged``
        receives, per index of an entry the ledger already held (no diff, and not a stale result
        that was ignored), the ledger's version."""
        entries = list(entries)
        out: list[Diff | None] = [None] * len(entries)
        todo = list(range(len(entries)))
        known = list(stored) if stored is not None else None
        for _ in range(ATTEMPTS):
            if not todo:
                return out
            todo = self._attempt(account, entries, todo, now, out, known, unchanged)
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
        unchanged: dict[int, int] | None = None,
    ) -> list[int]:
        """Record entries ``todo`` against the states read now (or ``known``, read for all entries
        just before); the ones whose state moved meanwhile."""
        stored = (
            known if known is not None else self.stored_many(account, [entries[n].profile_id for n in todo])
        )
        codes = _Codes(self.names, account)
        wanted: set[str] = set()
        for n in todo:
            wanted.update(entries[n].segments, entries[n].traits)
            if entries[n].rules:
                wanted.add(entries[n].rules)
        codes.need(wanted)
        changes = [_Change.of(entries[n], state, codes) for n, state in zip(todo, stored, strict=True)]
        at = _micros(now)
        bounds = _bounds()
        calls = [
            (
                [
                    ledger_key(account, c.entry.profile_id),
                    history_key(account, c.entry.profile_id),
                    older_key(account, c.entry.profile_id),
                ],
                c.args(at, codes, bounds),
            )
            for c in changes
        ]
        replies = _RECORD_MANY.run(self.conn, calls)
        again = []
        for n, change, reply in zip(todo, changes, replies, strict=True):
            version = int(reply[0])
            if version == -2:
                again.append(n)
            elif version > 0:
                out[n] = change.diff(reply)
            elif version == 0 and unchanged is not None and len(reply) > 1:
                unchanged[n] = int(reply[1])
        return again

    def stored_many(self, account: str, pids: Sequence[str]) -> list[Stored]:
        """What is recorded for each profile, in the order of ``pids``; one round trip per server
        (the name codes' generation is checked in it)."""
        codes = _Codes(self.names, account)
        return [_stored(raw, codes) for raw in self._raw(account, pids, check=True)]

    def _raw(self, account: str, pids: Sequence[str], check: bool = False) -> list[_Raw]:
        """The stored values; with ``check``, the name codes' generation is read alongside."""
        keys = [ledger_key(account, pid) for pid in pids]
        if not is_cluster(self.conn):
            # the first bytes of each (the state line, not the changes after it); a longer state
            # line is read whole, and a ledger of an earlier layout (a hash) answers WRONGTYPE and
            # is read again
            # (without redis-py's cost per command: :func:`connector.redis_conn.pipelined`)
            commands: list[tuple[Any, ...]] = [("GETRANGE", key, 0, STATE_PREFIX - 1) for key in keys]
            if check:
                commands.append(("HGET", names_key(account), "#gen"))
            got = pipelined(self.conn, commands)
            if check:
                self.names.check(account, _generation(got.pop()))
            again = [n for n, reply in enumerate(got) if not isinstance(reply, bytes) or _cut(reply)]
            if again:
                pipe = self.conn.pipeline(transaction=False)
                for n in again:
                    if isinstance(got[n], bytes):
                        pipe.get(keys[n])
                    else:
                        pipe.hgetall(keys[n])
                for n, reply in zip(again, pipe.execute(), strict=True):
                    got[n] = reply if not isinstance(reply, dict) else ("h", [*_flat(reply)])
            return [
                _Raw.of(("s", reply) if isinstance(reply, bytes) else reply) if reply else _Raw()
                for reply in got
            ]
        targets = [*keys, names_key(account)] if check else keys
        replies = grouped_by_node(
            self.conn,
            targets,
            lambda pipe, n: self._cluster_read(pipe, targets[n], n == len(keys)),
            lambda n: self._cluster_read(self.conn, targets[n], n == len(keys)),
        )
        if check:
            self.names.check(account, _generation(replies.pop()))
        return [_Raw.of(reply) for reply in replies]

    def _cluster_read(self, client: Any, key: str, generation: bool) -> Any:
        return client.hget(key, "#gen") if generation else self._read(keys=[key], client=client)

    def _value(self, account: str, profile_id: str) -> bytes | None:
        """The ledger as stored when it is a string of this layout; None otherwise."""
        try:
            value = self.conn.get(ledger_key(account, profile_id))
        except redis.ResponseError:  # a hash of an earlier layout
            return None
        return value if value and not value.startswith(b"[") else None

    def state(self, account: str, profile_id: str) -> LedgerState | None:
        raw = self._raw(account, [profile_id], check=True)[0]  # codes cached before a wipe are dropped
        if raw.version is None:
            return None
        codes = _Codes(self.names, account)
        if raw.coded:
            return LedgerState(raw.version, codes.members(raw.segments), codes.traits_of(raw.traits))
        return LedgerState(
            raw.version, frozenset(json.loads(raw.segments or b"[]")), json.loads(raw.traits or b"{}")
        )

    def history(self, account: str, profile_id: str, count: int = 100) -> list[dict[str, Any]]:
        """The latest ``count`` changes, oldest first: version, instant, segments entered and exited,
        computed traits changed (with their new values)."""
        count = max(count, 0)
        reply = self._tail(
            keys=[ledger_key(account, profile_id), older_key(account, profile_id)], args=[count]
        )
        if not reply or not reply[0] or reply[0].startswith(b"["):  # none, or an earlier layout
            return [_entry(line) for line in self._history(account, profile_id, count)]
        self.names.check(account, _generation(self.conn.hget(names_key(account), "#gen")))
        lines = reply[0].split(b"\n")
        state, changes = lines[0], [*reply[1], *lines[1:]]  # the older changes, then the string's
        return _changes(
            _Codes(self.names, account),
            state.split(b" ", 6)[6].decode(),
            changes[-count:] if count > 0 else [],
        )

    def _history(self, account: str, profile_id: str, count: int) -> list[str | dict[str, str]]:
        """The latest ``count`` entries of an earlier layout's history: its list's items, or its
        stream's entries."""
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
        value = self._value(account, profile_id)
        if value is not None:
            return int(_state_line(value).split(b" ", 5)[4]) + int(
                self.conn.llen(older_key(account, profile_id))
            )
        key = history_key(account, profile_id)
        kind = self.conn.type(key)
        if kind in (b"stream", "stream"):
            return int(self.conn.xlen(key))
        return int(self.conn.llen(key)) if kind in (b"list", "list") else 0

    def delete(self, account: str, profile_id: str) -> None:
        self.conn.delete(
            ledger_key(account, profile_id), history_key(account, profile_id), older_key(account, profile_id)
        )

    def delete_many(self, account: str, profile_ids: Iterable[str]) -> None:
        for pid in profile_ids:  # each profile's keys share a slot, not the others'
            self.delete(account, pid)


def _flat(fields: Mapping[bytes, bytes]) -> Iterable[bytes]:
    for pair in fields.items():
        yield from pair


def _cut(head: bytes) -> bool:
    """Whether the first bytes of a ledger read miss some of its state (the state line, or the
    two lines of the earlier string layout)."""
    return len(head) == STATE_PREFIX and (head[:1] == b"[" or b"\n" not in head)
