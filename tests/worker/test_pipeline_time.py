"""The whole inside of the connector, in-process: signed webhooks → stored events → profiles →
rules → ledger → due index → the scheduler re-evaluates at the exact instant time changes a result."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from rq import Queue, SimpleWorker

from connector import clock
from connector.ingest.receivers.segment import sign
from connector.profiles import lookup
from connector.worker import due, scheduler
from connector.worker.jobs import REEVALUATE_QUEUE, drain_events
from connector.worker.ledger import Ledger
from tests.conftest import ACME, GLOBEX, write_accounts

T0 = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)
SECRET = b"segment_shared_secret_123"


@pytest.fixture
def rules_config(config_dir: Path) -> Path:
    acme = {**ACME, "rules": {"include": ["cart_abandonment"]}}
    return write_accounts(config_dir, acme, GLOBEX)


def send(client, message: dict) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(message).encode()
    res = client.post(
        "/webhooks/acme/segment",
        data=body,
        headers={"Content-Type": "application/json", "X-Signature": sign(SECRET, body)},
    )
    assert res.status_code == 200, res.json


def drain(conn: redis.Redis) -> None:
    for shard in range(4):
        drain_events(shard, conn=conn)


def run_reevaluations(conn: redis.Redis) -> None:
    SimpleWorker([Queue(REEVALUATE_QUEUE, connection=conn)], connection=conn).work(burst=True)


def track(event: str, at: datetime, mid: str) -> dict:
    return {
        "type": "track",
        "event": event,
        "userId": "shopper-1",
        "messageId": mid,
        "timestamp": at.isoformat(),
        "context": {"traits": {"email": "shopper@example.com"}},
    }


def test_cart_abandoner_enters_at_the_exact_instant_and_exits_on_order(
    rules_config: Path,
    client,
    redis_client: redis.Redis,  # type: ignore[no-untyped-def]
) -> None:
    ledger = Ledger(redis_client)
    with clock.frozen(T0) as frozen:
        send(client, track("Product Added", T0, "m-cart"))
        drain(redis_client)
        pid = lookup(redis_client, "acme", "email", "shopper@example.com")
        assert pid is not None
        state = ledger.state("acme", pid)
        assert state is None or "cart_abandoner" not in state.segments
        assert due.due_at(redis_client, "acme", pid) == T0 + timedelta(hours=48)

        frozen.advance(timedelta(hours=48) - timedelta(milliseconds=1))
        assert scheduler.fire_due(redis_client, clock.now()) == 0

        frozen.advance(timedelta(milliseconds=1))
        assert scheduler.fire_due(redis_client, clock.now()) == 1
        run_reevaluations(redis_client)
        state = ledger.state("acme", pid)
        assert state is not None and "cart_abandoner" in state.segments
        entered = ledger.history("acme", pid)[-1]
        assert entered["entered"] == ["cart_abandoner"]

        frozen.advance(timedelta(hours=1))
        send(client, track("Order Completed", clock.now(), "m-order"))
        drain(redis_client)
        state = ledger.state("acme", pid)
        assert state is not None and "cart_abandoner" not in state.segments
        assert ledger.history("acme", pid)[-1]["exited"] == ["cart_abandoner"]


def test_late_cart_event_already_past_its_window_enters_at_once(
    rules_config: Path,
    client,
    redis_client: redis.Redis,  # type: ignore[no-untyped-def]
) -> None:
    with clock.frozen(T0):
        send(client, track("Product Added", T0 - timedelta(hours=50), "m-late"))
        drain(redis_client)
        pid = lookup(redis_client, "acme", "email", "shopper@example.com")
        assert pid is not None
        state = Ledger(redis_client).state("acme", pid)
        assert state is not None and "cart_abandoner" in state.segments
        # membership ends keep_for (7 days) after the cart event: that instant is scheduled
        assert due.due_at(redis_client, "acme", pid) == T0 - timedelta(hours=50) + timedelta(days=7)
