"""``/metrics`` in the Prometheus text format.

Counters live in Redis hashes (``metrics:*``) so that every web and worker process adds to the
same numbers; queue depths, the due index, its lateness (fired - due, the latest samples),
paused destinations and dead letters are read live.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from connector.ingest.queue import EventQueue
from connector.ingest.web import REJECTED_KEY
from connector.sync import engine as sync
from connector.sync.deadletters import DeadLetters
from connector.worker import due

bp = Blueprint("metrics", __name__)

COUNTER_HASHES = {
    "metrics:ingest": "connector_ingest_events_total",
    "metrics:worker": "connector_worker_events_total",
    "metrics:sync": "connector_sync_requests_total",
}


def render(queue: EventQueue) -> str:
    conn = queue.conn
    lines: list[str] = []
    for key, metric in COUNTER_HASHES.items():
        values = conn.hgetall(key)
        lines.append(f"# TYPE {metric} counter")
        for field, value in sorted(values.items()):
            outcome, _, account = field.decode().partition(":")
            lines.append(f'{metric}{{outcome="{outcome}",account="{account}"}} {int(value)}')
    lines.append("# TYPE connector_ingest_rejected_total counter")
    for field, value in sorted(conn.hgetall(REJECTED_KEY).items()):
        sender, _, status = field.decode().partition(":")
        lines.append(f'connector_ingest_rejected_total{{sender="{sender}",status="{status}"}} {int(value)}')
    lines.append("# TYPE connector_event_queue_depth gauge")
    for shard, depth in queue.pending().items():
        lines.append(f'connector_event_queue_depth{{shard="{shard}"}} {depth}')
    lines.append("# TYPE connector_due_pending gauge")
    lines.append(f"connector_due_pending {due.pending(conn)}")
    samples = sorted(due.lateness_samples(conn))
    if samples:
        lines.append("# TYPE connector_due_lateness_seconds summary")
        for q in (0.5, 0.99):
            value = samples[min(len(samples) - 1, int(q * len(samples)))]
            lines.append(f'connector_due_lateness_seconds{{quantile="{q}"}} {value:.6f}')
        lines.append(f"connector_due_lateness_seconds_count {len(samples)}")
    lines.append("# TYPE connector_destination_paused gauge")
    for account, destination in sorted(sync.paused(conn)):
        lines.append(f'connector_destination_paused{{account="{account}",destination="{destination}"}} 1')
    lines.append("# TYPE connector_dead_letters gauge")
    dead = DeadLetters(conn)
    for kind in dead.kinds():
        lines.append(f'connector_dead_letters{{kind="{kind}"}} {dead.count(kind)}')
    return "\n".join(lines) + "\n"


@bp.route("/metrics")
def metrics() -> Response:
    queue: EventQueue = current_app.extensions["connector.ingest.queue"]
    return Response(render(queue), mimetype="text/plain; version=0.0.4")
