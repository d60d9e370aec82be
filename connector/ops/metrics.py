"""``/metrics`` in the Prometheus text format, written by ``prometheus_client``.

Counters live in Redis hashes (``metrics:*``) so that every web and worker process adds to the
same numbers; queue depths, the due index, its lateness (fired - due, the latest samples),
paused destinations, dead letters and the account files that fail to load are read live.
:class:`RedisCollector` turns that state into metric families at each scrape (no per-process
counters, so gunicorn's several workers need no multiprocess mode); ``prometheus_client`` writes
the HELP and TYPE lines and escapes label values.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from connector import clock, sync
from connector.ingest.queue import EventQueue
from connector.ingest.web import REJECTED_KEY, RETRY_AFTER_SECONDS, Answer
from connector.profiles.bounds import dropped
from connector.runtime import config_errors
from connector.sync import keys as sync_keys
from connector.sync.deadletters import DeadLetters
from connector.worker import due

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)
REGISTRY_KEY = "connector.ops.metrics.registry"

# Redis hash → (metric name, help); fields are ``outcome:account``.
COUNTER_HASHES = {
    "metrics:ingest": (
        "connector_ingest_events_total",
        "Events received per account: accepted (stored for the workers) or duplicate (seen before).",
    ),
    "metrics:worker": (
        "connector_worker_events_total",
        "Events the workers handled per account, by outcome (applied, duplicates, ...).",
    ),
    "metrics:evaluations": (
        "connector_evaluations_total",
        "Rule evaluations per account: full, or incremental (only the segments new events can affect).",
    ),
    "metrics:sync": (
        "connector_sync_requests_total",
        "Changes the sync workers sent to the ESPs per account, by outcome.",
    ),
}
LATENESS_QUANTILES = (0.5, 0.99)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisCollector(Collector):
    """The connector's metrics, read from Redis at each collection."""

    def __init__(self, queue: EventQueue, profile_conn: Any = None) -> None:
        self.queue = queue
        # the profile store counts what its own families drop (identity conflicts) on its server
        self.profile_conn = profile_conn if profile_conn is not queue.conn else None

    def describe(self) -> list[Metric]:
        # Nothing to check up front: the families depend on what Redis holds at scrape time.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._counters()
        yield self._rejected()
        yield self._dropped()
        yield self._queue_depth()
        yield self._config_errors()
        yield GaugeMetricFamily(
            "connector_due_pending",
            "Profiles waiting in the due index for a time-based re-evaluation.",
            value=due.pending(self.queue.conn),
        )
        lateness = self._lateness()
        if lateness is not None:
            yield lateness
        yield self._paused()
        yield from self._sync_backlog()
        yield self._dead_letters()

    def _counters(self) -> Iterator[Metric]:
        conn = self.queue.conn
        for key, (name, doc) in COUNTER_HASHES.items():
            family = CounterMetricFamily(name, doc, labels=["outcome", "account"])
            for field, value in sorted(conn.hgetall(key).items()):
                outcome, _, account = _text(field).partition(":")
                family.add_metric([outcome, account], int(value))
            yield family

    def _rejected(self) -> Metric:
        family = CounterMetricFamily(
            "connector_ingest_rejected_total",
            "Refused requests by sender type and HTTP status (a wrong secret shows as growing 401s).",
            labels=["sender", "status"],
        )
        for field, value in sorted(self.queue.conn.hgetall(REJECTED_KEY).items()):
            sender, _, status = _text(field).partition(":")
            family.add_metric([sender, status], int(value))
        return family

    def _dropped(self) -> Metric:
        family = CounterMetricFamily(
            "connector_dropped_total",
            "Entries dropped at the bound of a capped key family (dead letters, histories, logs).",
            labels=["family"],
        )
        counts = dropped(self.queue.conn)
        for name, value in (dropped(self.profile_conn) if self.profile_conn is not None else {}).items():
            counts[name] = counts.get(name, 0) + value
        for name, value in sorted(counts.items()):
            family.add_metric([name], value)
        return family

    def _config_errors(self) -> Metric:
        family = GaugeMetricFamily(
            "connector_config_errors",
            "Account files that fail to load, by file name (1 per file; more when config "
            "directories sharing this Redis hold files of one name; the last valid version of "
            "each serves). /readyz has the reasons.",
            labels=["file"],
        )
        counts: dict[str, int] = {}
        for problem in config_errors(self.queue.conn):
            counts[problem.file] = counts.get(problem.file, 0) + 1
        for file, count in sorted(counts.items()):
            family.add_metric([file], count)
        return family

    def _queue_depth(self) -> Metric:
        family = GaugeMetricFamily(
            "connector_event_queue_depth",
            "Events stored in each stream shard and not yet applied by a worker.",
            labels=["shard"],
        )
        for shard, depth in self.queue.pending().items():
            family.add_metric([str(shard)], depth)
        return family

    def _lateness(self) -> Metric | None:
        samples = sorted(due.lateness_samples(self.queue.conn))
        if not samples:
            return None
        name = "connector_due_lateness_seconds"
        family = Metric(
            name, "Seconds between a profile's due instant and its re-evaluation (latest samples).", "summary"
        )
        for q in LATENESS_QUANTILES:
            value = samples[min(len(samples) - 1, int(q * len(samples)))]
            family.add_sample(name, {"quantile": str(q)}, value)
        family.add_sample(f"{name}_count", {}, len(samples))
        return family

    def _paused(self) -> Metric:
        family = GaugeMetricFamily(
            "connector_destination_paused",
            "1 for each destination paused after its ESP refused the credentials (401/403).",
            labels=["account", "destination"],
        )
        for account, destination in sorted(sync.paused(self.queue.conn)):
            family.add_metric([account, destination], 1)
        return family

    def _sync_backlog(self) -> Iterator[Metric]:
        """Per destination with changes waiting (``sync:due``): how many, how many failing, and in
        how long the next send may go (a rate limit's wait, a retry's backoff, a daily quota)."""
        waiting = GaugeMetricFamily(
            "connector_sync_pending",
            "Changes waiting to be sent to a destination (newest version per person).",
            labels=["account", "destination"],
        )
        failing = GaugeMetricFamily(
            "connector_sync_failing",
            "People whose change a destination refused or failed, retried with backoff until dead-lettered.",
            labels=["account", "destination"],
        )
        until = GaugeMetricFamily(
            "connector_sync_next_send_seconds",
            "Seconds until the next send to a destination with changes waiting (0: now; hours: a "
            "rate limit's Retry-After or a daily quota).",
            labels=["account", "destination"],
        )
        conn = self.queue.conn
        due_at = [
            (_text(m).partition(sync_keys.SEP), float(at))
            for m, at in conn.zrange("sync:due", 0, -1, withscores=True)
        ]
        pipe = conn.pipeline(transaction=False)
        for (account, _, destination), _at in due_at:
            pipe.hlen(sync_keys.key(account, destination, "pending"))
            pipe.hlen(sync_keys.key(account, destination, "failing"))
        counts = pipe.execute() if due_at else []
        now = clock.now().timestamp()
        for n, ((account, _, destination), at) in enumerate(due_at):
            labels = [account, destination]
            waiting.add_metric(labels, int(counts[2 * n]))
            failing.add_metric(labels, int(counts[2 * n + 1]))
            until.add_metric(labels, max(0.0, at - now))
        yield waiting
        yield failing
        yield until

    def _dead_letters(self) -> Metric:
        family = GaugeMetricFamily(
            "connector_dead_letters",
            "Dead letters waiting for a replay, by kind.",
            labels=["kind"],
        )
        dead = DeadLetters(self.queue.conn)
        for kind in dead.kinds():
            family.add_metric([kind], dead.count(kind))
        return family


