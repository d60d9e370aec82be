"""Rule versions made through the admin API, kept in the queue Redis so every process sees them.

Per account:

* ``rules:{account}:versions``: hash, version number -> JSON record: the text as written (YAML or
  JSON of the ``rules:`` section, at most ``MAX_TEXT`` bytes), the parsed mapping, ``based_on``
  (the digest of the file's ``rules:`` section the version was written against), who and when
  created it, and the latest ``MAX_PUBLISHED`` times it was published (who, when). At most
  ``MAX_VERSIONS`` versions are kept, and the one the pointer names: writing a version drops the
  oldest others (:data:`_PRUNE`, counted as ``rule_versions`` in ``metrics:dropped``); a dropped
  version is gone (:func:`dropped` tells it from one that never was).
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
from connector.profiles.bounds import count_dropped
from connector.unicode_text import replaced
from rules import RuleSet, yamltext

MAX_TEXT = 64 * 1024  # bytes of UTF-8 of a rules text; the largest templates are about 3 KB
MAX_VERSIONS = 50  # versions kept per account, besides the one the pointer names
MAX_VERSIONS_LISTED = 500
MAX_PUBLISHED = 20  # publish records kept per version (the latest)
TEXT_TOO_LONG = f"longer than {MAX_TEXT} bytes ({MAX_TEXT // 1024} KiB) of UTF-8, the limit of a rules text"

# past MAX_VERSIONS (ARGV[1]) versions, drop the oldest but the one the pointer names, at once with
# reading the pointer (a publish writes the version and the pointer in one transaction)
_PRUNE = """
local keep = -1
local raw = redis.call('GET', KEYS[2])
if raw then keep = tonumber(cjson.decode(raw)['version']) end
local excess = redis.call('HLEN', KEYS[1]) - tonumber(ARGV[1])
if redis.call('HEXISTS', KEYS[1], string.format('%d', keep)) == 1 then excess = excess - 1 end
if excess <= 0 then return {} end
local numbers = {}
for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
  local n = tonumber(name)
  if n and n ~= keep then table.insert(numbers, n) end
end
table.sort(numbers)
local gone = {}
for i = 1, math.min(excess, #numbers) do
  local name = string.format('%d', numbers[i])
  redis.call('HDEL', KEYS[1], name)
  table.insert(gone, name)
end
return gone
"""


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
    if len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT:
        raise InvalidRules("rules", TEXT_TOO_LONG)
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
    check_destinations(account, ruleset)
    return ruleset


def check_destinations(account: Account, ruleset: RuleSet) -> None:
    """InvalidRules when the account's destinations do not fit these rules, as a file's are checked at
    load (variants, holdouts): a mapped segment the rules do not define, a variant mapping that is not
    the rules' variants."""
    try:
        dests = parse_destinations(replace(account, ruleset=ruleset))
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
    """Store a new (draft) version; it is not in force until published. Past ``MAX_VERSIONS``
    versions the oldest ones but the one in force are dropped."""
    number = int(conn.incr(seq_key(account_id)))
    version = Version(account_id, number, text, raw, based_on, isoformat(now), by, note)
    conn.hset(versions_key(account_id), str(number), version.as_record())
    prune(conn, account_id, MAX_VERSIONS)
    return version


def prune(conn: redis.Redis, account_id: str, keep: int) -> list[int]:
    """Keep the newest ``keep`` versions besides the one the pointer names (kept too), dropping the
    oldest others; the numbers dropped."""
    found = conn.eval(_PRUNE, 2, versions_key(account_id), current_key(account_id), keep)
    gone = sorted(int(n) for n in found)
    count_dropped(conn, "rule_versions", len(gone))
    return gone


def dropped(conn: redis.Redis, account_id: str, number: int) -> bool:
    """Whether version ``number`` was written once and is no longer kept."""
    last = conn.get(seq_key(account_id))
    return 1 <= number <= int(last or 0) and not conn.hexists(versions_key(account_id), str(number))


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
    published = (*version.published, {"at": at, "by": by})[-MAX_PUBLISHED:]
    record = Version(**{**version.__dict__, "published": published})
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
