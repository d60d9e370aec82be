"""An account file that becomes invalid while the worker runs: the last valid version keeps
serving, and the file and reason are reported (Redis ``config:errors``, ``/readyz``)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
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
    assert runtime.config_errors(redis_client, NOW) == []

    acme_file = config_dir / "acme.yaml"
    acme_file.write_text("account: acme\nsenders: [unclosed\n")
    drain(redis_client, 3, 3)
    assert applied(redis_client) == 6  # still applied for acme, not rejected as an unknown account
    [problem] = runtime.config_errors(redis_client, NOW)
    assert problem.file == "acme.yaml"  # its name in the config directory, never the server's path
    assert "not valid YAML" in problem.reason

    acme_file.write_text(yaml.safe_dump({**ACME, "dedupe_ttl_hours": 96}))
    drain(redis_client, 6, 2)
    assert applied(redis_client) == 8
    assert runtime.config_errors(redis_client, NOW) == []
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
    assert problem["file"] == "globex.yaml"
    assert problem["reason"].startswith("senders")  # the path inside the file, then the reason


def test_a_file_that_is_not_utf8_is_reported_and_never_stops_the_worker_or_the_web(
    client, redis_client: redis.Redis, config_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    drain(redis_client, 0, 2)
    stray = config_dir / "zz.yaml"
    stray.write_bytes(b"account: zz\n\xff\xfe: 1\n")

    drain(redis_client, 2, 2)  # the batch is applied, not left failing in the stream
    assert applied(redis_client) == 4
    [problem] = runtime.config_errors(redis_client, NOW)
    assert problem.file == "zz.yaml"
    assert problem.reason == "not UTF-8: byte 0xff at offset 12; save the file as UTF-8"

    answer = client.get("/readyz")
    assert answer.status_code == 200 and answer.get_json()["status"] == "degraded"
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'connector_config_errors{file="zz.yaml"} 1.0' in metrics
    assert str(config_dir) not in metrics

    # an edit of another, valid file is still taken while the stray file stays broken
    (config_dir / "acme.yaml").write_text(yaml.safe_dump({**ACME, "dedupe_ttl_hours": 96}))
    drain(redis_client, 4, 1)
    acme = runtime.current().account("acme")
    assert acme is not None and acme.dedupe_ttl_seconds == 96 * 3600

    stray.unlink()
    drain(redis_client, 5, 1)
    assert runtime.config_errors(redis_client, NOW) == []
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
    [problem] = runtime.config_errors(redis_client, NOW)
    assert problem.file == "globex.yaml"
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
    [problem] = runtime.config_errors(redis_client, NOW)
    assert problem.file == "caf\\xe9.yaml"
    assert "not valid YAML" in problem.reason
    body = client.get("/readyz").get_json()
    assert body["status"] == "degraded" and body["config_errors"][0]["file"] == problem.file
    assert 'connector_config_errors{file="caf\\\\xe9.yaml"} 1.0' in client.get("/metrics").get_data(
        as_text=True
    )


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
    assert [p.file for p in runtime.config_errors(redis_client, NOW)] == ["zz.yaml"]


def test_errors_name_the_file_never_the_server_path(
    client, redis_client: redis.Redis, config_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    # the account's second file: refused, and its reason names the file it clashes with
    (config_dir / "initech.yaml").write_text(yaml.safe_dump({**ACME, "dedupe_ttl_hours": 96}))
    runtime.current().accounts  # noqa: B018  (looks at the directory, publishes the errors)
    ready = client.get("/readyz").get_data(as_text=True)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert str(config_dir) not in ready and str(config_dir) not in metrics
    [problem] = client.get("/readyz").get_json()["config_errors"]
    assert problem["file"] == "initech.yaml"
    assert problem["reason"] == "account: account 'acme' is also defined in acme.yaml"
    assert 'connector_config_errors{file="initech.yaml"} 1.0' in metrics


def test_two_config_directories_sharing_a_redis_keep_each_other_s_errors(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    from connector.runtime import FileError, publish_errors

    first, second = tmp_path / "one" / "accounts", tmp_path / "two" / "accounts"

    def broken(directory: Path, name: str) -> FileError:
        return FileError(file=str(directory / name), reason="not valid YAML", path="line 2")

    assert publish_errors(redis_client, first, [broken(first, "initech.yaml")], NOW)
    assert publish_errors(
        redis_client, second, [broken(second, "initech.yaml"), broken(second, "b.yaml")], NOW
    )
    problems = runtime.config_errors(redis_client, NOW)
    assert [p.file for p in problems] == ["b.yaml", "initech.yaml", "initech.yaml"]
    assert all(str(tmp_path) not in str(p.as_dict()) for p in problems)

    # the first directory's file loads again: only its entry goes, the second directory's stay
    assert publish_errors(redis_client, first, [], NOW)
    assert [p.file for p in runtime.config_errors(redis_client, NOW)] == ["b.yaml", "initech.yaml"]
    assert publish_errors(redis_client, second, [broken(second, "b.yaml")], NOW)
    assert [p.file for p in runtime.config_errors(redis_client, NOW)] == ["b.yaml"]
    assert publish_errors(redis_client, second, [], NOW)
    assert runtime.config_errors(redis_client, NOW) == []


def test_the_metric_counts_files_of_one_name_in_two_directories_once_per_name(
    client, redis_client: redis.Redis, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from connector.runtime import FileError, publish_errors

    for directory in (tmp_path / "one", tmp_path / "two"):
        error = FileError(file=str(directory / "initech.yaml"), reason="not valid YAML")
        assert publish_errors(redis_client, directory, [error], clock.now())  # the scrape's instant
    metrics = client.get("/metrics").get_data(as_text=True)
    # one series per name (a scrape with the same series twice is refused): the number of files
    assert metrics.count("connector_config_errors{") == 1
    assert 'connector_config_errors{file="initech.yaml"} 2.0' in metrics


def test_an_entry_recorded_with_the_server_path_is_shown_by_its_name(redis_client: redis.Redis) -> None:
    # written by an earlier version of the connector (a rolling upgrade): shown by name all the same
    entry = {"file": "/srv/connector/accounts/initech.yaml", "reason": "not valid YAML", "at": "x"}
    redis_client.hset(
        runtime.CONFIG_ERRORS_KEY, entry["file"], json.dumps({**entry, "seen": "2024-01-01T00:59Z"})
    )
    [problem] = runtime.config_errors(redis_client, NOW)
    assert problem.file == "initech.yaml"
    # one never recorded again since (no `seen`): no process of this version serves its directory
    redis_client.hset(runtime.CONFIG_ERRORS_KEY, entry["file"], json.dumps(entry))
    assert runtime.config_errors(redis_client, NOW) == []
    assert not redis_client.exists(runtime.CONFIG_ERRORS_KEY)


def test_errors_of_a_config_directory_no_process_serves_are_dropped_and_served_ones_kept(
    client, redis_client: redis.Redis, config_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    old_deploy = Path("/srv/release-41/accounts")
    left = runtime.FileError(file=str(old_deploy / "initech.yaml"), reason="not valid YAML", path=None)
    with clock.frozen(NOW) as now:
        assert runtime.publish_errors(redis_client, old_deploy, [left], now())
        (config_dir / "globex.yaml").write_text(
            yaml.safe_dump({"account": "globex", "senders": {"nope": {}}})
        )
        first = client.get("/readyz").get_json()
        assert first["status"] == "degraded"
        assert sorted(p["file"] for p in first["config_errors"]) == ["globex.yaml", "initech.yaml"]
        since = next(p["at"] for p in first["config_errors"] if p["file"] == "globex.yaml")

        now.advance(runtime.CONFIG_ERRORS_STALE - timedelta(seconds=1))
        assert [p.file for p in runtime.config_errors(redis_client)] == ["globex.yaml", "initech.yaml"]

        # nobody serves the old deploy's directory any more: its entry ends; this process's file,
        # recorded afresh whenever asked, stays, with the instant its problem began
        now.advance(timedelta(seconds=2))
        later = client.get("/readyz").get_json()
        assert [p["file"] for p in later["config_errors"]] == ["globex.yaml"]
        assert later["config_errors"][0]["at"] == since
        assert redis_client.hkeys(runtime.CONFIG_ERRORS_KEY) == [str(config_dir / "globex.yaml").encode()]


def test_a_stale_entry_recorded_again_while_it_was_read_is_not_removed(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = Path("/srv/accounts")
    error = runtime.FileError(file=str(where / "initech.yaml"), reason="not valid YAML", path=None)
    assert runtime.publish_errors(redis_client, where, [error], NOW)
    snapshot = redis_client.hgetall(runtime.CONFIG_ERRORS_KEY)  # what a reader got, stale by then
    later = NOW + runtime.CONFIG_ERRORS_STALE + timedelta(minutes=1)
    assert runtime.publish_errors(redis_client, where, [error], later)  # recorded again meanwhile
    monkeypatch.setattr(redis_client, "hgetall", lambda key: snapshot)
    assert runtime.config_errors(redis_client, later) == []  # the snapshot's entry is stale
    monkeypatch.undo()
    [kept] = runtime.config_errors(redis_client, later)  # the entry recorded meanwhile stays
    assert kept.file == "initech.yaml"
