"""Sync: desired state per contact → batches per ESP → dead letters.

Flow (docs/destinations.md):

* :func:`submit` (called by the event worker after evaluation) turns the account's destination
  config into one :class:`~adapters.change.Change` per destination and queues it. Per
  (account, destination, profile) only the newest version waits: a newer one replaces an older
  pending one, so enter → exit → enter inside one batch window is sent once (or not at all when
  the final state is what the ESP already has).
* One RQ job per (account, destination) (:func:`flush_job`) takes the ready changes in batches of
  the ESP's limit, once the oldest has waited ``batch_delay`` (≤ 1 s) or a full batch is waiting.
* Version guard: the last applied version per contact and destination; an older change is dropped.
* Ownership ledger: what the connector set per contact; adapters only remove what is in it.
* Retries: transient failures come back with exponential backoff (or the ESP's Retry-After / daily
  reset) for ``retry_hours`` (24 h by default) of clock time, then go to the dead letters with the
  ESP's error and the desired state; permanent errors go there at once. ``connector dlq replay``
  puts them back.
* Bad credentials (401/403, or a missing environment variable) pause the destination for the
  account; its changes keep waiting; ``connector dlq resume`` lifts the pause.
* Erasure: :func:`erase` queues a deletion per destination; the outcome is recorded in
  ``sync:erasures`` with a digest of the profile id, no personal data, and :func:`forget` drops
  the person's entries from every key below.

Parts: ``keys`` (key layout, constants, scripts), ``submit`` (queueing and erasure fan-out),
``flusher`` (batches, results, retries), ``jobs`` (the RQ flush job and the scheduler's task),
``control`` (pause, resume, replay, inspection) and ``deadletters``. The names below are the room's
interface; callers use them as ``sync.submit(...)``.
"""

from connector.sync.control import (
    applied_version,
    erasures,
    is_paused,
    owned_state,
    pause,
    paused,
    pending,
    replay,
    replay_dead_letter,
    resume,
)
from connector.sync.flusher import Flusher, backoff
from connector.sync.jobs import fire_due, flush_job
from connector.sync.keys import SYNC_QUEUE, key, member, profile_digest, state_digest
from connector.sync.submit import arm, enqueue_change, erase, forget, submit

__all__ = [
    "SYNC_QUEUE",
    "Flusher",
    "applied_version",
    "arm",
    "backoff",
    "enqueue_change",
    "erase",
    "erasures",
    "fire_due",
    "flush_job",
    "forget",
    "is_paused",
    "key",
    "member",
    "owned_state",
    "pause",
    "paused",
    "pending",
    "profile_digest",
    "replay",
    "replay_dead_letter",
    "resume",
    "state_digest",
    "submit",
]
