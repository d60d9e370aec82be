"""Revoking a token deletes the console sessions it opened at once (real Redis), through the command
line and the API alike, not at their next request: the records listed by the token's id in
``console:sessions:<token id>`` go with the token. The index holds record keys only, lives as long
as its longest session, and forgets sessions that ended."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis
from click.testing import CliRunner
from flask import make_response

from connector import clock
from connector.cli import tokens_cmd
from connector.cli.main import cli
from connector.ops import tokens
from connector.ops.console import session
from tests.ops.api.conftest import Mint, bearer
from tests.ops.console.test_console import login
from tests.ops.console.test_console_session_end import HOME, cookie_of, with_cookie
from tests.ops.console.test_console_session_store import record_key, session_keys, sha256

INDEX = "console:sessions:"  # + token id (docs/console.md)


def _logged_in(api_app: Any, secret: str, times: int) -> list[str]:
    """``times`` sessions of the token, each in a browser of its own; their cookies."""
    return [cookie_of(login(api_app.test_client(), secret)) for _ in range(times)]


def test_revoking_a_token_on_the_command_line_deletes_its_sessions_at_once(
    api_app: Any, api_accounts: Path, mint: Mint, redis_client: redis.Redis
) -> None:
    secret, other = mint("editor", "acme"), mint("viewer", "acme")
    token_id = secret[3:15]
    cookies = _logged_in(api_app, secret, 2)
    kept = _logged_in(api_app, other, 1)
    assert len(session_keys(redis_client)) == 3
    # the index: the token's record keys, nothing else (no token, digest, session id)
    index = redis_client.smembers(INDEX + token_id)
    assert index == {record_key(c).encode() for c in cookies}
    for value in (secret, sha256(secret), *cookies):
        assert all(value.encode() not in member for member in index)
    assert 0 < redis_client.ttl(INDEX + token_id) <= session.MAX_AGE_SECONDS

    if "tokens" not in cli.commands:
        tokens_cmd.register(cli)
    assert CliRunner().invoke(cli, ["tokens", "revoke", token_id]).exit_code == 0

    # gone from Redis right away, before any request of those sessions
    remaining = session_keys(redis_client)
    assert remaining == [record_key(kept[0]).encode()]
    assert not redis_client.exists(INDEX + token_id)
    assert redis_client.smembers(INDEX + other[3:15]) == {record_key(kept[0]).encode()}
    for cookie in cookies:
        assert with_cookie(api_app, cookie).status_code == 302
    assert with_cookie(api_app, kept[0]).status_code == 200


def test_revoking_a_token_through_the_api_deletes_its_sessions_at_once(
    api: Any, api_app: Any, mint: Mint, redis_client: redis.Redis
) -> None:
    secret, admin = mint("viewer", "acme"), mint("admin", "acme")
    token_id = secret[3:15]
    cookies = _logged_in(api_app, secret, 2)
    assert {k.decode() for k in session_keys(redis_client)} == {record_key(c) for c in cookies}
    answer = api.delete(f"/api/v1/tokens/{token_id}", headers=bearer(admin))
    assert answer.status_code == 200, answer.get_json()
    assert session_keys(redis_client) == []
    assert not redis_client.exists(INDEX + token_id)


def test_the_index_forgets_sessions_that_ended(api_app: Any, mint: Mint, redis_client: redis.Redis) -> None:
    secret = mint("viewer", "acme")
    token_id = secret[3:15]
    browser = api_app.test_client()
    first = cookie_of(login(browser, secret))
    page = browser.get(HOME)
    assert page.status_code == 200
    csrf = page.get_data(as_text=True).split('name="csrf" value="', 1)[1].split('"', 1)[0]
    browser.post("/console/logout", data={"csrf": csrf})
    assert redis_client.smembers(INDEX + token_id) == set()
    # a record that ended by its TTL is dropped from the index at the token's next login
    second = cookie_of(login(api_app.test_client(), secret))
    redis_client.delete(record_key(second))
    third = cookie_of(login(api_app.test_client(), secret))
    assert redis_client.smembers(INDEX + token_id) == {record_key(third).encode()}
    assert first != third


def test_a_login_racing_a_revocation_leaves_no_session(
    api_app: Any, mint: Mint, redis_client: redis.Redis
) -> None:
    """The token is checked, then revoked before the session is written: nothing is written."""
    secret = mint("viewer", "acme")
    presented = tokens.authenticate(redis_client, secret, clock.now())
    assert presented is not None
    tokens.revoke(redis_client, presented.id)
    with api_app.test_request_context("/console/login", method="POST"):
        started = session.start(redis_client, make_response(""), secret, presented, clock.now())
    assert started is False
    assert session_keys(redis_client) == [] and not redis_client.exists(INDEX + presented.id)
