"""The ``connector worker`` process: RQ's worker loop (a :class:`rq.SimpleWorker`: no fork per job,
each job is a batch), kept going while Redis is out of reach.

RQ's ``work()`` retries by itself only in its wait for the next job: it logs an error at each
attempt (``could not connect to Redis instance: ... retrying in N seconds``), 1 s after the first
and twice as long after each next one, here at most ``OUTAGE_LONGEST_SECONDS``. Anywhere else an
unreachable Redis ends it: at start (the worker names its connection and registers itself), and
while it runs, in RQ's bookkeeping around a job (the job's status and result, the worker's state
and heartbeat, the registries' maintenance): RQ logs ``found an unhandled exception, quitting``
with the trace, and its teardown raises the ``ConnectionError`` out of ``work()``.

:func:`run` is a loop around ``work()``: on such an error it waits as the scheduler and the
``sync`` dispatcher do (:class:`connector.sync.runner.RedisOutage`: from half a second, doubling,
to 30 s between attempts; one warning when Redis goes away, one a minute while it stays away, one
when it is back) and starts a new RQ worker (a new name: the one before leaves RQ's registry when
its key expires). The job in hand when Redis went away is left as a job whose worker died: RQ's
maintenance finds it abandoned and retries it, and the events of a drain stay pending in their
stream for the next drain (docs/architecture.md).

SIGTERM and SIGINT: while RQ works, its own warm shutdown (the job in hand finishes, a second
signal stops at once); while the loop waits for Redis, the wait ends at once and so does the
process, with status 0.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import redis
from rq import Queue, SimpleWorker

from connector.sync.runner import OUTAGE_LONGEST_SECONDS, RedisOutage

log = logging.getLogger(__name__)

# Redis out of reach (AuthenticationError and BusyLoadingError, a Redis loading its data at start,
# are ConnectionErrors)
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RQWorker(SimpleWorker):
    """RQ's worker, which tells :func:`run` that a stop was asked for and that Redis answered."""

    max_connection_wait_time = OUTAGE_LONGEST_SECONDS  # RQ's own retries while it waits for a job

    def __init__(
        self,
        *args: Any,
        stop: threading.Event | None = None,
        outage: RedisOutage | None = None,
        **kwargs: Any,
    ) -> None:
        self.stop = stop or threading.Event()
        self.outage = outage or RedisOutage("worker", log)
        super().__init__(*args, **kwargs)  # names its connection (CLIENT SETNAME): Redis must answer

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)  # the worker is registered: Redis answered
        self.outage.succeeded()

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()
        if self.stop.is_set():  # a signal came while it registered: it stops before taking a job
            self._stop_requested = True

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop.set()
        super().request_stop(signum, frame)

    def let_go(self) -> None:
        """After a ``work()`` that Redis ended: the thread that listens to RQ's commands for this
        worker stops (it would go on retrying, and listen again once Redis is back)."""
        if self.pubsub_thread is not None:
            self.pubsub_thread.stop()


def run(
    conn: redis.Redis,
    queues: Sequence[str],
    stop: threading.Event,
    *,
    burst: bool = False,
    pause: Callable[[float], object] | None = None,
    outage: RedisOutage | None = None,
) -> None:
    """Serve ``queues`` until ``stop`` is set (SIGTERM or SIGINT set it), or with ``burst`` until they
    are empty, waiting for Redis whenever it is out of reach. ``pause``: the waits (default: on
    ``stop``, so a signal ends them at once)."""
    wait = pause or stop.wait
    backoff = outage or RedisOutage("worker", log)
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    try:
        while not stop.is_set():
            for signum in STOP_SIGNALS:  # between RQ's runs (RQ installs its own while it works)
                signal.signal(signum, _stop)
            worker: RQWorker | None = None
            try:
                served = [Queue(name, connection=conn) for name in queues]
                worker = RQWorker(served, connection=conn, stop=stop, outage=backoff)
                worker.work(burst=burst, with_scheduler=False)
            except REDIS_DOWN as err:
                if worker is not None:
                    worker.let_go()
                if not stop.is_set():
                    wait(backoff.failed(err))
                continue
            if burst or stop.is_set():
                return
            # RQ ended its loop on an error it logged ("found an unhandled exception", "Redis
            # connection timeout") and its teardown reached Redis. Out of reach now: wait as above;
            # otherwise the process ends, as RQ's loop did.
            try:
                conn.ping()
            except REDIS_DOWN as err:
                wait(backoff.failed(err))
                continue
            return
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
