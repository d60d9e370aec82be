"""API tokens: created for some accounts with a role and an expiry, shown once, stored hashed.

A token reads ``sc_<id>_<secret>``: ``id`` (12 hex characters) names it in lists, the audit log
and ``connector tokens revoke``; ``secret`` is 32 random bytes (URL-safe base64). Only the SHA-256
of the whole token is stored, in the queue Redis hash ``api:tokens`` (field = id, value = JSON
``{id, sha256, role, accounts, created_at, expires_at, note}``). Checking a token is one HGET and
a constant-time comparison. Revoking deletes the field.

The console keeps no token: its session holds the token's id and stored digest, and the API acts
for the token by them (:func:`by_id`), which answers as :func:`authenticate` does for the token
itself: None once it is revoked or expired. The console lists the record keys of the sessions a
token logged in with in a set by the token's id (:func:`sessions_key`; record keys only, nothing
that opens a session or the API), and :func:`revoke` deletes those records with the token, in one
script: its sessions end at once, not at their next request.

Roles, each including the one before: ``viewer`` reads; ``editor`` also replays and discards dead
letters; ``admin`` also erases people and manages tokens. ``accounts`` is a list of account ids,
or ``["*"]``: every account, now and later (admin tokens only).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import redis

from connector.clock import from_isoformat, isoformat
from connector.unicode_text import first_control, replaced

TOKENS_KEY = "api:tokens"
SESSIONS_PREFIX = "console:sessions:"  # + token id: the record keys of the console sessions it opened
SESSION_RECORD_PREFIX = "console:session:"  # what those keys begin with (connector.ops.console.session)
ROLES = ("viewer", "editor", "admin")
ALL_ACCOUNTS = "*"
PREFIX = "sc_"
DEFAULT_EXPIRY = "90d"
MAX_EXPIRY = timedelta(days=3650)
_TOKEN = re.compile(r"^sc_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_DURATION = re.compile(r"^([0-9]+)([hdw])$")
_MOST_DIGITS = 6  # a million hours is over a century: longer numbers are too long in any unit
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


class TokenError(ValueError):
    """A token request that cannot be honoured (the message says why)."""


@dataclass(frozen=True)
class Token:
    id: str
    role: str
    accounts: tuple[str, ...]
    created_at: str
    expires_at: str
    note: str = ""

    @property
    def all_accounts(self) -> bool:
        return ALL_ACCOUNTS in self.accounts

    def covers(self, account_id: str) -> bool:
        return self.all_accounts or account_id in self.accounts

    def allows(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def expires(self) -> datetime:
        return from_isoformat(self.expires_at)

    def expired(self, now: datetime) -> bool:
        return self.expires() <= now

    def public(self) -> dict[str, object]:
        """What lists and the audit log show: everything but the secret (which is not kept)."""
        out = asdict(self)
        out["accounts"] = list(self.accounts)
        return out


def parse_expiry(text: str) -> timedelta:
    """``90d``, ``12h``, ``2w``: how long a token lives (at most ten years)."""
    match = _DURATION.match(text.strip())
    digits = match.group(1).lstrip("0") if match else ""
    if match is None or not digits:
        raise TokenError(f"expiry {text[:40]!r} is not a duration like 90d, 12h or 2w")
    if len(digits) > _MOST_DIGITS or (span := int(digits) * _UNITS[match.group(2)]) > MAX_EXPIRY:
        raise TokenError(f"expiry {text[:40]!r} is longer than ten years")
    return span


def sha256(token: str) -> str:
    """The digest a token is stored by (hex SHA-256 of the whole ``sc_...`` text)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _accounts(accounts: Iterable[str], role: str) -> tuple[str, ...]:
    chosen = tuple(sorted({a.strip() for a in accounts if a.strip()}))
    if not chosen:
        raise TokenError("a token needs at least one account (or '*' for every account)")
    if ALL_ACCOUNTS in chosen and (len(chosen) > 1 or role != "admin"):
        raise TokenError("'*' (every account) is for admin tokens only, and alone")
    if len(chosen) > 1 and role != "admin":
        raise TokenError("only an admin token may span several accounts")
    return chosen


