"""/metrics reports the due index, its lateness, paused destinations and dead letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import redis

from connector.sync import engine as sync
from connector.sync.deadletters import DeadLetters
from connector.worker import due

NOW = datetime(2024, 2, 1, tzinfo=UTC)


def test_metrics_show_due_index_lateness_pauses_and_dead_letters(client, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    due.schedule(redis_client, "acme", "p1", NOW + timedelta(hours=1))
    due.schedule(redis_client, "acme", "p2", NOW + timedelta(hours=2))
    due.observe_lateness(redis_client, [0.010, 0.020, 0.900])
    sync.pause(redis_client, "acme", "mailchimp", "401 API Key Invalid", 401, NOW)
    DeadLetters(redis_client).put("sync:mailchimp", "400 Member In Compliance State", {"profile": "p1"}, NOW)
    text = client.get("/metrics").get_data(as_text=True)
    assert "connector_due_pending 2" in text
    assert 'connector_due_lateness_seconds{quantile="0.99"} 0.900000' in text
    assert "connector_due_lateness_seconds_count 3" in text
    assert 'connector_destination_paused{account="acme",destination="mailchimp"} 1' in text
    assert 'connector_dead_letters{kind="sync:mailchimp"} 1' in text
