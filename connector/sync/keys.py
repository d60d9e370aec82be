"""Sync keys, constants and the one way their Lua scripts run.

Keys (queue Redis), ``{a}`` = account, ``{d}`` = destination:
  ``sync:{a}:{d}:pending``  hash profile → Change JSON (newest version only)
  ``sync:{a}:{d}:ready``    zset profile → instant it may be sent (delay or retry backoff)
  ``sync:{a}:{d}:applied:<n>``  the applied state per profile, one compact value (:class:`Applied`):
                            last applied version, digest of the last applied desired state
                            (6 bytes), ownership ledger (names as codes of ``names``), in
                            listpack buckets (:mod:`connector.sync.applied`; ``:lh`` their state)
  ``sync:{a}:{d}:applied``  hash profile → the same, written before the buckets (read; moved to
                            a bucket by the next write) and for values over 64 bytes
  ``sync:{a}:{d}:names``    hash: tag, list, field and segment name ↔ short code (only grows)
  ``sync:{a}:{d}:owned``    hash profile → OwnedState JSON: written before the compact form only;
  ``sync:{a}:{d}:digest``   hash profile → hex digest: read as a fallback, dropped on the next write
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

import base64
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from adapters.change import Change, OwnedState
from connector.profiles.store import NameCodes

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
    for volatile in ("version", "identities", "other_emails"):
        body.pop(volatile, None)
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:32]


def contact_key(email: str) -> str:
    """A short key of the address a contact's state was applied under (kept in its ledger, ``e``):
    8 characters of a digest of the lower-cased address, which tells a change of address from none;
    the address itself is not kept here."""
    digest = hashlib.blake2b(email.strip().lower().encode(), digest_size=6).digest()
    return base64.urlsafe_b64encode(digest).decode()


DIGEST_BYTES = 6  # see Applied: the odds of two states with one digest
DIGEST_BYTES_BEFORE = 8  # values written before, behind "#"
_VERSION = re.compile(rb"-?\d+")
_OWNED_PARTS = (("t", "tags"), ("l", "lists"), ("f", "fields"), ("s", "segments"))


@dataclass(frozen=True)
class Applied:
    """What the sync holds for one contact of one destination once changes were applied.

    Stored as one hash field (:mod:`connector.sync.applied`: a bucket of
    ``sync:{a}:{d}:applied:<n>``): ``<version>`` then ``~`` and the first 6 bytes of the state
    digest (when the contact matches the last applied state), then ``|`` and the ownership ledger
    (when the connector set anything): ``;``-separated parts ``t`` tags, ``l`` lists, ``f``
    fields, ``s`` segments (each a ``,``-separated list of name codes), ``e`` the key of the address
    it was applied under (:func:`contact_key`), ``r`` the ESP's contact id (last, verbatim). A
    version of -1 means none was applied yet (a partly applied first change). Scripts read the
    version as the leading integer. Values written before hold ``#`` and 8 bytes of digest; they are
    read as they are (the digest compared on its length).

    The digest only tells a change that would not alter the contact from one that would, per
    contact (no birthday problem): a change wrongly taken for unchanged needs its 48 bits to match
    those of the last applied state, 1 in 2.8e14 per comparison; at 100M contacts with 1,000
    changes each over their life that is 3.6e-4 contacts left stale in all."""

    version: int | None = None
    digest: bytes | None = None
    owned: OwnedState | None = None

    def names(self) -> set[str]:
        owned = self.owned or OwnedState()
        return {name for _, attr in _OWNED_PARTS for name in getattr(owned, attr)}

    def tail(self, codes: Mapping[str, str]) -> bytes:
        """Everything after the version."""
        mark = b"#" if self.digest is not None and len(self.digest) == DIGEST_BYTES_BEFORE else b"~"
        out = mark + self.digest if self.digest else b""
        if self.owned is None:
            return out
        parts = [
            letter + ",".join(sorted(codes[n] for n in getattr(self.owned, attr)))
            for letter, attr in _OWNED_PARTS
            if getattr(self.owned, attr)
        ]
        if self.owned.email_key is not None:
            parts.append("e" + self.owned.email_key)
        if self.owned.remote_id is not None:
            parts.append("r" + self.owned.remote_id)
        return out + b"|" + ";".join(parts).encode()


def short_digest(change: Change) -> bytes:
    return bytes.fromhex(state_digest(change)[: 2 * DIGEST_BYTES])


def decode_applied(raw: bytes, name_of: Any) -> Applied:
    """One stored value (``name_of(code)`` gives a name back). Values written before the compact
    form hold the version only: their ledger and digest are in the ``owned`` and ``digest`` hashes."""
    found = _VERSION.match(raw)
    version = int(found.group()) if found else -1
    rest = raw[found.end() if found else 0 :]
    digest = None
    size = {b"~": DIGEST_BYTES, b"#": DIGEST_BYTES_BEFORE}.get(rest[:1])
    if size is not None:
        digest, rest = rest[1 : 1 + size], rest[1 + size :]
    owned = _decode_owned(rest[1:].decode(), name_of) if rest[:1] == b"|" else None
    return Applied(version if version >= 0 else None, digest, owned)


def _decode_owned(text: str, name_of: Any) -> OwnedState:
    found: dict[str, Any] = {}
    letters = dict(_OWNED_PARTS)
    while text:
        if text[0] == "r":
            found["remote_id"] = text[1:]
            break
        part, _, text = text.partition(";")
        if part[:1] == "e":
            found["email_key"] = part[1:]
            continue
        found[letters[part[0]]] = frozenset(name_of(code) for code in part[1:].split(",") if code)
    return OwnedState(**found)


def legacy_applied(version: bytes | None, owned: bytes | None, digest: bytes | None) -> Applied:
    """The applied state as stored before the compact form (three hashes)."""
    return Applied(
        int(version) if version is not None else None,
        bytes.fromhex(digest.decode()[: 2 * DIGEST_BYTES_BEFORE]) if digest else None,
        OwnedState.from_dict(json.loads(owned)) if owned else None,
    )


_CODES: dict[int, NameCodes] = {}


def sync_names(conn: redis.Redis) -> NameCodes:
    """The name codes of the ownership ledgers, per destination (scope ``account:destination``),
    cached per connection."""
    found = _CODES.get(id(conn))
    if found is None or found.conn is not conn:
        found = _CODES[id(conn)] = NameCodes(conn, key=lambda scope: f"sync:{scope}:names")
    return found