def registry_for(queue: EventQueue, profile_conn: Any = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(queue, profile_conn))
    return registry


def render(queue: EventQueue, profile_conn: Any = None) -> str:
    return generate_latest(registry_for(queue, profile_conn)).decode()


def install(app: Flask, queue: EventQueue, profile_conn: Any = None) -> None:
    """Serve ``/metrics`` on ``app`` from the Redis behind ``queue`` (and the profile store's, when it
    is another server)."""
    app.extensions[REGISTRY_KEY] = registry_for(queue, profile_conn)
    app.register_blueprint(bp)


def scrape_token_given() -> bool:
    """Whether the request may read what names accounts and files: ``CONNECTOR_METRICS_TOKEN`` is
    unset, or the request sends it as a bearer token."""
    token = current_app.config["CONNECTOR_SETTINGS"].metrics_token
    if token is None:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _refused() -> Response | None:
    """With ``CONNECTOR_METRICS_TOKEN`` set, a scrape without that bearer token is a 401."""
    if scrape_token_given():
        return None
    answer = Answer.json(
        401,
        {
            "error": "unauthorized",
            "message": "the metrics need the scrape token: send `Authorization: Bearer <token>` "
            "(CONNECTOR_METRICS_TOKEN)",
        },
        [("WWW-Authenticate", 'Bearer realm="metrics"')],
    )
    return Response(answer.body, status=401, headers=answer.headers, mimetype="application/json")


@bp.route("/metrics")
def metrics() -> Response:
    """The text format (0.0.4) by default; OpenMetrics when the scraper asks for it (``Accept``).
    With Redis out of reach, a 503 with the HTTP contract's JSON error body: the metrics are read
    from Redis at each scrape."""
    refused = _refused()
    if refused is not None:
        return refused
    registry: CollectorRegistry = current_app.extensions[REGISTRY_KEY]
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    try:
        current_app.extensions["connector.runtime"].record_config_errors()
        body = encode(registry)
    except redis.RedisError as err:
        log.warning("metrics not read: Redis unavailable", extra={"error": type(err).__name__})
        answer = Answer.json(
            503,
            {
                "error": "unavailable",
                "message": "the metrics cannot be read: Redis is unavailable; retry later",
            },
            [("Retry-After", RETRY_AFTER_SECONDS)],
        )
        return Response(answer.body, status=503, headers=answer.headers, mimetype="application/json")
    return Response(body, content_type=content_type)
