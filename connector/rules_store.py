"""Rule versions made through the admin API, kept in the queue Redis so every process sees them.

Per account:

* ``rules:{account}:versions``: hash, version number -> JSON record: the text as written (YAML or
  JSON of the ``rules:`` section), the parsed mapping, ``based_on`` (the digest of the file's
  ``rules:`` section the version was written against), who and when created it, and each time it
  was published (who, when).
* ``rules:{account}:seq``: the last version number given.
* ``rules:{account}:current``: the pointer to the version in force, JSON ``{"version", "based_on",
  "at", "by", "superseded"}``. ``superseded`` is set (``{"file_digest", "at"}``) once a process
  sees that the account file's rules are no longer those the version was based on: from then on
  the file's rules are in force everywhere, until a version is published again.

Which source wins (docs/architecture.md, "Where rules live"): the pointed version, while the
file's rules are the ones it was based on; the file, once they changed. A version whose base is
not the file's rules now cannot be published (it would be superseded at once): write a new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import redis
import yaml

import rules
from connector.clock import isoformat
from connector.config import Account
from connector.destinations import destinations as parse_destinations
from connector.errors import ConfigError
from connector.unicode_text import replaced
from rules import RuleSet, yamltext

MAX_TEXT = 256 * 1024
MAX_VERSIONS_LISTED = 500


def versions_key(account_id: str) -> str:
    return f"rules:{account_id}:versions"


def seq_key(account_id: str) -> str:
    return f"rules:{account_id}:seq"


def current_key(account_id: str) -> str:
    return f"rules:{account_id}:current"


class InvalidRules(ValueError):
    """Rules that cannot be used: ``path`` inside the rules (``rules.segments[0].when``), ``reason``."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def digest(raw_rules: Any) -> str:
    """The digest of a ``rules:`` section as parsed (key order and formatting do not matter)."""
    text = json.dumps(raw_rules or {}, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _rules_path(path: str) -> str:
    if not path:
        return "rules"
    return f"rules{path}" if path.startswith("[") else f"rules.{path}"


def parse_text(text: str) -> dict[str, Any]:
    """The mapping of a ``rules:`` section written as YAML or JSON (JSON is YAML). A document whose
    only key is ``rules`` is the section itself."""
    if len(text.encode()) > MAX_TEXT:
        raise InvalidRules("rules", f"longer than {MAX_TEXT} bytes")
    try:
        raw = yamltext.load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        raise InvalidRules(
            "rules", f"not valid YAML or JSON: {where}{getattr(err, 'problem', err)}"
        ) from None
    if raw is None:
        return {}
    if isinstance(raw, dict) and set(raw) == {"rules"}:
        raw = raw["rules"] if raw["rules"] is not None else {}
    if not isinstance(raw, dict):
        raise InvalidRules(
            "rules", f"must be a mapping (segments, traits, include ...), not {type(raw).__name__}"
        )
    return raw


def compile_for(account: Account, raw: Mapping[str, Any]) -> RuleSet:
    """Compile ``raw`` as ``account``'s rules: InvalidRules with the path on any problem, including a
    segment a destination of the account maps that the rules no longer define (empty rules too: they
    would take every member out of every mapped list and tag)."""
    try:
        ruleset = rules.compile_rules(dict(raw) or None)
    except rules.RulesError as err:
        raise InvalidRules(_rules_path(err.path), err.reason) from None
    try:  # the account's destinations against these rules, as a file's are at load (variants, holdouts)
        dests = parse_destinations(replace(account, rules=dict(raw), ruleset=ruleset))
    except ConfigError as err:
        raise InvalidRules("rules.segments", f"with these rules, {err.path}: {err.reason}") from None
    known = set(ruleset.segment_names)
    for name, dest in dests.items():
        for segment in dest.segments:
            if segment not in known:
                raise InvalidRules(
                    "rules.segments",
                    f"destination {name} maps segment `{segment}`, which these rules do not define "
                    f"(defined: {', '.join(sorted(known)) or 'none'})",
                )
    return ruleset


def to_text(raw: Any) -> str:
    return yaml.safe_dump(raw or {}, sort_keys=False, allow_unicode=True)


@dataclass(frozen=True)
class Version:
    account: str
    number: int
    text: str
    rules: dict[str, Any]
    based_on: str
    created_at: str
    created_by: str
    note: str = ""
    published: tuple[dict[str, str], ...] = field(default_factory=tuple)

    def as_record(self) -> str:
        return json.dumps(
            {
                "text": self.text,
                "rules": self.rules,
                "based_on": self.based_on,
                "created_at": self.created_at,
                "created_by": self.created_by,
                "note": self.note,
                "published": list(self.published),
            },
            default=str,
        )

    @classmethod
    def from_record(cls, account: str, number: int, raw: bytes | str) -> Version:
        """The stored version; a lone surrogate in its text or note (written by an earlier release)
        reads as U+FFFD, so the version can be shown and written out."""
        data = json.loads(raw)
        return cls(
            account=account,
            number=number,
            text=replaced(str(data["text"])),
            rules=dict(data["rules"] or {}),
            based_on=str(data["based_on"]),
            created_at=str(data["created_at"]),
            created_by=str(data["created_by"]),
            note=replaced(str(data.get("note") or "")),
            published=tuple(data.get("published") or ()),
        )


@dataclass(frozen=True)
class Pointer:
    """The version in force (unless ``superseded``: then the file's rules are)."""

    version: int
    based_on: str
    at: str
    by: str
    superseded: dict[str, str] | None = None

    def as_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "based_on": self.based_on,
                "at": self.at,
                "by": self.by,
                "superseded": self.superseded,
            },
            sort_keys=True,
        )

    @classmethod
    def parse(cls, raw: bytes | str | None) -> Pointer | None:
        if raw is None:
            return None
        data = json.loads(raw)
        return cls(
            version=int(data["version"]),
            based_on=str(data["based_on"]),
            at=str(data["at"]),
            by=str(data["by"]),
            superseded=data.get("superseded"),
        )


