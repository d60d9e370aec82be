"""The profile store: compact per-profile encoding, atomic updates, reading a Profile back.

A profile is two keys sharing the hash tag ``{acct:pid}`` (see :mod:`.keys`): a hash for
identities, traits and aggregates, and one string for the event history. Every update of a
profile is one Lua script on those two keys, so concurrent workers never lose an update; the
scripts of all profiles of a batch go to Redis in one pipeline.

The history is one packed string: a header (the entry count in 3 bytes, then the time and id of
the newest entry, 14 bytes), then the entries in ``(occurred_at, event id)`` order, each a length
(1 byte below 128, else 2 or 3 bytes, see ``_LUA_HISTORY``) then:

  6 bytes  occurred_at in epoch milliseconds (big endian)
  8 bytes  the first 8 bytes of the event id (the event id is 32 hex digits)
  n bytes  the event name's short code (per account, see :class:`NameCodes`)
  1 byte   NUL
  rest     the kept properties (:func:`encode_properties`)

A history stored before the packed form (a sorted set: score = occurred_at in whole seconds,
member = 2 bytes of milliseconds then the rest as above) is read as it is and rewritten in the
packed form by the next script that writes the profile.

Re-applying an event is a no-op: the script keeps an entry per ``(occurred_at ms, event id
prefix)``. Entries newer than the newest stored one (events arriving in time order, the common
case) are appended without decoding the others; a late event, a merge or a retention drop decodes
and sorts the whole history once.

Compressed form. Once a write leaves at least :data:`COMPRESS_AT` bytes of plain entries, the apply
rewrites the history with every entry in a compressed block (:func:`pack_history`,
:func:`_pack_block`: columns, then raw deflate; about 1,630 -> 1,000 bytes for 50 events of two
properties), with a compare-and-set, so a write in between is never lost (the history is simply
compressed at a later write). Its header: the byte ``0xFF`` (a plain history starts with its
count's high byte), the entry count (3 bytes), the newest entry's time and id (14 bytes), the
oldest entry's time (6 bytes) and the block's length (3 bytes); then the block, then entries
appended since, in the plain form. Lua cannot inflate, so the scripts only ever append to it: an
event after the newest (the common case) is appended as above, and the header tells whether the
retention would drop anything. Anything else (a late event or a duplicate, a retention drop, a
merge into the profile) makes the script answer ``z`` before it writes; the caller rewrites the
history plain (:func:`rewrite_histories`, compare-and-set) and runs the script again, and the
history is compressed again after that write. Readers (:func:`unpack_history`) take all three
forms: the sorted set, the plain string (every history written before the compressed form; it is
compressed at its next write that leaves enough plain bytes) and the compressed one.

Traits keep, per trait, the ordering key ``(occurred_at ms, event id)`` of the event that set them;
a write with an older key never replaces a newer one, so late events never roll a trait back.
"""

from __future__ import annotations

import json
import math
import struct
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any, TypeVar

import redis

from connector import jsonload
from connector.errors import StateMoving
from connector.profiles import keys
from connector.profiles.batched import Batched
from connector.redis_conn import cached_script, grouped_by_node, is_cluster, pipelined
from rules.model import EventRecord, Profile

