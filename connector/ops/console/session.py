"""The console's session: a random id in the cookie, everything else in the queue Redis.

The cookie (``sc_console``: HttpOnly, SameSite=Lax, Secure on HTTPS, scoped to ``/console``) holds
only the session id, 32 random bytes (URL-safe base64): no API token, no token id, nothing the API
takes. What the session needs is kept server-side, under ``console:session:<digest>`` (the SHA-256
of the id, so Redis holds no value a cookie could be made from): the id of the API token it logged
in with and that token's stored digest (the API acts for the token by them, never by the token:
``connector/ops/api/auth.py``), the session's CSRF token and when it ends.

A session ends 12 hours after login, or when its token expires if that comes first (the record's
``expires_at`` on the product's clock, and its TTL); when its token is revoked: the record keys of
a token's sessions are listed in ``console:sessions:<token id>`` (:func:`connector.ops.tokens.sessions_key`;
a set of record keys, so nothing in it opens a session, with the TTL of the longest of them), and
revoking the token deletes them with it, at once; and at logout, which deletes the record, so the
cookie and any copy of it open nothing from then on. Every request also checks that the token is
still live (as the API checks it on every call), a second line behind the revocation's delete. A
cookie that names no live record is answered as no cookie at all, and removed from the browser.

CSRF: every POST form carries the session's CSRF token (``csrf`` field; 32 random bytes kept in the
record, so it is bound to the session), compared in constant time. The login form, which has no
session yet, uses a double-submit cookie (``sc_console_login``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from flask import abort, g, request
from werkzeug.wrappers import Response

from connector import clock
from connector.ops import tokens

RECORD_PREFIX = tokens.SESSION_RECORD_PREFIX  # + the SHA-256 of the session id
COOKIE = "sc_console"
LOGIN_COOKIE = "sc_console_login"
MAX_AGE_SECONDS = 12 * 3600
PATH = "/console"
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
# KEYS: the record, the token's sessions set, the tokens hash. ARGV: record JSON, lifetime, token id,
# token digest. The record is written only while the token it is for is stored (a revocation between
# the login's check and now leaves nothing behind), listed in the token's set (whose records that
# ended are dropped from it), and the set lives as long as its longest session.
_START = """
local token = redis.call('HGET', KEYS[3], ARGV[3])
if not token or not string.find(token, ARGV[4], 1, true) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
for _, key in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('EXISTS', key) == 0 then redis.call('SREM', KEYS[2], key) end
end
redis.call('SADD', KEYS[2], KEYS[1])
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
return 1
"""


@dataclass(frozen=True)
class Session:
    """The server-side record of one console session."""

    token_id: str
    token_sha256: str
    csrf: str
    expires_at: str

    def ended(self, now: datetime) -> bool:
        return clock.from_isoformat(self.expires_at) <= now


def record_key(session_id: str) -> str:
    """Where the session ``session_id`` is kept: by its digest, never the id itself."""
    return RECORD_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()


def _cookie_key() -> str | None:
    """The record key of this request's session cookie; None without one of the session id's form
    (a cookie of an earlier format included)."""
    raw = request.cookies.get(COOKIE, "")
    return record_key(raw) if _SESSION_ID.fullmatch(raw) else None


def _parse(raw: bytes | str) -> Session | None:
    try:
        data = json.loads(raw)
        found = Session(data["token_id"], data["token_sha256"], data["csrf"], data["expires_at"])
    except (ValueError, TypeError, KeyError):
        return None
    return found if all(isinstance(v, str) for v in vars(found).values()) else None


def load(conn: redis.Redis, now: datetime) -> tuple[Session, tokens.Token] | None:
    """This request's session and the live token it acts for, or None: no session, an ended one,
    or one whose token was revoked or expired (its record is deleted then)."""
    key = _cookie_key()
    if key is None:
        return None
    raw = conn.get(key)
    found = _parse(raw) if raw is not None else None
    token = None
    if found is not None and not found.ended(now):
        token = tokens.by_id(conn, found.token_id, found.token_sha256, now)
    if found is None or token is None:
        if raw is not None:
            _forget(conn, key, found)
        return None
    return found, token


def _forget(conn: redis.Redis, key: str, found: Session | None) -> None:
    """Delete the record ``key`` and its place in its token's sessions set."""
    pipe = conn.pipeline(transaction=True)
    pipe.delete(key)
    if found is not None:
        pipe.srem(tokens.sessions_key(found.token_id), key)
    pipe.execute()


def close(conn: redis.Redis) -> None:
    """End this request's session: its record is deleted, so its cookie, or any copy of it, opens
    nothing from now on."""
    key = _cookie_key()
    if key is not None:
        raw = conn.get(key)
        _forget(conn, key, _parse(raw) if raw is not None else None)


def _cookie(response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PATH,
        httponly=True,
        samesite="Lax",
        secure=request.is_secure,
    )


def start(conn: redis.Redis, response: Response, presented: str, token: tokens.Token, now: datetime) -> bool:
    """A new session for ``token`` (``presented`` is the token as typed, already authenticated: only
    its digest is kept), listed under the token's sessions set; False, and no session, when the
    token was revoked since it was checked. A session the browser held before ends: a login
    replaces it."""
    close(conn)
    ends = min(now + timedelta(seconds=MAX_AGE_SECONDS), token.expires())
    lifetime = max(1, math.ceil((ends - now).total_seconds()))
    digest = tokens.sha256(presented)
    record = Session(token.id, digest, secrets.token_urlsafe(32), clock.isoformat(ends))
    session_id = secrets.token_urlsafe(32)
    keys = [record_key(session_id), tokens.sessions_key(token.id), tokens.TOKENS_KEY]
    if not conn.eval(_START, len(keys), *keys, json.dumps(vars(record)), lifetime, token.id, digest):
        return False
    _cookie(response, COOKIE, session_id, lifetime)
    response.delete_cookie(LOGIN_COOKIE, path=PATH)
    return True


def end(response: Response) -> None:
    response.delete_cookie(COOKIE, path=PATH)


def login_csrf(response: Response) -> str:
    """A fresh double-submit token for the login form (the cookie half is set on ``response``)."""
    value = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    _cookie(response, LOGIN_COOKIE, value, 3600)
    return value


def check_login_csrf() -> None:
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    sent = request.form.get("csrf", "")
    if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
        abort(400, "the login form expired: reload the page and try again")


def check_csrf() -> None:
    expected: str = g.console.csrf
    if not hmac.compare_digest(expected.encode(), request.form.get("csrf", "").encode()):
        abort(400, "this form is stale or did not come from the console (CSRF check failed)")
