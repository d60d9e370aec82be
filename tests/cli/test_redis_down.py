"""What the processes say with Redis out of reach: ``connector scheduler`` backs off as the sync
dispatcher does and warns once a minute, not at every tick; ``connector worker`` waits for Redis
the same way, at start and when Redis goes away while it runs, and serves again once Redis answers
(real processes, a real Redis started and stopped on the port they were given); ``/metrics`` answers
a 503 that says the metrics cannot be read, in the HTTP contract's JSON error body."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from rq import Queue, Worker
from rq.job import Job

from connector import runtime
from connector.dev.embedded_redis import EmbeddedRedis
from connector.settings import Settings
from connector.sync.runner import RedisOutage
from connector.worker import serving
from connector.worker.scheduler import run as run_scheduler
from tests.helpers import SimClock, unreachable_redis_url

SCHEDULER_LOG = "connector.worker.scheduler"
WORKER_LOG = "connector.worker.serving"
ROOT = Path(__file__).resolve().parents[2]
CONNECTOR = str(Path(sys.executable).parent / "connector")
PASSWORD = "worker-secret-7f3a"  # in the worker's REDIS_URL; never in what it writes
WAITS = "worker: Redis is unavailable; retrying with backoff"
BACK = "worker: Redis is available again"


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


def test_the_worker_backs_off_while_redis_is_away_as_the_scheduler_does(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    fake = SimClock()
    stop = threading.Event()

    def pause(seconds: float) -> None:
        fake.pause(seconds)
        if len(fake.slept) == 20:
            stop.set()  # SIGTERM during the 20th wait

    outage = RedisOutage("worker", logging.getLogger(WORKER_LOG), monotonic=fake.monotonic)
    with unreachable_redis_url() as url, caplog.at_level(logging.WARNING, logger=WORKER_LOG):
        down = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=5.0)
        serving.run(down, ["reevaluate"], stop, pause=pause, outage=outage)
    assert fake.slept == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0] + [30.0] * 14
    assert warnings(caplog) == [WAITS] + ["worker: Redis is still unavailable"] * 7

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=WORKER_LOG):  # Redis is back: the worker registers
        serving.run(redis_client, ["reevaluate"], threading.Event(), burst=True, outage=outage)
    assert warnings(caplog) == [BACK]
    assert len(fake.slept) == 20 and not outage.down


class Output:
    """What a process writes (stdout and stderr together), read by a thread as it comes;
    :meth:`wait_for` looks past the lines an earlier wait matched."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._seen = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace"))

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, *needles: str, timeout: float = 60.0) -> str:
        """The next line holding every one of ``needles`` (polled until a deadline)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index in range(self._seen, len(self.lines)):
                if all(needle in self.lines[index] for needle in needles):
                    self._seen = index + 1
                    return self.lines[index]
            if not self._reader.is_alive():  # the process closed its output: it has ended
                break
            time.sleep(0.05)
        status = self.proc.poll()
        raise AssertionError(f"no line with {needles!r} (exit status {status}); it wrote:\n{self.text}")

    def close(self) -> str:
        """Wait for the end of its output; all of it."""
        self._reader.join(30)
        return self.text


def wait_on_redis(key: str) -> None:
    """A job that waits on Redis until Redis goes away (run by the worker under test)."""
    conn = runtime.current().queue_redis
    while conn.blpop([key], timeout=1) is None:
        pass


@pytest.fixture
def worker_env(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "accounts"
    config.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "CONNECTOR_"))}
    if "CONNECTOR_COMPILED" in os.environ:
        env["CONNECTOR_COMPILED"] = os.environ["CONNECTOR_COMPILED"]
    env["CONNECTOR_CONFIG_DIR"] = str(config)
    env["CONNECTOR_DATA_DIR"] = str(tmp_path / "data")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


def start_worker(env: dict[str, str], port: int, cwd: Path) -> tuple[subprocess.Popen[bytes], Output]:
    env = {**env, "REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{port}/0"}
    proc = subprocess.Popen(
        [CONNECTOR, "worker"], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    return proc, Output(proc)


def serves_a_job(proc: subprocess.Popen[bytes], out: Output, conn: redis.Redis) -> None:
    """The worker takes a job off its first queue and runs it in its own process."""
    job = Queue("reevaluate", connection=conn).enqueue("os.getpid")
    out.wait_for("Job OK", job.id)
    assert Job.fetch(job.id, connection=conn).return_value() == proc.pid


def stops_cleanly(proc: subprocess.Popen[bytes], out: Output) -> str:
    """SIGTERM ends the worker with status 0 and no trace; all it wrote, which never holds the
    password of its REDIS_URL."""
    before = len(out.lines)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, out.close()
    written = out.close()
    since = "".join(out.lines[before:])
    assert "Traceback" not in since and "Error: Redis unavailable" not in since, written
    assert PASSWORD not in written
    return written


@pytest.fixture
def stopped() -> Iterator[list[subprocess.Popen[bytes] | EmbeddedRedis]]:
    """What a test started, stopped at its end whatever happened."""
    started: list[subprocess.Popen[bytes] | EmbeddedRedis] = []
    yield started
    for thing in reversed(started):
        if isinstance(thing, EmbeddedRedis):
            thing.stop()
        elif thing.poll() is None:
            thing.kill()
            thing.wait()


def test_the_worker_waits_for_redis_at_start_and_serves_once_it_answers(
    worker_env: dict[str, str], tmp_path: Path, stopped: list[subprocess.Popen[bytes] | EmbeddedRedis]
) -> None:
    with unreachable_redis_url() as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        proc, out = start_worker(worker_env, port, tmp_path)
        stopped.append(proc)
        said = out.wait_for(WAITS)
        assert f"redis://:***@127.0.0.1:{port}/0" in said  # which Redis, its password hidden
        assert proc.poll() is None
    server = EmbeddedRedis(tmp_path / "redis", port=port, appendonly=False).start()  # on that port
    stopped.append(server)
    out.wait_for(BACK)
    conn = redis.Redis(port=port)
    assert [w.pid for w in Worker.all(connection=conn)] == [proc.pid]  # registered as an RQ worker
    serves_a_job(proc, out, conn)
    written = stops_cleanly(proc, out)
    assert written.count(WAITS) == 1  # one warning, not one per attempt
    assert "Traceback" not in written


def test_a_stop_while_the_worker_waits_for_redis_ends_it_at_once(
    worker_env: dict[str, str], tmp_path: Path, stopped: list[subprocess.Popen[bytes] | EmbeddedRedis]
) -> None:
    with unreachable_redis_url() as url:
        proc, out = start_worker(worker_env, int(url.rsplit(":", 1)[1].split("/")[0]), tmp_path)
        stopped.append(proc)
        out.wait_for(WAITS)
        assert "Traceback" not in stops_cleanly(proc, out)


def test_the_worker_waits_when_redis_goes_away_during_a_job_and_serves_again(
    worker_env: dict[str, str], tmp_path: Path, stopped: list[subprocess.Popen[bytes] | EmbeddedRedis]
) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False).start()
    stopped.append(server)
    proc, out = start_worker(worker_env, server.port, tmp_path)
    stopped.append(proc)
    conn = redis.Redis(port=server.port)
    out.wait_for("Listening on")
    job = Queue("reevaluate", connection=conn).enqueue(f"{__name__}.wait_on_redis", "never-pushed")
    out.wait_for(job.id)  # taken: the job waits on Redis
    server.stop()  # RQ's bookkeeping of the failed job meets the outage: RQ logs the trace, quits
    out.wait_for(WAITS)
    assert proc.poll() is None
    server = EmbeddedRedis(tmp_path / "redis", port=server.port, appendonly=False).start()
    stopped.append(server)
    out.wait_for(BACK)
    serves_a_job(proc, out, redis.Redis(port=server.port))
    stops_cleanly(proc, out)
