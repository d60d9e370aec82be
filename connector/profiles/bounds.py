"""What every capped key family drops at its bound is counted, never silent.

One hash in the queue Redis, ``metrics:dropped``: field = key family (``deadletters``,
``ledger_history``, ``rejected``, ``exports``, ``conflicts``, ``erasure_log``, ``sync_erasure_log``,
``profile_history``, ``property_names``, ``profile_traits``, ``trait_values``, ``profile_identifiers``),
value = entries dropped at the bound since the start. The metrics endpoint shows it as
``connector_dropped_total{family=...}``. The table of families and bounds is in docs/architecture.md
("Bounded state").
"""

from __future__ import annotations

from typing import Any

DROPPED_KEY = "metrics:dropped"


def count_dropped(conn: Any, family: str, n: int) -> None:
    """Add ``n`` to the family's dropped counter (``conn`` may be a pipeline)."""
    if n > 0:
        conn.hincrby(DROPPED_KEY, family, n)


def dropped(conn: Any) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in conn.hgetall(DROPPED_KEY).items()}
