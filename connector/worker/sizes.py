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
declare every bucket they touch, computed from the segment's state as last seen and checked by the
script (:mod:`connector.buckets`), so a slot being moved to another node answers TRYAGAIN / ASK.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from connector import buckets
from connector.redis_conn import cached_script

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
# the scripts that record or page a segment are followed by a call that moves up to ADOPT_PER_CALL
# of the set's members into the buckets (a member is in one of the two, never both), and membership
# is the union. Every script declares the state hash and every bucket it touches, computed from the
# segment's (L, s) as last seen (connector.buckets.known), and answers 'retry' with the current ones,
# having changed nothing, when they differ (the recording of a batch's moves: only when a bucket it
# needs under the current ones was not declared, so that another worker's split of other buckets
# meanwhile does not send it round again).
_MEMBERS_LUA = buckets.LUA

# KEYS: size hash, hour hash, day hash, bucket states, the earlier layout's set of each segment (in
# ARGV's order), then the buckets. ARGV: hour ttl, day ttl, cap, number of segments, then per
# segment: its name, its buckets' key prefix, the L and s assumed, the number of profiles entering
# it, their packed ids, the number leaving it, their ids. A profile is named at most once per
# segment and call. Reply: 'ok' or 'retry' (nothing done), then per segment its L, s, 1 when a split
# is due, 1 when a set of the earlier layout is left.
_RECORD_MANY = (
    _MEMBERS_LUA
    + """
local cap, k = tonumber(ARGV[3]), tonumber(ARGV[4])
local d = lh_declared(5 + k)
local plans, ok, i = {}, true, 5
for j = 1, k do
  local p = {segment = ARGV[i], prefix = ARGV[i + 1], old = KEYS[4 + j], enter = {}, leave = {}, where = {}}
  p.L, p.s, p.count = lh_unpack(redis.call('HGET', KEYS[4], p.segment))
  local n = tonumber(ARGV[i + 4])
  for x = i + 5, i + 4 + n do p.enter[#p.enter + 1] = ARGV[x] end
  i = i + 5 + n
  n = tonumber(ARGV[i])
  for x = i + 1, i + n do p.leave[#p.leave + 1] = ARGV[x] end
  i = i + 1 + n
  for _, list in ipairs({p.enter, p.leave}) do
    for _, m in ipairs(list) do
      local name = lh_name(p.prefix, lh_bucket(lh_hash_member(m), p.L, p.s))
      if not d[name] then ok = false end
      p.where[m] = name
    end
  end
  plans[j] = p
end
local function grouped(p, list, old)
  local g = {}
  for _, m in ipairs(list) do
    if not (old and redis.call('SISMEMBER', old, lh_unpack_pid(m)) == 1) then
      local t = g[p.where[m]]
      if not t then t = {}; g[p.where[m]] = t end
      t[#t + 1] = m
    end
  end
  return g
end
local out = {ok and 'ok' or 'retry'}
for _, p in ipairs(plans) do
  local old = redis.call('EXISTS', p.old) == 1 and p.old or nil
  if ok then
    local e, x, gone = 0, 0, 0
    for name, list in pairs(grouped(p, p.enter, old)) do e = e + lh_chunks('SADD', name, list) end
    for name, list in pairs(grouped(p, p.leave, nil)) do x = x + lh_chunks('SREM', name, list) end
    if old then
      for _, m in ipairs(p.leave) do gone = gone + redis.call('SREM', old, lh_unpack_pid(m)) end
      old = redis.call('EXISTS', old) == 1 and old or nil
    end
    if e > 0 or x > 0 then
      p.count = p.count + e - x
      if p.count <= 0 then  -- the count is exact: no bucket is left
        redis.call('HDEL', KEYS[4], p.segment)
        p.L, p.s = 0, 0
      else
        redis.call('HSET', KEYS[4], p.segment, lh_pack(p.L, p.s, p.count))
      end
    end
    x = x + gone
    if e > 0 or x > 0 then
      local size = redis.call('HINCRBY', KEYS[1], p.segment, e - x)
      if size <= 0 then redis.call('HDEL', KEYS[1], p.segment); size = 0 end
      for _, period in ipairs({KEYS[2], KEYS[3]}) do
        if e > 0 then redis.call('HINCRBY', period, 'e:' .. p.segment, e) end
        if x > 0 then redis.call('HINCRBY', period, 'x:' .. p.segment, x) end
        redis.call('HSET', period, 's:' .. p.segment, size)
      end
    end
  end
  out[#out + 1] = p.L
  out[#out + 1] = p.s
  out[#out + 1] = lh_due(cap, p.L, p.s, p.count) and 1 or 0
  out[#out + 1] = old and 1 or 0
end
if ok then
  redis.call('EXPIRE', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[3], ARGV[2])
end
return out
"""
)

