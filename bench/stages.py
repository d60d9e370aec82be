"""Where a worker process's time goes, stage by stage: wall and CPU time of each stage of the
event worker's full path (``BENCH_STAGES=1 bench/worker ...``). A stage's wall time minus its CPU
time is, on this path, the time spent waiting for Redis's replies.

Each stage is a function of the path wrapped in a timer in the worker process (after the fork);
stages nest (the rule evaluation runs inside the evaluation chunk), so a stage's time is counted
once, in the innermost stage running, and "other" is what no listed stage covers.

CPU is each thread's own. With more than one drain lane (``CONNECTOR_DRAIN_LANES``, default 2) the
stages of every lane are summed, and a stage's wall time also holds the time its lane waited for
another lane to let go of the interpreter: run ``BENCH_STAGES=1 CONNECTOR_DRAIN_LANES=1 ...`` for a
breakdown whose waits are Redis's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

_STAGES: list[tuple[str, str, str]] = [  # (label, module, attribute: "name" or "Class.name")
    ("read the stream", "connector.worker.jobs", "_next_entries"),
    ("delivery counts", "connector.worker.jobs", "_deliveries"),
    ("decode events", "connector.worker.jobs", "load_event"),
    ("erased-people check", "connector.worker.erasure", "drop_erased"),
    # plain Python only: compiled, the event apply calls it directly (its time is in "event apply")
    ("identity resolution", "connector.profiles.identity", "resolve"),
    ("event apply", "connector.worker.pipeline", "apply_events"),
    ("merges' leftovers", "connector.worker.evaluation", "forget_absorbed"),
    ("profile load", "connector.worker.evaluation", "load_with_predictions"),
    ("ledger read", "connector.worker.ledger", "Ledger.stored_many"),
    ("rule evaluation", "connector.worker.evaluation", "_evaluate"),
    ("ledger record", "connector.worker.ledger", "Ledger.record_many"),
    ("desired state submit", "connector.worker.evaluation", "submit_many"),
    ("due index", "connector.worker.due", "schedule_many"),
    ("member sets, movements", "connector.worker.evaluation", "record_movements"),
    ("live feed", "connector.livefeed", "landed"),
    ("credits", "connector.analytics.attribution", "record_batch"),
    ("acknowledge", "redis.client", "Pipeline.execute"),  # counted only outside every other stage
]

_totals: dict[str, list[float]] = {}
_local = threading.local()  # each drain lane's own stack of running stages
_lock = threading.Lock()


def _stack() -> list[list[float]]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def _timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        stack = _stack()
        if label == "acknowledge" and stack:
            return fn(*args, **kwargs)
        frame = [time.perf_counter(), time.thread_time(), 0.0, 0.0]  # wall, CPU, inner wall, inner CPU
        stack.append(frame)
        try:
            return fn(*args, **kwargs)
        finally:
            stack.pop()
            wall = time.perf_counter() - frame[0]
            cpu = time.thread_time() - frame[1]
            with _lock:
                total = _totals.setdefault(label, [0.0, 0.0])
                total[0] += wall - frame[2]
                total[1] += cpu - frame[3]
            if stack:
                stack[-1][2] += wall
                stack[-1][3] += cpu

    return wrapper


def install() -> None:
    """Wrap every stage (in this process: call it in the worker after the fork)."""
    import importlib

    for label, module_name, attribute in _STAGES:
        module = importlib.import_module(module_name)
        owner: Any = module
        name = attribute
        if "." in attribute:
            cls, name = attribute.split(".")
            owner = getattr(module, cls)
        setattr(owner, name, _timed(label, getattr(owner, name)))


def totals() -> dict[str, tuple[float, float]]:
    return {label: (wall, cpu) for label, (wall, cpu) in _totals.items()}


def report(per_stage: dict[str, tuple[float, float]], events: int, elapsed: float) -> list[str]:
    """Lines of µs per event per stage (wall, CPU, wait), largest first, with "other"."""
    lines = [f"  {'stage':<26} {'wall µs/ev':>10} {'CPU µs/ev':>10} {'wait µs/ev':>10}"]
    covered = 0.0
    for label, (wall, cpu) in sorted(per_stage.items(), key=lambda kv: -kv[1][0]):
        covered += wall
        lines.append(
            f"  {label:<26} {1e6 * wall / events:>10.1f} {1e6 * cpu / events:>10.1f} "
            f"{1e6 * max(0.0, wall - cpu) / events:>10.1f}"
        )
    lines.append(f"  {'other':<26} {1e6 * (elapsed - covered) / events:>10.1f}")
    return lines
