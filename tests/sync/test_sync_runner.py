"""The ``connector sync`` process: a thread per destination, so that one destination waiting on its
ESP never holds another; flush jobs on the RQ ``sync`` queue are its wake-ups; its destination locks
are renewed while held and expire soon after a process dies."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from click.testing import CliRunner
from rq import Queue

from adapters.change import Change, OwnedState, Result
from connector import clock, sync
from connector.cli import run_cmd
from connector.config import Account, load_account_file
from connector.destinations import Destination
from connector.ingest.queue import EventQueue, stream_key
from connector.sync import jobs as sync_jobs
from connector.sync.runner import SyncRunner
from connector.worker import jobs as worker_jobs
from tests.profile_helpers import ev
from tests.sync.test_sync_worker import NOW, RecordingEsp, submit

WAIT = 30.0  # the longest a test waits for a thread to get somewhere (a bound, not a timing)


def until(check: Callable[[], bool]) -> bool:
    """Whether ``check()`` came true within WAIT (work done by another thread)."""
    pause = threading.Event()
    for _ in range(int(WAIT * 100)):
        if check():
            return True
        pause.wait(0.01)
    return check()


def two_destinations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Account:
    directory = tmp_path / "accounts"
    directory.mkdir()
    monkeypatch.setenv("CONNECTOR_CONFIG_DIR", str(directory))
    monkeypatch.setenv("FAKE_KEY", "0123456789abcdef0123456789abcdef-us6")
    monkeypatch.setenv("FAKE_TOKEN", "pat-na1-0000")
    cfg = {
        "account": "acme",
        "destinations": {
            "mailchimp": {
                "api_key_env": "FAKE_KEY",
                "list_id": "aud1",
                "segments": {"vip": {"tags": ["vip"]}},
            },
            "hubspot": {"api_key_env": "FAKE_TOKEN", "segments": {"vip": {"tags": ["vip"]}}},
        },
    }
    path = directory / "acme.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_account_file(path, env={"FAKE_KEY": "x", "FAKE_TOKEN": "y"})


class Stalled(RecordingEsp):
    """An ESP whose answer does not come until the test lets it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def apply(self, changes: Sequence[Change], owned: Mapping[str, OwnedState]) -> list[Result]:
        self.entered.set()
        assert self.release.wait(WAIT)
        return super().apply(changes, owned)


class Noting(RecordingEsp):
    def __init__(self) -> None:
        super().__init__()
        self.done = threading.Event()

    def apply(self, changes: Sequence[Change], owned: Mapping[str, OwnedState]) -> list[Result]:
        out = super().apply(changes, owned)
        self.done.set()
        return out