# KEYS: bucket states, the segment's set of the earlier layout, the buckets of the members. ARGV:
# segment, its buckets' key prefix, cap, L, s (of a state made now when there is none), then members
# of the set (as stored there). Each is moved into its bucket unless gone from the set meanwhile.
# Reply: 'ok' / 'split' / 'retry', L, s, 1 when the set still holds members.
_ADOPT = (
    _MEMBERS_LUA
    + """
local packed = redis.call('HGET', KEYS[1], ARGV[1])
local L, s, n = lh_unpack(packed)
if not packed then
  L, s = tonumber(ARGV[4]), tonumber(ARGV[5])
elseif L ~= tonumber(ARGV[4]) or s ~= tonumber(ARGV[5]) then
  return {'retry', L, s}
end
local d, moves = lh_declared(3), {}
for i = 6, #ARGV do
  local p = lh_pack_pid(ARGV[i])
  local name = lh_name(ARGV[2], lh_bucket(lh_hash_member(p), L, s))
  if not d[name] then return {'retry', L, s} end
  moves[#moves + 1] = {ARGV[i], p, name}
end
for _, mv in ipairs(moves) do
  if redis.call('SREM', KEYS[2], mv[1]) == 1 then n = n + redis.call('SADD', mv[3], mv[2]) end
end
if n > 0 then redis.call('HSET', KEYS[1], ARGV[1], lh_pack(L, s, n)) end
return {lh_due(tonumber(ARGV[3]), L, s, n) and 'split' or 'ok', L, s, redis.call('EXISTS', KEYS[2])}
"""
)


def record_many(
    pipe: redis.Redis | Any,
    account_id: str,
    transitions: Iterable[tuple[str, Iterable[str], Iterable[str]]],
    now: datetime,
) -> None:
    """:func:`record_transitions` for many profiles ``(profile id, entered, exited)``: the worker's
    path, one script call per batch (one more for each time a profile comes again in
    ``transitions``) instead of one per profile, each segment's buckets and counters written once.
    The same state as :func:`record_transitions` for each (from consistent counters: a size is
    clamped at 0 once per call, not per change). Given a plain pipeline, the calls run at once on
    its connections (their replies are needed: a state changed meanwhile, a split due, a set of the
    earlier layout left), before what is queued on it."""
    conn = _connection(pipe)
    layers: list[dict[str, tuple[set[str], set[str]]]] = [{}]
    for pid, came, left in transitions:
        if pid in layers[-1]:
            layers.append({})
        layers[-1][pid] = (set(came), set(left))
    for layer in layers:
        _record_layer(conn, account_id, layer, now)


def _connection(pipe: redis.Redis | Any) -> Any:
    if isinstance(pipe, redis.client.Pipeline):
        return redis.Redis(connection_pool=pipe.connection_pool)
    return pipe


