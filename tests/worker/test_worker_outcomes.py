"""Every event the web process accepts ends in one of the worker's outcomes: identifies, which keep
no history entry, are counted as `identified`, so that accepted = applied + identified + ... ."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import redis

from connector import clock
from connector.ingest.receivers.segment import sign
from connector.worker import jobs
from tests.conftest import ACME_ENV, FIXED_NOW


def post(client, message: dict) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(message).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Signature": sign(ACME_ENV["ACME_SEGMENT_SECRET"].encode(), body),
    }
    assert client.post("/webhooks/acme/segment", data=body, headers=headers).status_code == 200


def test_identifies_are_counted_and_the_outcomes_add_up_to_what_was_accepted(
    client,
    redis_client: redis.Redis,
    config_dir: Path,  # type: ignore[no-untyped-def]
) -> None:
    at = (FIXED_NOW - timedelta(minutes=5)).isoformat()
    with clock.frozen(FIXED_NOW):
        for n, email in enumerate(("ida@example.com", "ivo@example.com")):
            post(client, {"type": "identify", "userId": f"u{n}", "messageId": f"id-{n}", "timestamp": at,
                          "traits": {"email": email, "plan": "pro"}})  # fmt: skip
            post(client, {"type": "track", "event": "Product Viewed", "userId": f"u{n}",
                          "messageId": f"tr-{n}", "timestamp": at})  # fmt: skip
        post(
            client,
            {"type": "alias", "previousId": "anon-9", "userId": "u0", "messageId": "al-0", "timestamp": at},
        )
        for shard in range(4):
            jobs.drain_events(shard, conn=redis_client)
    ingest = {k.decode(): int(v) for k, v in redis_client.hgetall("metrics:ingest").items()}
    worker = {k.decode(): int(v) for k, v in redis_client.hgetall("metrics:worker").items()}
    assert ingest["accepted:acme"] == 5
    assert worker["applied:acme"] == 2 and worker["identified:acme"] == 3
    assert sum(v for k, v in worker.items() if k.endswith(":acme")) == ingest["accepted:acme"]
