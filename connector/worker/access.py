"""An access request's answer beyond the profile store: what the worker and the sync keep about a
person (memberships, computed traits and segment history from the ledger; per destination, the
version applied and what the connector set there). ``connector profiles export`` and the admin API's
export both add it to :func:`connector.profiles.erasure.export_profile`'s document."""

from __future__ import annotations

from typing import Any

import redis

from connector import sync
from connector.config import Account
from connector.destinations import destinations
from connector.worker.ledger import Ledger


def kept_beyond_profile(
    conn: redis.Redis, queue_conn: redis.Redis, account: Account, pid: str
) -> dict[str, Any]:
    """Memberships, computed traits and segment history (the ledger), and the sync state per destination."""
    ledger = Ledger(conn)
    state = ledger.state(account.id, pid)
    per_destination = {}
    for name in sorted(destinations(account)):
        owned = sync.owned_state(queue_conn, account.id, name, pid)
        per_destination[name] = {
            "applied_version": sync.applied_version(queue_conn, account.id, name, pid),
            "owned": owned.to_dict() if owned is not None else None,
        }
    return {
        "memberships": {
            "version": state.version if state else None,
            "segments": sorted(state.segments) if state else [],
        },
        "computed_traits": dict(state.traits) if state else {},
        "segment_history": ledger.history(account.id, pid),
        "destinations": per_destination,
    }