def create(
    conn: redis.Redis,
    accounts: Iterable[str],
    role: str,
    expires_in: timedelta,
    now: datetime,
    note: str = "",
) -> tuple[Token, str]:
    """A new token and its secret form, which is shown once and never stored."""
    if role not in ROLES:
        raise TokenError(f"role {role!r} is not one of {', '.join(ROLES)}")
    steering = first_control(note)
    if steering is not None:
        raise TokenError(f"note: control and text-direction characters are not allowed ({steering})")
    chosen = _accounts(accounts, role)
    token_id = secrets.token_hex(6)
    secret = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    token = Token(token_id, role, chosen, isoformat(now), isoformat(now + expires_in), note[:200])
    record = {**token.public(), "sha256": sha256(secret)}
    if not conn.hsetnx(TOKENS_KEY, token_id, json.dumps(record)):
        raise TokenError("token id clash; try again")
    return token, secret


def _load(raw: bytes | str) -> tuple[Token, str]:
    data = json.loads(raw)
    token = Token(
        id=data["id"],
        role=data["role"],
        accounts=tuple(data["accounts"]),
        created_at=data["created_at"],
        expires_at=data["expires_at"],
        note=replaced(data.get("note", "")),  # a lone surrogate (undecodable argv bytes) reads as U+FFFD
    )
    return token, str(data["sha256"])


def get(conn: redis.Redis, token_id: str) -> Token | None:
    raw = conn.hget(TOKENS_KEY, token_id)
    return _load(raw)[0] if raw else None


def authenticate(conn: redis.Redis, presented: str, now: datetime) -> Token | None:
    """The live token ``presented`` is, or None (malformed, unknown, revoked or expired)."""
    match = _TOKEN.match(presented)
    if match is None:
        return None
    raw = conn.hget(TOKENS_KEY, match.group(1))
    if raw is None:
        return None
    token, digest = _load(raw)
    if not hmac.compare_digest(digest, sha256(presented)) or token.expired(now):
        return None
    return token


def by_id(conn: redis.Redis, token_id: str, digest: str, now: datetime) -> Token | None:
    """The live token stored under ``token_id`` with ``digest`` (its :func:`sha256`), or None
    (revoked, expired, or the id now names another token): how the console's session acts for the
    token it logged in with without keeping it."""
    raw = conn.hget(TOKENS_KEY, token_id)
    if raw is None:
        return None
    token, stored = _load(raw)
    if not hmac.compare_digest(stored, digest) or token.expired(now):
        return None
    return token


def tokens(conn: redis.Redis) -> list[Token]:
    """Every stored token (expired ones too, until revoked), oldest first."""
    found = [_load(raw)[0] for raw in conn.hvals(TOKENS_KEY)]
    return sorted(found, key=lambda t: (t.created_at, t.id))


# KEYS: the tokens hash, the token's sessions set. ARGV: token id, the prefix of session record keys.
# The token and every console session it opened go at once; only keys of session records are deleted.
_REVOKE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
for _, key in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if string.sub(key, 1, string.len(ARGV[2])) == ARGV[2] then redis.call('DEL', key) end
end
redis.call('DEL', KEYS[2])
return raw
"""


def sessions_key(token_id: str) -> str:
    """The set of the record keys of the console sessions logged in with the token ``token_id``."""
    return f"{SESSIONS_PREFIX}{token_id}"


def revoke(conn: redis.Redis, token_id: str) -> Token | None:
    """Delete the token and the console sessions logged in with it (their records, listed under
    :func:`sessions_key`), in one script; the token it was, or None when there was none."""
    raw = conn.eval(_REVOKE, 2, TOKENS_KEY, sessions_key(token_id), token_id, SESSION_RECORD_PREFIX)
    return _load(raw)[0] if raw else None
