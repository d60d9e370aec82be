"""Erasure leaves nothing: a person who went through every path (anonymous then merged, a segment
with history, a pending sync change, an export, a rejected event, dead letters of both kinds,
dedupe markers, the due index, segment sizes and analytics, the live stream of deliveries) is
erased, and then every key of Redis, of every type, is read for any of their identifiers (and
their masked forms, as the live stream shows them): none is found. The erasure records and the
tombstones hold digests only; the dedupe markers of their events stay (named by digests of the
senders' event ids, no identifier), so a replay of one of those events is still a duplicate."""

from __future__ import annotations

import contextlib
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from connector import clock, sync
from connector.config import load_accounts
from connector.dev.sandbox import SANDBOX_MAILCHIMP_LIST
from connector.ops import live
from connector.profiles import erasures_since, lookup
from connector.profiles.erasure import profile_digest, stored_exports
from connector.profiles.keys import index_field
from connector.sync.applied import pack_pid
from connector.sync.deadletters import DeadLetters
from connector.worker import ledger as ledger_module
from connector.worker import scheduler
from connector.worker.jobs import drain_events
from connector.worker.ledger import Ledger
from connector.worker.pipeline import apply_batch
from tests.profile_helpers import ev
from tests.sync.test_sync_anonymous import post
from tests.test_end_to_end import T0, fakes, run_workers, wired  # noqa: F401  (fixtures)

EMAIL = "erase.me@example.com"
USER = "u-erase-91"
ANON = "anon-erase-4c2d"


def every_value(conn: redis.Redis, key: bytes) -> list[bytes]:
    """The key's name and everything it holds, whatever its type (RQ's compressed job data too)."""
    kind = conn.type(key).decode()
    out = [key]
    if kind == "string":
        out.append(conn.get(key) or b"")
    elif kind == "hash":
        for field, value in conn.hgetall(key).items():
            out += [field, value]
    elif kind == "list":
        out += conn.lrange(key, 0, -1)
    elif kind == "set":
        out += list(conn.smembers(key))
    elif kind == "zset":
        out += [member for member, _ in conn.zrange(key, 0, -1, withscores=True)]
    elif kind == "stream":
        for entry_id, fields in conn.xrange(key):
            out.append(entry_id)
            for field, value in fields.items():
                out += [field, value]
    else:
        raise AssertionError(f"unexpected type {kind} of {key!r}")
    expanded = []
    for raw in out:
        expanded.append(raw)
        if raw[:1] == b"x":
            with contextlib.suppress(zlib.error):
                expanded.append(zlib.decompress(raw))
    return expanded


def hits(conn: redis.Redis, needles: list[str]) -> list[tuple[str, str]]:
    found = []
    for key in conn.scan_iter("*", count=1000):
        for raw in every_value(conn, key):
            low = raw.lower()
            found += [(key.decode(), n) for n in needles if n.lower().encode() in low]
    return found


def byte_hits(conn: redis.Redis, needles: list[bytes]) -> list[tuple[str, bytes]]:
    """Binary needles (the identity index's fields: a kind code and a digest), exactly."""
    found = []
    for key in conn.scan_iter("*", count=1000):
        for raw in every_value(conn, key):
            found += [(key.decode(), n) for n in needles if n in raw]
    return found