def create(
    conn: redis.Redis,
    account_id: str,
    text: str,
    raw: dict[str, Any],
    based_on: str,
    by: str,
    now: datetime,
    note: str = "",
) -> Version:
    """Store a new (draft) version; it is not in force until published."""
    number = int(conn.incr(seq_key(account_id)))
    version = Version(account_id, number, text, raw, based_on, isoformat(now), by, note)
    conn.hset(versions_key(account_id), str(number), version.as_record())
    return version


def get(conn: redis.Redis, account_id: str, number: int) -> Version | None:
    raw = conn.hget(versions_key(account_id), str(number))
    return None if raw is None else Version.from_record(account_id, number, raw)


def listing(conn: redis.Redis, account_id: str) -> list[Version]:
    """Every version, newest first (at most MAX_VERSIONS_LISTED)."""
    found = [
        Version.from_record(account_id, int(k), v) for k, v in conn.hgetall(versions_key(account_id)).items()
    ]
    return sorted(found, key=lambda v: -v.number)[:MAX_VERSIONS_LISTED]


def pointer(conn: redis.Redis, account_id: str) -> Pointer | None:
    return Pointer.parse(conn.get(current_key(account_id)))


def pointers(conn: redis.Redis, account_ids: Iterable[str]) -> dict[str, bytes | None]:
    """The raw pointers of several accounts in one round trip."""
    ids = list(account_ids)
    if not ids:
        return {}
    return dict(zip(ids, conn.mget([current_key(a) for a in ids]), strict=True))


def publish(conn: redis.Redis, version: Version, by: str, now: datetime) -> Pointer:
    """Make ``version`` the one in force (for every process at its next check)."""
    at = isoformat(now)
    record = Version(**{**version.__dict__, "published": (*version.published, {"at": at, "by": by})})
    new = Pointer(version=version.number, based_on=version.based_on, at=at, by=by)
    pipe = conn.pipeline(transaction=True)
    pipe.hset(versions_key(version.account), str(version.number), record.as_record())
    pipe.set(current_key(version.account), new.as_json())
    pipe.execute()
    return new


_SUPERSEDE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


def mark_superseded(
    conn: redis.Redis, account_id: str, raw: bytes | str, file_digest: str, now: datetime
) -> tuple[Pointer, bool]:
    """Record that the file's rules changed under the pointed version (only if the pointer is still
    ``raw``: a publish in between wins). Returns the superseded pointer, and whether this call
    marked it (one process of all that see the change does)."""
    old = Pointer.parse(raw)
    assert old is not None
    new = Pointer(
        old.version, old.based_on, old.at, old.by, {"file_digest": file_digest, "at": isoformat(now)}
    )
    won = bool(conn.eval(_SUPERSEDE, 1, current_key(account_id), raw, new.as_json()))
    return new, won
