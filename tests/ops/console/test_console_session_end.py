"""Logging out of the console ends the session on the server: its record is deleted, so a copy of
the session cookie is refused afterwards, though its 12 hours still hold."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from connector import clock
from connector.ops.console import session
from tests.ops.api.conftest import Mint
from tests.ops.console.test_console import csrf_of, login

HOME = "/console/a/acme/"


def cookie_of(answer: Any) -> str:
    for header in answer.headers.getlist("Set-Cookie"):
        name, _, rest = header.partition("=")
        if name == session.COOKIE:
            return rest.split(";", 1)[0]
    raise AssertionError("no session cookie set")


def with_cookie(api_app: Any, value: str, path: str = HOME) -> Any:
    """``path`` asked for by another browser holding ``value`` as its session cookie."""
    browser = api_app.test_client()
    browser.set_cookie(session.COOKIE, value, path=session.PATH)
    return browser.get(path)


def test_a_copied_cookie_is_refused_after_logout(
    api: Any, api_app: Any, mint: Mint, redis_client: redis.Redis
) -> None:
    secret = mint("viewer", "acme")
    copied = cookie_of(login(api, secret))
    assert with_cookie(api_app, copied).status_code == 200
    csrf = csrf_of(api.get(HOME).get_data(as_text=True))
    out = api.post("/console/logout", data={"csrf": csrf})
    assert out.status_code == 302 and "/console/login" in out.headers["Location"]
    refused = with_cookie(api_app, copied)
    assert refused.status_code == 302 and "/console/login" in refused.headers["Location"]
    assert with_cookie(api_app, copied, "/console/a/acme/live/stream").status_code == 302
    assert api.get(HOME).status_code == 302  # the browser that logged out, too
    # the token is not revoked: a new login is a new session
    again = cookie_of(login(api, secret))
    assert with_cookie(api_app, again).status_code == 200


def test_logging_out_deletes_the_session_s_record(api: Any, mint: Mint, redis_client: redis.Redis) -> None:
    copied = cookie_of(login(api, mint("viewer", "acme")))
    key = "console:session:" + hashlib.sha256(copied.encode()).hexdigest()
    assert list(redis_client.scan_iter("console:session:*")) == [key.encode()]
    api.post("/console/logout", data={"csrf": csrf_of(api.get(HOME).get_data(as_text=True))})
    assert redis_client.exists(key) == 0
    assert list(redis_client.scan_iter("console:*")) == []  # nothing kept of the ended session


def test_logging_out_needs_the_session_s_csrf_token(api: Any, api_app: Any, mint: Mint) -> None:
    copied = cookie_of(login(api, mint("viewer", "acme")))
    assert api.post("/console/logout", data={"csrf": "forged"}).status_code == 400
    assert with_cookie(api_app, copied).status_code == 200


def test_other_sessions_stay(api: Any, api_app: Any, mint: Mint, api_accounts: Path) -> None:
    secret = mint("viewer", "acme")
    other = cookie_of(login(api_app.test_client(), secret))
    login(api, secret)
    api.post("/console/logout", data={"csrf": csrf_of(api.get(HOME).get_data(as_text=True))})
    assert with_cookie(api_app, other).status_code == 200


def test_the_rules_page_names_the_account_file_not_its_path(api: Any, mint: Mint, api_accounts: Path) -> None:
    login(api, mint("viewer", "acme"))
    html = api.get("/console/a/acme/rules").get_data(as_text=True)
    assert "<code>acme.yaml</code>" in html
    assert str(api_accounts) not in html and str(api_accounts.resolve()) not in html


def test_a_session_ends_twelve_hours_after_login_on_the_product_s_clock(
    api: Any, mint: Mint, redis_client: redis.Redis
) -> None:
    # signed and aged on connector.clock: a test moves time instead of waiting for it
    start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    with clock.frozen(start):
        login(api, mint("viewer", "acme"))
    with clock.frozen(start + timedelta(hours=12) - timedelta(seconds=1)):
        assert api.get(HOME).status_code == 200
    with clock.frozen(start + timedelta(hours=12, seconds=2)):
        answer = api.get(HOME)
    assert answer.status_code in (302, 303) and "/console/login" in answer.headers["Location"]
