"""The event worker under concurrency, crashes and bad input."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
from pathlib import Path

import pytest
import redis

from connector import clock, redis_conn, runtime
from connector.config import load_accounts
from connector.errors import ConnectorError
from connector.event import load_event
from connector.ingest.queue import EventQueue, stream_key
from connector.profiles import load_profile, lookup
from connector.sync.deadletters import DeadLetters
from connector.worker import jobs
from connector.worker.pipeline import apply_batch
from tests.profile_helpers import NOW, ev

WORKERS = 4


def _worker(  # type: ignore[no-untyped-def]
    redis_url: str, config_dir: str, batches: list[list[str]], start, results, profile_url: str | None = None
) -> None:
    redis_conn.reset()  # a forked process makes its own connections
    conn = redis.Redis.from_url(redis_url)
    profiles = redis_conn.connection(profile_url) if profile_url else conn
    accounts = load_accounts(Path(config_dir))
    start.wait()
    applied = duplicates = retried = 0
    other: dict[str, int] = {}
    for batch in batches:
        for _ in range(5):  # as the drain does: a batch that raised (contended) is delivered again
            try:
                outcome = apply_batch([load_event(e) for e in batch], NOW, accounts, profiles, conn)["acme"]
                break
            except ConnectorError:
                retried += 1
        else:
            raise AssertionError("a batch failed 5 times")
        applied += outcome.applied
        duplicates += outcome.duplicates
        for name in ("rejected", "dropped", "expired"):
            other[name] = other.get(name, 0) + getattr(outcome, name)
    results.put((applied, duplicates, retried, other))


def _events() -> list:
    events = []
    for i in range(240):
        anon = f"anon{i // 20}"
        if i % 20 == 10:
            # links this anonymous visitor to the known customer: a merge if the visitor came first
            events.append(ev(f"e{i}", "cart_viewed", at=i, anonymous_id=anon, user_id="u1", props={"n": i}))
        elif i % 2:
            events.append(ev(f"e{i}", "product_viewed", at=i, anonymous_id=anon, props={"n": i}))
        else:
            name = "order_completed" if i % 3 == 0 else "email_opened"
            events.append(
                ev(
                    f"e{i}",
                    name,
                    at=i,
                    user_id="u1",
                    props={"n": i},
                    traits={"last": i},
                    email="u1@example.com",
                )
            )
    return events


def test_four_worker_processes_on_one_profile_lose_nothing_and_count_nothing_twice(
    redis_client: redis.Redis, redis_url: str, config_dir: Path
) -> None:
    four_workers_on_one_profile(redis_url, config_dir, redis_client)


def four_workers_on_one_profile(
    redis_url: str, config_dir: Path, profiles: redis.Redis, profile_url: str | None = None
) -> None:
    """Every event goes to two of four worker processes, in different orders and batch sizes; the
    one profile ends with every event once, every identity linked, each event counted once."""
    events = _events()
    payloads = [e.to_json() for e in events]
    rng = random.Random(7)
    plans: list[list[list[str]]] = []
    for w in range(WORKERS):
        # every event goes to two workers, in a different order, in batches of varying size
        mine = [p for i, p in enumerate(payloads) if i % WORKERS in (w, (w + 1) % WORKERS)]
        rng.shuffle(mine)
        batches, i = [], 0
        while i < len(mine):
            size = rng.randint(1, 25)
            batches.append(mine[i : i + size])
            i += size
        plans.append(batches)
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(redis_url, str(config_dir), plans[w], start, results, profile_url))
        for w in range(WORKERS)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    totals = [results.get(timeout=5) for _ in procs]
    # every delivery is counted once, applied or duplicate, by the attempt that went through
    assert sum(a + d for a, d, _, _ in totals) == 2 * len(events), totals  # each event delivered twice
    if not any(r for _, _, r, _ in totals):
        # (a retried batch's first attempt may have applied some of its events: then duplicates)
        assert sum(a for a, _, _, _ in totals) == len(events)
    pid = lookup(profiles, "acme", "user_id", "u1")
    assert pid is not None
    profile = load_profile(profiles, "acme", pid, NOW)
    assert profile is not None
    assert len(profile.events) == len(events)
    assert sorted(int(e.properties["n"]) for e in profile.events) == list(range(len(events)))
    assert profile.traits["last"] == 238  # the latest by occurred_at, whatever the arrival order
    for k in range(12):
        assert lookup(profiles, "acme", "anonymous_id", f"anon{k}") == pid


def _ingest(conn: redis.Redis, accounts_dir: Path, events: list) -> int:
    queue = EventQueue(conn, 1)
    result = queue.ingest("acme", events, 3600)
    assert result.accepted == len(events)
    return result.shard


def test_a_worker_killed_mid_batch_loses_no_event(
    redis_client: redis.Redis, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONNECTOR_EVENT_SHARDS", "1")
    events = [ev(f"k{i}", at=i, user_id=f"u{i % 5}") for i in range(50)]
    shard = _ingest(redis_client, config_dir, events)
    jobs.ensure_group(redis_client, shard)
    # a worker reads a batch and dies before applying and acknowledging it
    reply = redis_client.xreadgroup(jobs.GROUP, "dead-worker", {stream_key(shard): ">"}, count=30)
    assert len(reply[0][1]) == 30
    # and another dies after applying part of it: applied, not acknowledged
    part = [load_event(fields[b"e"]) for _, fields in reply[0][1][:10]]
    apply_batch(part, NOW, load_accounts(config_dir), redis_client, redis_client)
    monkeypatch.setattr(jobs, "CLAIM_IDLE_MS", 0)
    with clock.frozen(NOW):
        drained = jobs.drain_events(shard, conn=redis_client)
    assert drained == 50
    assert redis_client.xlen(stream_key(shard)) == 0
    total = 0
    for u in range(5):
        profile = load_profile(redis_client, "acme", lookup(redis_client, "acme", "user_id", f"u{u}"), NOW)
        assert profile is not None
        total += len(profile.events)
    assert total == 50
    assert int(redis_client.hget("metrics:worker", "applied:acme")) == 50
    assert int(redis_client.hget("metrics:worker", "duplicates:acme")) == 10


def test_bad_stored_items_go_to_dead_letters_and_do_not_block(
    redis_client: redis.Redis, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONNECTOR_EVENT_SHARDS", "1")
    shard = _ingest(redis_client, config_dir, [ev("a", user_id="u1")])
    redis_client.xadd(stream_key(shard), {"e": "{not json"})
    redis_client.xadd(stream_key(shard), {"e": json.dumps({"account": "acme"})})
    _ingest(redis_client, config_dir, [ev("b", at=1, user_id="u1"), ev("c", at=2, user_id="null")])
    with clock.frozen(NOW):
        assert jobs.drain_events(shard, conn=redis_client) == 3
    assert DeadLetters(redis_client).count("events") == 2
    profile = load_profile(redis_client, "acme", lookup(redis_client, "acme", "user_id", "u1"), NOW)
    assert profile is not None and len(profile.events) == 2
    assert int(redis_client.hget("metrics:worker", "rejected:acme")) == 1


def _dying_drain(shard: int) -> None:
    """A worker process that applies half of its batch and is then killed (SIGKILL)."""
    from connector.worker import pipeline

    def half_then_die(events, now) -> None:  # type: ignore[no-untyped-def]
        pipeline.process(runtime.current(), events[: len(events) // 2], now)
        os.kill(os.getpid(), signal.SIGKILL)

    redis_conn.reset()
    with clock.frozen(NOW):
        jobs.drain_events(shard, processor=half_then_die)


def test_a_worker_process_killed_mid_batch_loses_no_event(
    redis_client: redis.Redis, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONNECTOR_EVENT_SHARDS", "1")
    events = [ev(f"s{i}", at=i, user_id=f"u{i % 3}", props={"n": i}) for i in range(40)]
    shard = _ingest(redis_client, config_dir, events)
    child = multiprocessing.get_context("fork").Process(target=_dying_drain, args=(shard,))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert redis_client.xlen(stream_key(shard)) == 40  # nothing acknowledged
    monkeypatch.setattr(jobs, "CLAIM_IDLE_MS", 0)
    with clock.frozen(NOW):
        assert jobs.drain_events(shard, conn=redis_client) == 40
    counts = []
    for u in range(3):
        profile = load_profile(redis_client, "acme", lookup(redis_client, "acme", "user_id", f"u{u}"), NOW)
        assert profile is not None
        counts.append(len(profile.events))
    assert sum(counts) == 40
    assert int(redis_client.hget("metrics:worker", "applied:acme")) == 40
