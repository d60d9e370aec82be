"""The membership ledger: each profile's current segments and computed traits, with a version.

Evaluation results are recorded here; only a result that differs from the stored one bumps the
version and yields a :class:`Diff` (entered / exited segments, changed traits), which feeds the
destinations and the audit trail (``connector segments history``).

Keys (profile Redis, hash-tagged with the profile): ``ledger:{acct:pid}`` (hash: ``v`` version,
``s`` segments JSON, ``t`` traits JSON, ``r`` profile revision and ``e`` instant evaluated) and
``lhist:{acct:pid}`` (stream of changes, capped at ``HISTORY_MAXLEN``; what the cap drops is counted).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis

from connector.clock import isoformat
from connector.redis_conn import grouped_by_node

HISTORY_MAXLEN = 500

# KEYS: ledger, history. ARGV: segments json, traits json, revision, at (iso), maxlen, at (epoch),
# contact, force. A result computed from an older profile revision than the one already recorded is
# ignored, so two workers evaluating the same profile concurrently can never roll the ledger back.
# The version is bumped when the segments or traits changed, when the contact the destinations
# address (``c``: a digest of the email) changed, or when ``force`` is set (a merge); the history
# gets an entry only when segments or traits changed, and never for a first evaluation without
# any segment. Reply: {version, old segments, old traits, entries trimmed from the history}, or
# {0} (nothing changed) / {-1} (stale).
_RECORD = """
local cur = redis.call('HMGET', KEYS[1], 'v', 's', 't', 'r', 'e', 'c')
local rev = tonumber(ARGV[3])
local at = tonumber(ARGV[6])
if cur[4] then
  local crev = tonumber(cur[4])
  if crev > rev or (crev == rev and tonumber(cur[5] or '0') > at) then return {-1} end
end
local same = cur[2] == ARGV[1] and cur[3] == ARGV[2]
local first = not cur[2]
if first and ARGV[1] == '[]' and ARGV[2] == '{}' then
  same = true
  cur[2], cur[3] = '[]', '{}'
  redis.call('HSET', KEYS[1], 'v', 0, 's', '[]', 't', '{}')
end
if same and (cur[6] or '') == ARGV[7] and ARGV[8] ~= '1' then
  redis.call('HSET', KEYS[1], 'r', rev, 'e', at, 'c', ARGV[7])
  return {0}
end
local v = redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('HSET', KEYS[1], 's', ARGV[1], 't', ARGV[2], 'r', rev, 'e', at, 'c', ARGV[7])
local trimmed = 0
if not same and not (first and ARGV[1] == '[]') then
  redis.call('XADD', KEYS[2], '*',
    'v', v, 'at', ARGV[4], 'old_s', cur[2] or '[]', 'new_s', ARGV[1],
    'old_t', cur[3] or '{}', 'new_t', ARGV[2])
  trimmed = redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', ARGV[5])
end
return {v, cur[2] or '[]', cur[3] or '{}', trimmed}
"""


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


def _diff(reply: Sequence[Any], entry: Entry, new_t: str) -> Diff | None:
    version = int(reply[0])
    if version <= 0:
        return None
    old_segments = frozenset(json.loads(reply[1]))
    old_traits: dict[str, Any] = json.loads(reply[2])
    new_traits = json.loads(new_t)
    changed = {k: v for k, v in new_traits.items() if old_traits.get(k, _MISSING) != v}
    changed.update({k: None for k in old_traits if k not in new_traits})
    segments = frozenset(entry.segments)
    return Diff(
        version=version,
        segments=segments,
        traits=new_traits,
        entered=segments - old_segments,
        exited=old_segments - segments,
        changed_traits=changed,
        trimmed=int(reply[3]),
    )


class Ledger:
    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn
        self._record = conn.register_script(_RECORD)

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

    def record_many(self, account: str, entries: Sequence[Entry], now: datetime) -> list[Diff | None]:
        """:meth:`record` for many profiles of one account, in one round trip per Redis server; the
        diffs in the order of ``entries``."""
        calls = [self._call(account, entry, now) for entry in entries]
        replies = grouped_by_node(
            self.conn,
            [keys[0] for keys, _ in calls],
            lambda pipe, n: self._record(keys=calls[n][0], args=calls[n][1], client=pipe),
            lambda n: self._record(keys=calls[n][0], args=calls[n][1], client=self.conn),
        )
        return [
            _diff(reply, entry, call[1][1])
            for reply, entry, call in zip(replies, entries, calls, strict=True)
        ]

    @staticmethod
    def _call(account: str, entry: Entry, now: datetime) -> tuple[list[str], list[Any]]:
        args = [
            _canonical(sorted(entry.segments)),
            _canonical(dict(entry.traits)),
            entry.revision,
            isoformat(now),
            HISTORY_MAXLEN,
            repr(now.timestamp()),
            entry.contact,
            "1" if entry.force else "0",
        ]
        return [ledger_key(account, entry.profile_id), history_key(account, entry.profile_id)], args

    def state(self, account: str, profile_id: str) -> LedgerState | None:
        raw = self.conn.hmget(ledger_key(account, profile_id), "v", "s", "t")
        if raw[0] is None:
            return None
        return LedgerState(int(raw[0]), frozenset(json.loads(raw[1] or b"[]")), json.loads(raw[2] or b"{}"))

    def history(self, account: str, profile_id: str, count: int = 100) -> list[dict[str, Any]]:
        rows = self.conn.xrevrange(history_key(account, profile_id), count=count)
        out = []
        for _, fields in reversed(rows):
            item = {k.decode(): v.decode() for k, v in fields.items()}
            old_s, new_s = set(json.loads(item["old_s"])), set(json.loads(item["new_s"]))
            old_t, new_t = json.loads(item["old_t"]), json.loads(item["new_t"])
            out.append(
                {
                    "version": int(item["v"]),
                    "at": item["at"],
                    "entered": sorted(new_s - old_s),
                    "exited": sorted(old_s - new_s),
                    "traits": {k: v for k, v in new_t.items() if old_t.get(k, _MISSING) != v},
                }
            )
        return out

    def delete(self, account: str, profile_id: str) -> None:
        self.conn.delete(ledger_key(account, profile_id), history_key(account, profile_id))

    def delete_many(self, account: str, profile_ids: Iterable[str]) -> None:
        for pid in profile_ids:  # each profile's keys share a slot, not the others'
            self.delete(account, pid)


_MISSING = object()
