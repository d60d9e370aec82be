"""The erasure service: the one place that removes a person from everything the connector keeps.

Called explicitly by the event pipeline when a ``delete`` event (or Shopify's ``shop/redact``) is
applied, and by ``connector profiles delete``. In order:

1. the profile store (:func:`connector.profiles.erasure.erase_profile`): profile, history, the
   tombstones of profiles merged into it, identity links, identity conflicts, rejected events,
   data exports and the dedupe markers of the person's events;
2. the membership ledger and its history, and the due index, of the profile and of every profile
   merged into it;
3. dead letters of every kind (queue items and sync changes) that name the person;
4. the sync state: pending changes, applied versions, ownership ledgers, digests, retries; and a
   deletion queued for every destination under each of the person's addresses (when they have
   one), whose outcome is recorded with a digest of the profile id only.

What remains is the erasure logs' entries, which hold digests, no identifier.
"""

from __future__ import annotations

import logging
from datetime import datetime

import redis

from connector import sync
from connector.config import Account
from connector.profiles import erasure as store_erasure
from connector.profiles.erasure import Erased
from connector.profiles.rejected import mentions
from connector.sync.deadletters import DeadLetter, DeadLetters
from connector.worker import due
from connector.worker.ledger import Ledger

log = logging.getLogger(__name__)


def erase_person(
    conn: redis.Redis,
    queue_conn: redis.Redis,
    account: Account,
    profile_id: str,
    now: datetime,
    source: str,
) -> bool:
    """Erase one person (found by their live profile id). False if the profile does not exist."""
    erased = store_erasure.erase_profile(conn, queue_conn, account.id, profile_id, now, source)
    if erased is None:
        return False
    _finish(conn, queue_conn, account, erased, now)
    return True


def erase_account(
    conn: redis.Redis, queue_conn: redis.Redis, account: Account, now: datetime, source: str
) -> int:
    """Erase every person of an account (Shopify ``shop/redact``); returns how many."""
    everyone = store_erasure.erase_account(conn, queue_conn, account.id, now, source)
    for erased in everyone:
        _finish(conn, queue_conn, account, erased, now)
    return len(everyone)


def _finish(
    conn: redis.Redis, queue_conn: redis.Redis, account: Account, erased: Erased, now: datetime
) -> None:
    pids = erased.profile_ids
    Ledger(conn).delete_many(account.id, pids)
    due.unschedule(queue_conn, account.id, pids)
    removed = purge_dead_letters(queue_conn, account.id, erased)
    sync.erase(queue_conn, account, erased.profile_id, erased.emails, now, absorbed=erased.absorbed)
    log.info(
        "person erased",
        extra={"account": account.id, "profile": erased.profile_id, "dead_letters": removed},
    )


def purge_dead_letters(queue_conn: redis.Redis, account_id: str, erased: Erased) -> int:
    """Remove the dead letters that name the person: sync changes of their profiles, and queue
    items (of their account, or of no known account) holding any of their identifiers."""
    needles = erased.needles
    pids = set(erased.profile_ids)

    def doomed(item: DeadLetter) -> bool:
        if item.account not in (account_id, None):
            return False
        change = item.payload.get("change") if isinstance(item.payload, dict) else None
        if isinstance(change, dict) and change.get("profile_id") in pids:
            return True
        return mentions(item.payload, needles)

    return DeadLetters(queue_conn).purge(doomed)
