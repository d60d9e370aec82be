"""Segment sizes kept as memberships change, so that no request ever scans the profiles.

The ledger reports each profile's entries and exits (:class:`connector.worker.ledger.Diff`);
:func:`record_transitions` turns them into, per account:

* the current size of each segment,
* the members of each segment (profile ids in buckets, for paging and "is this person in it"),
* entries and exits per hour (kept 14 days) and per day (kept 13 months), each with a sample of
  the segment's size at the end of that hour or day.

Keys (profile Redis; every key of an account shares the hash tag ``{<account>}``, so one script
updates them atomically, also in Redis Cluster):

  ``sz:{a}:size``            hash segment → current size
  ``sz:{a}:mb``              hash segment → the state of its member buckets (:mod:`connector.buckets`:
                             level, split pointer, members)
  ``sz:{a}:mb:<segment>:<n>`` set, bucket ``n`` of the segment's members: packed profile ids
                             (:func:`connector.buckets.pack_pid`), an intset of 160-320 on average
  ``sz:{a}:m:<segment>``     the earlier layout: one set of the segment's profile ids, adopted into
                             the buckets ``ADOPT_PER_CALL`` members per script call that meets it
  ``sz:{a}:h:<YYYYMMDDHH>``  hash ``e:<segment>`` entries, ``x:<segment>`` exits, ``s:<segment>``
                             size at the last change of that hour; expires after 14 days
  ``sz:{a}:d:<YYYYMMDD>``    the same per day; expires after 13 months

A membership costs about 8 bytes (an intset member; about 70 as one member of a set per segment,
the earlier layout). Counting is idempotent: an entry is counted only when the profile was not yet
a member, an exit only when it was, so a batch delivered twice changes nothing. The bucket scripts
name their bucket keys themselves (same hash tag as the declared state key).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from connector import buckets

HOURLY_RETENTION = timedelta(days=14)
DAILY_RETENTION = timedelta(days=396)  # 13 months
HOUR_FORMAT = "%Y%m%d%H"
DAY_FORMAT = "%Y%m%d"
MEMBERS_CAP = 160  # mean members a bucket is split at (an intset holds 512)
ADOPT_PER_CALL = 200  # members of a set of the earlier layout moved into buckets per script call


def size_key(account: str) -> str:
    return f"sz:{{{account}}}:size"


def members_key(account: str, segment: str) -> str:
    """The segment's member set of the earlier layout (adopted into buckets when first met)."""
    return f"sz:{{{account}}}:m:{segment}"


def buckets_key(account: str) -> str:
    """Hash segment → its member buckets' state; bucket ``n`` of a segment is ``<this>:<segment>:<n>``."""
    return f"sz:{{{account}}}:mb"


def bucket_key(account: str, segment: str, n: int) -> str:
    return f"{buckets_key(account)}:{segment}:{n}"


def hour_key(account: str, moment: datetime) -> str:
    return f"sz:{{{account}}}:h:{moment.astimezone(UTC).strftime(HOUR_FORMAT)}"


def day_key(account: str, moment: datetime) -> str:
    return f"sz:{{{account}}}:d:{moment.astimezone(UTC).strftime(DAY_FORMAT)}"


def record_transitions(
    pipe: redis.Redis | Any,
    account_id: str,
    entered: Iterable[str],
    exited: Iterable[str],
    now: datetime,
    *,
    profile_id: str,
) -> None:
    """Count a profile's segment entries and exits at ``now`` (queued on ``pipe``, a pipeline or a
    connection of the profile Redis). Idempotent per (profile, segment)."""
    record_many(pipe, account_id, [(profile_id, entered, exited)], now)


# Member buckets (connector.buckets), and the earlier layout's set of a segment while one is left:
# every script that changes or pages a segment moves up to ADOPT_PER_CALL of its members into the
# buckets first (a member is in one of the two, never both), and membership is the union.
_MEMBERS_LUA = (
    buckets.LUA
    + """
local function sz_adopt(st, old, segment, base, cap, most)
  local moving = redis.call('SPOP', old, most)
  if #moving == 0 then return end
  local packed = redis.call('HGET', st, segment)
  local L, s, n = lh_unpack(packed)
  if not packed then  -- as many buckets as the whole set needs, at once
    local want = math.max(1, math.ceil((#moving + redis.call('SCARD', old)) / cap))
    while 2 ^ (L + 1) <= want do L = L + 1 end
    s = want - 2 ^ L
  end
  local prefix = base .. segment .. ':'
  local groups = {}
  for _, m in ipairs(moving) do
    local p = lh_pack_pid(m)
    local b = lh_bucket(lh_hash_member(p), L, s)
    local t = groups[b]
    if not t then t = {}; groups[b] = t end
    t[#t + 1] = p
  end
  for b, list in pairs(groups) do n = n + lh_chunks('SADD', lh_name(prefix, b), list) end
  L, s = lh_grow(prefix, 's', cap, L, s, n)
  redis.call('HSET', st, segment, lh_pack(L, s, n))
end
local function sz_where(st, segment, base, m)
  local L, s = lh_unpack(redis.call('HGET', st, segment))
  return lh_name(base .. segment .. ':', lh_bucket(lh_hash_member(m), L, s))
end
local function sz_has(st, old, segment, base, m)
  if redis.call('SISMEMBER', sz_where(st, segment, base, m), m) == 1 then return 1 end
  if redis.call('EXISTS', old) == 0 then return 0 end
  return redis.call('SISMEMBER', old, lh_unpack_pid(m))
end
"""
)

