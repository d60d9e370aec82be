"""Size and movement of segments: sizes, entries and exits over time (read from
:mod:`connector.worker.sizes`) and the migration matrix of each exclusive group.

:func:`record_diff` is called with each profile's ledger diff (where the worker records
:func:`connector.worker.sizes.record_transitions`): for every exclusive group of the rules (one
segment at most per person: lifecycle stages, engagement tiers) it counts the move ``from > to``
on the day of the change (``-`` for none: a person entering the group or leaving it), and it keeps
the person's last entry and exit instant per segment (used by :mod:`attribution`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import redis

from connector.analytics.assign import TREATED
from connector.analytics.keys import (
    DAILY_RETENTION,
    PERSON_RETENTION,
    SEGMENT_CODE_LUA,
    codes_key,
    day_key,
    day_starts,
    messages_key,
    migration_key,
    person_key,
)
from connector.redis_conn import queued_script
from connector.worker import sizes

NONE = "-"


def moves(
    groups: Mapping[str, Iterable[str]], entered: Iterable[str], exited: Iterable[str]
) -> dict[str, str]:
    """Group → ``from>to`` for each exclusive group the diff moved a person in."""
    came, left = set(entered), set(exited)
    out: dict[str, str] = {}
    for group, members in groups.items():
        names = set(members)
        to, frm = sorted(came & names), sorted(left & names)
        if to or frm:
            out[group] = f"{frm[0] if frm else NONE}>{to[0] if to else NONE}"
    return out


def record_diff(
    pipe: redis.Redis | Any,
    account: str,
    groups: Mapping[str, Iterable[str]],
    profile_id: str,
    entered: Iterable[str],
    exited: Iterable[str],
    now: datetime,
    arms: Mapping[str, str] | None = None,
) -> None:
    """Queue on ``pipe`` (profile Redis) the migration counts, the entries of the day per arm
    (``arms``: segment → the person's arm, :func:`connector.analytics.holdout.arms_of`; ``t`` when
    absent) and the person's entry and exit instants, for one ledger diff. Call once per diff (the
    ledger yields each diff once). :func:`record_many` with one profile."""
    record_many(pipe, account, groups, [(profile_id, entered, exited, arms or {})], now)


# record_diff for many profiles in one call. KEYS: the day's counters, the account's segment codes
# (keys.codes_key), the migration hash of each group named in ARGV, then each profile's person
# hash. ARGV: counters ttl, person ttl, instant (epoch s), number of groups G, number of counters C,
# C triples (key position: 1 the day's, 2 + g group g's; field; increment), then per profile:
# number entered, each segment entered followed by the arm it was entered in, number exited, the
# segments exited.
#
# Per segment the person hash holds E<code> (last entry: its instant, then the arm it was entered
# in, `1764639067c`; an entry recorded before arms were kept has the instant only), X<code> (last
# exit) and R<code> (revenue credited to the entry; attribution.py). An entry drops the exit and
# the revenue (an exit before the last entry says nothing a missing one does not). Fields of the
# layout of before
# (e:/x:/r:<name>) are left to the credit script, which reads them under the ones written here.
_RECORD_MANY = (
    SEGMENT_CODE_LUA
    + """
local ttl, pttl, stamp = ARGV[1], ARGV[2], ARGV[3]
local ngroups, i = tonumber(ARGV[4]), 6
local touched = {}
for _ = 1, tonumber(ARGV[5]) do
  local k = tonumber(ARGV[i])
  redis.call('HINCRBY', KEYS[k], ARGV[i + 1], ARGV[i + 2])
  touched[k] = true
  i = i + 3
