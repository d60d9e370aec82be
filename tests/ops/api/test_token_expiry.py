"""``POST /api/v1/tokens``: an expiry that is a duration but too long is refused as the CLI refuses it."""

from __future__ import annotations

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
    admin = mint("admin", "acme")
    answer = api.post(
        V1 + "/tokens",
        headers=bearer(admin),
        json={"accounts": ["acme"], "role": "viewer", "expires": "3650d"},
    )
    assert answer.status_code == 201, answer.get_data(as_text=True)
