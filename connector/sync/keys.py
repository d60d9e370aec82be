"""Sync keys, constants and the one way their Lua scripts run.

Keys (queue Redis), ``{a}`` = account, ``{d}`` = destination:
  ``sync:{a}:{d}:pending``  hash profile → Change JSON (newest version only)
  ``sync:{a}:{d}:ready``    zset profile → instant it may be sent (delay or retry backoff)
  ``sync:{a}:{d}:applied``  hash profile → last applied version
  ``sync:{a}:{d}:owned``    hash profile → OwnedState JSON (the ownership ledger)
  ``sync:{a}:{d}:digest``   hash profile → digest of the last applied desired state
  ``sync:{a}:{d}:failing``  hash profile → {first_failed_at, attempts, error}
  ``sync:{a}:{d}:armed``    flag: a flush job is queued or running
  ``sync:{a}:{d}:lock``     one flush at a time per destination
  ``sync:due``              zset ``a \\x1f d`` → next instant a flush is needed (scheduler)
  ``sync:paused``           hash ``a \\x1f d`` → pause reason JSON
  ``sync:erasures``         list of erasure records (no personal data), capped (counted)
  ``sync:{a}:erased:{digest}`` flag for 7 days: an erased profile; none of its changes is queued
  ``metrics:sync``          counters ``{outcome}:{account}``
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import redis

from adapters.change import Change

log = logging.getLogger(__name__)

SYNC_QUEUE = "sync"
SEP = "\x1f"
ARMED_TTL_SECONDS = 60
LOCK_TTL_MS = 600_000
JOB_TIME_BUDGET_SECONDS = 10.0
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 15 * 60.0
ERASE_VERSION = 2**62  # nothing queued after an erasure may recreate the contact
ERASURE_LOG_MAX = 100_000
ERASED_TTL_SECONDS = 7 * 24 * 3600  # longer than any evaluation in flight
SYNC_STATE = ("pending", "applied", "owned", "digest", "failing")


def key(account: str, destination: str, what: str) -> str:
    return f"sync:{account}:{destination}:{what}"


def member(account: str, destination: str) -> str:
    return f"{account}{SEP}{destination}"


def profile_digest(account: str, profile_id: str) -> str:
    return hashlib.sha256(f"{account}{SEP}{profile_id}".encode()).hexdigest()[:24]


def erased_key(account: str, profile_id: str) -> str:
    """Flag (TTL ``ERASED_TTL_SECONDS``): the profile was erased; no change of it is queued again.
    Named by a digest: no identifier is kept."""
    return f"sync:{account}:erased:{profile_digest(account, profile_id)}"


def run_script(conn: redis.Redis, source: str, keys: list[str], args: list[Any]) -> Any:
    """Run a Lua script by its SHA (loaded on first use on each server)."""
    script = _SCRIPTS.get(source)
    if script is None:
        script = _SCRIPTS[source] = conn.register_script(source)
    return script(keys=keys, args=args, client=conn)


_SCRIPTS: dict[str, Any] = {}


def state_digest(change: Change) -> str:
    body = change.to_dict()
    for volatile in ("version", "identities"):
        body.pop(volatile, None)
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:32]