# KEYS: size hash, hour hash, day hash, bucket states, then the earlier layout's set of each segment
# (in ARGV's order). ARGV: hour ttl, day ttl, cap, buckets' key prefix, members adopted per
# segment, then per segment: its name, the number of profiles entering it, their packed ids, the
# number leaving it, their ids. A profile is named at most once per segment and call.
_RECORD_MANY = (
    _MEMBERS_LUA
    + """
local function grouped(old, L, s, first, n, entering)
  local g = {}
  for i = first, first + n - 1 do
    local m = ARGV[i]
    if not (entering and old and redis.call('SISMEMBER', old, lh_unpack_pid(m)) == 1) then
      local b = lh_bucket(lh_hash_member(m), L, s)
      local t = g[b]
      if not t then t = {}; g[b] = t end
      t[#t + 1] = m
    end
  end
  return g
end
local cap, base = tonumber(ARGV[3]), ARGV[4]
local i, k = 6, 0
while i <= #ARGV do
  k = k + 1
  local segment, n = ARGV[i], tonumber(ARGV[i + 1])
  sz_adopt(KEYS[4], KEYS[4 + k], segment, base, cap, tonumber(ARGV[5]))
  local old = redis.call('EXISTS', KEYS[4 + k]) == 1 and KEYS[4 + k] or nil
  local prefix = base .. segment .. ':'
  local L, s, count = lh_unpack(redis.call('HGET', KEYS[4], segment))
  local e, x, gone = 0, 0, 0
  for b, list in pairs(grouped(old, L, s, i + 2, n, true)) do
    e = e + lh_chunks('SADD', lh_name(prefix, b), list)
  end
  i = i + 2 + n
  n = tonumber(ARGV[i])
  for b, list in pairs(grouped(old, L, s, i + 1, n, false)) do
    x = x + lh_chunks('SREM', lh_name(prefix, b), list)
  end
  if old then
    for j = i + 1, i + n do gone = gone + redis.call('SREM', old, lh_unpack_pid(ARGV[j])) end
  end
  i = i + 1 + n
  if e > 0 or x > 0 then
    count = count + e - x
    L, s = lh_grow(prefix, 's', cap, L, s, count)
    local left = count > 0 and 1 or 0
    if left == 0 then
      for b = 0, 2 ^ L + s - 1 do left = left + redis.call('EXISTS', lh_name(prefix, b)) end
    end
    if left == 0 then
      redis.call('HDEL', KEYS[4], segment)
    else
      redis.call('HSET', KEYS[4], segment, lh_pack(L, s, count))
    end
  end
  x = x + gone
  if e > 0 or x > 0 then
    local size = redis.call('HINCRBY', KEYS[1], segment, e - x)
    if size <= 0 then redis.call('HDEL', KEYS[1], segment); size = 0 end
    for _, period in ipairs({KEYS[2], KEYS[3]}) do
      if e > 0 then redis.call('HINCRBY', period, 'e:' .. segment, e) end
      if x > 0 then redis.call('HINCRBY', period, 'x:' .. segment, x) end
      redis.call('HSET', period, 's:' .. segment, size)
    end
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[2])
return 0
"""
)


def record_many(
    pipe: redis.Redis | Any,
    account_id: str,
    transitions: Iterable[tuple[str, Iterable[str], Iterable[str]]],
    now: datetime,
) -> None:
    """:func:`record_transitions` for many profiles ``(profile id, entered, exited)`` (queued on
    ``pipe``): the worker's path, one script call per batch (one more for each time a profile
    comes again in ``transitions``) instead of one per profile, each segment's buckets and counters
    written once. The same state as :func:`record_transitions` for each (from consistent counters:
    a size is clamped at 0 once per call, not per change)."""
    layers: list[dict[str, tuple[set[str], set[str]]]] = [{}]
    for pid, came, left in transitions:
        if pid in layers[-1]:
            layers.append({})
        layers[-1][pid] = (set(came), set(left))
    for layer in layers:
        _record_layer(pipe, account_id, layer, now)


