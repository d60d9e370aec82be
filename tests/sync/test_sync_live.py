"""The sync's live entries against the sandbox's fake ESPs over real HTTP: while the account is
watched each batch sent to a destination writes one ``esp`` entry, per person applied, failed
(retried, with the reason) or dead-lettered (with the reason); nothing while nobody watches."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis

from connector import sync
from connector.ops import live
from tests.sync import test_sync_sandbox as sandbox
from tests.sync.test_sync_sandbox import NOW, account, flush_all, setup_lists

fakes = sandbox.fakes  # the fake ESPs over real HTTP (fixture)

EMAILS = [f"shopper{i}@example.com" for i in range(2)]


def submit_all(conn: redis.Redis, acct: Any) -> None:
    for i, email in enumerate(EMAILS):
        sync.submit(conn, acct, f"p{i}", 1, ["cart_abandoner"], {"cart_value": 40 + i}, email, "unknown", NOW)


def esp_entries(conn: redis.Redis) -> dict[str, dict[str, Any]]:
    return {e["destination"]: e for _, e in live.latest(conn, "acme", 100) if e.get("kind") == "esp"}


def test_nothing_is_written_while_nobody_watches(
    redis_client: redis.Redis, tmp_path: Path, fakes: dict[str, Any]
) -> None:
    acct = account(tmp_path, fakes["urls"], setup_lists(fakes["urls"]))
    submit_all(redis_client, acct)
    counts = flush_all(redis_client, acct, NOW + timedelta(seconds=1))
    assert all(c == {"applied": 2} for c in counts.values()), counts
    assert redis_client.exists(live.key("acme")) == 0


def test_while_watched_each_destination_shows_what_each_request_came_to(
    redis_client: redis.Redis, tmp_path: Path, fakes: dict[str, Any]
) -> None:
    acct = account(tmp_path, fakes["urls"], setup_lists(fakes["urls"]))
    apps = fakes["apps"]
    apps["mailchimp"].faults.outage(status=503)  # retried later
    apps["hubspot"].faults.add(
        400, code="invalid_request", message=f"{EMAILS[0]} is refused by the test", method="POST"
    )
    submit_all(redis_client, acct)
    live.watch(redis_client, "acme")
    flush_all(redis_client, acct, NOW + timedelta(seconds=1))
    found = esp_entries(redis_client)
    assert set(found) == {"mailchimp", "hubspot", "klaviyo"}
    assert {r["profile"]: r["status"] for r in found["klaviyo"]["results"]} == {
        "p0": "applied",
        "p1": "applied",
    }
    assert found["klaviyo"]["counts"] == {"applied": 2}
    failed = found["mailchimp"]["results"]
    assert {r["status"] for r in failed} == {"failed"}
    assert all(r["reason"].startswith("TransientError") and r["retry_at"] for r in failed)
    refused = found["hubspot"]["results"]
    assert {r["status"] for r in refused} == {"dead_lettered"}
    assert all("s***@example.com is refused by the test" in r["reason"] for r in refused)
    raw = json.dumps(list(found.values()))
    assert "shopper0@" not in raw and "shopper1@" not in raw  # the ESP's message is masked too
