"""Dead letters: items the connector could not process, kept with the reason.

One store for every kind (``events`` for undecodable queue items, ``sync:<destination name>`` for
changes an ESP refused...). Each item is a JSON document with ``kind``, ``reason``, ``at`` and
``payload``; an index per kind keeps them in arrival order.

Bounded: at most ``CONNECTOR_DEADLETTER_MAX`` items (default 100,000) per account and kind (items
without an account, such as undecodable queue items, count as one account ``-``). Past the cap the
oldest item of that account and kind is dropped, and counted in ``metrics:dropped`` (field
``deadletters``), in the same script that stores the new one.

Keys: ``dlq:item:{id}`` (string), ``dlq:index:{kind}`` (sorted set by time),
``dlq:acct:{account}:{kind}`` (sorted set by time, the cap's index), ``dlq:kinds`` (set).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from connector.clock import isoformat
from connector.errors import ConfigError
from connector.profiles.bounds import DROPPED_KEY

DEFAULT_MAX = 100_000
MAX_ENV = "CONNECTOR_DEADLETTER_MAX"
NO_ACCOUNT = "-"
_HEX = re.compile(r"[0-9a-f]+")  # what an id is made of (uuid4().hex)

# The accounts' destinations, as the kind filters read them: account id → destination name → type.
Destinations = Mapping[str, Mapping[str, str]]

# KEYS: item, index, per-account index, kinds, dropped counter, the kind's latest-per-person hash.
# ARGV: id, json, score, kind, max, the person's field in that hash ('' for an item of nobody's).
# A person's new item replaces their earlier one of the kind (a sync change holds the complete
# desired state: the newer one is all a replay needs); the items the cap drops leave the hash.
_PUT = """
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[4])
local replaced = 0
if ARGV[6] ~= '' then
  local prev = redis.call('HGET', KEYS[6], ARGV[6])
  if prev and prev ~= ARGV[1] then
    replaced = redis.call('DEL', 'dlq:item:' .. prev)
    redis.call('ZREM', KEYS[2], prev)
    redis.call('ZREM', KEYS[3], prev)
  end
  redis.call('HSET', KEYS[6], ARGV[6], ARGV[1])
end
local over = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[5])
if over <= 0 then return {0, replaced} end
local oldest = redis.call('ZPOPMIN', KEYS[3], over)
for i = 1, #oldest, 2 do
  local raw = redis.call('GET', 'dlq:item:' .. oldest[i])
  if raw then
    local ok, item = pcall(cjson.decode, raw)
    local who = ok and type(item) == 'table' and type(item.payload) == 'table' and item.payload.person
    if type(who) == 'string' and redis.call('HGET', KEYS[6], who) == oldest[i] then
      redis.call('HDEL', KEYS[6], who)
    end
  end
  redis.call('DEL', 'dlq:item:' .. oldest[i])
  redis.call('ZREM', KEYS[2], oldest[i])
end
redis.call('HINCRBY', KEYS[5], 'deadletters', over)
return {over, replaced}
"""

# KEYS: item, index, per-account index, the kind's latest-per-person hash. ARGV: id, person field.
_REMOVE = """
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[2] ~= '' and redis.call('HGET', KEYS[4], ARGV[2]) == ARGV[1] then
  redis.call('HDEL', KEYS[4], ARGV[2])
end
return 0
"""


def latest_key(kind: str) -> str:
    """The person's latest item of ``kind`` (field: :func:`person_field`)."""
    return f"dlq:latest:{kind}"


def person_field(account: str | None, profile_id: str) -> str:
    return f"{account or NO_ACCOUNT}|{profile_id}"


def max_items() -> int:
    raw = os.environ.get(MAX_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{MAX_ENV} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise ConfigError(f"{MAX_ENV} must be at least 1, got {value}")
    return value


@dataclass(frozen=True)
class DeadLetter:
    id: str
    kind: str
    reason: str
    at: str
    payload: Any
    account: str | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, default=str)

    def matches(self, text: str | None) -> bool:
        """Whether a text filter (the CLI's ``--filter``, the API's ``filter``) finds the item: in
        any field or payload string as it reads (``jöe``, ``"isValid": false``) or in the payload's
        JSON, ignoring case; no text matches every item."""
        if not text:
            return True
        wanted = text.casefold()
        payload = json.dumps(self.payload, ensure_ascii=False, default=str)
        return any(
            wanted in part.casefold()
            for part in (self.id, self.kind, self.reason, self.at, self.account or "", payload)
        ) or any(wanted in part.casefold() for part in _strings(self.payload))


