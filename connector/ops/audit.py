"""The audit log of privileged actions, through the admin API, the console and the command line.

One entry per action, in the queue Redis stream ``api:audit``: who (``token``: the id of the API or
console session's token, or ``cli:<login>`` for the command line, :func:`cli_actor`), when (``at``),
what (``action``, ``target``), on which accounts (``accounts``), and the state ``before`` and
``after`` (JSON). Capped at ``AUDIT_MAX`` entries; what the cap drops is counted as ``audit`` in
``metrics:dropped``.

The operator's login or token id identifies who acted, and nothing else identifies anyone: no
secret (a token is named by its id, never its secret) and no identifier of the people whose
profiles the connector keeps (no profile id, email or other identity, nor anything an operator
typed to find them). An erased or exported person is named by a digest of the profile id
(:func:`connector.profiles.erasure.profile_digest`), a dead letter text filter by
:func:`filter_digest`, a bulk export by its number of rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from connector.clock import isoformat
from connector.profiles.bounds import count_dropped

AUDIT_KEY = "api:audit"
AUDIT_MAX = 100_000
ALL = "*"
CLI = "cli"


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
    """Append one change; returns its entry id."""
    fields: Mapping[str, str] = {
        "at": isoformat(now),
        "token": token,
        "action": action,
        "target": target,
        "accounts": json.dumps(sorted(set(accounts))),
        "before": json.dumps(before, default=str, sort_keys=True),
        "after": json.dumps(after, default=str, sort_keys=True),
    }
    entry_id = conn.xadd(AUDIT_KEY, dict(fields))
    count_dropped(conn, "audit", int(conn.xtrim(AUDIT_KEY, maxlen=AUDIT_MAX, approximate=False)))
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
    if ALL in scope:
        return True
    return bool(entry.accounts) and ALL not in entry.accounts and set(entry.accounts) <= set(scope)


def read(
    conn: redis.Redis, scope: tuple[str, ...], before: str | None = None, limit: int = 50
) -> tuple[list[Entry], str | None]:
    """Newest first, entries visible to ``scope``, older than the entry id ``before``; with the
    cursor of the next page (None at the end). Reads at most ``20 * limit`` entries per call."""
    out: list[Entry] = []
    if before is not None and all(part.strip("0") == "" for part in before.split("-")):
        return out, None  # nothing is older than the stream's first possible id (0-0)
    top = f"({before}" if before else "+"
    budget = 20 * limit
    while len(out) < limit and budget > 0:
        rows = conn.xrevrange(AUDIT_KEY, max=top, min="-", count=min(budget, 500))
        if not rows:
            return out, None
        budget -= len(rows)
        for entry_id, fields in rows:
            entry = _entry(entry_id, fields)
            top = f"({entry.id}"
            if visible(entry, scope):
                out.append(entry)
                if len(out) == limit:
                    return out, entry.id
    return out, top[1:] if top != "+" else None


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