# The packed history in Lua: reading it (converting a sorted set stored before the packed form),
# adding entries once per (ms, event id) key, and writing it back with the account's retention
# (age, then count). Entries compare by their time as a number, then their id bytes one by one
# (never by Lua's string comparison, which follows the server's collation locale).
_LUA_HISTORY = """
local function ms_of(b)
  local x = 0
  for j = 1, 6 do x = x * 256 + string.byte(b, j) end
  return x
end
local function be6(x)
  local t = {}
  for j = 6, 1, -1 do t[j] = string.char(x % 256); x = math.floor(x / 256) end
  return table.concat(t)
end
local function head(n)
  if n < 128 then return string.char(n) end
  if n < 16384 then return string.char(128 + math.floor(n / 256), n % 256) end
  return string.char(192 + math.floor(n / 65536), math.floor(n / 256) % 256, n % 256)
end
local function u24(s, pos)
  return (string.byte(s, pos) * 256 + string.byte(s, pos + 1)) * 256 + string.byte(s, pos + 2)
end
local function be3(n)
  return string.char(math.floor(n / 65536), math.floor(n / 256) % 256, n % 256)
end
local function entry_at(s, pos)
  local b0 = string.byte(s, pos)
  if b0 < 128 then return pos + 1, b0 end
  if b0 < 192 then return pos + 2, (b0 - 128) * 256 + string.byte(s, pos + 1) end
  return pos + 3, ((b0 - 192) * 256 + string.byte(s, pos + 1)) * 256 + string.byte(s, pos + 2)
end
local function before(a, b)
  local x, y = ms_of(a), ms_of(b)
  if x ~= y then return x < y end
  for j = 7, 14 do
    x, y = string.byte(a, j), string.byte(b, j)
    if x ~= y then return x < y end
  end
  return false
end
local History = {}
History.__index = History
function History.open(h, cutoff)
  local self = setmetatable({h = h, cutms = math.max(cutoff, 0) * 1000, new = {}, count = 0}, History)
  local raw = redis.pcall('GET', h)
  if type(raw) == 'table' and raw.err then
    -- a sorted set stored before the packed form: score = seconds, member = 2 bytes ms + rest
    local list = {}
    local members = redis.call('ZRANGE', h, 0, -1, 'WITHSCORES')
    for j = 1, #members, 2 do
      local m = members[j]
      local ms = tonumber(members[j + 1]) * 1000 + string.byte(m, 1) * 256 + string.byte(m, 2)
      list[#list + 1] = be6(ms) .. string.sub(m, 3)
    end
    redis.call('DEL', h)
    self:index(list)
  elseif raw and string.byte(raw, 1) == 255 then
    -- compressed: the older entries in a block only the store's Python side reads, then the
    -- entries appended since in the plain form; new entries after the newest are appended as usual
    self.s, self.z, self.count, self.last = raw, true, u24(raw, 2), string.sub(raw, 5, 18)
    self.first, self.zend = ms_of(string.sub(raw, 19, 24)), 27 + u24(raw, 25)
  elseif raw then
    self.s, self.count, self.last = raw, u24(raw, 1), string.sub(raw, 4, 17)
    if #raw > 17 then
      local at = entry_at(raw, 18)
      self.first = ms_of(string.sub(raw, at, at + 5))
    end
  end
  return self
end
-- compressed only: true if every member comes after the newest entry (in order) and the retention
-- drops nothing; anything else needs every entry, which the caller gets by opening it first
function History:fits(members, maxev)
  local last = self.last
  for _, b in ipairs(members) do
    local k = string.sub(b, 1, 14)
    if ms_of(b) < self.cutms or not before(last, k) then return false end
    last = k
  end
  return self.first >= self.cutms and self.count + #members <= maxev
end
-- bytes of entries kept in the plain form (what compressing would shrink)
function History:plain()
  if not self.s then return 0 end
  return #self.s - (self.z and self.zend or 17)
end
function History:index(list)
  self.list, self.seen, self.dirty = list, {}, true
  for _, b in ipairs(list) do self.seen[string.sub(b, 1, 14)] = true end
end
-- every entry in a table (entries added in append mode last, they are the newest)
function History:load()
  if self.list then return end
  if self.z then error('a compressed history is opened before it is rewritten') end
  local list, s, pos = {}, self.s or '', 18
  while pos <= #s do
    local at, n = entry_at(s, pos)
    list[#list + 1] = string.sub(s, at, at + n - 1)
    pos = at + n
  end
  for _, b in ipairs(self.new) do list[#list + 1] = b end
  self:index(list)
end
-- 'added', 'dup' (already there) or 'old' (before the retention window). An entry after the
-- newest is appended without reading the others.
function History:add(b)
  local k = string.sub(b, 1, 14)
  if not self.list and ms_of(b) >= self.cutms and (not self.last or before(self.last, k)) then
    self.new[#self.new + 1] = b
    self.last, self.count = k, self.count + 1
    self.first = self.first or ms_of(b)
    return 'added'
  end
  self:load()
  if self.seen[k] then return 'dup' end
  if ms_of(b) < self.cutms then return 'old' end
  self.seen[k] = true
  self.list[#self.list + 1] = b
  return 'added'
end
-- write back with the retention (age, then count); returns how many entries it dropped
function History:store(maxev)
  if not self.list then
    if (self.first or self.cutms) >= self.cutms and self.count <= maxev then
      if #self.new == 0 then return 0 end
      local parts = {be3(self.count), self.last, string.sub(self.s or '', 18)}
      if self.z then parts = {string.char(255), be3(self.count), self.last, string.sub(self.s, 19)} end
      for _, b in ipairs(self.new) do parts[#parts + 1] = head(#b) .. b end
      self.s = table.concat(parts)
      redis.call('SET', self.h, self.s)
      return 0
    end
    self:load()
  end
  local list = self.list
  table.sort(list, before)
  local first = 1
  while first <= #list and ms_of(list[first]) < self.cutms do first = first + 1 end
  if #list - first + 1 > maxev then first = #list - maxev + 1 end
  local kept = #list - first + 1
  if kept <= 0 then
    redis.call('DEL', self.h)
    self.s = nil
    return #list
  end
  local parts = {be3(kept), string.sub(list[#list], 1, 14)}
  for j = first, #list do parts[#parts + 1] = head(#list[j]) .. list[j] end
  self.s = table.concat(parts)
  redis.call('SET', self.h, self.s)
  return first - 1
end
"""

# Traits one profile keeps at most: its hash counts them (``tn``, from the first trait set after
# the cap came in), and a trait it does not have yet is not kept past the cap (counted,
# ``profile_traits``); traits it has keep taking new values. A sender with the public write key could
# otherwise give one person millions of traits, which every later event of theirs loads.
MAX_TRAITS = 1_000
# The longest trait value kept, in bytes of its JSON (ASCII: one byte a character). A longer one is
# left out by :func:`prepare` (counted, ``trait_values``): the profile keeps the value it had. With
# MAX_TRAITS, a profile's traits stay under 2 MB, which bounds what every later event of theirs loads.
MAX_TRAIT_BYTES = 2_048
# The longest trait name kept, in characters (each name is two fields of the profile hash); a longer
# one is left out and counted the same way.
MAX_TRAIT_NAME = 200

# Both scripts start by refusing a merged (m) or erased (x) profile, and end by applying the
# account's retention (``dropped`` counts what it removed) and bumping the profile's revision.
_PRELUDE_BODY = (
    f"""
local MAX_TRAITS = {MAX_TRAITS}
"""
    + """
local p, h = KEYS[1], KEYS[2]
local st = redis.call('HMGET', p, 'm', 'x')
if st[1] then return {'m', st[1]} end
if st[2] then return {'x'} end
local cutoff = tonumber(ARGV[1])
local maxev = tonumber(ARGV[2])
"""
)
_PRELUDE = _LUA_HISTORY + _PRELUDE_BODY
_RETAIN = """
local dropped = hist:store(maxev)
local rv = redis.call('HINCRBY', p, 'rv', 1)
"""

