"""The audit log of privileged actions, through the admin API, the console and the command line.

One entry per action: who (``token``: the id of the API or console session's token, or
``cli:<login>`` for the command line, :func:`cli_actor`), when (``at``), what (``action``,
``target``), on which accounts (``accounts``), and the state ``before`` and ``after`` (JSON).

Entries are kept in one queue Redis stream per set of accounts they concern, so that the entries
of one account can never push out those of another: ``api:audit:{account}`` for an entry of one
account, ``api:audit:{a},{b}`` for one of several (sorted), ``api:audit:*`` for one of every
account (``*``) or of none. Each stream is capped at ``AUDIT_MAX`` entries; what a cap drops is
counted as ``audit`` in ``metrics:dropped``. ``api:audit.streams`` (a set) names every stream.
Entry ids come from one sequence (``api:audit.last``, :data:`_RECORD`), so they are unique across
the streams and ordered by when they were written; :func:`read` merges the streams a scope may
see, newest first, and an entry id is the cursor of every stream at once.

``api:audit``, the single stream of earlier releases (where every account's entries shared one
cap), is no longer written; it is read as one more source, so an upgrade hides no history, until
an operator deletes it (``DEL api:audit``).

The operator's login or token id identifies who acted, and nothing else identifies anyone: no
secret (a token is named by its id, never its secret) and no identifier of the people whose
profiles the connector keeps (no profile id, email or other identity, nor anything an operator
typed to find them). An erased or exported person is named by a digest of the profile id
(:func:`connector.profiles.erasure.profile_digest`), a dead letter text filter by
:func:`filter_digest`, a bulk export by its number of rows, a rules text by :func:`text_digest`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis

from connector.clock import isoformat
from connector.config import ACCOUNT_ID
from connector.profiles.bounds import count_dropped

LEGACY_KEY = "api:audit"  # the single stream of earlier releases: read, never written
AUDIT_KEY = LEGACY_KEY  # the prefix of every stream (and the name earlier code imported)
STREAMS_KEY = "api:audit.streams"  # not api:audit:<x>: that could be an account's stream
LAST_KEY = "api:audit.last"
AUDIT_MAX = 100_000  # per stream (per account, per set of accounts)
ALL = "*"
CLI = "cli"
READ_CHUNK = 500

# the next id: after the last one given, the newest of the earlier stream and the stream's own, and
# not before the server's clock; the entry, its stream in the set, and the trim to the cap
_RECORD = """
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seq = 0
local function after(id)
  if not id then return end
  local lms, lseq = string.match(id, '^(%d+)-(%d+)$')
  lms, lseq = tonumber(lms), tonumber(lseq)
  if lms > ms or (lms == ms and lseq >= seq) then ms, seq = lms, lseq + 1 end
end
after(redis.call('GET', KEYS[3]))
for _, key in ipairs({KEYS[1], KEYS[4]}) do
  local newest = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if newest[1] then after(newest[1][1]) end
end
local id = string.format('%.0f-%.0f', ms, seq)
redis.call('XADD', KEYS[1], id, unpack(ARGV, 2))
redis.call('SET', KEYS[3], id)
redis.call('SADD', KEYS[2], KEYS[1])
return {id, redis.call('XTRIM', KEYS[1], 'MAXLEN', tonumber(ARGV[1]))}
"""


@dataclass(frozen=True)
class Entry:
    id: str
    at: str
    token: str
    action: str
    target: str
    accounts: tuple[str, ...]
    before: Any
    after: Any

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "token": self.token,
            "action": self.action,
            "target": self.target,
            "accounts": list(self.accounts),
            "before": self.before,
            "after": self.after,
        }


def cli_actor() -> str:
    """Who acts through the command line: ``cli:<login>`` of the process's real user id, from the
    password database (not LOGNAME or USER, which anyone can set); ``cli:uid:<n>`` when the id has
    no entry there (a container run as an arbitrary uid)."""
    uid = os.getuid()
    try:
        login = pwd.getpwuid(uid).pw_name
    except KeyError:
        login = ""
    return f"{CLI}:{login}" if login else f"{CLI}:uid:{uid}"


def filter_digest(text: str) -> dict[str, Any]:
    """What the log keeps of a text filter an operator typed (dead letters are often found by
    email): ``filter_sha256``, the first 16 hex digits of the SHA-256 of its UTF-8 bytes, and
    ``filter_length`` in characters. Two entries with the same filter show the same digest; the
    text itself is not kept."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return {"filter_sha256": digest, "filter_length": len(text)}


def text_digest(text: str) -> dict[str, Any]:
    """What the log keeps of a text written through the API (a rules version's): ``text_sha256``,
    the SHA-256 of its UTF-8 bytes (hex), and ``text_bytes``, their number. The text is not kept."""
    data = text.encode("utf-8", "surrogatepass")
    return {"text_sha256": hashlib.sha256(data).hexdigest(), "text_bytes": len(data)}


def stream_key(accounts: Iterable[str]) -> str:
    """The stream of an entry concerning ``accounts``: ``api:audit:acme`` for one account,
    ``api:audit:acme,globex`` for several, ``api:audit:*`` for every account (or none, or a name
    that is no account id)."""
    names = sorted(set(accounts))
    if not names or not all(ACCOUNT_ID.match(name) for name in names):
        return f"{AUDIT_KEY}:{ALL}"
    return f"{AUDIT_KEY}:{','.join(names)}"


def _stream_accounts(key: str) -> tuple[str, ...]:
    return tuple(key[len(AUDIT_KEY) + 1 :].split(","))


