"""The ``connector sync`` dispatcher with Redis out of reach: it backs off (from half a second,
doubling, to 30 s), warns when Redis goes away, once a minute while it stays away and when it is
back, and starts again from half a second after the next outage. Waits go through the runner's
``pause`` and the outage's clock, so nothing here sleeps."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis

from connector.sync import runner as sync_runner
from connector.sync.runner import RedisOutage, SyncRunner
from tests.helpers import SimClock, unreachable_redis_url


@pytest.fixture
def unreachable() -> Iterator[redis.Redis]:
    """A client of a port nothing listens on (the socket holds the port, so nothing else takes it),
    made as the processes make theirs (from a URL: a refused connection fails at once)."""
    with unreachable_redis_url() as url:
        client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=5.0)
        yield client
        client.close()


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_the_dispatcher_backs_off_while_redis_is_away_and_warns_once_a_minute(
    unreachable: redis.Redis, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    fake = SimClock()
    outage = RedisOutage("sync dispatcher", sync_runner.log, monotonic=fake.monotonic)
    runner = SyncRunner(unreachable, pause=fake.pause, outage=outage)
    with caplog.at_level(logging.WARNING, logger="connector.sync.runner"):
        runner.run(max_rounds=20)  # the last round ends the run before its wait
    assert fake.slept == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0] + [30.0] * 13
    said = warnings(caplog)
    assert said[0] == "sync dispatcher: Redis is unavailable; retrying with backoff"
    # 20 attempts over 421.5 s: the first warning, then one a minute
    assert said[1:] == ["sync dispatcher: Redis is still unavailable"] * 7
    assert caplog.records[0].error.startswith("Error 111 connecting")  # type: ignore[attr-defined]

    caplog.clear()
    runner.conn = redis_client  # Redis is back
    with caplog.at_level(logging.WARNING, logger="connector.sync.runner"):
        runner.run(max_rounds=1)
    assert warnings(caplog) == ["sync dispatcher: Redis is available again"]
    assert caplog.records[0].attempts == 20  # type: ignore[attr-defined]
    assert not outage.down and outage.delay == 0.0

    caplog.clear()
    runner.conn = unreachable  # a new outage starts from the shortest wait again
    with caplog.at_level(logging.WARNING, logger="connector.sync.runner"):
        runner.run(max_rounds=2)
    assert fake.slept[-1] == 0.5
    assert warnings(caplog) == ["sync dispatcher: Redis is unavailable; retrying with backoff"]


def test_a_failed_wait_for_flush_jobs_backs_off_as_well(
    unreachable: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    fake = SimClock()
    runner = SyncRunner(
        unreachable,
        pause=fake.pause,
        outage=RedisOutage("sync dispatcher", sync_runner.log, monotonic=fake.monotonic),
    )
    with caplog.at_level(logging.WARNING, logger="connector.sync.runner"):
        runner.wait(sync_runner.POLL_SECONDS)  # Redis went away while the dispatcher waited
        runner.run(max_rounds=3)
    assert fake.slept == [0.5, 1.0, 2.0]
    assert warnings(caplog) == ["sync dispatcher: Redis is unavailable; retrying with backoff"]