end
for k in pairs(touched) do redis.call('EXPIRE', KEYS[k], ttl) end
local dict, codes = KEYS[2], {}
local function code_of(s) return segment_code(dict, codes, s) end
local p = 0
while i <= #ARGV do
  p = p + 1
  local person, fields, gone = KEYS[2 + ngroups + p], {}, {}
  local n = tonumber(ARGV[i])
  for j = i + 1, i + 2 * n, 2 do
    local c = code_of(ARGV[j])
    fields[#fields + 1] = 'E' .. c
    fields[#fields + 1] = stamp .. ARGV[j + 1]  -- the instant, then the arm entered in
    gone[#gone + 1] = 'X' .. c
    gone[#gone + 1] = 'R' .. c
  end
  i = i + 2 * n + 1
  n = tonumber(ARGV[i])
  for j = i + 1, i + n do
    fields[#fields + 1] = 'X' .. code_of(ARGV[j])
    fields[#fields + 1] = stamp
  end
  i = i + n + 1
  redis.call('HSET', person, unpack(fields))
  if #gone > 0 then redis.call('HDEL', person, unpack(gone)) end
  redis.call('EXPIRE', person, pttl)
end
return 0
"""
)


def record_many(
    pipe: redis.Redis | Any,
    account: str,
    groups: Mapping[str, Iterable[str]],
    diffs: Iterable[tuple[str, Iterable[str], Iterable[str], Mapping[str, str]]],
    now: datetime,
) -> None:
    """:func:`record_diff` for many profiles ``(profile id, entered, exited, arms)`` in one script
    call (queued on ``pipe``): the worker's path, one command per batch instead of several per
    profile, each counter incremented once. The same counts and instants as :func:`record_diff`
    for each."""
    rows = [(pid, sorted(set(came)), sorted(set(left)), arms) for pid, came, left, arms in diffs]
    rows = [row for row in rows if row[1] or row[2]]
    if not rows:
        return
    group_of = {segment: group for group, members in groups.items() for segment in members}
    counts: dict[tuple[str, str], int] = {}  # (group, or "" for the day's entries; field) -> count
    for _, came, left, arms in rows:
        arms = arms or {}
        for group, move in _moves(group_of, came, left).items():
            counts[(group, move)] = counts.get((group, move), 0) + 1
        for segment in came:
            field = f"en:{segment}:{arms.get(segment, TREATED)}"
            counts[("", field)] = counts.get(("", field), 0) + 1
    names = sorted({group for group, _ in counts if group})
    position = {"": 1} | {name: n for n, name in enumerate(names, start=3)}
    keys = [day_key(account, now), codes_key(account), *(migration_key(account, g, now) for g in names)]
    keys += [person_key(account, pid) for pid, _, _, _ in rows]
    ttl = int(DAILY_RETENTION.total_seconds()) + 86400
    args: list[Any] = [
        ttl,
        int(PERSON_RETENTION.total_seconds()),
        int(now.timestamp()),
        len(names),
        len(counts),
    ]
    for (group, field), count in sorted(counts.items()):
        args += [position[group], field, count]
    for _, came, left, arms in rows:
        args.append(len(came))
        for segment in came:
            args += [segment, (arms or {}).get(segment, TREATED)]
        args += [len(left), *left]
    queued_script(pipe, _RECORD_MANY)(keys=keys, args=args, client=pipe)


def _moves(group_of: Mapping[str, str], came: list[str], left: list[str]) -> dict[str, str]:
    """:func:`moves` from segment -> group, for sorted ``came`` and ``left``."""
    to: dict[str, str] = {}
    frm: dict[str, str] = {}
    for segment in came:
        group = group_of.get(segment)
        if group is not None:
            to.setdefault(group, segment)
    for segment in left:
        group = group_of.get(segment)
        if group is not None:
            frm.setdefault(group, segment)
    return {group: f"{frm.get(group, NONE)}>{to.get(group, NONE)}" for group in to.keys() | frm.keys()}


def migration(
    conn: redis.Redis, account: str, group: str, now: datetime, days: int
) -> dict[tuple[str, str], int]:
    """(from, to) → moves over the last ``days`` days (``-``: outside the group)."""
    pipe = conn.pipeline(transaction=False)
    for start in day_starts(now, min(days, DAILY_RETENTION.days)):
        pipe.hgetall(migration_key(account, group, start))
    out: dict[tuple[str, str], int] = {}
    for row in pipe.execute():
        for field, value in row.items():
            frm, _, to = _text(field).partition(">")
            out[(frm, to)] = out.get((frm, to), 0) + int(value)
    return out


def series(
    conn: redis.Redis, account: str, segment: str, now: datetime, *, hours: int = 0, days: int = 0
) -> list[dict[str, Any]]:
    """Size, entries and exits per hour (``hours``, at most 14 days) or per day (``days``, at most
    13 months), oldest first."""
    periods = (
        sizes.hourly(conn, account, segment, now, hours)
        if hours
        else sizes.daily(conn, account, segment, now, days or 30)
    )
    return [{"start": p.start, "size": p.size, "entered": p.entered, "exited": p.exited} for p in periods]


def forget(pipe: redis.Redis | Any, account: str, profile_id: str) -> None:
    """Erasure: the person's analytics state (the counters hold no identifier)."""
    pipe.delete(person_key(account, profile_id), messages_key(account, profile_id))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