def _go_through_everything(client, conn: redis.Redis, config_dir: Path, frozen) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    accounts = load_accounts(config_dir)
    live.watch(conn, "acme")  # someone watches the live events: the deliveries are shown there
    post(client, {"type": "track", "event": "Product Added", "anonymousId": ANON, "messageId": "er-1",
                  "timestamp": T0.isoformat(), "properties": {"sku": "A1"}})  # fmt: skip
    post(client, {"type": "identify", "userId": USER, "messageId": "er-2", "timestamp": T0.isoformat(),
                  "traits": {"email": EMAIL, "name": "Erase Me"}})  # fmt: skip
    run_workers(conn)
    anonymous, known = lookup(conn, "acme", "anonymous_id", ANON), lookup(conn, "acme", "user_id", USER)
    assert anonymous and known and anonymous != known
    frozen.advance(timedelta(hours=48, minutes=1))
    scheduler.fire_due(conn, clock.now())
    run_workers(conn)  # the anonymous profile entered cart_abandoner: history, no destination
    post(client, {"type": "alias", "userId": USER, "previousId": ANON, "messageId": "er-3",
                  "timestamp": clock.now().isoformat()})  # fmt: skip
    run_workers(conn)  # merged, and sent to the three ESPs
    survivor = lookup(conn, "acme", "email", EMAIL)
    assert survivor in (anonymous, known)
    assert sync.applied_version(conn, "acme", "hubspot", survivor) is not None
    # a segment exit whose sync is still pending (the sync worker does not run)
    post(client, {"type": "track", "event": "Order Completed", "userId": USER, "messageId": "er-4",
                  "timestamp": clock.now().isoformat()})  # fmt: skip
    for shard in range(4):
        drain_events(shard, conn=conn)
    assert conn.hexists("sync:acme:hubspot:pending", survivor)
    now = clock.now()
    apply_batch(
        [ev("dr", "data_request", type="data_request", at=now, email=EMAIL)], now, accounts, conn, conn
    )
    assert stored_exports(conn, "acme")
    old = datetime(1900, 1, 1, tzinfo=UTC)  # refused: outside the stored range
    apply_batch([ev("rj", at=old, email=EMAIL, user_id=USER)], now, accounts, conn, conn)
    assert conn.xlen("rej:acme") == 1
    dead = DeadLetters(conn)
    dead.put("events", "undecodable", f'{{"anonymousId": "{ANON}", "email": "{EMAIL}"', now)
    change = {"account": "acme", "destination": "mailchimp", "profile_id": survivor, "version": 9}
    dead.put("sync:mailchimp", "PermanentError: 400", {"change": change}, now, account="acme")
    dead.put("events", "undecodable", '{"anonymousId": "someone-else"', now)
    return survivor, (known if survivor == anonymous else anonymous)


def test_erasure_leaves_no_identifier_in_any_key(
    wired: dict[str, str],  # noqa: F811
    client,  # type: ignore[no-untyped-def]
    redis_client: redis.Redis,
    fakes: dict[str, Any],  # noqa: F811
    config_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn = redis_client
    monkeypatch.setattr(ledger_module, "INLINE", 1)  # the ledger's older changes are in their list
    monkeypatch.setattr(ledger_module, "KEEP", 1)
    with clock.frozen(T0) as frozen:
        survivor, absorbed = _go_through_everything(client, conn, config_dir, frozen)
        # the live stream shows their identities masked (j***@example.com)
        masked = [live.mask("email", EMAIL), live.mask("user_id", USER), live.mask("anonymous_id", ANON)]
        needles = [EMAIL, USER, ANON, survivor, absorbed, *masked, pack_pid(survivor)]  # sync buckets
        before = {n for _, n in hits(conn, needles)}
        assert before == set(needles)  # every path left its traces
        fields = [
            index_field("email", EMAIL.lower()),
            index_field("user_id", USER),
            index_field("anonymous_id", ANON),
        ]
        assert {n for _, n in byte_hits(conn, fields)} == set(fields)  # the identity index's buckets
        assert {n for key, n in hits(conn, masked) if key == live.key("acme")} == set(masked)
        markers = set(conn.scan_iter("dd:acme:*"))
        assert markers
        assert Ledger(conn).history_length("acme", survivor) > 1 and list(conn.scan_iter("lold:*"))
        now = clock.now()
        erase = ev("del", "delete", type="delete", at=now, email=EMAIL)
        outcome = apply_batch([erase], now, load_accounts(config_dir), conn, conn)
        assert outcome["acme"].erased == 1
        assert hits(conn, [EMAIL, USER, ANON]) != []  # the ESPs' deletion waits in the queue
        run_workers(conn)  # the sync worker asks the three ESPs to delete the contact
    assert hits(conn, [*needles, pack_pid(absorbed)]) == []  # the absorbed profile's packed id too
    assert byte_hits(conn, fields) == []
    assert markers <= set(conn.scan_iter("dd:acme:*"))  # kept: they hold no identifier
    assert DeadLetters(conn).count("events") == 1  # someone else's stays
    [record] = erasures_since(conn, "acme")
    assert record.profile_digest == profile_digest("acme", survivor)
    apps = fakes["apps"]
    assert EMAIL not in apps["mailchimp"].snapshot()["lists"][SANDBOX_MAILCHIMP_LIST]["members"]
    assert EMAIL not in apps["hubspot"].snapshot()["contacts"]
    assert EMAIL not in apps["klaviyo"].snapshot()["profiles"]