def _record_layer(
    pipe: redis.Redis | Any, account_id: str, layer: dict[str, tuple[set[str], set[str]]], now: datetime
) -> None:
    moves: dict[str, tuple[list[str], list[str]]] = {}
    for pid, (came, left) in layer.items():
        packed = buckets.pack_pid(pid)
        for segment in came:
            moves.setdefault(segment, ([], []))[0].append(packed)
        for segment in left:
            moves.setdefault(segment, ([], []))[1].append(packed)
    if not moves:
        return
    names = sorted(moves)
    keys = [size_key(account_id), hour_key(account_id, now), day_key(account_id, now)]
    keys += [buckets_key(account_id), *(members_key(account_id, s) for s in names)]
    args: list[Any] = [
        int(HOURLY_RETENTION.total_seconds()) + 3600,
        int(DAILY_RETENTION.total_seconds()) + 86400,
        MEMBERS_CAP,
        f"{buckets_key(account_id)}:",
        ADOPT_PER_CALL,
    ]
    for name in names:
        entering, leaving = moves[name]
        args += [name, len(entering), *entering, len(leaving), *leaving]
    pipe.register_script(_RECORD_MANY)(keys=keys, args=args, client=pipe)


def forget(
    pipe: redis.Redis | Any, account_id: str, profile_id: str, segments: Iterable[str], now: datetime
) -> None:
    """The profile leaves ``segments`` (erased, or merged into another profile): counted as exits."""
    record_transitions(pipe, account_id, (), segments, now, profile_id=profile_id)


def sizes(conn: redis.Redis, account_id: str) -> dict[str, int]:
    """Every segment's current size (segments nobody is in are absent)."""
    return {_text(k): int(v) for k, v in conn.hgetall(size_key(account_id)).items()}


# KEYS: bucket states, the segment's set of the earlier layout. ARGV: segment, buckets' key
# prefix, packed profile id.
_IS_MEMBER = (
    _MEMBERS_LUA
    + """
return sz_has(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
"""
)

# KEYS: bucket states, the segment's set of the earlier layout. ARGV: segment, buckets' key prefix,
# cap, members adopted, bucket to start in (-1: the earlier layout's set, first), where in it (the
# last member returned from a bucket, '' for none; an SSCAN cursor in the set), count. Reply: the
# next bucket (-2 when done), where in it, then up to ``count`` packed members (each bucket's in
# order, buckets in their numbers' order; the set's, as SSCAN gives them, may be a few more).
_PAGE = (
    _MEMBERS_LUA
    + """
sz_adopt(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
local L, s = lh_unpack(redis.call('HGET', KEYS[1], ARGV[1]))
local prefix = ARGV[2] .. ARGV[1] .. ':'
local b, after, want = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local out, got, last = {-2, ''}, 0, 2 ^ L + s - 1
if b == -1 then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    local page = redis.call('SSCAN', KEYS[2], after == '' and '0' or after, 'COUNT', want)
    for _, m in ipairs(page[2]) do out[#out + 1] = lh_pack_pid(m) end
    if page[1] ~= '0' then out[1], out[2] = -1, page[1] else out[1] = 0 end
    return out
  end
  b, after = 0, ''
end
while b <= last do
  local found = redis.call('SMEMBERS', lh_name(prefix, b))
  table.sort(found)
  for at, m in ipairs(found) do
    if after == '' or m > after then
      out[#out + 1] = m
      got = got + 1
      if got >= want then
        if at < #found then
          out[1], out[2] = b, m
        elseif b < last then
          out[1] = b + 1
        end
        return out
      end
    end
  end
  b, after = b + 1, ''
end
return out
"""
)

# KEYS: bucket states, the two segments' sets of the earlier layout. ARGV: the two segments, buckets'
# key prefix. Reply: the number of profiles in both.
_OVERLAP = (
    _MEMBERS_LUA
    + """
local st, base = KEYS[1], ARGV[3]
local function size(segment, old)
  local _, _, n = lh_unpack(redis.call('HGET', st, segment))
  return n + redis.call('SCARD', old)
end
local a, olda, b, oldb = ARGV[1], KEYS[2], ARGV[2], KEYS[3]
if size(a, olda) > size(b, oldb) then a, olda, b, oldb = b, oldb, a, olda end
local both = 0
local L, s = lh_unpack(redis.call('HGET', st, a))
for n = 0, 2 ^ L + s - 1 do
  for _, m in ipairs(redis.call('SMEMBERS', lh_name(base .. a .. ':', n))) do
    both = both + sz_has(st, oldb, b, base, m)
  end
end
for _, m in ipairs(redis.call('SMEMBERS', olda)) do
  both = both + sz_has(st, oldb, b, base, lh_pack_pid(m))
end
return both
"""
)


