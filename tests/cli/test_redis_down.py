"""What the processes say with Redis out of reach: ``connector scheduler`` backs off as the sync
dispatcher does and warns once a minute, not at every tick; ``/metrics`` answers a 503 that says the
metrics cannot be read, in the HTTP contract's JSON error body."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis

from connector import runtime
from connector.settings import Settings
from connector.sync.runner import RedisOutage
from connector.worker.scheduler import run as run_scheduler
from tests.helpers import SimClock, unreachable_redis_url

SCHEDULER_LOG = "connector.worker.scheduler"


@pytest.fixture
def down_runtime(settings: Settings) -> Iterator[runtime.Runtime]:
    """A runtime whose Redis is a port nothing listens on (held, so nothing else takes it); the
    test's own runtime keeps the test Redis."""
    with unreachable_redis_url() as url:
        down = replace(settings, queue_redis_url=url, profile_redis_url=url)
        yield runtime.Runtime.from_settings(down, check_seconds=0)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_scheduler_backs_off_while_redis_is_away_and_warns_once_a_minute(
    down_runtime: runtime.Runtime, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    fake = SimClock()
    outage = RedisOutage("scheduler", logging.getLogger(SCHEDULER_LOG), monotonic=fake.monotonic)
    with caplog.at_level(logging.WARNING):
        run_scheduler(down_runtime, threading.Event(), max_ticks=20, pause=fake.pause, outage=outage)
    assert fake.slept == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0] + [30.0] * 14
    said = warnings(caplog)
    assert (
        said
        == ["scheduler: Redis is unavailable; retrying with backoff"]
        + ["scheduler: Redis is still unavailable"] * 7
    )

    caplog.clear()
    with caplog.at_level(logging.WARNING):  # Redis is back: the tick's own pace, at most a tick
        run_scheduler(runtime.current(), threading.Event(), max_ticks=1, pause=fake.pause, outage=outage)
    assert warnings(caplog) == ["scheduler: Redis is available again"]
    assert 0 < fake.slept[-1] <= 0.2 and not outage.down


def test_a_stop_ends_the_scheduler_before_its_next_tick(down_runtime: runtime.Runtime) -> None:
    stop = threading.Event()
    fake = SimClock()

    def pause(seconds: float) -> None:
        fake.pause(seconds)
        stop.set()  # SIGTERM during the wait

    run_scheduler(down_runtime, stop, pause=pause)
    assert fake.slept == [0.5]


def test_metrics_say_redis_is_unavailable_in_a_json_error(
    down_runtime: runtime.Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    from connector.app import create_app

    app = create_app(runtime=down_runtime)
    app.config["TESTING"] = True
    res = app.test_client().get("/metrics")
    assert res.status_code == 503
    assert res.mimetype == "application/json"
    assert res.headers["Retry-After"] == "5"
    body = res.get_json()
    assert body["error"] == "unavailable"
    assert body["message"] == "the metrics cannot be read: Redis is unavailable; retry later"
    assert "accepted" not in body["message"]
