"""The members cursor (``GET …/segments/{name}/members?cursor=``) names a position a page could have
ended at, and nothing else: the bucket and the last member returned as stored (a profile id of the
connector's form, packed), or SSCAN's cursor in the set of the earlier layout. Any other is a 422."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
import redis

from connector import clock
from connector.worker import sizes
from tests.ops.api.conftest import Mint, bearer

MEMBERS = "/api/v1/accounts/acme/segments/vip/members"


def cursor_of(position: Any) -> str:
    raw = json.dumps(position, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def position_of(cursor: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))


def record(conn: redis.Redis, pids: list[str]) -> None:
    pipe = conn.pipeline()
    for pid in pids:
        sizes.record_transitions(pipe, "acme", ["vip"], [], clock.now(), profile_id=pid)
    pipe.execute()


def page(api: Any, secret: str, cursor: str | None, limit: int = 1) -> Any:
    query = {"limit": limit, **({"cursor": cursor} if cursor is not None else {})}
    return api.get(MEMBERS, headers=bearer(secret), query_string=query)


@pytest.mark.parametrize(
    "position",
    [
        [0, "x"],  # no profile id the connector makes is stored as text
        [0, "p1"],
        [0, "0123456789abcdef"],  # a profile id as given, not as stored
        [0, "01"],
        [0, "-0"],
        [0, "+1"],
        [0, " 1"],
        [0, "1\n"],
        [0, str(2**63)],  # beyond a signed 64-bit integer
        [0, str(-(2**63) - 1)],
        [-1, ""],  # the start of the set of the earlier layout is no cursor: paging starts without one
        [-1, "0"],  # SSCAN's end: the page after it is in the buckets
        [-1, "01"],
        [-1, str(2**64)],
        [-2, "1"],
        [-7, ""],
        [2**32, ""],
    ],
)
def test_a_position_no_page_ends_at_is_422(api: Any, mint: Mint, api_accounts: Any, position: Any) -> None:
    answer = page(api, mint("viewer", "acme"), cursor_of(position))
    assert answer.status_code == 422, (position, answer.get_data(as_text=True))
    body = answer.get_json()
    assert body["error"] == "invalid_request"
    assert body["message"].startswith("invalid cursor ")
    assert "pass the next_cursor of the previous page" in body["message"]


def test_every_cursor_a_page_gives_is_taken(
    api: Any, mint: Mint, api_accounts: Any, redis_client: redis.Redis
) -> None:
    pids = [os.urandom(8).hex() for _ in range(40)]
    record(redis_client, pids)
    viewer = mint("viewer", "acme")
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        answer = page(api, viewer, cursor, limit=3)
        assert answer.status_code == 200, answer.get_data(as_text=True)
        seen += [m["profile_id"] for m in answer.get_json()["items"]]
        cursor = answer.get_json()["next_cursor"]
        if cursor is None:
            break
    assert sorted(set(seen)) == sorted(pids)
    assert page(api, viewer, cursor_of([0, ""])).status_code == 200
    assert page(api, viewer, cursor_of([3, ""])).status_code == 200


def test_a_cursor_in_the_set_of_the_earlier_layout_is_taken(
    api: Any, mint: Mint, api_accounts: Any, redis_client: redis.Redis
) -> None:
    pids = [os.urandom(8).hex() for _ in range(600)]
    redis_client.sadd(sizes.members_key("acme", "vip"), *pids)
    viewer = mint("viewer", "acme")
    first = page(api, viewer, None)
    assert first.status_code == 200
    cursor = first.get_json()["next_cursor"]
    bucket, after = position_of(cursor)
    assert bucket == -1 and after.isdigit() and after != "0"  # SSCAN's cursor, as the server gave it
    assert page(api, viewer, cursor).status_code == 200