def test_a_destination_waiting_on_its_esp_does_not_hold_another(
    redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acct = two_destinations(tmp_path, monkeypatch)
    slow, quick = Stalled(), Noting()
    esps = {"mailchimp": slow, "hubspot": quick}

    def factory(dest: Destination) -> Any:
        return esps[dest.name]

    with clock.frozen(NOW) as frozen:
        submit(redis_client, acct, "p1", 1, ["vip"])
        frozen.advance(timedelta(seconds=1))  # both destinations' changes are ready
        runner = SyncRunner(redis_client, factory=factory)
        loop = threading.Thread(target=runner.run, daemon=True)
        loop.start()
        try:
            assert slow.entered.wait(WAIT)  # Mailchimp's batch is waiting on its answer ...
            assert quick.done.wait(WAIT)  # ... and HubSpot's went meanwhile
            assert until(lambda: sync.applied_version(redis_client, "acme", "hubspot", "p1") == 1)
            assert sync.applied_version(redis_client, "acme", "mailchimp", "p1") is None
        finally:
            slow.release.set()
            runner.stop.set()
            loop.join(WAIT)
    assert not loop.is_alive()
    assert sync.applied_version(redis_client, "acme", "mailchimp", "p1") == 1
    for name in ("mailchimp", "hubspot"):  # nothing held once the process stopped
        assert not redis_client.exists(sync.key("acme", name, "lock"))
        assert sync.pending(redis_client, "acme", name) == {}


def test_flush_jobs_on_the_sync_queue_are_its_wake_ups(
    redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acct = two_destinations(tmp_path, monkeypatch)
    with clock.frozen(NOW):
        submit(redis_client, acct, "p1", 1, ["vip"])  # arms both: one flush job each
        queue = Queue(sync.SYNC_QUEUE, connection=redis_client)
        job_ids = queue.job_ids
        assert len(job_ids) == 2
        runner = SyncRunner(redis_client)
        woken = runner.wakeups()  # not due yet (batch delay): woken by the jobs alone
    assert sorted(woken) == sorted(sync.member("acme", d) for d in ("mailchimp", "hubspot"))
    assert queue.count == 0
    assert not any(redis_client.exists(f"rq:job:{job_id}") for job_id in job_ids)


def test_paused_destinations_are_not_woken(
    redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acct = two_destinations(tmp_path, monkeypatch)
    with clock.frozen(NOW) as frozen:
        submit(redis_client, acct, "p1", 1, ["vip"])
        sync.pause(redis_client, "acme", "mailchimp", "401 bad key", 401, NOW)
        frozen.advance(timedelta(seconds=1))
        assert SyncRunner(redis_client).wakeups() == [sync.member("acme", "hubspot")]
        sync.resume(redis_client, "acme", "mailchimp", frozen())
        assert sync.member("acme", "mailchimp") in SyncRunner(redis_client).wakeups()


def test_a_held_lock_is_renewed_and_a_dead_holders_lock_expires_within_seconds(
    redis_client: redis.Redis,
) -> None:
    lock = sync_jobs.DestinationLock(redis_client, "acme", "mailchimp")
    assert lock.acquire()
    try:
        key = sync.key("acme", "mailchimp", "lock")
        # what a process killed with -9 leaves: no longer than this, since nobody renews it
        assert 0 < redis_client.pttl(key) <= sync_jobs.HELD_LOCK_TTL_MS
        assert not sync_jobs.DestinationLock(redis_client, "acme", "mailchimp").acquire()
        # as if its time were nearly up (a tenth left, so that a loaded machine cannot let it lapse
        # before the renewal is sent): the holder renews it
        redis_client.pexpire(key, sync_jobs.HELD_LOCK_TTL_MS // 10)
        assert lock.renew()
        assert redis_client.pttl(key) > sync_jobs.HELD_LOCK_TTL_MS // 2
        redis_client.set(key, "another holder")  # expired and taken over meanwhile
        assert not lock.renew()
        assert redis_client.get(key) == b"another holder"
    finally:
        lock.release()
    assert redis_client.get(key) == b"another holder"  # a release never frees someone else's lock


def test_a_destination_another_process_flushes_is_left_to_it(
    redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acct = two_destinations(tmp_path, monkeypatch)
    esp = RecordingEsp()
    with clock.frozen(NOW) as frozen:
        submit(redis_client, acct, "p1", 1, ["vip"])
        frozen.advance(timedelta(seconds=1))
        redis_client.set(sync.key("acme", "mailchimp", "lock"), "other process")
        runner = SyncRunner(redis_client, factory=lambda d: esp)
        runner.run(max_rounds=1)
    assert [c[0].destination for c in esp.calls] == ["hubspot"]
    assert "p1" in sync.pending(redis_client, "acme", "mailchimp")


# -- the worker without the sync queue ----------------------------------------------------------


def test_the_worker_leaves_the_flushes_to_the_sync_process_by_default() -> None:
    assert "sync" not in run_cmd.DEFAULT_WORKER_QUEUES
    assert "sync" in run_cmd.WORKER_QUEUES  # still accepted: --queues reevaluate,sync,events,...
    command = run_cmd.worker.params[[p.name for p in run_cmd.worker.params].index("queues")]
    assert command.default == ",".join(run_cmd.DEFAULT_WORKER_QUEUES)


def test_a_drain_gives_its_turn_up_only_to_work_its_worker_takes(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = [ev(f"e{n}", at=NOW, user_id=f"u{n}") for n in range(3)]
    EventQueue(redis_client, shards=1).ingest("acme", events, 3600)
    Queue(sync.SYNC_QUEUE, connection=redis_client).enqueue("connector.sync.jobs.flush_job", "acme", "esp")
    monkeypatch.setattr(worker_jobs, "TURN_SECONDS", 0.0)
    applied: list[int] = []
    try:
        worker_jobs.serve_queues(run_cmd.DEFAULT_WORKER_QUEUES)
        # the flush job is the sync process's: the drain keeps the worker and takes the whole shard
        drained = worker_jobs.drain_events(
            0, batch_size=1, processor=lambda events, now: applied.append(len(events)), conn=redis_client
        )
    finally:
        worker_jobs.serve_queues(None)
    assert drained == 3 and applied == [1, 1, 1]
    assert redis_client.xlen(stream_key(0)) == 0


def test_connector_sync_refuses_a_thread_count_below_one() -> None:
    result = CliRunner().invoke(run_cmd.sync, ["--threads", "0"])
    assert result.exit_code == 2 and "--threads" in result.output
