"""Live events written by the event worker and the sync, next to the deliveries the ingest script
writes (connector.ops.live serves them all as one stream per account).

While someone watches an account (its watcher key ``live:watch:{account}`` exists, kept alive by the
stream endpoint with a short TTL) two more kinds of entries go to its live stream ``live:{account}``
(queue Redis, capped like the deliveries'):

- ``landed`` (event worker, one per batch and account): per profile the batch touched, the events
  it applied there (their ids, as the delivery's entry shows them), the segments it entered and
  exited and the computed traits that changed;
- ``esp`` (sync, one per batch sent to a destination): per person, what the ESP request came to,
  ``applied``, ``skipped``, ``failed`` (retried later, with the reason) or ``dead_lettered`` (with
  the reason); a change the adapter deferred to the next batch shows there.

Each costs one ``EXISTS`` of the watcher key per batch (never per event) and nothing else while
nobody watches. Identities appear masked only (:func:`mask`); a reason has the email addresses in
it masked too. Entries reference profiles by their id (as the console's person page does) and
deliveries by event id. Writes never raise into the worker or the sync: a lost entry is only a
gap in a debugging view.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import redis

from connector.clock import isoformat

log = logging.getLogger(__name__)

# The live stream of each account keeps about this many entries (XADD MAXLEN ~; an entry of
# stored deliveries holds up to connector.ops.live.LINES_PER_ENTRY = 20 of them, one per line, so
# at most about 20,000 deliveries, 6 MB): more than a watching client's half-second between two
# reads brings at 10,000 deliveries/s (500 entries).
MAXLEN = 1000
MAX_PROFILES = 50  # per ``landed`` entry: those with a transition or a trait change first
MAX_RESULTS = 50  # per ``esp`` entry
MAX_EVENT_IDS = 5  # per profile, as a delivery shows its first five events
MAX_REASON = 200
FIELD = "d"
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+)")


def live_key(account_id: str) -> str:
    return f"live:{account_id}"


def watch_key(account_id: str) -> str:
    return f"live:watch:{account_id}"


# --- masking ------------------------------------------------------------------------------


def mask(kind: str, value: str) -> str:
    """An identity as the live view shows it: ``jane@example.com`` → ``j***@example.com``; other
    ids keep two characters at each end when long enough (``user_1234`` → ``us***34``)."""
    if kind == "email" or ("@" in value and kind not in ("user_id", "anonymous_id")):
        local, at, domain = value.partition("@")
        return f"{local[:1]}***{at}{domain}" if at else f"{value[:1]}***"
    if len(value) >= 8:
        return f"{value[:2]}***{value[-2:]}"
    return f"{value[:1]}***"


def masked_identities(identities: Mapping[str, str]) -> dict[str, str]:
    return {kind: mask(kind, str(value)) for kind, value in identities.items()}


def mask_text(text: str) -> str:
    """Free text (an ESP's error message) with every email address in it masked, shortened."""
    return _EMAIL.sub(r"\1***@\2", text)[:MAX_REASON]


def _shown_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    return mask_text(value if isinstance(value, str) else json.dumps(value, default=str))[:60]


# --- writing ------------------------------------------------------------------------------


def watched(conn: redis.Redis, account_id: str) -> bool:
    """Whether someone watches the account (one ``EXISTS``); False when Redis cannot say."""
    try:
        return bool(conn.exists(watch_key(account_id)))
    except redis.RedisError:
        return False


def write(conn: redis.Redis, account_id: str, entry: Mapping[str, Any]) -> None:
    data = json.dumps(entry, separators=(",", ":"), default=str)
    try:
        conn.xadd(live_key(account_id), {FIELD: data}, maxlen=MAXLEN, approximate=True)
    except redis.RedisError as err:
        log.debug("live entry not written: %s", type(err).__name__)


# --- the event worker: where each delivered event landed -------------------------------------


def landed(
    conn: redis.Redis,
    account_id: str,
    batch: Sequence[Any],
    applied_to: Mapping[str, str],
    outcomes: Iterable[Any],
    now: datetime,
) -> None:
    """After a batch of the account was evaluated (``outcomes``: connector.worker.evaluation's
    ``Outcome`` per touched profile; ``applied_to``: event id → profile): while the account is
    watched, one ``landed`` entry. Nothing but one ``EXISTS`` otherwise."""
    if not watched(conn, account_id):
        return
    write(conn, account_id, landed_entry(batch, applied_to, outcomes, now))


def landed_entry(
    batch: Sequence[Any], applied_to: Mapping[str, str], outcomes: Iterable[Any], now: datetime
) -> dict[str, Any]:
    events: dict[str, list[Any]] = {}
    for event in batch:
        pid = applied_to.get(event.event_id)
        if pid is not None:
            events.setdefault(pid, []).append(event)
    shown = [_landed_profile(o, events.get(o.profile_id, [])) for o in outcomes]
    shown = [p for p in shown if p["event_count"] or p["entered"] or p["exited"] or p["traits"]]
    shown.sort(key=lambda p: not (p["entered"] or p["exited"] or p["traits"]))
    senders = {p["sender"] for p in shown if p["sender"]}
    return {
        "kind": "landed",
        "at": isoformat(now),
        "sender": senders.pop() if len(senders) == 1 else "",
        "outcome": "landed",
        "profiles": shown[:MAX_PROFILES],
        "profile_count": len(shown),
    }


def _landed_profile(outcome: Any, events: Sequence[Any]) -> dict[str, Any]:
    diff = outcome.diff
    return {
        "profile": outcome.profile_id,
        "sender": events[0].source if events else "",
        "events": [e.event_id for e in events[:MAX_EVENT_IDS]],
        "event_count": len(events),
        "entered": sorted(diff.entered) if diff is not None else [],
        "exited": sorted(diff.exited) if diff is not None else [],
        "traits": {k: _shown_value(v) for k, v in sorted(diff.changed_traits.items())}
        if diff is not None
        else {},
    }


# --- the sync: what each ESP request came to ----------------------------------------------


class SyncFeed:
    """The outcomes of one batch sent to a destination, gathered while the account is watched
    (:meth:`open` answers None otherwise) and written as one ``esp`` entry (:meth:`publish`)."""

    def __init__(self, conn: redis.Redis, account_id: str, destination: str) -> None:
        self.conn = conn
        self.account_id = account_id
        self.destination = destination
        self.results: list[dict[str, Any]] = []

    @classmethod
    def open(cls, conn: redis.Redis, account_id: str, destination: str) -> SyncFeed | None:
        return cls(conn, account_id, destination) if watched(conn, account_id) else None

    def note(self, change: Any, status: str, reason: Any = None, retry_at: float | None = None) -> None:
        """One person's outcome: ``status`` as the entry shows it, ``reason`` an exception, an
        error description (``AdapterError.describe()``) or text."""
        erase = bool(getattr(change, "erase", False))
        self.results.append(
            {
                # an erasure's person is gone: their id is not kept anywhere, the live view included
                "profile": None if erase else change.profile_id,
                "version": change.version,
                "erase": erase,
                "status": status,
                "reason": describe(reason),
                "retry_at": isoformat(datetime.fromtimestamp(retry_at, tz=UTC)) if retry_at else None,
            }
        )

    def publish(self, now: datetime) -> None:
        if not self.results:
            return
        counts: dict[str, int] = {}
        for result in self.results:
            counts[result["status"]] = counts.get(result["status"], 0) + 1
        entry = {
            "kind": "esp",
            "at": isoformat(now),
            "sender": "",
            "outcome": "esp",
            "destination": self.destination,
            "counts": counts,
            "results": self.results[:MAX_RESULTS],
            "result_count": len(self.results),
        }
        write(self.conn, self.account_id, entry)
        self.results = []


def describe(reason: Any) -> str | None:
    """A reason as the live view shows it: ``Type: message`` with email addresses masked."""
    if reason is None or reason == "":
        return None
    if isinstance(reason, Mapping):
        text = f"{reason.get('type')}: {reason.get('message') or reason.get('code') or ''}"
    elif isinstance(reason, BaseException):
        describe_of = getattr(reason, "describe", None)
        return describe(describe_of()) if callable(describe_of) else describe(type(reason).__name__)
    else:
        text = str(reason)
    return mask_text(text.strip().rstrip(":"))