_APPLY_BODY = (
    _PRELUDE_BODY
    + """
-- a profile is created by the identity links written before its events; a missing one was erased
-- after this batch was resolved, or another worker is writing its links ('n': the caller waits for
-- the account's identity lock and looks again); events are never stored under a bare profile id
if redis.call('EXISTS', p) == 0 then return {'n'} end
local hist = History.open(h, cutoff)
if hist.z then
  local members, j = {}, 3
  while j <= #ARGV do
    if ARGV[j] ~= '' then members[#members + 1] = ARGV[j] end
    j = j + 4 + 2 * tonumber(ARGV[j + 3])
  end
  if not hist:fits(members, maxev) then return {'z'} end
end
-- the first and last occurrence of each event name, the ids of identify events and each trait's
-- newest value are gathered over the events, then read and written once per profile
local i = 3
local added, dup = 0, 0
local codes, lo, hi, names, best = {}, {}, {}, {}, {}
local seen, seen0
while i <= #ARGV do
  local member, ord, code = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local nt = tonumber(ARGV[i + 3])
  i = i + 4
  if member ~= '' then
    local outcome = hist:add(member)
    if outcome == 'added' then added = added + 1 elseif outcome == 'dup' then dup = dup + 1 end
    local ms = string.sub(ord, 1, 13)
    if not lo[code] then
      codes[#codes + 1] = code
      lo[code], hi[code] = ms, ms
    else
      if ms < lo[code] then lo[code] = ms end
      if ms > hi[code] then hi[code] = ms end
    end
  else
    if not seen then
      seen = redis.call('HGET', p, 'k') or ''
      seen0 = seen
    end
    local eid = string.sub(ord, 14, 29)
    if not string.find(seen, eid, 1, true) then
      seen = seen .. eid
      if #seen > 512 then seen = string.sub(seen, -512) end
    end
  end
  for _ = 1, nt do
    local name, value = ARGV[i], ARGV[i + 1]
    i = i + 2
    local b = best[name]
    if not b then
      names[#names + 1] = name
      best[name] = {ord, value}
    elseif b[1] < ord then
      b[1], b[2] = ord, value
    end
  end
end
if seen and seen ~= seen0 then redis.call('HSET', p, 'k', seen) end
local function fetch(fields)  -- HMGET in slices (unpack's bound)
  local out = {}
  for j = 1, #fields, 200 do
    local last = math.min(j + 199, #fields)
    local got = redis.call('HMGET', p, unpack(fields, j, last))
    for k = j, last do out[k] = got[k - j + 1] end
  end
  return out
end
local function put(kv)  -- HSET in slices of whole pairs
  for j = 1, #kv, 200 do redis.call('HSET', p, unpack(kv, j, math.min(j + 199, #kv))) end
end
if #codes > 0 then
  local fields, out = {}, {}
  for _, c in ipairs(codes) do
    fields[#fields + 1] = 'f:' .. c
    fields[#fields + 1] = 'l:' .. c
  end
  local cur = fetch(fields)
  for j, c in ipairs(codes) do
    local f, l = cur[2 * j - 1], cur[2 * j]
    if (not f) or lo[c] < f then out[#out + 1] = 'f:' .. c; out[#out + 1] = lo[c] end
    if (not l) or hi[c] > l then out[#out + 1] = 'l:' .. c; out[#out + 1] = hi[c] end
  end
  if #out > 0 then put(out) end
end
local untraited = 0  -- new traits past the profile's cap, not kept
if #names > 0 then
  local fields, out = {}, {}
  for j, name in ipairs(names) do fields[j] = 'o:' .. name end
  local cur = fetch(fields)
  local tn
  for j, name in ipairs(names) do
    local b = best[name]
    local keep = cur[j] and cur[j] < b[1]
    if not cur[j] then  -- a trait the profile does not have yet: within the cap only
      tn = tn or tonumber(redis.call('HGET', p, 'tn') or '0')
      keep = tn < MAX_TRAITS
      if keep then tn = tn + 1 else untraited = untraited + 1 end
    end
    if keep then
      out[#out + 1] = 'o:' .. name
      out[#out + 1] = b[1]
      out[#out + 1] = 't:' .. name
      out[#out + 1] = b[2]
    end
  end
  if tn then out[#out + 1] = 'tn'; out[#out + 1] = tn end
  if #out > 0 then put(out) end
end
"""
    + _RETAIN
    + "return {'ok', added, dup, dropped, hist:plain(), rv, untraited}"
)
APPLY = _LUA_HISTORY + _APPLY_BODY
# APPLY for many profiles in one script call (per slot on a cluster): what a batch's apply runs
APPLY_MANY = Batched(_APPLY_BODY, _LUA_HISTORY)

# Copies another profile's data (history entries, then hash fields as pairs) into this one. Its
# identifiers all come along (the caller checked the identifier cap before it marked the other one):
# the identity index is re-pointed to this profile for every one of them. ``in`` counts them; the
# reply is ``{'ok', in}``.
MERGE = (
    _PRELUDE
    + """
local hist = History.open(h, cutoff)
if hist.z then return {'z'} end
local nm = tonumber(ARGV[3])
local i = 4
for _ = 1, nm do
  hist:add(ARGV[i])
  i = i + 1
end
local src = {}
while i <= #ARGV do src[ARGV[i]] = ARGV[i + 1]; i = i + 2 end
local ni = 0  -- identifiers new to this profile
for f, v in pairs(src) do
  local kind = string.sub(f, 1, 2)
  if kind == 'i:' then
    ni = ni + redis.call('HSET', p, f, v)
  elseif f == 'uid' then
    redis.call('HSETNX', p, f, v)
  elseif kind == 'o:' then
    local name = string.sub(f, 3)
    local cur = redis.call('HGET', p, f)
    if not cur then  -- a trait this profile does not have: within its cap only
      local tn = tonumber(redis.call('HGET', p, 'tn') or '0')
      if tn < MAX_TRAITS then
        redis.call('HSET', p, f, v, 't:' .. name, src['t:' .. name] or 'null', 'tn', tn + 1)
      end
    elseif cur < v then
      redis.call('HSET', p, f, v, 't:' .. name, src['t:' .. name] or 'null')
    end
  elseif f == 'k' then
    local cur = redis.call('HGET', p, 'k') or ''
    local add = ''
    for pos = 1, #v, 16 do
      local id = string.sub(v, pos, pos + 15)
      if not string.find(cur, id, 1, true) then add = add .. id end
    end
    if add ~= '' then redis.call('HSET', p, 'k', string.sub(cur .. add, -512)) end
  elseif kind == 'g:' then
    redis.call('HSET', p, f, v)
  elseif kind == 'f:' then
    local cur = redis.call('HGET', p, f)
    if (not cur) or v < cur then redis.call('HSET', p, f, v) end
  elseif kind == 'l:' then
    local cur = redis.call('HGET', p, f)
    if (not cur) or v > cur then redis.call('HSET', p, f, v) end
  end
end
if redis.call('HEXISTS', p, 'in') == 1 then
  if ni > 0 then redis.call('HINCRBY', p, 'in', ni) end
else  -- not counted yet (a profile stored before the count came in): count them all once
  local n = 0
  for _, f in ipairs(redis.call('HKEYS', p)) do
    if string.sub(f, 1, 2) == 'i:' then n = n + 1 end
  end
  redis.call('HSET', p, 'in', n)
end
"""
    + _RETAIN
    + "return {'ok', tonumber(redis.call('HGET', p, 'in'))}"
)