def _record_layer(
    conn: Any, account_id: str, layer: dict[str, tuple[set[str], set[str]]], now: datetime
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
    state = buckets_key(account_id)
    head = [size_key(account_id), hour_key(account_id, now), day_key(account_id, now), state]
    head += [members_key(account_id, s) for s in names]
    script = cached_script(conn, _RECORD_MANY)
    for attempt in range(buckets.TRIES):
        keys, args = list(head), list[Any]([_HOUR_TTL, _DAY_TTL, MEMBERS_CAP, len(names)])
        for name in names:
            entering, leaving = moves[name]
            level, split = buckets.known(state, name)
            prefix = _prefix(account_id, name)
            hashes = [buckets.member_hash(m) for m in (*entering, *leaving)]
            keys += buckets.names(prefix, hashes, level, split)
            args += [name, prefix, level, split, len(entering), *entering, len(leaving), *leaving]
        tag, *rest = script(keys=keys, args=args)
        for n, name in enumerate(names):
            buckets.learn(state, name, int(rest[4 * n]), int(rest[4 * n + 1]))
        if buckets.text(tag) == "ok":
            break
        buckets.back_off(attempt)
    else:
        raise buckets.StateMoving(f"the member buckets of {account_id} changed under every attempt")
    for n, name in enumerate(names):
        level, split, due, old = (int(x) for x in rest[4 * n : 4 * n + 4])
        if due:
            buckets.grow(conn, state, name, _prefix(account_id, name), "s", MEMBERS_CAP, level, split)
        if old:
            _adopt(conn, account_id, name, ADOPT_PER_CALL)


_HOUR_TTL = int(HOURLY_RETENTION.total_seconds()) + 3600
_DAY_TTL = int(DAILY_RETENTION.total_seconds()) + 86400


def _prefix(account_id: str, segment: str) -> str:
    return f"{buckets_key(account_id)}:{segment}:"


def _adopt(conn: Any, account_id: str, segment: str, most: int) -> bool:
    """Move up to ``most`` members of the segment's set of the earlier layout into its buckets (the
    first time, as many buckets as the whole set needs); whether the set still holds members."""
    old = members_key(account_id, segment)
    found = [buckets.text(m) for m in conn.srandmember(old, most)]
    if not found:
        return False
    state, prefix = buckets_key(account_id), _prefix(account_id, segment)
    if buckets.known(state, segment) == (0, 0):  # perhaps no state yet: size it for the whole set
        want = max(1, -(-int(conn.scard(old)) // MEMBERS_CAP))
        level = want.bit_length() - 1
        buckets.learn(state, segment, level, want - (1 << level))
    hashes = [buckets.member_hash(buckets.pack_pid(m)) for m in found]

    def make(level: int, split: int) -> tuple[list[str], list[Any]]:
        keys = [state, old, *buckets.names(prefix, hashes, level, split)]
        return keys, [segment, prefix, MEMBERS_CAP, level, split, *found]

    tag, level, split, (left,) = buckets.run(conn.register_script(_ADOPT), state, segment, make)
    if tag == "split":
        buckets.grow(conn, state, segment, prefix, "s", MEMBERS_CAP, level, split)
    return bool(left)


def forget(
    pipe: redis.Redis | Any, account_id: str, profile_id: str, segments: Iterable[str], now: datetime
) -> None:
    """The profile leaves ``segments`` (erased, or merged into another profile): counted as exits."""
    record_transitions(pipe, account_id, (), segments, now, profile_id=profile_id)


def sizes(conn: redis.Redis, account_id: str) -> dict[str, int]:
    """Every segment's current size (segments nobody is in are absent)."""
    return {_text(k): int(v) for k, v in conn.hgetall(size_key(account_id)).items()}


# KEYS: bucket states, the segment's set of the earlier layout, the member's bucket. ARGV: segment,
# its buckets' key prefix, L, s, packed profile id. Reply: 'ok' / 'retry', L, s, 1 when a member.
_IS_MEMBER = (
    _MEMBERS_LUA
    + """
local L, s = lh_unpack(redis.call('HGET', KEYS[1], ARGV[1]))
if L ~= tonumber(ARGV[3]) or s ~= tonumber(ARGV[4]) then return {'retry', L, s} end
if KEYS[3] ~= lh_name(ARGV[2], lh_bucket(lh_hash_member(ARGV[5]), L, s)) then return {'retry', L, s} end
if redis.call('SISMEMBER', KEYS[3], ARGV[5]) == 1 then return {'ok', L, s, 1} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {'ok', L, s, 0} end
return {'ok', L, s, redis.call('SISMEMBER', KEYS[2], lh_unpack_pid(ARGV[5]))}
"""
)

# KEYS: bucket states, the segment's set of the earlier layout, then the buckets this call may read
# (consecutive, from the one to start in). ARGV: segment, its buckets' key prefix, L, s, bucket to
# start in (-1: the earlier layout's set, first), where in it (the last member returned from a
# bucket, '' for none; an SSCAN cursor in the set), count. Reply: 'ok' / 'retry', L, s, the next
# bucket (-2 when done), where in it, then up to ``count`` packed members (each bucket's in order,
# buckets in their numbers' order, stopping after the last bucket declared; the set's, as SSCAN
# gives them, may be a few more).
_PAGE = (
    _MEMBERS_LUA
    + """
local L, s = lh_unpack(redis.call('HGET', KEYS[1], ARGV[1]))
if L ~= tonumber(ARGV[3]) or s ~= tonumber(ARGV[4]) then return {'retry', L, s} end
local prefix, d = ARGV[2], lh_declared(3)
local b, after, want = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local out, got, last = {'ok', L, s, -2, ''}, 0, 2 ^ L + s - 1
if b == -1 then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    local page = redis.call('SSCAN', KEYS[2], after == '' and '0' or after, 'COUNT', want)
    for _, m in ipairs(page[2]) do out[#out + 1] = lh_pack_pid(m) end
    if page[1] ~= '0' then out[4], out[5] = -1, page[1] else out[4] = 0 end
    return out
  end
  b, after = 0, ''
end
while b <= last do
  local name = lh_name(prefix, b)
  if not d[name] then out[4], out[5] = b, after; return out end
  local found = redis.call('SMEMBERS', name)
  table.sort(found)
  for at, m in ipairs(found) do
    if after == '' or m > after then
      out[#out + 1] = m
      got = got + 1
      if got >= want then
        if at < #found then
          out[4], out[5] = b, m
        elseif b < last then
          out[4] = b + 1
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

# KEYS: bucket states, some buckets of segment a, the buckets of segment b that may hold their
# members. ARGV: a, b, their buckets' key prefixes, a's L and s, b's L and s, the number of a's
# buckets. Reply: 'ok', the number of a's members in those buckets that are in b ('retry': a state
# is not as assumed).
_OVERLAP = (
    _MEMBERS_LUA
    + """
local La, sa = lh_unpack(redis.call('HGET', KEYS[1], ARGV[1]))
local Lb, sb = lh_unpack(redis.call('HGET', KEYS[1], ARGV[2]))
local want = {tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])}
if La ~= want[1] or sa ~= want[2] or Lb ~= want[3] or sb ~= want[4] then return {'retry'} end
local na = tonumber(ARGV[9])
local d, both = lh_declared(2 + na), 0
for i = 2, 1 + na do
  local groups = {}
  for _, m in ipairs(redis.call('SMEMBERS', KEYS[i])) do
    local name = lh_name(ARGV[4], lh_bucket(lh_hash_member(m), Lb, sb))
    if not d[name] then return {'retry'} end
    local t = groups[name]
    if not t then t = {}; groups[name] = t end
    t[#t + 1] = m
  end
  for name, list in pairs(groups) do
    for from = 1, #list, 1000 do
      for _, x in ipairs(redis.call('SMISMEMBER', name, unpack(list, from, math.min(from + 999, #list)))) do
        both = both + x
      end
    end
  end
end
return {'ok', both}
"""
)
OVERLAP_BUCKETS = 32  # buckets of the smaller segment counted per script call (~5,000-10,000 members)
OVERLAP_ADOPT = 1000  # members of a set of the earlier layout adopted per call before an overlap


def is_member(conn: redis.Redis, account_id: str, segment: str, profile_id: str) -> bool:
    state, prefix, member = (
        buckets_key(account_id),
        _prefix(account_id, segment),
        buckets.pack_pid(profile_id),
    )
    old, h = members_key(account_id, segment), buckets.member_hash(member)

    def make(level: int, split: int) -> tuple[list[str], list[Any]]:
        return [state, old, *buckets.names(prefix, [h], level, split)], [
            segment,
            prefix,
            level,
            split,
            member,
        ]

    _, _, _, (found,) = buckets.run(conn.register_script(_IS_MEMBER), state, segment, make)
    return bool(found)


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
    """One page of the segment's profile ids, at most ``count`` (a few more from a set of the
    earlier layout): (where the next page starts, None when done; ids). A profile in the segment
    throughout the paging is returned at least once (a bucket split meanwhile may return some
    twice, never lose one; see docs/api.md for a set of the earlier layout being adopted)."""
    position: Position | None = start or Position(-1, "")
    if position is not None and position.bucket == -1:
        _adopt(conn, account_id, segment, ADOPT_PER_CALL)
    state, prefix, old = (
        buckets_key(account_id),
        _prefix(account_id, segment),
        members_key(account_id, segment),
    )
    script = conn.register_script(_PAGE)
    out: list[str] = []
    for _ in range(64):
        if position is None or len(out) >= max(1, count):
            break
        make = _page_call(state, old, segment, prefix, position, max(1, count) - len(out))
        _, _, _, (nxt, after, *found) = buckets.run(script, state, segment, make)
        position = Position(int(nxt), _text(after)) if int(nxt) >= -1 else None
        out += [buckets.unpack_pid(m) for m in found]
    return position, out


def _page_call(
    state: str, old: str, segment: str, prefix: str, at: Position, want: int
) -> Callable[[int, int], tuple[list[str], list[Any]]]:
    """The keys and arguments of a page call from ``at``: the buckets that hold ``want`` members on
    average, and one more."""
    window = -(-want // MEMBERS_CAP) + 1

    def make(level: int, split: int) -> tuple[list[str], list[Any]]:
        first = max(at.bucket, 0)
        last = min(first + window, bucket_count(level, split))
        keys = [state, old, *(buckets.name(prefix, b) for b in range(first, last))]
        return keys, [segment, prefix, level, split, at.bucket, at.after, want]

    return make


def bucket_count(level: int, split: int) -> int:
    return buckets.bucket_count(level, split)


def member_ids(conn: redis.Redis, account_id: str, segment: str) -> set[str]:
    """Every profile id of the segment (tests, tools: the API pages with :func:`members`)."""
    out: set[str] = set()
    position: Position | None = Position(-1, "")
    while position is not None:
        position, found = members(conn, account_id, segment, position, 1000)
        out.update(found)
    return out


def overlap(conn: redis.Redis, account_id: str, a: str, b: str) -> int:
    """The number of profiles in both segments, counted on the server in calls of
    :data:`OVERLAP_BUCKETS` buckets of the smaller one (no call holds Redis long; a segment changed
    meanwhile is counted again, a bounded number of times). A set of the earlier layout left is
    adopted into its buckets first."""
    for segment in (a, b):
        while _adopt(conn, account_id, segment, OVERLAP_ADOPT):
            pass
    state = buckets_key(account_id)
    script = conn.register_script(_OVERLAP)
    for _ in range(buckets.TRIES):
        first, second = (buckets.unpack_state(v) for v in conn.hmget(state, [a, b]))
        small, large = (a, b) if first[2] <= second[2] else (b, a)
        (la, sa, _), (lb, sb, _) = (first, second) if small == a else (second, first)
        pa, pb = _prefix(account_id, small), _prefix(account_id, large)
        total, count_a = 0, bucket_count(la, sa)
        for start in range(0, count_a, OVERLAP_BUCKETS):
            numbers = range(start, min(start + OVERLAP_BUCKETS, count_a))
            keys = [state, *(buckets.name(pa, n) for n in numbers)]
            keys += [buckets.name(pb, n) for n in sorted(buckets.images(numbers, la, sa, lb, sb))]
            tag, *rest = script(keys=keys, args=[small, large, pa, pb, la, sa, lb, sb, len(numbers)])
            if buckets.text(tag) != "ok":
                break
            total += int(rest[0])
        else:
            return total
    raise buckets.StateMoving(f"the member buckets of {account_id} changed under every attempt")


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