def is_member(conn: redis.Redis, account_id: str, segment: str, profile_id: str) -> bool:
    keys = [buckets_key(account_id), members_key(account_id, segment)]
    args = [segment, f"{buckets_key(account_id)}:", buckets.pack_pid(profile_id)]
    return bool(conn.register_script(_IS_MEMBER)(keys=keys, args=args))


@dataclass(frozen=True)
class Position:
    """Where a page of members ends: the bucket and the last member returned from it."""

    bucket: int  # -1: the segment's set of the earlier layout, while one is left
    after: str  # the last member returned from the bucket as stored ('' at its start); in the set: SSCAN's

    def valid(self) -> bool:
        if self.bucket == -1:
            return self.after == "" or (self.after.isdigit() and int(self.after) < 2**64)
        return 0 <= self.bucket < 2**32 and len(self.after) <= 100


def members(
    conn: redis.Redis, account_id: str, segment: str, start: Position | None, count: int
) -> tuple[Position | None, list[str]]:
    """One page of the segment's profile ids, at most ``count``: (where the next page starts, None
    when done; ids). A profile in the segment throughout the paging is returned at least once (a
    bucket split meanwhile may return some twice, never lose one)."""
    start = start or Position(-1, "")
    keys = [buckets_key(account_id), members_key(account_id, segment)]
    args = [segment, f"{buckets_key(account_id)}:", MEMBERS_CAP, ADOPT_PER_CALL]
    args += [start.bucket, start.after, max(1, count)]
    nxt, after, *found = conn.register_script(_PAGE)(keys=keys, args=args)
    position = Position(int(nxt), _text(after)) if int(nxt) >= -1 else None
    return position, [buckets.unpack_pid(m) for m in found]


def member_ids(conn: redis.Redis, account_id: str, segment: str) -> set[str]:
    """Every profile id of the segment (tests, tools: the API pages with :func:`members`)."""
    out: set[str] = set()
    position: Position | None = Position(-1, "")
    while position is not None:
        position, found = members(conn, account_id, segment, position, 1000)
        out.update(found)
    return out


def overlap(conn: redis.Redis, account_id: str, a: str, b: str) -> int:
    """The number of profiles in both segments, counted on the server (O(the smaller one))."""
    keys = [buckets_key(account_id), members_key(account_id, a), members_key(account_id, b)]
    args = [a, b, f"{buckets_key(account_id)}:"]
    return int(conn.register_script(_OVERLAP)(keys=keys, args=args))


@dataclass(frozen=True)
class Period:
    start: datetime
    size: int  # at the end of the period
    entered: int
    exited: int


def hourly(conn: redis.Redis, account_id: str, segment: str, now: datetime, hours: int = 24) -> list[Period]:
    """The last ``hours`` hours (oldest first, the current hour last), at most 14 days."""
    hours = max(1, min(hours, int(HOURLY_RETENTION.total_seconds() // 3600)))
    top = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    starts = [top - timedelta(hours=n) for n in range(hours)]
    return _periods(conn, account_id, segment, [hour_key(account_id, s) for s in starts], starts)


def daily(conn: redis.Redis, account_id: str, segment: str, now: datetime, days: int = 30) -> list[Period]:
    """The last ``days`` days (oldest first, today last), at most 13 months."""
    days = max(1, min(days, DAILY_RETENTION.days))
    top = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    starts = [top - timedelta(days=n) for n in range(days)]
    return _periods(conn, account_id, segment, [day_key(account_id, s) for s in starts], starts)


def _periods(
    conn: redis.Redis, account_id: str, segment: str, keys: list[str], starts: list[datetime]
) -> list[Period]:
    """Newest first in ``keys``; a period without a size sample had no change, so its size is the
    next period's size before that period's changes (walking back from the current size)."""
    pipe = conn.pipeline(transaction=False)
    pipe.hget(size_key(account_id), segment)
    for key in keys:
        pipe.hmget(key, f"e:{segment}", f"x:{segment}", f"s:{segment}")
    current, *rows = pipe.execute()
    size_after = int(current or 0)
    out: list[Period] = []
    for start, (e, x, s) in zip(starts, rows, strict=True):
        entered, exited = int(e or 0), int(x or 0)
        size = int(s) if s is not None else size_after
        out.append(Period(start, size, entered, exited))
        size_after = size - entered + exited
    out.reverse()
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
