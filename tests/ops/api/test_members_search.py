"""The members search (``GET …/segments/{name}/members?q=``): at most ``limit`` matches a page, the
next page starting after the last one returned, so paging returns each match once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from connector import clock
from connector.config import load_accounts
from connector.profiles import lookup
from connector.worker import sizes
from tests.ops.api.conftest import Mint, bearer
from tests.profile_helpers import apply, ev

MEMBERS = "/api/v1/accounts/acme/segments/vip/members"
BUYERS = [f"buyer{n}@example.com" for n in range(7)]
OTHERS = [f"other{n}@example.com" for n in range(5)]


def vip_people(conn: redis.Redis, config_dir: Path, emails: list[str]) -> dict[str, str]:
    """Profiles with these emails, each recorded as a member of ``vip``; profile ids by email."""
    accounts = load_accounts(config_dir)
    out = {}
    for n, email in enumerate(emails):
        apply(conn, accounts, ev(f"m{n}", "order_completed", props={"revenue": 500.0}, email=email))
        pid = lookup(conn, "acme", "email", email)
        assert pid is not None
        out[email] = pid
    pipe = conn.pipeline()
    for pid in out.values():
        sizes.record_transitions(pipe, "acme", ["vip"], [], clock.now(), profile_id=pid)
    pipe.execute()
    return out


def pages(api: Any, secret: str, **query: Any) -> list[list[dict[str, Any]]]:
    out, cursor = [], None
    for _ in range(100):
        answer = api.get(
            MEMBERS, headers=bearer(secret), query_string={**query, **({"cursor": cursor} if cursor else {})}
        )
        assert answer.status_code == 200, answer.get_data(as_text=True)
        body = answer.get_json()
        out.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return out
    raise AssertionError("the pages never ended")


def test_a_search_page_holds_at_most_limit_matches(
    api: Any, mint: Mint, api_accounts: Path, redis_client: redis.Redis
) -> None:
    vip_people(redis_client, api_accounts, BUYERS + OTHERS)
    viewer = mint("viewer", "acme")
    first = api.get(MEMBERS, headers=bearer(viewer), query_string={"limit": 1, "q": "buyer"}).get_json()
    assert len(first["items"]) == 1 and first["items"][0]["email"].startswith("buyer")
    assert first["next_cursor"] is not None
    three = api.get(MEMBERS, headers=bearer(viewer), query_string={"limit": 3, "q": "BUYER"}).get_json()
    assert len(three["items"]) == 3


def test_paging_a_search_returns_each_match_once(
    api: Any, mint: Mint, api_accounts: Path, redis_client: redis.Redis
) -> None:
    pids = vip_people(redis_client, api_accounts, BUYERS + OTHERS)
    viewer = mint("viewer", "acme")
    for limit in (1, 2, 3, 50):
        found = pages(api, viewer, limit=limit, q="buyer")
        assert all(len(page) <= limit for page in found), (limit, found)
        seen = [m["profile_id"] for page in found for m in page]
        assert sorted(seen) == sorted(pids[e] for e in BUYERS), limit  # each once, none lost
    # without q the pages are as before: every member once
    every = [m["email"] for page in pages(api, viewer, limit=5) for m in page]
    assert sorted(every) == sorted(BUYERS + OTHERS)


def test_a_search_in_a_set_of_the_earlier_layout_loses_no_match(
    api: Any, mint: Mint, api_accounts: Path, redis_client: redis.Redis
) -> None:
    """Members still in the segment's set written before the buckets (read with SSCAN, which cannot
    stop at a given member): every match is returned, none lost."""
    pids = vip_people(redis_client, api_accounts, BUYERS + OTHERS)
    redis_client.delete(*redis_client.keys("sz:{acme}:mb*"))
    redis_client.sadd(sizes.members_key("acme", "vip"), *pids.values())
    found = pages(api, mint("viewer", "acme"), limit=2, q="buyer")
    assert {m["profile_id"] for page in found for m in page} == {pids[e] for e in BUYERS}