def record(
    conn: redis.Redis,
    token: str,
    action: str,
    target: str,
    accounts: Iterable[str],
    before: Any,
    after: Any,
    now: datetime,
) -> str:
    """Append one change to the stream of its accounts; returns its entry id."""
    names = sorted(set(accounts))
    fields: Mapping[str, str] = {
        "at": isoformat(now),
        "token": token,
        "action": action,
        "target": target,
        "accounts": json.dumps(names),
        "before": json.dumps(before, default=str, sort_keys=True),
        "after": json.dumps(after, default=str, sort_keys=True),
    }
    pairs = [part for item in fields.items() for part in item]
    keys = [stream_key(names), STREAMS_KEY, LAST_KEY, LEGACY_KEY]
    entry_id, dropped = conn.eval(_RECORD, len(keys), *keys, AUDIT_MAX, *pairs)
    count_dropped(conn, "audit", int(dropped))
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def _entry(entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> Entry:
    text = {k.decode(): v.decode() for k, v in fields.items()}
    return Entry(
        id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        at=text["at"],
        token=text["token"],
        action=text["action"],
        target=text["target"],
        accounts=tuple(json.loads(text["accounts"])),
        before=json.loads(text["before"]),
        after=json.loads(text["after"]),
    )


def visible(entry: Entry, scope: tuple[str, ...]) -> bool:
    """A token sees the entries of its accounts; one for every account sees all of them."""
    return _covers(scope, entry.accounts)


def _covers(scope: Sequence[str], accounts: Sequence[str]) -> bool:
    if ALL in scope:
        return True
    return bool(accounts) and ALL not in accounts and set(accounts) <= set(scope)


def sources(conn: redis.Redis, scope: tuple[str, ...]) -> list[str]:
    """The streams holding entries ``scope`` may see: those of its accounts and sets of them (every
    stream for a scope of every account), and the earlier single stream."""
    found = sorted(
        key
        for key in (raw.decode() for raw in conn.smembers(STREAMS_KEY))
        if _covers(scope, _stream_accounts(key))
    )
    return [*found, LEGACY_KEY]


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class _Source:
    """What one stream gave for a page: its visible entries below the cursor, newest first, and
    where its reading stopped."""

    key: str
    found: list[Entry] = field(default_factory=list)
    last: str | None = None  # the oldest id read
    ended: bool = False  # nothing older is left in the stream

    def take(self, rows: list[Any], count: int, scope: tuple[str, ...]) -> None:
        for entry_id, fields in rows:
            entry = _entry(entry_id, fields)
            self.last = entry.id
            if visible(entry, scope):
                self.found.append(entry)
        self.ended = len(rows) < count


def _scan(conn: redis.Redis, found: list[_Source], scope: tuple[str, ...], limit: int, budget: int) -> None:
    """Read on, stream by stream, until each has ``limit`` visible entries or ended, or ``budget``
    entries were read (a stream of mostly invisible entries: the earlier single stream)."""
    for source in found:
        while not source.ended and len(source.found) < limit and budget > 0 and source.last is not None:
            count = min(budget, READ_CHUNK)
            rows = conn.xrevrange(source.key, max=f"({source.last}", min="-", count=count)
            budget -= len(rows)
            source.take(rows, count, scope)


def read(
    conn: redis.Redis, scope: tuple[str, ...], before: str | None = None, limit: int = 50
) -> tuple[list[Entry], str | None]:
    """Newest first, entries visible to ``scope`` of every stream it may see, older than the entry
    id ``before``; with the cursor of the next page (None at the end). Reads at most ``20 * limit``
    entries per call beyond the first ``limit + 1`` of each stream."""
    if before is not None and all(part.strip("0") == "" for part in before.split("-")):
        return [], None  # nothing is older than the streams' first possible id (0-0)
    top = f"({before}" if before else "+"
    found = [_Source(key) for key in sources(conn, scope)]
    pipe = conn.pipeline(transaction=False)
    for source in found:
        pipe.xrevrange(source.key, max=top, min="-", count=limit + 1)
    for source, rows in zip(found, pipe.execute(), strict=True):
        source.take(rows, limit + 1, scope)
    _scan(conn, found, scope, limit, 20 * limit)
    # a stream whose reading stopped early (the budget) is complete only down to its last id read
    cut = max(
        (_order(s.last) for s in found if s.last and not s.ended and len(s.found) < limit),
        default=(-1, -1),
    )
    merged = sorted(
        (e for s in found for e in s.found if _order(e.id) >= cut), key=lambda e: _order(e.id), reverse=True
    )
    page = merged[:limit]
    more = len(merged) > limit or any(not s.ended for s in found)
    if len(page) == limit:
        return page, page[-1].id if more else None
    if cut != (-1, -1):
        return page, f"{cut[0]}-{cut[1]}"
    return page, None


def person_erased(
    conn: redis.Redis, actor: str, account: str, digest: str, segments: Iterable[str], now: datetime
) -> str:
    """``person.erase``: the person named by ``digest`` (of the profile id), with the segments they
    were in."""
    before = {"profile_digest": digest, "segments": sorted(segments)}
    return record(conn, actor, "person.erase", f"profile:{digest}", [account], before, {"erased": True}, now)


def person_exported(conn: redis.Redis, actor: str, account: str, digest: str, now: datetime) -> str:
    """``person.export``: everything kept about the person named by ``digest`` was handed out (an
    access request). The entry holds the digest only, nothing of what was exported."""
    after = {"profile_digest": digest, "exported": True}
    return record(conn, actor, "person.export", f"profile:{digest}", [account], None, after, now)
