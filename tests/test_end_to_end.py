"""End to end, in simulated time: signed webhooks in → profile → rules → due index → scheduler
→ sync worker → the three fake ESPs over real HTTP on loopback.

48 hours after an add_to_cart without an order the profile enters "cart_abandoner", and the
Mailchimp tag, the HubSpot list membership and the Klaviyo list membership appear in the fakes;
a later order makes it exit, and all three are removed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue, SimpleWorker

from connector import clock
from connector.dev.sandbox import (
    SANDBOX_HUBSPOT_TOKEN,
    SANDBOX_KLAVIYO_KEY,
    SANDBOX_MAILCHIMP_KEY,
    SANDBOX_MAILCHIMP_LIST,
    sandbox_fakes,
    serving,
)
from connector.ingest.receivers.segment import sign
from connector.worker import scheduler
from connector.worker.jobs import REEVALUATE_QUEUE, drain_events
from tests.conftest import ACME, GLOBEX, write_accounts
from tests.sync.test_sync_sandbox import setup_lists

T0 = datetime(2024, 6, 3, 10, 0, tzinfo=UTC)
SECRET = b"segment_shared_secret_123"
EMAIL = "cart.shopper@example.com"


@pytest.fixture
def fakes() -> Iterator[dict[str, Any]]:
    apps = sandbox_fakes()
    with serving(apps["mailchimp"]) as mc, serving(apps["hubspot"]) as hs, serving(apps["klaviyo"]) as kl:
        yield {"apps": apps, "urls": {"mailchimp": mc.url + "/3.0", "hubspot": hs.url, "klaviyo": kl.url}}


@pytest.fixture
def wired(config_dir: Path, fakes: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("E2E_MC_KEY", SANDBOX_MAILCHIMP_KEY)
    monkeypatch.setenv("E2E_HS_TOKEN", SANDBOX_HUBSPOT_TOKEN)
    monkeypatch.setenv("E2E_KL_KEY", SANDBOX_KLAVIYO_KEY)
    urls = fakes["urls"]
    lists = setup_lists(urls)

    def dest(kind: str, key_env: str, **extra: Any) -> dict[str, Any]:
        mapping = {"tags": ["cart abandoner"], "lists": [lists[kind]]}
        return {"api_key_env": key_env, "base_url": urls[kind], "sandbox": True, "batch_delay_ms": 0,
                "segments": {"cart_abandoner": mapping}, **extra}  # fmt: skip

    acme = {
        **ACME,
        "rules": {"include": ["cart_abandonment"]},
        "destinations": {
            "mailchimp": dest("mailchimp", "E2E_MC_KEY", list_id=SANDBOX_MAILCHIMP_LIST),
            "hubspot": dest("hubspot", "E2E_HS_TOKEN"),
            "klaviyo": dest("klaviyo", "E2E_KL_KEY"),
        },
    }
    write_accounts(config_dir, acme, GLOBEX)
    return lists


def send(client, event: str, at: datetime, mid: str) -> None:  # type: ignore[no-untyped-def]
    message = {"type": "track", "event": event, "userId": "u-cart", "messageId": mid,
               "timestamp": at.isoformat(), "context": {"traits": {"email": EMAIL}}}  # fmt: skip
    body = json.dumps(message).encode()
    headers = {"Content-Type": "application/json", "X-Signature": sign(SECRET, body)}
    assert client.post("/webhooks/acme/segment", data=body, headers=headers).status_code == 200


def run_workers(conn: redis.Redis) -> None:
    for shard in range(4):
        drain_events(shard, conn=conn)
    names = (REEVALUATE_QUEUE, "sync")
    SimpleWorker([Queue(n, connection=conn) for n in names], connection=conn).work(burst=True)


def held(apps: dict[str, Any]) -> dict[str, Any]:
    mc = apps["mailchimp"].snapshot()["lists"][SANDBOX_MAILCHIMP_LIST]["members"].get(EMAIL, {})
    hs = apps["hubspot"].snapshot()["contacts"].get(EMAIL, {})
    kl = apps["klaviyo"].snapshot()["profiles"].get(EMAIL, {})
    return {
        "mailchimp_tags": sorted(mc.get("tags", [])),
        "hubspot_lists": hs.get("lists", []),
        "klaviyo_lists": kl.get("lists", []),
    }


def test_cart_abandoner_reaches_all_three_esps_and_leaves_after_an_order(
    wired: dict[str, str],
    client,
    redis_client: redis.Redis,
    fakes: dict[str, Any],  # type: ignore[no-untyped-def]
) -> None:
    apps = fakes["apps"]
    with clock.frozen(T0) as frozen:
        send(client, "Product Added", T0, "e2e-cart")
        run_workers(redis_client)
        assert held(apps)["hubspot_lists"] == []

        frozen.advance(timedelta(hours=47, minutes=59))
        scheduler.fire_due(redis_client, clock.now())
        run_workers(redis_client)
        assert held(apps) == {"mailchimp_tags": [], "hubspot_lists": [], "klaviyo_lists": []}

        frozen.advance(timedelta(minutes=1))
        assert scheduler.fire_due(redis_client, clock.now()) == 1
        run_workers(redis_client)
        assert held(apps) == {
            "mailchimp_tags": ["Cart list", "cart abandoner"],  # a static segment is a tag in Mailchimp
            "hubspot_lists": ["Cart abandoners"],
            "klaviyo_lists": ["Cart abandoners"],
        }

        frozen.advance(timedelta(hours=3))
        send(client, "Order Completed", clock.now(), "e2e-order")
        run_workers(redis_client)
        assert held(apps) == {"mailchimp_tags": [], "hubspot_lists": [], "klaviyo_lists": []}
