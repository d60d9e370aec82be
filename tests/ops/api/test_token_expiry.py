"""``POST /api/v1/tokens``: an expiry that is a duration but too long is refused as the CLI refuses it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import redis

from connector.ops import tokens
from tests.ops.api.conftest import Mint, bearer

V1 = "/api/v1"


@pytest.mark.parametrize("expires", ["99999999d", "99999d", "522w", "0000000099999999h", "9" * 5000 + "h"])
def test_a_duration_longer_than_ten_years_is_named_as_such(
    api: Any, mint: Mint, redis_client: redis.Redis, expires: str
) -> None:
    admin = mint("admin", "acme")
    answer = api.post(
        V1 + "/tokens",
        headers=bearer(admin),
        json={"accounts": ["acme"], "role": "viewer", "expires": expires},
    )
    assert answer.status_code == 422, answer.get_data(as_text=True)
    text = answer.get_data(as_text=True)
    assert "longer than ten years" in text and "a duration like" not in text
    assert len(tokens.tokens(redis_client)) == 1  # the admin's own only


@pytest.mark.parametrize("expires", ["soon", "10y", "-5d", "5 d", "\u0665d"])
def test_what_is_no_duration_is_still_named_as_such(api: Any, mint: Mint, expires: str) -> None:
    admin = mint("admin", "acme")
    answer = api.post(
        V1 + "/tokens",
        headers=bearer(admin),
        json={"accounts": ["acme"], "role": "viewer", "expires": expires},
    )
    assert answer.status_code == 422
    assert "a duration like 90d, 12h or 2w" in answer.get_data(as_text=True)


def test_ten_years_is_accepted(api: Any, mint: Mint) -> None:
    admin = mint("admin", "acme", expires=timedelta(days=3651))
    answer = api.post(
        V1 + "/tokens",
        headers=bearer(admin),
        json={"accounts": ["acme"], "role": "viewer", "expires": "3650d"},
    )
    assert answer.status_code == 201, answer.get_data(as_text=True)


def test_a_token_cannot_outlive_the_token_creating_it(
    api: Any, mint: Mint, redis_client: redis.Redis
) -> None:
    # a leaked one-hour admin token must not mint ten-year access
    admin = mint("admin", "acme", expires=timedelta(hours=2))
    answer = api.post(
        V1 + "/tokens",
        headers=bearer(admin),
        json={"accounts": ["acme"], "role": "admin", "expires": "3650d"},
    )
    assert answer.status_code == 422, answer.get_data(as_text=True)
    message = answer.get_json()["message"]
    assert "cannot outlive the token creating it" in message and "ask for 2h or less" in message
    assert len(tokens.tokens(redis_client)) == 1  # the admin's own only
    shorter = api.post(
        V1 + "/tokens", headers=bearer(admin), json={"accounts": ["acme"], "role": "viewer", "expires": "1h"}
    )
    assert shorter.status_code == 201, shorter.get_data(as_text=True)
    # not asked for: the default 90d, shortened to what is left of the creator's life
    default = api.post(V1 + "/tokens", headers=bearer(admin), json={"accounts": ["acme"], "role": "viewer"})
    assert default.status_code == 201
    [creator] = [t for t in tokens.tokens(redis_client) if t.role == "admin"]
    assert default.get_json()["token"]["expires_at"] == creator.expires_at


def test_a_note_with_terminal_controls_is_refused(api: Any, mint: Mint, redis_client: redis.Redis) -> None:
    admin = mint("admin", "acme")
    notes = ["\u001b[2J\u001b]0;pwned\u0007", "ok\r\nb11c7d2a0f97  admin  *", "inv\u202eoice"]
    notes += ["rlm\u200fx", "lrm\u200ex", "alm\u061cx", "line\u2028x", "para\u2029x"]
    for note in notes:
        answer = api.post(
            V1 + "/tokens", headers=bearer(admin), json={"accounts": ["acme"], "role": "viewer", "note": note}
        )
        assert answer.status_code == 422, answer.get_data(as_text=True)
        assert "control and text-direction characters are not allowed" in answer.get_json()["message"]
    assert len(tokens.tokens(redis_client)) == 1


def test_with_less_than_an_hour_left_the_advice_is_to_leave_the_expiry_out(api: Any, mint: Mint) -> None:
    admin = mint("admin", "acme", expires=timedelta(minutes=40))
    body = {"accounts": ["acme"], "role": "viewer", "expires": "1h"}
    answer = api.post(V1 + "/tokens", headers=bearer(admin), json=body)
    assert answer.status_code == 422 and "leave `expires` out" in answer.get_json()["message"]
    del body["expires"]
    assert api.post(V1 + "/tokens", headers=bearer(admin), json=body).status_code == 201
