"""An account file that becomes invalid while the worker runs: the last valid version keeps
serving, and the file and reason are reported (Redis ``config:errors``, ``/readyz``)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
import yaml

from connector import clock, runtime
from connector.event import Event
from connector.ingest.queue import EventQueue, stream_key
from connector.worker import jobs
from tests.conftest import ACME

NOW = datetime(2024, 1, 1, 1, tzinfo=UTC)


def make_event(n: int) -> Event:
    at = NOW - timedelta(minutes=5)
    return Event(
        account="acme",
        source="segment",
        source_event_id=f"cfg-{n}",
        type="track",
        name="product_viewed",
        occurred_at=at,
        received_at=at,
        identities={"user_id": f"u{n}"},
        properties={"n": n},
    )


def drain(conn: redis.Redis, first: int, count: int) -> None:
    queue = EventQueue(conn, shards=1)
    with clock.frozen(NOW):
        queue.ingest("acme", [make_event(n) for n in range(first, first + count)], 3600)
        jobs.drain_events(0, conn=conn)
    assert conn.xlen(stream_key(0)) == 0


def applied(conn: redis.Redis) -> int:
    return int(conn.hget("metrics:worker", "applied:acme") or 0)


def test_an_account_file_broken_while_running_keeps_its_last_valid_version_serving(
    redis_client: redis.Redis, config_dir: Path
) -> None:
    drain(redis_client, 0, 3)
    assert applied(redis_client) == 3
    assert runtime.config_errors(redis_client) == []

    acme_file = config_dir / "acme.yaml"
    acme_file.write_text("account: acme\nsenders: [unclosed\n")
    drain(redis_client, 3, 3)
    assert applied(redis_client) == 6  # still applied for acme, not rejected as an unknown account
    [problem] = runtime.config_errors(redis_client)
    assert problem.file == str(acme_file)
    assert "not valid YAML" in problem.reason

    acme_file.write_text(yaml.safe_dump({**ACME, "dedupe_ttl_hours": 96}))
    drain(redis_client, 6, 2)
    assert applied(redis_client) == 8
    assert runtime.config_errors(redis_client) == []
    acme = runtime.current().account("acme")
    assert acme is not None and acme.dedupe_ttl_seconds == 96 * 3600  # the repaired file serves


def test_readyz_stays_ready_and_reports_the_invalid_file(
    client, redis_client: redis.Redis, config_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    answer = client.get("/readyz")
    assert answer.status_code == 200 and answer.get_json() == {"status": "ready"}

    assert runtime.current().account("globex") is not None
    (config_dir / "globex.yaml").write_text(yaml.safe_dump({"account": "globex", "senders": {"nope": {}}}))
    assert runtime.current().account("globex") is not None  # its last valid version

    answer = client.get("/readyz")
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["status"] == "degraded"
    [problem] = body["config_errors"]
    assert problem["file"] == str(config_dir / "globex.yaml")
    assert problem["reason"].startswith("senders")  # the path inside the file, then the reason


def test_a_file_that_is_not_utf8_is_reported_and_never_stops_the_worker_or_the_web(
    client, redis_client: redis.Redis, config_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    drain(redis_client, 0, 2)
    stray = config_dir / "zz.yaml"
    stray.write_bytes(b"account: zz\n\xff\xfe: 1\n")

    drain(redis_client, 2, 2)  # the batch is applied, not left failing in the stream
    assert applied(redis_client) == 4
    [problem] = runtime.config_errors(redis_client)
    assert problem.file == str(stray)
    assert problem.reason == "not UTF-8: byte 0xff at offset 12; save the file as UTF-8"

    answer = client.get("/readyz")
    assert answer.status_code == 200 and answer.get_json()["status"] == "degraded"
    metrics = client.get("/metrics").get_data(as_text=True)
    assert f'connector_config_errors{{file="{stray}"}} 1.0' in metrics

    # an edit of another, valid file is still taken while the stray file stays broken
    (config_dir / "acme.yaml").write_text(yaml.safe_dump({**ACME, "dedupe_ttl_hours": 96}))
    drain(redis_client, 4, 1)
    acme = runtime.current().account("acme")
    assert acme is not None and acme.dedupe_ttl_seconds == 96 * 3600

    stray.unlink()
    drain(redis_client, 5, 1)
    assert runtime.config_errors(redis_client) == []
    assert "connector_config_errors{" not in client.get("/metrics").get_data(as_text=True)


def test_a_failure_the_loader_does_not_name_is_reported_for_that_file_only(
    redis_client: redis.Redis, config_dir: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    drain(redis_client, 0, 1)
    real = runtime.load_account_file

    def load(path: Path, env=None):  # type: ignore[no-untyped-def]
        if path.name == "globex.yaml":
            raise RecursionError("maximum recursion depth exceeded")
        return real(path, env)

    monkeypatch.setattr(runtime, "load_account_file", load)
    (config_dir / "globex.yaml").write_text(yaml.safe_dump({"account": "globex", "dedupe_ttl_hours": 12}))
    drain(redis_client, 1, 2)
    assert applied(redis_client) == 3
    [problem] = runtime.config_errors(redis_client)
    assert problem.file == str(config_dir / "globex.yaml")
    assert problem.reason == "could not be loaded (RecursionError); the log has the details"
    assert runtime.current().account("globex") is not None  # its last valid version serves


def test_a_refused_file_whose_name_is_not_utf8_is_reported_by_its_bytes(
    client, redis_client: redis.Redis, config_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    drain(redis_client, 0, 1)
    stray = config_dir / os.fsdecode(b"caf\xe9.yaml")
    stray.write_text("senders: [unclosed\n")
    drain(redis_client, 1, 2)
    assert applied(redis_client) == 3
    [problem] = runtime.config_errors(redis_client)
    assert problem.file == f"{config_dir}/caf\\xe9.yaml"
    assert "not valid YAML" in problem.reason
    body = client.get("/readyz").get_json()
    assert body["status"] == "degraded" and body["config_errors"][0]["file"] == problem.file
    assert f'connector_config_errors{{file="{config_dir}/caf\\\\xe9.yaml"}} 1.0' in client.get(
        "/metrics"
    ).get_data(as_text=True)


def test_the_scheduler_keeps_ticking_past_a_file_that_is_not_utf8(
    redis_client: redis.Redis, config_dir: Path
) -> None:
    from connector.worker import scheduler

    queue = EventQueue(redis_client, shards=1)
    scheduler._overlap_check[0] = None
    assert scheduler.tick(queue, NOW) >= 0
    (config_dir / "zz.yaml").write_bytes(b"account: zz\n\xff\xfe: 1\n")
    later = NOW + timedelta(seconds=scheduler.OVERLAP_SECONDS + 1)
    assert scheduler.tick(queue, later) >= len(["acme", "globex"])  # each account's overlap job
    assert [p.file for p in runtime.config_errors(redis_client)] == [str(config_dir / "zz.yaml")]
