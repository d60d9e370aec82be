"""The console's session: a signed cookie holding the API token and a CSRF token.

The signing key is 32 random bytes kept in the queue Redis (``console:key``, created on first use),
so every web process signs alike and deleting the key logs everyone out. The cookie is HttpOnly,
SameSite=Lax, Secure on HTTPS, scoped to ``/console`` and lives 12 hours; the token inside it is
checked by the API on every call, so a revoked or expired token ends the session at once.

Logging out ends the session on the server too, so that a copy of the cookie is refused from then
on: the session is recorded as ended (``console:ended:<digest>``, the SHA-256 of the session's own
random value, never the value) until its cookie would have expired anyway.

CSRF: every POST form carries the session's CSRF token (``csrf`` field), compared in constant time.
The login form, which has no session yet, uses a double-submit cookie (``sc_console_login``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

import redis
from flask import abort, current_app, g, request
from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer
from werkzeug.wrappers import Response

from connector import clock

KEY = "console:key"
ENDED_PREFIX = "console:ended:"  # + the SHA-256 of an ended session's random value
COOKIE = "sc_console"
LOGIN_COOKIE = "sc_console_login"
MAX_AGE_SECONDS = 12 * 3600
PATH = "/console"


def _key(conn: redis.Redis) -> bytes:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    cached: bytes | None = app.extensions.get("connector.console.key")
    if cached is None:
        conn.set(KEY, secrets.token_hex(32), nx=True)
        raw = conn.get(KEY)
        cached = raw if isinstance(raw, bytes) else str(raw).encode()
        app.extensions["connector.console.key"] = cached
    return cached


class _Signer(TimestampSigner):
    """Signs and ages cookies on the product's clock (:mod:`connector.clock`), not the OS's."""

    def get_timestamp(self) -> int:
        return int(clock.now().timestamp())


def _serializer(conn: redis.Redis) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_key(conn), salt="connector-console", signer=_Signer)


def _read(conn: redis.Redis) -> tuple[dict[str, Any], int] | None:
    """The session this request's cookie holds, signed and not expired, with when it was signed."""
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        data, signed_at = _serializer(conn).loads(raw, max_age=MAX_AGE_SECONDS, return_timestamp=True)
    except BadSignature:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("csrf"), str) or "token" not in data:
        return None
    return data, int(signed_at.timestamp())


def _ended_key(data: dict[str, Any]) -> str:
    """Where an ended session is recorded: by a digest of its CSRF token, the random value made for
    that session alone and signed into its cookie (a cookie's text may vary where its signature's
    base64 does not, the signed value cannot)."""
    return ENDED_PREFIX + hashlib.sha256(data["csrf"].encode()).hexdigest()


def load(conn: redis.Redis) -> dict[str, Any] | None:
    """The session of this request (``{"token", "csrf"}``), or None (none, or one that has ended)."""
    found = _read(conn)
    if found is None or conn.exists(_ended_key(found[0])):
        return None
    return found[0]


def close(conn: redis.Redis) -> None:
    """Record this request's session as ended, until its cookie would have expired: its cookie, or
    any copy of it, is refused from now on."""
    found = _read(conn)
    if found is None:
        return
    data, signed_at = found
    # the signature's clock: a cookie is taken while at most MAX_AGE_SECONDS old, whole seconds
    remaining = signed_at + MAX_AGE_SECONDS + 1 - int(clock.now().timestamp())
    conn.set(_ended_key(data), "1", ex=max(1, remaining))


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


def start(conn: redis.Redis, response: Response, token: str) -> None:
    data = {"token": token, "csrf": secrets.token_urlsafe(24)}
    _cookie(response, COOKIE, _serializer(conn).dumps(data), MAX_AGE_SECONDS)
    response.delete_cookie(LOGIN_COOKIE, path=PATH)


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
    if not cookie or not hmac.compare_digest(cookie, sent):
        abort(400, "the login form expired: reload the page and try again")


def check_csrf() -> None:
    expected = g.console["csrf"]
    if not hmac.compare_digest(expected, request.form.get("csrf", "")):
        abort(400, "this form is stale or did not come from the console (CSRF check failed)")