def run_scripts(conn: redis.Redis, script: Any, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
    """Run a registered script once per ``(keys, args)`` (the keys of one call share a hash tag,
    hence a slot) and return the replies in order, in one round trip per Redis server; a
    :class:`~connector.profiles.batched.Batched` script runs them in a few script calls."""
    if isinstance(script, Batched):
        return script.run(conn, calls)
    return grouped_by_node(
        conn,
        [keys[0] for keys, _ in calls],
        lambda pipe, n: script(keys=calls[n][0], args=calls[n][1], client=pipe),
        lambda n: script(keys=calls[n][0], args=calls[n][1], client=conn),
    )


def order_key(occurred_at: datetime, event_id: str) -> str:
    """Fixed-width ``(occurred_at ms, event id)``: compares as text in time order."""
    return f"{max(0, epoch_ms(occurred_at)):013d}{event_id[:16]}"


def epoch_ms(moment: datetime) -> int:
    return math.floor(moment.timestamp() * 1000)


PROPERTY_PREFIX = "@"  # property keys share the name-code dictionary, prefixed
_SEP = "\x1e"
_TYPES = "SIFTN"  # a property's type letter: str, int, float, true, false


def encode_properties(properties: Mapping[str, Any], codes: Mapping[str, str]) -> str:
    """Compact form: ``<key code><type><value>`` joined by RS; JSON when a value does not fit it."""
    parts = []
    for key in sorted(properties):
        value = properties[key]
        code = codes.get(PROPERTY_PREFIX + key)
        if isinstance(value, bool):
            part = f"{code}T" if value else f"{code}N"
        elif isinstance(value, int):
            part = f"{code}I{value}"
        elif isinstance(value, float):
            part = f"{code}F{value!r}"
        elif isinstance(value, str) and _SEP not in value:
            part = f"{code}S{value}"
        else:
            code = None
        if code is None:
            return json.dumps(properties, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
        parts.append(part)
    return _SEP.join(parts)


def decode_properties(body: str, name_of: Callable[[str], str]) -> dict[str, Any]:
    if not body:
        return {}
    if body.startswith("{"):
        return dict(jsonload.loads(body))
    out: dict[str, Any] = {}
    for part in body.split(_SEP):
        at = _type_at(part)
        key = name_of(part[:at])[len(PROPERTY_PREFIX) :]
        kind, raw = part[at : at + 1], part[at + 1 :]
        if kind == "S":
            out[key] = raw
        elif kind == "I":
            out[key] = int(raw)
        elif kind == "F":
            out[key] = float(raw)
        else:
            out[key] = kind == "T"
    return out


def _type_at(part: str) -> int:
    """Where a property's type letter is: its code is lower-case base 36, so the first of
    ``SIFTN`` ends it (the length when there is none)."""
    for at, char in enumerate(part):
        if char in _TYPES:
            return at
    return len(part)


def encode_member(
    occurred_ms: int, event_id: str, code: str, properties: Mapping[str, Any], codes: Mapping[str, str]
) -> bytes:
    """One history entry (without its length)."""
    head = occurred_ms.to_bytes(6, "big") + bytes.fromhex(event_id[:16].ljust(16, "0"))
    return head + code.encode() + b"\x00" + encode_properties(properties, codes).encode()


@dataclass(frozen=True)
class StoredEvent:
    occurred_at: datetime
    event_id: str  # the first 16 hex digits of the event id
    name_code: str
    properties: dict[str, Any]


def decode_member(member: bytes, name_of: Callable[[str], str]) -> StoredEvent:
    code, _, body = member[14:].partition(b"\x00")
    props = decode_properties(body.decode(), name_of)
    occurred = _from_ms(int.from_bytes(member[:6], "big"))
    return StoredEvent(occurred, member[6:14].hex(), code.decode(), props)


HEADER_BYTES = 17  # entry count (3 bytes) and the newest entry's time and id (14 bytes)
COMPRESSED = 0xFF  # first byte of a compressed history (a plain one starts with its count's high byte)
COMPRESSED_HEADER_BYTES = 27  # marker, count, newest entry's key, oldest entry's ms, block length
COMPRESS_AT = 256  # plain entry bytes from which the apply compresses a history
_WBITS = -15  # raw deflate (no zlib header or checksum: the block's length is in the header)


def unpack_history(packed: bytes | None) -> list[bytes]:
    """The entries of a packed history, plain or compressed (see the module docstring)."""
    data = packed or b""
    if data[:1] == bytes((COMPRESSED,)):
        end = COMPRESSED_HEADER_BYTES + int.from_bytes(data[24:27], "big")
        return _unpack_block(data[COMPRESSED_HEADER_BYTES:end]) + _plain_entries(data, end)
    return _plain_entries(data, HEADER_BYTES)


def _plain_entries(data: bytes, pos: int) -> list[bytes]:
    out: list[bytes] = []
    while pos < len(data):
        b0 = data[pos]
        if b0 < 0x80:
            n, w = b0, 1
        elif b0 < 0xC0:
            n, w = ((b0 - 0x80) << 8) | data[pos + 1], 2
        else:
            n, w = ((b0 - 0xC0) << 16) | (data[pos + 1] << 8) | data[pos + 2], 3
        out.append(data[pos + w : pos + w + n])
        pos += w + n
    return out


def pack_history(entries: Sequence[bytes], compress: bool) -> bytes:
    """A history of ``entries`` (sorted by ``(occurred_at, event id)``, not empty), plain or with
    every entry in the compressed block."""
    head = entries[-1][:14]
    count = len(entries).to_bytes(3, "big")
    if not compress:
        return count + head + b"".join(_length(len(e)) + e for e in entries)
    block = _pack_block(entries)
    return bytes((COMPRESSED,)) + count + head + entries[0][:6] + len(block).to_bytes(3, "big") + block


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes((0x80 | n >> 8, n & 0xFF))
    return bytes((0xC0 | n >> 16, n >> 8 & 0xFF, n & 0xFF))


def _pack_block(entries: Sequence[bytes]) -> bytes:
    """The entry count (3 bytes) and the 8-byte ids as they are (random: deflate would only add to
    them), then a raw deflate of the other columns: a byte naming the widths of the next two, each
    entry's time since the previous one (whole seconds as ``2s``, else milliseconds as ``2ms + 1``;
    4 bytes each, 8 when one does not fit), each entry's rest length (2 bytes, 4 when one does not
    fit), then the rests (name code, NUL, properties). The two number columns are stored byte plane
    by byte plane (every entry's first byte, then every second byte...): their high bytes are
    mostly zero and the deflate takes them for almost nothing. Like values sit together (about
    1,630 -> 1,000 bytes for 50 events of two properties; deflating the plain entries whole gives
    about 1,130), and every column is read back with one ``struct`` call."""
    steps = []
    previous = 0
    for entry in entries:
        ms = int.from_bytes(entry[:6], "big")
        seconds, rest = divmod(ms - previous, 1000)
        steps.append(2 * (ms - previous) + 1 if rest else 2 * seconds)
        previous = ms
    sizes = [len(entry) - 14 for entry in entries]
    wide_steps, wide_sizes = max(steps) >= 1 << 32, max(sizes) >= 1 << 16
    n = len(entries)
    body = bytes((wide_steps | wide_sizes << 1,))
    body += _planes(struct.pack(f">{n}{'Q' if wide_steps else 'I'}", *steps), 8 if wide_steps else 4)
    body += _planes(struct.pack(f">{n}{'I' if wide_sizes else 'H'}", *sizes), 4 if wide_sizes else 2)
    body += b"".join(entry[14:] for entry in entries)
    deflate = zlib.compressobj(9, zlib.DEFLATED, _WBITS)
    head = n.to_bytes(3, "big") + b"".join(entry[6:14] for entry in entries)
    return head + deflate.compress(body) + deflate.flush()


def _planes(packed: bytes, width: int) -> bytes:
    return b"".join(packed[k::width] for k in range(width))


def _unplanes(data: bytes, at: int, n: int, width: int) -> bytearray:
    out = bytearray(n * width)
    for k in range(width):
        out[k::width] = data[at + k * n : at + (k + 1) * n]
    return out


def _unpack_block(block: bytes) -> list[bytes]:
    n = int.from_bytes(block[:3], "big")
    ids = block[3 : 3 + 8 * n]
    data = zlib.decompress(block[3 + 8 * n :], _WBITS)
    step_width, size_width = (8 if data[0] & 1 else 4), (4 if data[0] & 2 else 2)
    steps = struct.unpack(f">{n}{'Q' if step_width == 8 else 'I'}", _unplanes(data, 1, n, step_width))
    at = 1 + n * step_width
    sizes = struct.unpack(f">{n}{'I' if size_width == 4 else 'H'}", _unplanes(data, at, n, size_width))
    pos = at + n * size_width
    times = struct.pack(f">{n}Q", *accumulate(s >> 1 if s & 1 else (s >> 1) * 1000 for s in steps))
    ends = list(accumulate(sizes, initial=pos))
    return [
        times[8 * i + 2 : 8 * i + 8] + ids[8 * i : 8 * i + 8] + data[ends[i] : ends[i + 1]] for i in range(n)
    ]


# Replaces a history by another form of the same entries, unless it changed since it was read.
_SWAP = """
local cur = redis.pcall('GET', KEYS[1])
if type(cur) ~= 'string' or cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


def rewrite_histories(conn: redis.Redis, account: str, pids: Sequence[str], compress: bool) -> int:
    """Rewrite these profiles' histories compressed (``compress``) or plain (the form the scripts
    need to insert a late event, merge or apply the retention), each only if nobody wrote it
    meanwhile (a compare-and-set); a history that changed is left for a later pass. Two round
    trips; the number rewritten."""
    if not pids:
        return 0
    pipe = conn.pipeline(transaction=False)
    for pid in pids:
        pipe.get(keys.history_key(account, pid))
    calls: list[tuple[list[str], list[Any]]] = []
    for pid, raw in zip(pids, pipe.execute(raise_on_error=False), strict=True):
        if not isinstance(raw, bytes) or len(raw) <= HEADER_BYTES:
            continue  # gone, or a sorted set from before the packed form (the scripts convert it)
        if (raw[0] == COMPRESSED) == compress and (not compress or _plain_bytes(raw) == 0):
            continue
        entries = unpack_history(raw)
        calls.append(([keys.history_key(account, pid)], [raw, pack_history(entries, compress)]))
    if not calls:
        return 0
    return sum(int(r) for r in run_scripts(conn, conn.register_script(_SWAP), calls))


def _plain_bytes(raw: bytes) -> int:
    if raw[0] == COMPRESSED:
        return len(raw) - COMPRESSED_HEADER_BYTES - int.from_bytes(raw[24:27], "big")
    return len(raw) - HEADER_BYTES


def from_sorted_set(history: Sequence[Sequence[Any]]) -> list[bytes]:
    """Entries of a history stored before the packed form (a sorted set), in the packed form."""
    out = []
    for member, score in history:
        ms = int(score) * 1000 + int.from_bytes(member[:2], "big")
        out.append(ms.to_bytes(6, "big") + member[2:])
    return out


def history_entries(conn: Any, account: str, pid: str, reply: object) -> list[bytes]:
    """The entries of a profile's history from a GET reply; a WRONGTYPE error means the history
    is still a sorted set (stored before the packed form): it is read as such."""
    if isinstance(reply, redis.ResponseError):
        if "WRONGTYPE" not in str(reply):
            raise reply
        return from_sorted_set(conn.zrange(keys.history_key(account, pid), 0, -1, withscores=True))
    return unpack_history(reply if isinstance(reply, bytes) else None)


MAX_ENTRY_BYTES = (1 << 22) - 1  # the longest entry the 3-byte length holds


@dataclass
class Prepared:
    """One event ready for the apply script."""

    member: bytes  # b"" for events that only carry traits (identify)
    order: str
    code: str
    traits: list[tuple[str, str]] = field(default_factory=list)
    oversized: int = (
        0  # traits left out: their JSON is longer than MAX_TRAIT_BYTES, or their name than MAX_TRAIT_NAME
    )

    def args(self) -> list[bytes | str | int]:
        out: list[bytes | str | int] = [self.member, self.order, self.code, len(self.traits)]
        for name, value in self.traits:
            out.extend((name, value))
        return out


def prepare(
    occurred_at: datetime,
    event_id: str,
    code: str,
    properties: Mapping[str, Any] | None,
    traits: Mapping[str, Any],
    codes: Mapping[str, str],
) -> Prepared:
    ms = max(0, epoch_ms(occurred_at))
    member = encode_member(ms, event_id, code, properties, codes) if properties is not None else b""
    if len(member) > MAX_ENTRY_BYTES:
        raise ValueError(f"properties over {MAX_ENTRY_BYTES} bytes")
    encoded = []
    oversized = 0
    for name, value in traits.items():
        text = json.dumps(value, separators=(",", ":"), default=str)
        if len(text) > MAX_TRAIT_BYTES or len(name) > MAX_TRAIT_NAME:
            oversized += 1
        else:
            encoded.append((name, text))
    return Prepared(member, order_key(occurred_at, event_id), code, sorted(encoded), oversized)


CODES_TRIES = 3  # reads of a names dictionary replaced while being read (the store wiped)
# :func:`base36` in Lua, for the scripts that give codes atomically in Redis
BASE36_LUA = """
local function base36(n)
  local digits, out = '0123456789abcdefghijklmnopqrstuvwxyz', ''
  repeat
    local r = n % 36
    out = string.sub(digits, r + 1, r + 1) .. out
    n = (n - r) / 36
  until n == 0
  return out
end
"""
# The codes of names (ARGV[3..]) in the dictionary KEYS[1] of generation ARGV[1], a new name given
# the next code while fewer than ARGV[2] codes were given (0: no cap), else '' (none);
# false when the dictionary is of another generation.
_CODES = (
    BASE36_LUA
    + """
if redis.call('HGET', KEYS[1], '#gen') ~= ARGV[1] then return false end
local cap = tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV do
  local field = 'n:' .. ARGV[i]
  local code = redis.call('HGET', KEYS[1], field)
  if not code then
    if cap > 0 and tonumber(redis.call('HGET', KEYS[1], '#seq') or '0') >= cap then
      code = ''
    else
      code = base36(redis.call('HINCRBY', KEYS[1], '#seq', 1))
      redis.call('HSET', KEYS[1], field, code, 'c:' .. code, ARGV[i])
    end
  end
  out[#out + 1] = code
end
return out
"""
)
# An account's event names and property keys together (``names:acct``): a sender may make up names
# (a public write key is enough), and each one is kept for good. Events of a new name past it are
# refused, properties of a new key are not kept (counted: ``property_names``). Segment tracks
# 1,000 event names per source and warns past it; Amplitude keeps 2,000 event types per project.
MAX_ACCOUNT_NAMES = 10_000


class NameCodes:
    """Event name ↔ short code, per account (``names:acct``), cached in the process.

    Codes are only ever added (``HSETNX``), so two workers never give one name two codes. The hash
    carries a generation token: if the store is wiped, cached codes are dropped. ``key`` names the
    dictionary of a scope (by default the account's ``names:acct``); other parts keep their own
    dictionaries with it (the sync's ownership ledgers)."""

    def __init__(self, conn: redis.Redis, key: Callable[[str], str] = keys.names_key, cap: int = 0) -> None:
        self.conn = conn
        self._key = key
        self.cap = cap  # names the dictionary takes at most (0: no cap); others get no code
        self._codes: dict[tuple[str, str], str] = {}
        self._names: dict[tuple[str, str], str] = {}
        self._gen: dict[str, bytes] = {}

    def check(self, account: str, generation: bytes | None) -> None:
        """Forget the account's cached codes if the stored generation differs."""
        if generation is None or self._gen.get(account) != generation:
            self._codes = {k: v for k, v in self._codes.items() if k[0] != account}
            self._names = {k: v for k, v in self._names.items() if k[0] != account}
            if generation is not None:
                self._gen[account] = generation
            else:
                self._gen.pop(account, None)

    def codes(self, account: str, names: set[str], checked: bool = False) -> dict[str, str]:
        """Codes of these names (new ones are added; past the cap a new name has none and is left
        out). ``checked``: the caller compared the generation already (:meth:`check`), so cached
        codes are answered without a round trip."""
        cache = self._codes  # read once: another thread's check may replace it meanwhile
        if checked and account in self._gen and all((account, n) in cache for n in names):
            return {n: cache[(account, n)] for n in names}
        for _ in range(CODES_TRIES):
            found = self._read_codes(account, names)
            if found is not None:
                return found
        raise StateMoving(f"the names dictionary of {account} was replaced under every attempt")

    def _read_codes(self, account: str, names: set[str]) -> dict[str, str] | None:
        """The codes of these names in one generation of the dictionary (new ones added); None
        when the dictionary was replaced (the store wiped) meanwhile."""
        key = self._key(account)
        generation = self.conn.hget(key, "#gen")
        if generation is None:
            self.conn.hsetnx(key, "#gen", keys.GENERATION_PREFIX + uuid.uuid4().hex)
            generation = self.conn.hget(key, "#gen")
            if generation is None:  # wiped again at once
                return None
        self.check(account, generation)
        # this generation's cache: another thread's check may put a new one in its place, and
        # what is learnt here then goes with this one
        cache, names_of = self._codes, self._names
        out = {n: cache[(account, n)] for n in names if (account, n) in cache}
        # event names before property keys: near the cap, an event's name decides whether it is kept
        missing = sorted((n for n in names if n not in out), key=_property_keys_last)
        if not missing:
            return out
        found = cached_script(self.conn, _CODES)(keys=[key], args=[generation, self.cap, *missing])
        if not found:  # no longer this generation
            return None
        for name, code in zip(missing, found, strict=True):
            text = code.decode() if isinstance(code, bytes) else str(code)
            if not text:  # past the cap
                continue
            out[name] = text
            cache[(account, name)] = text
            names_of[(account, text)] = name
        return out

    def name(self, account: str, code: str) -> str:
        cached = self._names.get((account, code))
        if cached is None:
            for field_name, value in self.conn.hgetall(self._key(account)).items():
                f = field_name.decode()
                if f.startswith("c:"):
                    self._names[(account, f[2:])] = value.decode()
            cached = self._names.get((account, code), f"unknown_{code}")
        return cached


def _property_keys_last(name: str) -> tuple[bool, str]:
    return name.startswith(PROPERTY_PREFIX), name


def base36(n: int) -> str:
    """A non-negative integer in base 36 (lower case): the short codes and the ledger's instants."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


@dataclass(frozen=True)
class ProfileData:
    """Everything stored for one profile, decoded."""

    account: str
    profile_id: str
    identities: dict[str, list[str]]
    traits: dict[str, Any]
    trait_times: dict[str, datetime]
    first_seen: dict[str, datetime]
    last_seen: dict[str, datetime]
    events: list[tuple[str, StoredEvent]]  # (name, stored event), sorted by (occurred_at, event id)
    other_event_ids: list[str] = field(default_factory=list)  # recent identify/alias ids (16 hex)
    revision: int = 0  # bumped by every write to the profile; orders evaluation results in the ledger


def read_profile(conn: redis.Redis, names: NameCodes, account: str, pid: str) -> ProfileData | None:
    """The stored profile, or None if it does not exist (or was merged away or erased)."""
    return read_profiles(conn, names, account, [pid])[pid]


def read_profiles(
    conn: redis.Redis, names: NameCodes, account: str, pids: Sequence[str]
) -> dict[str, ProfileData | None]:
    """:func:`read_profile` for many profiles of one account, in one round trip (per server):
    on a single server, without redis-py's cost per command (:func:`connector.redis_conn.pipelined`)."""
    if not is_cluster(conn):
        return _read_many(conn, names, account, pids, _decode)
    pipe = conn.pipeline(transaction=False)
    for pid in pids:
        pipe.hgetall(keys.profile_key(account, pid))
        pipe.get(keys.history_key(account, pid))
    pipe.hget(keys.names_key(account), "#gen")
    replies = pipe.execute(raise_on_error=False)
    for reply in replies[::2]:
        if isinstance(reply, Exception):
            raise reply
    names.check(account, replies[-1])
    return {
        pid: _decode(
            names, account, pid, replies[2 * n], history_entries(conn, account, pid, replies[2 * n + 1])
        )
        for n, pid in enumerate(pids)
    }


def _decode(
    names: NameCodes, account: str, pid: str, raw: dict[bytes, bytes], history: list[bytes]
) -> ProfileData | None:
    if not raw or b"m" in raw or b"x" in raw:
        return None
    data = ProfileData(account, pid, {}, {}, {}, {}, {}, [], revision=int(raw.get(b"rv", b"0")))
    for f_raw, v_raw in raw.items():
        _decode_field(data, names, f_raw.decode(), v_raw.decode())
    for member in history:
        stored = decode_member(member, lambda c: names.name(account, c))
        data.events.append((names.name(account, stored.name_code), stored))
    data.events.sort(key=lambda e: (e[1].occurred_at, e[1].event_id))
    for values in data.identities.values():
        values.sort()
    return data


def _decode_field(data: ProfileData, names: NameCodes, f: str, v: str) -> None:
    """One field of the profile hash into ``data``."""
    kind, rest = f[:2], f[2:]
    if kind == "i:":
        parsed = keys.parse_identity_field(f)
        if parsed is not None:
            data.identities.setdefault(parsed[0], []).append(parsed[1])
    elif kind == "t:":
        data.traits[rest] = jsonload.loads(v)
    elif kind == "o:":
        data.trait_times[rest] = _from_ms(int(v[:13]))
    elif kind in ("f:", "l:"):
        seen = data.first_seen if kind == "f:" else data.last_seen
        seen[names.name(data.account, rest)] = _from_ms(int(v))
    elif f == "k":
        data.other_event_ids.extend(v[i : i + 16] for i in range(0, len(v), 16))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(0, ms // 1000, ms % 1000 * 1000)  # positional: keywords cost more


def to_rules_profile(data: ProfileData) -> Profile:
    records = tuple(
        EventRecord(
            name=name, occurred_at=stored.occurred_at, properties=stored.properties, event_id=stored.event_id
        )
        for name, stored in data.events
    )
    identities = {kind: tuple(values) for kind, values in sorted(data.identities.items())}
    return Profile(
        account=data.account,
        profile_id=data.profile_id,
        identities=identities,
        traits=dict(sorted(data.traits.items())),
        events=records,
        revision=data.revision,
    )


_T = TypeVar("_T")


def _read_many(
    conn: redis.Redis,
    names: NameCodes,
    account: str,
    pids: Sequence[str],
    decode: Callable[[NameCodes, str, str, dict[bytes, bytes], list[bytes]], _T],
) -> dict[str, _T | None]:
    commands: list[tuple[str, ...]] = []
    for pid in pids:
        commands.append(("HGETALL", keys.profile_key(account, pid)))
        commands.append(("GET", keys.history_key(account, pid)))
    commands.append(("HGET", keys.names_key(account), "#gen"))
    replies = pipelined(conn, commands)
    generation = replies.pop()
    names.check(account, generation if isinstance(generation, bytes) else None)
    out: dict[str, _T | None] = {}
    for n, pid in enumerate(pids):
        fields, history = replies[2 * n], replies[2 * n + 1]
        if isinstance(fields, Exception):
            raise fields
        raw = fields if isinstance(fields, dict) else dict(zip(fields[::2], fields[1::2], strict=True))
        out[pid] = decode(names, account, pid, raw, history_entries(conn, account, pid, history))
    return out


def _entry_head(member: bytes) -> bytes:
    return member[:14]


class _NameMemo:
    """The names of one account's codes as one profile load meets them (each asked of the
    :class:`NameCodes` once)."""

    def __init__(self, names: NameCodes, account: str) -> None:
        self.names = names
        self.account = account
        self.found: dict[str, str] = {}

    def __call__(self, code: str) -> str:
        name = self.found.get(code)
        if name is None:
            name = self.found[code] = self.names.name(self.account, code)
        return name


def _rules_profile(
    names: NameCodes, account: str, pid: str, raw: dict[bytes, bytes], history: list[bytes]
) -> Profile | None:
    """``to_rules_profile(_decode(...))`` without what rules never read (trait instants, first and
    last occurrences, identify ids): the profiles an evaluation loads."""
    if not raw or b"m" in raw or b"x" in raw:
        return None
    identities: dict[str, list[str]] = {}
    traits: dict[str, Any] = {}
    for f_raw, v_raw in raw.items():
        kind = f_raw[:2]
        if kind == b"t:":
            traits[f_raw[2:].decode()] = jsonload.loads(v_raw.decode())
        elif kind == b"i:":
            parsed = keys.parse_identity_field(f_raw.decode())
            if parsed is not None:
                identities.setdefault(parsed[0], []).append(parsed[1])

    name_of = _NameMemo(names, account)
    records = []
    # (occurred_at, event_id) order is the order of an entry's first 14 bytes (its milliseconds and
    # the id's bytes, big-endian), and a stable sort on them keeps equal ones as they were
    for member in sorted(history, key=_entry_head):
        code, _, body = member[14:].partition(b"\x00")
        records.append(
            EventRecord(
                name_of(code.decode()),
                _from_ms(int.from_bytes(member[:6], "big")),
                decode_properties(body.decode(), name_of),
                member[6:14].hex(),
            )
        )
    return Profile(
        account=account,
        profile_id=pid,
        identities={kind: tuple(sorted(values)) for kind, values in sorted(identities.items())},
        traits=dict(sorted(traits.items())),
        events=tuple(records),
        revision=int(raw.get(b"rv", b"0")),
    )


_NAMES: dict[int, NameCodes] = {}


def name_codes(conn: redis.Redis) -> NameCodes:
    """One name-code cache per connection (process-wide)."""
    found = _NAMES.get(id(conn))
    if found is None or found.conn is not conn:
        found = NameCodes(conn, cap=MAX_ACCOUNT_NAMES)
        _NAMES[id(conn)] = found
    return found


def load_profile(conn: redis.Redis, account_id: str, profile_id: str, now: datetime) -> Profile | None:
    """The profile as rules see it (events sorted by (occurred_at, event_id)); None if absent.

    ``now`` is the instant of the evaluation; the stored history is already within retention."""
    del now
    data = read_profile(conn, name_codes(conn), account_id, profile_id)
    return to_rules_profile(data) if data is not None else None


def load_profiles(
    conn: redis.Redis, account_id: str, profile_ids: Sequence[str], now: datetime
) -> dict[str, Profile | None]:
    """:func:`load_profile` for many profiles of one account, in one round trip."""
    del now
    if not is_cluster(conn):
        return _read_many(conn, name_codes(conn), account_id, profile_ids, _rules_profile)
    found = read_profiles(conn, name_codes(conn), account_id, profile_ids)
    return {pid: to_rules_profile(data) if data is not None else None for pid, data in found.items()}


def iter_profile_ids(conn: redis.Redis, account_id: str, batch: int = 1000) -> Iterator[str]:
    """Every live profile id of an account (merged and erased tombstones are skipped)."""
    pending: list[str] = []
    for key in conn.scan_iter(match=keys.profile_match(account_id), count=batch):
        pending.append(keys.pid_from_profile_key(key))
        if len(pending) >= batch:
            yield from _live(conn, account_id, pending)
            pending = []
    if pending:
        yield from _live(conn, account_id, pending)


def _live(conn: redis.Redis, account: str, pids: Sequence[str]) -> Iterator[str]:
    pipe = conn.pipeline(transaction=False)
    for pid in pids:
        pipe.hmget(keys.profile_key(account, pid), "m", "x")
    for pid, (merged, erased) in zip(pids, pipe.execute(), strict=True):
        if merged is None and erased is None:
            yield pid
