"""The sync worker and the three adapters against the sandbox's strict fake ESPs over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from adapters.ratelimit import RateLimiter
from connector import sync
from connector.config import Account, load_account_file
from connector.destinations import build_adapter, destinations
from connector.dev.sandbox import (
    SANDBOX_HUBSPOT_TOKEN,
    SANDBOX_KLAVIYO_KEY,
    SANDBOX_MAILCHIMP_KEY,
    SANDBOX_MAILCHIMP_LIST,
    sandbox_fakes,
    serving,
)

NOW = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
ENV = {"MC_KEY": SANDBOX_MAILCHIMP_KEY, "HS_TOKEN": SANDBOX_HUBSPOT_TOKEN, "KL_KEY": SANDBOX_KLAVIYO_KEY}


@pytest.fixture
def fakes() -> Iterator[dict[str, Any]]:
    apps = sandbox_fakes()
    with serving(apps["mailchimp"]) as mc, serving(apps["hubspot"]) as hs, serving(apps["klaviyo"]) as kl:
        yield {"apps": apps, "urls": {"mailchimp": mc.url + "/3.0", "hubspot": hs.url, "klaviyo": kl.url}}


def setup_lists(urls: dict[str, str]) -> dict[str, str]:
    """One list per ESP, created through each vendor API as a marketer would."""
    mc = httpx.post(
        f"{urls['mailchimp']}/lists/{SANDBOX_MAILCHIMP_LIST}/segments",
        json={"name": "Cart list", "static_segment": []},
        auth=("user", SANDBOX_MAILCHIMP_KEY),
    )
    mc.raise_for_status()
    hs = httpx.post(
        f"{urls['hubspot']}/crm/v3/lists/",
        json={"name": "Cart abandoners", "objectTypeId": "0-1", "processingType": "MANUAL"},
        headers={"Authorization": f"Bearer {SANDBOX_HUBSPOT_TOKEN}"},
    )
    hs.raise_for_status()
    kl = httpx.post(
        f"{urls['klaviyo']}/api/lists",
        json={"data": {"type": "list", "attributes": {"name": "Cart abandoners"}}},
        headers={
            "Authorization": f"Klaviyo-API-Key {SANDBOX_KLAVIYO_KEY}",
            "revision": "2024-10-15",
            "Content-Type": "application/vnd.api+json",
            "Accept": "application/vnd.api+json",
        },
    )
    kl.raise_for_status()
    return {
        "mailchimp": str(mc.json()["id"]),
        "hubspot": str(hs.json()["list"]["listId"]),
        "klaviyo": str(kl.json()["data"]["id"]),
    }


def account(
    tmp_path: Path, urls: dict[str, str], lists: dict[str, str], klaviyo_tags: bool = True
) -> Account:
    def dest(kind: str, key_env: str, **extra: Any) -> dict[str, Any]:
        tags = [] if kind == "klaviyo" and not klaviyo_tags else ["cart abandoner"]
        return {
            "api_key_env": key_env,
            "base_url": urls[kind],
            "sandbox": True,
            "segments": {"cart_abandoner": {"tags": tags, "lists": [lists[kind]]}},
            "fields": {
                "cart_value": {"mailchimp": "CARTVAL", "hubspot": "cart_value", "klaviyo": "cart_value"}[kind]
            },
            **extra,
        }

    cfg = {
        "account": "acme",
        "destinations": {
            "mailchimp": dest("mailchimp", "MC_KEY", list_id=SANDBOX_MAILCHIMP_LIST),
            "hubspot": dest("hubspot", "HS_TOKEN"),
            "klaviyo": dest("klaviyo", "KL_KEY", segment_events=True),
        },
    }
    path = tmp_path / "acme.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_account_file(path, env={})


def flush_all(conn: redis.Redis, acct: Account, now: datetime) -> dict[str, dict[str, int]]:
    limiter = RateLimiter(conn, clock=time.time, sleep=time.sleep)
    out = {}
    for name, dest in destinations(acct).items():
        adapter = build_adapter(dest, limiter, clock=time.time, sleep=time.sleep, env=ENV)
        out[name] = sync.Flusher(conn, dest, adapter).flush(now)
    return out


def test_enter_and_exit_reach_all_three_fakes(
    redis_client: redis.Redis, tmp_path: Path, fakes: dict[str, Any]
) -> None:
    urls = fakes["urls"]
    lists = setup_lists(urls)
    acct = account(tmp_path, urls, lists)
    emails = [f"shopper{i}@example.com" for i in range(3)]
    for i, email in enumerate(emails):
        sync.submit(
            redis_client, acct, f"p{i}", 1, ["cart_abandoner"], {"cart_value": 40 + i}, email, "unknown", NOW
        )
    counts = flush_all(redis_client, acct, NOW + timedelta(seconds=1))
    assert all(c == {"applied": 3} for c in counts.values()), counts

    apps = fakes["apps"]
    mc = apps["mailchimp"].snapshot()["lists"][SANDBOX_MAILCHIMP_LIST]["members"]
    assert all("cart abandoner" in mc[e]["tags"] and "Cart list" in mc[e]["tags"] for e in emails)
    assert all(mc[e]["status"] == "transactional" for e in emails)  # no consent: never subscribed
    hs = apps["hubspot"].snapshot()["contacts"]
    assert all(hs[e]["properties"]["esp_tags"] == "cart abandoner" for e in emails)
    assert all(hs[e]["lists"] == ["Cart abandoners"] for e in emails)
    kl = apps["klaviyo"].snapshot()["profiles"]
    assert all(kl[e]["properties"]["esp_tags"] == ["cart abandoner"] for e in emails)
    assert all(kl[e]["lists"] == ["Cart abandoners"] for e in emails)

    for i, email in enumerate(emails):
        sync.submit(redis_client, acct, f"p{i}", 2, [], {}, email, "unknown", NOW + timedelta(seconds=2))
    counts = flush_all(redis_client, acct, NOW + timedelta(seconds=3))
    assert all(c == {"applied": 3} for c in counts.values()), counts
    mc = apps["mailchimp"].snapshot()["lists"][SANDBOX_MAILCHIMP_LIST]["members"]
    assert all(mc[e]["tags"] == [] for e in emails)
    hs = apps["hubspot"].snapshot()["contacts"]
    assert all(hs[e]["properties"]["esp_tags"] == "" and hs[e]["lists"] == [] for e in emails)
    kl = apps["klaviyo"].snapshot()["profiles"]
    assert all(kl[e]["properties"].get("esp_tags") == [] and kl[e]["lists"] == [] for e in emails)

    sync.erase(redis_client, acct, "p0", emails[0], NOW + timedelta(seconds=4))
    counts = flush_all(redis_client, acct, NOW + timedelta(seconds=4))
    assert all(c == {"applied": 1} for c in counts.values()), counts
    assert emails[0] not in apps["hubspot"].snapshot()["contacts"]


def test_a_backfill_uses_few_requests(
    redis_client: redis.Redis, tmp_path: Path, fakes: dict[str, Any]
) -> None:
    urls = fakes["urls"]
    lists = setup_lists(urls)
    acct = account(tmp_path, urls, lists, klaviyo_tags=False)
    apps = fakes["apps"]
    setup = {name: len(app.requests) for name, app in apps.items()}
    n = 150
    for i in range(n):
        sync.submit(
            redis_client, acct, f"p{i}", 1, ["cart_abandoner"], {}, f"s{i}@example.com", "unknown", NOW
        )
    counts = flush_all(redis_client, acct, NOW + timedelta(seconds=1))
    assert all(c == {"applied": n} for c in counts.values()), counts
    for i in range(n):
        sync.submit(
            redis_client, acct, f"p{i}", 2, [], {}, f"s{i}@example.com", "unknown", NOW + timedelta(seconds=2)
        )
    counts = flush_all(redis_client, acct, NOW + timedelta(seconds=3))
    assert all(c == {"applied": n} for c in counts.values()), counts

    def vendor_requests(name: str) -> list[str]:
        return [f"{r.method} {r.path}" for r in apps[name].requests[setup[name] :]]

    mc = vendor_requests("mailchimp")
    # enter: batch subscribe + static segment; exit (no member write): tag lookup + tag segment + list segment
    assert len(mc) <= 6, mc
    members = apps["mailchimp"].snapshot()["lists"][SANDBOX_MAILCHIMP_LIST]["members"]
    assert len(members) == n and all(m["tags"] == [] for m in members.values())
    hs = vendor_requests("hubspot")
    # per phase: the tags property (created, then looked up again by the new flush's adapter),
    # upsert per 100, one list call; the property is the connector's own, so its value is written
    # whole without reading it first
    assert len(hs) == (2 + 2 + 1) + (1 + 2 + 1), "\n".join(hs)
    kl = vendor_requests("klaviyo")
    assert kl.count("POST /api/events") == 2 * n  # Segment Entered + Segment Exited
    kl = [r for r in kl if r != "POST /api/events"]
    # enter: one bulk import job (polled until complete) that also adds the list;
    # exit: ids by email (100 per lookup) + 1 removal
    assert kl[1].startswith("GET /api/profile-bulk-import-jobs/")
    assert kl[:1] + kl[2:] == [
        "POST /api/profile-bulk-import-jobs",
        "GET /api/profiles",
        "GET /api/profiles",
        f"DELETE /api/lists/{lists['klaviyo']}/relationships/profiles",
    ], kl
    assert all(p["lists"] == [] for p in apps["klaviyo"].snapshot()["profiles"].values())


def test_a_person_whose_address_changes_leaves_the_earlier_contact_at_all_three_fakes(
    redis_client: redis.Redis, tmp_path: Path, fakes: dict[str, Any]
) -> None:
    """An email change (or a merge that makes another address the person's): the tags, lists and
    fields the connector set on the contact of the earlier address are taken off it, and the
    contact of the new address gets the whole state, its HubSpot list included."""
    from connector.sync.submit import Submission, submit_many

    urls = fakes["urls"]
    acct = account(tmp_path, urls, setup_lists(urls))
    old, new = "rosa.earlier@example.com", "rosa.now@example.com"
    sync.submit(redis_client, acct, "p1", 1, ["cart_abandoner"], {"cart_value": 40}, old, "unknown", NOW)
    assert all(
        c == {"applied": 1} for c in flush_all(redis_client, acct, NOW + timedelta(seconds=1)).values()
    )

    moved = Submission("p1", 2, ["cart_abandoner"], {"cart_value": 40}, new, "unknown", other_emails=(old,))
    submit_many(redis_client, acct, [moved], NOW + timedelta(seconds=2))
    counts = flush_all(redis_client, acct, NOW + timedelta(seconds=3))
    assert all(c == {"applied": 1, "left_earlier_contact": 1} for c in counts.values()), counts
    apps = fakes["apps"]
    mc = apps["mailchimp"].snapshot()["lists"][SANDBOX_MAILCHIMP_LIST]["members"]
    assert mc[old]["tags"] == [] and mc[old]["merge_fields"].get("CARTVAL") in (None, "")
    assert "cart abandoner" in mc[new]["tags"] and "Cart list" in mc[new]["tags"]
    hs = apps["hubspot"].snapshot()["contacts"]
    assert hs[old]["properties"]["esp_tags"] == "" and hs[old]["lists"] == []
    assert hs[new]["properties"]["esp_tags"] == "cart abandoner" and hs[new]["lists"] == ["Cart abandoners"]
    kl = apps["klaviyo"].snapshot()["profiles"]
    assert kl[old]["properties"].get("esp_tags") == [] and kl[old]["lists"] == []
    assert kl[new]["properties"]["esp_tags"] == ["cart abandoner"] and kl[new]["lists"] == ["Cart abandoners"]

    # leaving the segment later takes it off the new contact; the earlier one is not asked again
    left = Submission("p1", 3, [], {}, new, "unknown", other_emails=(old,))
    submit_many(redis_client, acct, [left], NOW + timedelta(seconds=4))
    counts = flush_all(redis_client, acct, NOW + timedelta(seconds=5))
    assert all(c == {"applied": 1} for c in counts.values()), counts
    hs = apps["hubspot"].snapshot()["contacts"]
    assert hs[new]["properties"]["esp_tags"] == "" and hs[new]["lists"] == []
    assert apps["mailchimp"].snapshot()["lists"][SANDBOX_MAILCHIMP_LIST]["members"][new]["tags"] == []
