"""Segment sizes kept as memberships change, so that no request ever scans the profiles.

The ledger reports each profile's entries and exits (:class:`connector.worker.ledger.Diff`);
:func:`record_transitions` turns them into, per account:

* the current size of each segment,
* the members of each segment (a set of profile ids, for paging and "is this person in it"),
* entries and exits per hour (kept 14 days) and per day (kept 13 months), each with a sample of
  the segment's size at the end of that hour or day.

Keys (profile Redis; every key of an account shares the hash tag ``{<account>}``, so one script
updates them atomically, also in Redis Cluster):

  ``sz:{a}:size``            hash segment → current size
  ``sz:{a}:m:<segment>``     set of the segment's profile ids
  ``sz:{a}:h:<YYYYMMDDHH>``  hash ``e:<segment>`` entries, ``x:<segment>`` exits, ``s:<segment>``
                             size at the last change of that hour; expires after 14 days
  ``sz:{a}:d:<YYYYMMDD>``    the same per day; expires after 13 months

A membership costs one set member (about 70 bytes for a 16-character profile id once a set is
past Redis's small-set encoding; see docs/api.md for the measurement). Counting is idempotent: an
entry is counted only when the profile was not yet in the set, an exit only when it was, so a
batch delivered twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

HOURLY_RETENTION = timedelta(days=14)
DAILY_RETENTION = timedelta(days=396)  # 13 months
HOUR_FORMAT = "%Y%m%d%H"
DAY_FORMAT = "%Y%m%d"

# KEYS: size hash, hour hash, day hash, then one member set per segment (entered, then exited).
# ARGV: profile id, number entered, hour ttl, day ttl, then the segment names in KEYS' order.
_RECORD = """
local pid = ARGV[1]
local entered = tonumber(ARGV[2])
for i = 4, #KEYS do
  local segment = ARGV[i + 1]
  local delta, counter
  if i - 3 <= entered then
    delta, counter = redis.call('SADD', KEYS[i], pid), 'e:'
  else
    delta, counter = -redis.call('SREM', KEYS[i], pid), 'x:'
  end
  if delta ~= 0 then
    local size = redis.call('HINCRBY', KEYS[1], segment, delta)
    if size <= 0 then redis.call('HDEL', KEYS[1], segment); size = 0 end
    for _, period in ipairs({KEYS[2], KEYS[3]}) do
      redis.call('HINCRBY', period, counter .. segment, 1)
      redis.call('HSET', period, 's:' .. segment, size)
    end
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return 0
"""


def size_key(account: str) -> str:
    return f"sz:{{{account}}}:size"


def members_key(account: str, segment: str) -> str:
    return f"sz:{{{account}}}:m:{segment}"


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
    entering, leaving = sorted(set(entered)), sorted(set(exited))
    if not entering and not leaving:
        return
    segments = entering + leaving
    keys = [size_key(account_id), hour_key(account_id, now), day_key(account_id, now)]
    keys += [members_key(account_id, s) for s in segments]
    hour_ttl = int(HOURLY_RETENTION.total_seconds()) + 3600
    day_ttl = int(DAILY_RETENTION.total_seconds()) + 86400
    args = [profile_id, len(entering), hour_ttl, day_ttl, *segments]
    pipe.register_script(_RECORD)(keys=keys, args=args, client=pipe)


# The same for many profiles in one call, each segment's set and counters written once. KEYS: size
# hash, hour hash, day hash, then the member set of each segment. ARGV: hour ttl, day ttl, then
# per segment (in KEYS' order): its name, the number of profiles entering it, their ids, the number
# leaving it, their ids. A profile is named at most once per segment and call.
_RECORD_MANY = """
local function each(cmd, key, first, n)
  local done = 0
  for from = first, first + n - 1, 1000 do
    done = done + redis.call(cmd, key, unpack(ARGV, from, math.min(from + 999, first + n - 1)))
  end
  return done
end
local i, s = 3, 0
while i <= #ARGV do
  s = s + 1
  local segment, n = ARGV[i], tonumber(ARGV[i + 1])
  local e = n > 0 and each('SADD', KEYS[3 + s], i + 2, n) or 0
  i = i + 2 + n
  n = tonumber(ARGV[i])
  local x = n > 0 and each('SREM', KEYS[3 + s], i + 1, n) or 0
  i = i + 1 + n
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


def record_many(
    pipe: redis.Redis | Any,
    account_id: str,
    transitions: Iterable[tuple[str, Iterable[str], Iterable[str]]],
    now: datetime,
) -> None:
    """:func:`record_transitions` for many profiles ``(profile id, entered, exited)`` (queued on
    ``pipe``): the worker's path, one script call per batch (one more for each time a profile
    comes again in ``transitions``) instead of one per profile, each segment's set and counters
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
        for segment in came:
            moves.setdefault(segment, ([], []))[0].append(pid)
        for segment in left:
            moves.setdefault(segment, ([], []))[1].append(pid)
    if not moves:
        return
    names = sorted(moves)
    keys = [size_key(account_id), hour_key(account_id, now), day_key(account_id, now)]
    keys += [members_key(account_id, s) for s in names]
    args: list[Any] = [
        int(HOURLY_RETENTION.total_seconds()) + 3600,
        int(DAILY_RETENTION.total_seconds()) + 86400,
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


def is_member(conn: redis.Redis, account_id: str, segment: str, profile_id: str) -> bool:
    return bool(conn.sismember(members_key(account_id, segment), profile_id))


def members(
    conn: redis.Redis, account_id: str, segment: str, cursor: int, count: int
) -> tuple[int, list[str]]:
    """One page of the segment's profile ids: (next cursor, 0 when done; ids). Pages may hold a
    few more or fewer than ``count`` (Redis's SSCAN)."""
    next_cursor, found = conn.sscan(members_key(account_id, segment), cursor=cursor, count=count)
    return int(next_cursor), sorted(_text(pid) for pid in found)


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
