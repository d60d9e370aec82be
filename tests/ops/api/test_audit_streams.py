"""The audit log keeps one stream per account (and per set of accounts), so one account's entries
never push out another's; ``GET /api/v1/audit`` merges the streams a token may see, newest first,
with the entries of the earlier single stream ``api:audit``; access exports are limited per token."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import redis

from connector import clock
from connector.ops import audit
from tests.ops.api.conftest import Mint, bearer

AUDIT = "/api/v1/audit"
EXPORTS_PER_MINUTE = 30  # docs/api.md, connector.ops.api.people.EXPORTS_PER_MINUTE


def page_all(api: Any, secret: str, limit: int) -> list[dict[str, Any]]:
    """Every entry the token sees, page by page, following next_cursor to the end."""
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(1000):
        query = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        answer = api.get(AUDIT + query, headers=bearer(secret))
        assert answer.status_code == 200, answer.get_json()
        body = answer.get_json()
        out.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return out
    raise AssertionError("the cursor never ended")


def legacy(conn: redis.Redis, action: str, accounts: list[str], n: int) -> str:
    """An entry as an earlier release wrote it, in the single stream ``api:audit``."""
    fields = {
        "at": "2024-02-01T00:00:00Z",
        "token": "old",
        "action": action,
        "target": str(n),
        "accounts": json.dumps(accounts),
        "before": "null",
        "after": json.dumps(n),
    }
    entry_id = conn.xadd("api:audit", fields)  # type: ignore[arg-type]
    return entry_id.decode()


def test_a_flood_of_one_accounts_exports_does_not_drop_another_accounts_entries(
    api: Any, mint: Mint, people: dict[str, str], redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "AUDIT_MAX", 5)
    admin = mint("admin", "acme")
    made = api.post(
        AUDIT.replace("audit", "tokens"), headers=bearer(admin), json={"accounts": ["acme"], "role": "viewer"}
    )
    assert made.status_code == 201
    flooder = bearer(mint("viewer", "globex"))
    gus = people["gus@globex.test"]
    for _ in range(12):
        assert api.get(f"/api/v1/accounts/globex/people/{gus}/export", headers=flooder).status_code == 200
    # acme's entry is still there; globex's stream holds its cap, and what it dropped is counted
    assert [e["action"] for e in page_all(api, admin, 50)] == ["token.create"]
    assert len(page_all(api, mint("viewer", "globex"), 50)) == 5
    assert int(redis_client.hget("metrics:dropped", "audit") or 0) == 7


def test_pages_across_the_streams_give_every_visible_entry_once_newest_first(
    api: Any, mint: Mint, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "AUDIT_MAX", 4)
    sets = [["acme"], ["globex"], ["acme", "globex"], ["*"]]
    written = [
        audit.record(redis_client, "t1", "x", str(n), sets[n % len(sets)], None, n, clock.now())
        for n in range(16)  # four per stream: each stream at its cap, nothing dropped
    ]
    assert len(set(written)) == len(written)  # ids are unique across the streams
    # written in the same instant by the frozen clock: the order is the ids'
    everything = page_all(api, mint("admin", "*"), 5)
    assert [e["after"] for e in everything] == list(range(15, -1, -1))
    assert [e["id"] for e in everything] == written[::-1]
    both = page_all(api, mint("admin", "acme", "globex"), 3)
    assert [e["after"] for e in both] == [n for n in range(15, -1, -1) if n % len(sets) != 3]
    acme = page_all(api, mint("viewer", "acme"), 2)
    assert [e["after"] for e in acme] == [n for n in range(15, -1, -1) if n % len(sets) == 0]


def test_entries_of_the_earlier_single_stream_stay_visible(
    api: Any, mint: Mint, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "AUDIT_MAX", 3)
    old_acme = [legacy(redis_client, "token.create", ["acme"], n) for n in range(2)]
    for n in range(60):  # another account's old entries, more than a page's reading budget
        legacy(redis_client, "person.export", ["globex"], 100 + n)
    old_acme.append(legacy(redis_client, "rules.publish", ["acme"], 2))
    for n in range(10):  # a flood after the upgrade: it trims globex's stream, never the old one
        audit.record(redis_client, "t2", "person.export", "p", ["globex"], None, 200 + n, clock.now())
    audit.record(redis_client, "t1", "rules.draft", "rules:acme", ["acme"], None, 300, clock.now())
    acme = page_all(api, mint("viewer", "acme"), 1)
    assert [e["after"] for e in acme] == [300, 2, 1, 0]
    assert [e["id"] for e in acme[1:]] == old_acme[::-1]
    everything = page_all(api, mint("admin", "*"), 7)
    assert [e["after"] for e in everything] == [300, *range(209, 206, -1), 2, *range(159, 99, -1), 1, 0]
    # a cursor handed out before the upgrade (an id of the old stream) still pages on from there
    older = api.get(f"{AUDIT}?cursor={old_acme[1]}", headers=bearer(mint("viewer", "acme"))).get_json()
    assert [e["after"] for e in older["items"]] == [0]
    assert api.get(f"{AUDIT}?cursor=abc", headers=bearer(mint("viewer", "acme"))).status_code == 422


def test_access_exports_are_limited_per_token_and_minute(
    api: Any,
    mint: Mint,
    people: dict[str, str],
    redis_client: redis.Redis,
    api_clock: clock.FrozenClock,
) -> None:
    viewer = mint("viewer", "acme")
    bob = people["bob@example.com"]
    url = f"/api/v1/accounts/acme/people/{bob}/export"
    api_clock.advance(timedelta(seconds=-api_clock().second + 15))  # 45 s left of this minute
    for _ in range(EXPORTS_PER_MINUTE):
        assert api.get(url, headers=bearer(viewer)).status_code == 200
    refused = api.get(url, headers=bearer(viewer))
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "45"
    body = refused.get_json()
    assert body["error"] == "too_many_requests" and str(EXPORTS_PER_MINUTE) in body["message"]
    assert "document" not in body
    # another token is not held back; the refused export left no audit entry
    assert api.get(url, headers=bearer(mint("viewer", "acme"))).status_code == 200
    exports = [e for e in page_all(api, mint("admin", "*"), 100) if e["action"] == "person.export"]
    assert len(exports) == EXPORTS_PER_MINUTE + 1
    api_clock.advance(timedelta(seconds=45))  # the next minute
    assert api.get(url, headers=bearer(viewer)).status_code == 200
