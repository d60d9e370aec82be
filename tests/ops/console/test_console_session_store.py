"""The console's session cookie holds a random session id and nothing else: the API token stays on
the server (its id and digest in the session's record, ``console:session:<digest>``), so nothing
taken from the cookie opens the API, and a session ends with its token."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import re
import secrets
import zlib
from datetime import timedelta
from typing import Any

import redis
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from connector import clock
from connector.ops import tokens
from connector.ops.console import session
from tests.ops.api.conftest import Mint, bearer
from tests.ops.console.test_console import csrf_of, login
from tests.ops.console.test_console_session_end import HOME, cookie_of, with_cookie

TOKEN_TEXT = re.compile(rb"sc_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")
RECORDS = "console:session:"  # + the SHA-256 of the session id (docs/console.md)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def record_key(session_id: str) -> str:
    return RECORDS + sha256(session_id)


def readings(cookie: str) -> list[bytes]:
    """Everything a cookie can be read as: its text, and each of its dot-separated parts decoded from
    URL-safe base64, and inflated where it is compressed (as a signed cookie's payload may be)."""
    out = [cookie.encode()]
    for part in cookie.split("."):
        try:
            decoded = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        except (binascii.Error, ValueError):
            continue
        out.append(decoded)
        with contextlib.suppress(zlib.error):
            out.append(zlib.decompress(decoded))
    return out


def session_keys(conn: redis.Redis) -> list[bytes]:
    return list(conn.scan_iter(f"{RECORDS}*"))


def test_the_cookie_holds_no_token_nor_anything_of_it(api: Any, mint: Mint) -> None:
    secret = mint("admin", "acme")
    token_id, token_secret = secret[3:15], secret[16:]
    cookie = cookie_of(login(api, secret))
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", cookie), cookie  # 32 random bytes
    for text in readings(cookie):
        for value in (secret, token_secret, token_id, sha256(secret)):
            assert value.encode() not in text, (value, text)
        assert TOKEN_TEXT.search(text) is None
    assert api.get(HOME).status_code == 200  # and it opens the console


def test_the_api_refuses_whatever_is_taken_from_the_cookie(api: Any, api_app: Any, mint: Mint) -> None:
    secret = mint("admin", "acme")
    cookie = cookie_of(login(api, secret))
    taken = {cookie, *cookie.split(".")}
    for text in readings(cookie):
        # a header holds no control character: each run of text between them is tried
        taken.update(re.split(r"[\x00-\x1f\x7f]+", text.decode("utf-8", "replace")))
        taken.update(found.decode() for found in TOKEN_TEXT.findall(text))
    taken.discard("")
    other = api_app.test_client()
    for value in sorted(taken):
        answer = other.get("/api/v1/accounts", headers=bearer(value))
        assert answer.status_code == 401, value
    # the cookie itself, sent to the API, is no credential either
    other.set_cookie(session.COOKIE, cookie, path="/")
    assert other.get("/api/v1/accounts").status_code == 401
    assert api_app.test_client().get("/api/v1/accounts", headers=bearer(secret)).status_code == 200


def test_the_session_is_kept_server_side_by_a_digest_of_its_id(
    api: Any, mint: Mint, redis_client: redis.Redis
) -> None:
    secret = mint("viewer", "acme")
    cookie = cookie_of(login(api, secret))
    [key] = session_keys(redis_client)
    assert key.decode() == record_key(cookie)
    raw = redis_client.get(key)
    assert raw is not None
    assert secret.encode() not in raw and secret[16:].encode() not in raw and cookie.encode() not in raw
    record = json.loads(raw)
    assert record["token_id"] == secret[3:15] and record["token_sha256"] == sha256(secret)
    assert record["expires_at"] == clock.isoformat(clock.now() + timedelta(hours=12))
    assert session.MAX_AGE_SECONDS - 60 < redis_client.ttl(key) <= session.MAX_AGE_SECONDS
    # the CSRF token of the pages is the session's own, kept in its record
    assert csrf_of(api.get(HOME).get_data(as_text=True)) == record["csrf"]
    assert len(record["csrf"]) >= 43


def test_a_second_login_in_the_same_browser_replaces_its_session(
    api: Any, mint: Mint, redis_client: redis.Redis
) -> None:
    first = cookie_of(login(api, mint("viewer", "acme")))
    second = cookie_of(login(api, mint("editor", "acme")))
    assert first != second
    assert session_keys(redis_client) == [record_key(second).encode()]


def test_a_session_lives_no_longer_than_its_token(api: Any, mint: Mint, redis_client: redis.Redis) -> None:
    start = clock.now()
    answer = login(api, mint("viewer", "acme", expires=timedelta(hours=1)))
    assert "Max-Age=3600" in answer.headers["Set-Cookie"]
    [key] = session_keys(redis_client)
    assert 3500 < redis_client.ttl(key) <= 3600
    assert json.loads(redis_client.get(key) or b"")["expires_at"] == clock.isoformat(
        start + timedelta(hours=1)
    )
    with clock.frozen(start + timedelta(minutes=59)):
        assert api.get(HOME).status_code == 200
    with clock.frozen(start + timedelta(hours=1, seconds=1)):
        refused = api.get(HOME)
    assert refused.status_code == 302 and "/console/login" in refused.headers["Location"]
    assert session_keys(redis_client) == []


def test_a_revoked_token_ends_the_session_and_its_record(
    api: Any, api_app: Any, mint: Mint, redis_client: redis.Redis
) -> None:
    secret = mint("viewer", "acme")
    copied = cookie_of(login(api, secret))
    assert with_cookie(api_app, copied).status_code == 200
    tokens.revoke(redis_client, secret[3:15])
    refused = api.get(HOME)
    assert refused.status_code == 302 and "/console/login" in refused.headers["Location"]
    assert f"{session.COOKIE}=;" in refused.headers["Set-Cookie"]  # the browser forgets it
    assert session_keys(redis_client) == []
    assert with_cookie(api_app, copied).status_code == 302


def test_an_expired_token_ends_the_session_and_its_record(
    api: Any, mint: Mint, redis_client: redis.Redis
) -> None:
    """The token's own expiry, whatever the session's record says (a token stored with a shorter
    life than when the session began, as an earlier release could leave one)."""
    secret = mint("viewer", "acme")
    login(api, secret)
    assert len(session_keys(redis_client)) == 1
    token_id = secret[3:15]
    stored = json.loads(redis_client.hget(tokens.TOKENS_KEY, token_id) or b"")
    stored["expires_at"] = clock.isoformat(clock.now() + timedelta(minutes=5))
    redis_client.hset(tokens.TOKENS_KEY, token_id, json.dumps(stored))
    assert api.get(HOME).status_code == 200
    with clock.frozen(clock.now() + timedelta(minutes=5)):
        refused = api.get(HOME)
    assert refused.status_code == 302 and "/console/login" in refused.headers["Location"]
    assert session_keys(redis_client) == []


def test_a_new_token_under_the_same_id_does_not_take_over_a_session(
    api: Any, mint: Mint, redis_client: redis.Redis
) -> None:
    """A session acts for the token it logged in with (id and digest), not for whatever the id names."""
    secret = mint("viewer", "acme")
    login(api, secret)
    assert len(session_keys(redis_client)) == 1
    token_id = secret[3:15]
    stored = json.loads(redis_client.hget(tokens.TOKENS_KEY, token_id) or b"")
    stored["sha256"] = sha256(f"sc_{token_id}_{secrets.token_urlsafe(32)}")
    redis_client.hset(tokens.TOKENS_KEY, token_id, json.dumps(stored))
    assert api.get(HOME).status_code == 302
    assert session_keys(redis_client) == []


class _ProductClockSigner(TimestampSigner):
    def get_timestamp(self) -> int:
        return int(clock.now().timestamp())


def test_a_cookie_of_the_earlier_format_is_logged_out(
    api_app: Any, mint: Mint, redis_client: redis.Redis
) -> None:
    """A session made before the cookie held only an id (the token and CSRF token signed with
    ``console:key``) opens nothing: its holder logs in again, and the browser is told to drop it."""
    secret = mint("viewer", "acme")
    redis_client.set("console:key", secrets.token_hex(32))
    key = redis_client.get("console:key") or b""
    earlier = URLSafeTimedSerializer(key, salt="connector-console", signer=_ProductClockSigner).dumps(
        {"token": secret, "csrf": secrets.token_urlsafe(24)}
    )
    browser = api_app.test_client()
    browser.set_cookie(session.COOKIE, earlier, path=session.PATH)
    answer = browser.get(HOME)
    assert answer.status_code == 302 and "/console/login" in answer.headers["Location"]
    assert f"{session.COOKIE}=;" in answer.headers["Set-Cookie"]
    assert browser.get_cookie(session.COOKIE, path=session.PATH) is None
    assert session_keys(redis_client) == []


def test_a_form_needs_the_csrf_token_of_its_own_session(api: Any, api_app: Any, mint: Mint) -> None:
    secret = mint("viewer", "acme")
    login(api, secret)
    other = api_app.test_client()
    login(other, secret)
    theirs = csrf_of(other.get(HOME).get_data(as_text=True))
    assert theirs != csrf_of(api.get(HOME).get_data(as_text=True))
    assert api.post("/console/logout", data={"csrf": theirs}).status_code == 400
    assert api.post("/console/logout", data={"csrf": "ü"}).status_code == 400  # not ASCII: no crash
    assert api.get(HOME).status_code == 200


def test_the_api_acts_for_a_token_by_id_only_in_process(
    api_app: Any, mint: Mint, redis_client: redis.Redis
) -> None:
    """The console's calls carry an object in the WSGI environ; text there (or any header) is no
    credential, and the object answers as its token would."""
    from connector.ops.api.auth import ACTING_FOR, ActingFor

    secret = mint("viewer", "acme")
    token_id, digest = secret[3:15], sha256(secret)
    client = api_app.test_client()
    acting = ActingFor(token_id, digest)
    assert client.get("/api/v1/accounts", environ_overrides={ACTING_FOR: acting}).status_code == 200
    for value in (f"{token_id}:{digest}", [token_id, digest], {"token_id": token_id, "token_sha256": digest}):
        assert client.get("/api/v1/accounts", environ_overrides={ACTING_FOR: value}).status_code == 401
    header = {"Connector-Api-Acting-For": f"{token_id}:{digest}", "X-Token-Id": token_id}
    assert client.get("/api/v1/accounts", headers=header).status_code == 401
    wrong = ActingFor(token_id, sha256(secret + "x"))
    assert client.get("/api/v1/accounts", environ_overrides={ACTING_FOR: wrong}).status_code == 401
    tokens.revoke(redis_client, token_id)
    assert client.get("/api/v1/accounts", environ_overrides={ACTING_FOR: acting}).status_code == 401
