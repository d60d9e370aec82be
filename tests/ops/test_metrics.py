"""/metrics reports the due index, its lateness, paused destinations and dead letters, in the
Prometheus text format written by prometheus_client (HELP and TYPE lines, escaped label values)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import redis
from prometheus_client.parser import text_string_to_metric_families

from connector import clock, sync
from connector.profiles.bounds import count_dropped
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
    assert 'connector_due_lateness_seconds{quantile="0.99"} 0.9\n' in text
    assert "connector_due_lateness_seconds_count 3" in text
    assert 'connector_destination_paused{account="acme",destination="mailchimp"} 1' in text
    assert 'connector_dead_letters{kind="sync:mailchimp"} 1' in text


def test_metrics_show_each_destination_s_waiting_and_failing_changes_and_the_next_send(
    client, redis_client: redis.Redis
) -> None:  # type: ignore[no-untyped-def]
    # an outage, a rate limit's Retry-After or a daily quota shows as changes waiting and a wait ahead
    redis_client.hset("sync:acme:mailchimp:pending", mapping={"p1": "{}", "p2": "{}", "p3": "{}"})
    redis_client.hset("sync:acme:mailchimp:failing", mapping={"p2": "{}"})
    redis_client.zadd("sync:due", {"acme\x1fmailchimp": (NOW + timedelta(hours=8)).timestamp()})
    redis_client.hset("sync:acme:klaviyo:pending", mapping={"p1": "{}"})
    redis_client.zadd("sync:due", {"acme\x1fklaviyo": (NOW - timedelta(seconds=5)).timestamp()})
    with clock.frozen(NOW):
        text = client.get("/metrics").get_data(as_text=True)
    assert 'connector_sync_pending{account="acme",destination="mailchimp"} 3.0' in text
    assert 'connector_sync_failing{account="acme",destination="mailchimp"} 1.0' in text
    assert 'connector_sync_next_send_seconds{account="acme",destination="mailchimp"} 28800.0' in text
    assert 'connector_sync_pending{account="acme",destination="klaviyo"} 1.0' in text
    assert 'connector_sync_next_send_seconds{account="acme",destination="klaviyo"} 0.0' in text


def test_every_metric_has_help_and_type_lines_and_the_text_parses(client, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    redis_client.hincrby("metrics:ingest", "accepted:acme", 2)
    redis_client.hincrby("metrics:worker", "applied:acme", 2)
    redis_client.hincrby("metrics:sync", "applied:acme", 1)
    redis_client.hincrby("metrics:rejected", "segment:401", 3)
    count_dropped(redis_client, "deadletters", 5)
    due.observe_lateness(redis_client, [0.5])
    res = client.get("/metrics")
    assert res.status_code == 200
    assert res.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = res.get_data(as_text=True)
    names = {
        "connector_ingest_events_total": "counter",
        "connector_worker_events_total": "counter",
        "connector_sync_requests_total": "counter",
        "connector_evaluations_total": "counter",
        "connector_ingest_rejected_total": "counter",
        "connector_dropped_total": "counter",
        "connector_event_queue_depth": "gauge",
        "connector_due_pending": "gauge",
        "connector_due_lateness_seconds": "summary",
        "connector_destination_paused": "gauge",
        "connector_dead_letters": "gauge",
        "connector_sync_pending": "gauge",
        "connector_sync_failing": "gauge",
        "connector_sync_next_send_seconds": "gauge",
    }
    for name, kind in names.items():
        assert f"# TYPE {name} {kind}\n" in text
        help_line = next(line for line in text.splitlines() if line.startswith(f"# HELP {name} "))
        assert len(help_line) > len(f"# HELP {name} ") + 10
    assert 'connector_ingest_events_total{account="acme",outcome="accepted"} 2.0' in text
    assert 'connector_ingest_rejected_total{sender="segment",status="401"} 3.0' in text
    assert 'connector_dropped_total{family="deadletters"} 5.0' in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    accepted = [s for s in families["connector_ingest_events"].samples if s.name.endswith("_total")]
    assert [(s.labels, s.value) for s in accepted] == [({"outcome": "accepted", "account": "acme"}, 2.0)]


def test_label_values_are_escaped(client, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    # a dead-letter kind and a counter field holding a quote, a backslash and a newline
    odd = 'we"ird\\kind\nx'
    DeadLetters(redis_client).put(odd, "reason", {"profile": "p1"}, NOW)
    redis_client.hincrby("metrics:sync", f"failed:{odd}", 4)
    text = client.get("/metrics").get_data(as_text=True)
    escaped = 'we\\"ird\\\\kind\\nx'
    assert f'connector_dead_letters{{kind="{escaped}"}} 1.0\n' in text
    assert f'connector_sync_requests_total{{account="{escaped}",outcome="failed"}} 4.0\n' in text
    assert odd not in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert [s.labels["kind"] for s in families["connector_dead_letters"].samples] == [odd]


def test_a_scraper_asking_for_openmetrics_gets_it(client, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    redis_client.hincrby("metrics:ingest", "accepted:acme", 1)
    res = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert res.headers["Content-Type"].startswith("application/openmetrics-text")
    text = res.get_data(as_text=True)
    assert text.endswith("# EOF\n")
    assert 'connector_ingest_events_total{account="acme",outcome="accepted"} 1.0' in text


def test_drops_counted_on_a_separate_profile_redis_are_shown(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """The profile store counts identity conflicts on its own server: with the queues on another
    database (another server in production), /metrics still adds them in."""
    from connector.ingest.queue import EventQueue
    from connector.ops.metrics import render

    profile = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/8")
    profile.flushdb()
    try:
        count_dropped(redis_client, "deadletters", 2)
        count_dropped(profile, "conflicts", 3)
        count_dropped(profile, "deadletters", 1)
        text = render(EventQueue(redis_client, 1), profile)
        found = {
            s.labels["family"]: s.value
            for f in text_string_to_metric_families(text)
            if f.name == "connector_dropped"
            for s in f.samples
        }
        assert found == {"conflicts": 3.0, "deadletters": 3.0}
    finally:
        profile.flushdb()
        profile.close()


def test_with_a_scrape_token_the_metrics_answer_only_a_scraper_that_sends_it(
    redis_client: redis.Redis,
    config_dir,
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    import pytest

    from connector import runtime
    from connector.app import create_app
    from connector.errors import ConfigError
    from connector.settings import Settings
    from tests.conftest import fresh_runtime

    token = "scrape-" + "9f2c41d07be3a865"
    monkeypatch.setenv("CONNECTOR_METRICS_TOKEN", token)
    fresh_runtime()
    client = create_app(runtime=runtime.current()).test_client()
    redis_client.hincrby("metrics:ingest", "accepted:acme", 2)
    for headers in ({}, {"Authorization": "Bearer " + token[:-1]}, {"Authorization": "Basic " + token}):
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert refused.get_json()["error"] == "unauthorized" and token not in refused.get_data(as_text=True)
        assert "acme" not in refused.get_data(as_text=True)
    scraped = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert scraped.status_code == 200 and 'account="acme"' in scraped.get_data(as_text=True)
    assert token not in repr(runtime.current().settings)

    # /readyz stays open, and says which files and accounts only to the token's holder
    redis_client.hset("config:errors", "/srv/cfg/initech.yaml", json.dumps(
        {"file": "initech.yaml", "reason": "rules.segments: bad", "at": "2024-02-01T00:00:00Z",
         "seen": clock.isoformat(clock.now())}))  # fmt: skip
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["status"] == "degraded"
    assert ready.get_json()["config_error_count"] == 1 and "initech" not in ready.get_data(as_text=True)
    detailed = client.get("/readyz", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert [e["file"] for e in detailed["config_errors"]] == ["initech.yaml"]

    monkeypatch.setenv("CONNECTOR_METRICS_TOKEN", "short")
    with pytest.raises(ConfigError, match="CONNECTOR_METRICS_TOKEN must be at least 16") as err:
        Settings.from_env()
    assert "short" not in str(err.value)


def test_readyz_is_degraded_while_a_destination_is_paused(
    redis_client: redis.Redis,
    config_dir,
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    """A destination whose credential variable went missing (or whose key the ESP refuses) is paused
    and its changes wait: readiness says so, and which one to the scrape token's holder."""
    from connector import runtime
    from connector.app import create_app
    from connector.sync.control import pause, resume
    from tests.conftest import fresh_runtime

    token = "scrape-" + "4be1c07d93a2f586"
    monkeypatch.setenv("CONNECTOR_METRICS_TOKEN", token)
    fresh_runtime()
    client = create_app(runtime=runtime.current()).test_client()
    assert client.get("/readyz").get_json() == {"status": "ready"}
    at = datetime(2024, 2, 1, tzinfo=UTC)
    reason = "environment variable ACME_KLAVIYO_KEY is not set"
    pause(redis_client, "acme", "klaviyo", reason, None, at)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["status"] == "degraded"
    assert ready.get_json()["destinations_paused_count"] == 1 and "klaviyo" not in ready.get_data(
        as_text=True
    )
    detailed = client.get("/readyz", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert detailed["destinations_paused"] == [
        {"account": "acme", "destination": "klaviyo", "reason": reason, "since": "2024-02-01T00:00:00Z"}
    ]
    resume(redis_client, "acme", "klaviyo", at)
    assert client.get("/readyz").get_json() == {"status": "ready"}