def _strings(value: Any) -> Iterator[str]:
    """Every string in a payload (keys and values, at any depth)."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list | tuple):
            todo.extend(item)


def selects(kind: str | None, item: DeadLetter, destinations: Destinations) -> bool:
    """Whether a kind filter selects an item: no filter selects every item; a kind selects its own
    items and, as a family, those of its members (``sync`` selects ``sync:crm``); ``sync:<type>``
    also selects the items of every destination of that type in the item's account (``sync:hubspot``
    selects ``sync:crm`` of an account whose ``crm`` is of type ``hubspot``), as ``destinations``
    says. Items of a destination no longer in its account have no type: only their kind selects
    them."""
    if kind is None or item.kind == kind or item.kind.startswith(f"{kind}:"):
        return True
    family, _, wanted = kind.partition(":")
    item_family, _, name = item.kind.partition(":")
    if family != "sync" or item_family != "sync" or not wanted:
        return False
    return (destinations.get(item.account or "") or {}).get(name) == wanted


def kinds_selected(stored: Iterable[str], kind: str | None, destinations: Destinations) -> list[str]:
    """The stored kinds whose items ``kind`` may select (see :func:`selects`)."""
    types = {type_ for by_name in destinations.values() for type_ in by_name.values()}
    family, _, wanted = (kind or "").partition(":")
    typed = family == "sync" and wanted in types
    return [
        k
        for k in stored
        if kind is None or k == kind or k.startswith(f"{kind}:") or (typed and k.startswith("sync:"))
    ]


def account_index(account: str | None, kind: str) -> str:
    return f"dlq:acct:{account or NO_ACCOUNT}:{kind}"


class DeadLetters:
    def __init__(self, conn: redis.Redis, max_per_account: int | None = None) -> None:
        self.conn = conn
        self.max_per_account = max_per_account or max_items()
        self._put = conn.register_script(_PUT)
        self._remove = conn.register_script(_REMOVE)

    def put(
        self,
        kind: str,
        reason: str,
        payload: Any,
        now: datetime,
        account: str | None = None,
        person: str | None = None,
    ) -> str:
        """Store an item; past the cap the oldest of its account and kind is dropped (counted).
        With ``person`` (a profile id), the item replaces that person's earlier item of the kind,
        which a newer complete desired state makes obsolete (``payload["person"]`` names them)."""
        field = person_field(account, person) if person else ""
        if field:
            payload = {**payload, "person": field}
        item = DeadLetter(uuid.uuid4().hex, kind, reason, isoformat(now), payload, account)
        self._put(
            keys=[
                f"dlq:item:{item.id}",
                f"dlq:index:{kind}",
                account_index(account, kind),
                "dlq:kinds",
                DROPPED_KEY,
                latest_key(kind),
            ],
            args=[item.id, item.to_json(), now.timestamp(), kind, self.max_per_account, field],
        )
        return item.id

    def get(self, item_id: str) -> DeadLetter | None:
        raw = self.conn.get(f"dlq:item:{item_id}")
        return DeadLetter(**json.loads(raw)) if raw else None

    def kinds(self) -> list[str]:
        return sorted(k.decode() for k in self.conn.smembers("dlq:kinds"))

    def known_kinds(
        self, destination_types: Iterable[str] = (), destinations: Destinations | None = None
    ) -> set[str]:
        """The kinds a filter may name: every kind stored, each one's family (``sync`` of
        ``sync:mailchimp``), ``events``, ``sync``, and ``sync:<type>`` of each of
        ``destination_types``. With ``destinations`` (the accounts' destinations), also
        ``sync:<name>`` of each destination (it may have no dead letters yet) and ``sync:<type>`` of
        each type they are of, which :func:`selects` maps to the destinations of that type."""
        stored = self.kinds()
        named = {f"sync:{name}" for name in destination_types}
        for by_name in (destinations or {}).values():
            named |= {f"sync:{name}" for name in by_name} | {f"sync:{type_}" for type_ in by_name.values()}
        return {*stored, *(k.partition(":")[0] for k in stored), "events", "sync", *named}

    def find(self, prefix: str, most: int = 10) -> list[str]:
        """The ids of stored items that begin with ``prefix`` (at most ``most``): ``show`` takes a
        unique prefix of an id. Only hex digits can begin an id."""
        if not prefix or not _HEX.fullmatch(prefix):
            return []
        found: set[str] = set()
        for kind in self.kinds():
            for raw, _ in self.conn.zscan_iter(f"dlq:index:{kind}", match=f"{prefix}*", count=1000):
                found.add(raw.decode())
                if len(found) >= most:
                    return sorted(found)
        return sorted(found)

    def list(self, kind: str | None = None, limit: int = 100) -> Iterator[DeadLetter]:
        for k in [kind] if kind else self.kinds():
            for item_id in self.conn.zrange(f"dlq:index:{k}", 0, limit - 1):
                item = self.get(item_id.decode())
                if item is not None:
                    yield item

    def count(self, kind: str) -> int:
        return int(self.conn.zcard(f"dlq:index:{kind}"))

    def remove(self, item: DeadLetter) -> None:
        person = item.payload.get("person") if isinstance(item.payload, dict) else None
        self._remove(
            keys=[
                f"dlq:item:{item.id}",
                f"dlq:index:{item.kind}",
                account_index(item.account, item.kind),
                latest_key(item.kind),
            ],
            args=[item.id, person if isinstance(person, str) else ""],
        )

    def purge(
        self,
        doomed: Callable[[DeadLetter], bool],
        chunk: int = 500,
        scrub: Callable[[DeadLetter], DeadLetter | None] | None = None,
    ) -> int:
        """Remove every item for which ``doomed`` is true (erasure); returns how many. ``scrub``
        gives a cleaned version of an item that stays (or None to leave it as it is)."""
        removed = 0
        for kind in self.kinds():
            ids = [i.decode() for i in self.conn.zrange(f"dlq:index:{kind}", 0, -1)]
            for start in range(0, len(ids), chunk):
                part = ids[start : start + chunk]
                for raw in self.conn.mget([f"dlq:item:{i}" for i in part]):
                    if raw is None:
                        continue
                    item = DeadLetter(**json.loads(raw))
                    if doomed(item):
                        self.remove(item)
                        removed += 1
                    elif scrub is not None and (clean := scrub(item)) is not None:
                        # only where it still is (a replay may have taken it meanwhile)
                        self.conn.set(f"dlq:item:{item.id}", clean.to_json(), xx=True, keepttl=True)
        return removed
