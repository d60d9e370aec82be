"""An erasure interrupted after the profile store erased the person is finished anyway: the
journal written before the store is touched lets the scheduler finish it (segment member sets,
ledger, due index, dead letters, the ESPs' deletions), even though the redelivered ``delete`` event
is dropped (the person's tombstone) and ``connector profiles delete`` no longer finds the profile."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import redis
from rq import Queue, SimpleWorker

from connector import clock, sync
from connector.config import Account, load_accounts
from connector.dev.sandbox import SANDBOX_MAILCHIMP_LIST
from connector.ingest.queue import EventQueue
from connector.profiles import lookup
from connector.sync.keys import key as sync_key
from connector.worker import erasure, jobs, scheduler
from connector.worker.jobs import REEVALUATE_QUEUE
from connector.worker.ledger import Ledger, ledger_key
from connector.worker.sizes import is_member
from tests.profile_helpers import ev
from tests.test_end_to_end import EMAIL, T0, fakes, run_workers, send, wired  # noqa: F401  (fixtures)
from tests.worker.test_after_the_ledger import World, world  # noqa: F401  (fixture)

USER = "u-cart"  # the user id tests.test_end_to_end.send uses
DESTINATIONS = ("hubspot", "klaviyo", "mailchimp")


def _a_cart_abandoner_at_every_esp(client: Any, conn: redis.Redis, frozen: Any, apps: dict[str, Any]) -> str:
    send(client, "Product Added", T0, "journal-cart")
    run_workers(conn)
    frozen.advance(timedelta(hours=48, minutes=1))
    scheduler.fire_due(conn, clock.now())
    run_workers(conn)
    pid = lookup(conn, "acme", "email", EMAIL)
    assert pid is not None and is_member(conn, "acme", "cart_abandoner", pid)
    assert EMAIL in apps["hubspot"].snapshot()["contacts"]
    return pid


def _fail_once(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    real, calls = getattr(owner, name), []

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise redis.ConnectionError("lost the connection")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)
    return calls


def _deletions_queued(conn: redis.Redis, pid: str) -> list[str]:
    out = []
    for dest in DESTINATIONS:
        raw = conn.hget(sync_key("acme", dest, "pending"), pid)
        if raw is not None and json.loads(raw).get("erase"):
            out.append(dest)
    return out


def _assert_finished(conn: redis.Redis, pid: str) -> None:
    assert not conn.exists(ledger_key("acme", pid)), "the ledger of the erased person is left"
    assert not is_member(conn, "acme", "cart_abandoner", pid), "the erased person is still a member"
    assert _deletions_queued(conn, pid) == list(DESTINATIONS), "no deletion queued at the destinations"
    assert not list(conn.scan_iter(f"{erasure.JOURNAL_PREFIX}*")), "the journal record is left"


class Shop(NamedTuple):
    """The account with rules and the three ESPs on fakes, its clock frozen, and one person in
    cart_abandoner at every ESP."""

    conn: redis.Redis
    client: Any
    apps: dict[str, Any]
    account: Account
    queue: EventQueue
    monkeypatch: pytest.MonkeyPatch
    frozen: clock.FrozenClock
    pid: str


@pytest.fixture
def shop(world: World, settings: Any, config_dir: Path) -> Iterator[Shop]:  # noqa: F811
    account = load_accounts(config_dir).get("acme")
    assert account is not None
    apps, client, conn, monkeypatch = world
    queue = EventQueue(conn, settings.event_shards)
    with clock.frozen(T0) as frozen:
        pid = _a_cart_abandoner_at_every_esp(client, conn, frozen, apps)
        yield Shop(conn, client, apps, account, queue, monkeypatch, frozen, pid)


def _interrupted(shop: Shop, step: tuple[Any, str], erase: Any) -> list[int]:
    """``erase()`` stops with a lost connection at ``step``; the calls of ``step`` made."""
    calls = _fail_once(shop.monkeypatch, *step)
    with pytest.raises(redis.ConnectionError):
        erase()
    return calls


def _person(shop: Shop, step: tuple[Any, str]) -> list[int]:
    return _interrupted(
        shop,
        step,
        lambda: erasure.erase_person(shop.conn, shop.conn, shop.account, shop.pid, clock.now(), "api"),
    )


def _account(shop: Shop, step: tuple[Any, str]) -> list[int]:
    return _interrupted(
        shop, step, lambda: erasure.erase_account(shop.conn, shop.conn, shop.account, clock.now(), "shopify")
    )


def _finish_account_erasure(shop: Shop) -> None:
    shop.frozen.advance(timedelta(seconds=erasure.ACCOUNT_FINISH_AFTER_SECONDS))
    scheduler.tick(shop.queue, clock.now())  # hands it to a worker's job, not run in the tick
    assert shop.conn.exists(erasure.journal_key("acme"))
    assert erasure.FINISH_QUEUE == REEVALUATE_QUEUE  # a queue every worker serves
    SimpleWorker([Queue(REEVALUATE_QUEUE, connection=shop.conn)], connection=shop.conn).work(burst=True)


def test_a_delete_event_interrupted_after_the_profile_store_is_finished_by_the_scheduler(shop: Shop) -> None:
    conn, pid = shop.conn, shop.pid
    calls = _fail_once(shop.monkeypatch, sync, "erase")
    delete = ev("journal-del", "delete", type="delete", at=clock.now(), user_id=USER)
    shard = shop.queue.ingest("acme", [delete], 3600).shard
    with pytest.raises(redis.ConnectionError):
        jobs.drain_events(shard, conn=conn)
    assert lookup(conn, "acme", "email", EMAIL) is None  # the profile store's part is done
    shop.monkeypatch.setattr(jobs, "CLAIM_IDLE_MS", 0)
    jobs.drain_events(shard, conn=conn)  # redelivered: the delete event is dropped (tombstone)
    assert conn.hget("metrics:worker", f"{erasure.DROPPED_OUTCOME}:acme") == b"1"
    shop.frozen.advance(timedelta(seconds=erasure.FINISH_AFTER_SECONDS + 1))
    scheduler.tick(shop.queue, clock.now())
    _assert_finished(conn, pid)
    assert len(calls) == 2
    run_workers(conn)  # the sync worker asks the three ESPs to delete the contact
    assert EMAIL not in shop.apps["mailchimp"].snapshot()["lists"][SANDBOX_MAILCHIMP_LIST]["members"]
    assert EMAIL not in shop.apps["hubspot"].snapshot()["contacts"]
    assert EMAIL not in shop.apps["klaviyo"].snapshot()["profiles"]


def test_an_erasure_by_the_command_line_interrupted_before_the_ledger_is_finished_by_running_it_again(
    shop: Shop,
) -> None:
    conn, pid = shop.conn, shop.pid
    _person(shop, (Ledger, "delete_many"))
    assert conn.exists(ledger_key("acme", pid))
    # run again, the command finds no profile but the unfinished erasure, and finishes it
    assert erasure.erase_person(conn, conn, shop.account, pid, clock.now(), "cli")
    _assert_finished(conn, pid)
    assert not erasure.erase_person(conn, conn, shop.account, pid, clock.now(), "cli")


def test_the_scheduler_leaves_an_erasure_in_progress_to_its_worker_for_a_while(shop: Shop) -> None:
    conn, pid = shop.conn, shop.pid
    _person(shop, (erasure, "purge_dead_letters"))
    [name] = conn.scan_iter(f"{erasure.JOURNAL_PREFIX}acme:*")
    assert EMAIL.encode() in conn.get(name)  # what finishing needs, until it is finished
    assert 0 < conn.ttl(name) <= erasure.JOURNAL_SECONDS
    shop.frozen.advance(timedelta(seconds=erasure.FINISH_AFTER_SECONDS - 1))
    scheduler.tick(shop.queue, clock.now())  # too early: the erasure may still be running elsewhere
    assert conn.exists(name)
    assert _deletions_queued(conn, pid) == []
    shop.frozen.advance(timedelta(seconds=2))
    scheduler.tick(shop.queue, clock.now())
    _assert_finished(conn, pid)
    assert not conn.exists(erasure.JOURNAL_INDEX)


def test_an_account_erasure_interrupted_midway_is_finished_by_the_scheduler(shop: Shop) -> None:
    conn = shop.conn
    _account(shop, (sync, "erase"))
    shop.frozen.advance(timedelta(seconds=erasure.FINISH_AFTER_SECONDS + 1))
    scheduler.tick(shop.queue, clock.now())  # the people's records: none left; the account's waits
    assert conn.exists(erasure.journal_key("acme"))
    _finish_account_erasure(shop)
    _assert_finished(conn, shop.pid)
    assert not conn.exists(erasure.journal_key("acme"))
    run_workers(conn)
    assert EMAIL not in shop.apps["hubspot"].snapshot()["contacts"]


def test_finishing_that_fails_is_tried_again_later(shop: Shop) -> None:
    conn, pid = shop.conn, shop.pid
    calls = _person(shop, (sync, "erase"))
    calls.clear()  # and once more: the scheduler's first attempt fails too
    shop.frozen.advance(timedelta(seconds=erasure.FINISH_AFTER_SECONDS))
    scheduler.tick(shop.queue, clock.now())  # logged, the other tasks run all the same
    assert len(calls) == 1 and _deletions_queued(conn, pid) == []
    shop.frozen.advance(timedelta(seconds=erasure.RETRY_SECONDS - 1))
    scheduler.tick(shop.queue, clock.now())
    assert len(calls) == 1
    shop.frozen.advance(timedelta(seconds=1))
    scheduler.tick(shop.queue, clock.now())
    _assert_finished(conn, pid)


def test_finishing_spares_a_person_who_came_back_after_the_erasure(shop: Shop) -> None:
    """Events received after an erasure are a new relationship: the profile they make, and its
    address at the ESPs, are not the erased person's, whenever the erasure is finished."""
    conn, pid = shop.conn, shop.pid
    _person(shop, (sync, "erase"))
    shop.frozen.advance(timedelta(seconds=5))
    send(shop.client, "Product Added", clock.now(), "journal-back")  # the same person, again
    run_workers(conn)
    again = lookup(conn, "acme", "email", EMAIL)
    assert again is not None and again != pid
    shop.frozen.advance(timedelta(seconds=erasure.FINISH_AFTER_SECONDS))
    scheduler.tick(shop.queue, clock.now())
    assert not conn.exists(ledger_key("acme", pid)) and not list(conn.scan_iter("erasing*"))
    assert _deletions_queued(conn, pid) == []  # not under the address the new profile holds
    assert lookup(conn, "acme", "email", EMAIL) == again


def test_finishing_an_account_erasure_erases_only_the_people_it_began_with(shop: Shop) -> None:
    conn = shop.conn
    _account(shop, (sync, "erase"))
    shop.frozen.advance(timedelta(minutes=5))  # a new customer of the shop, after the redact
    shop.queue.ingest("acme", [ev("journal-new", "product_added", at=clock.now(), user_id="u-new")], 3600)
    run_workers(conn)
    new_pid = lookup(conn, "acme", "user_id", "u-new")
    assert new_pid is not None
    _finish_account_erasure(shop)
    assert not conn.exists(ledger_key("acme", shop.pid)) and lookup(conn, "acme", "email", EMAIL) is None
    assert lookup(conn, "acme", "user_id", "u-new") == new_pid  # not one of the people it began with
    assert not list(conn.scan_iter("erasing*"))


def test_finishing_an_account_erasure_writes_its_tombstone_if_it_was_not(shop: Shop) -> None:
    conn = shop.conn
    _account(shop, (erasure, "record_tombstones"))
    assert conn.get(erasure.tombstone_key("acme")) is None
    assert lookup(conn, "acme", "email", EMAIL) == shop.pid
    _finish_account_erasure(shop)
    assert conn.get(erasure.tombstone_key("acme")) is not None
    assert lookup(conn, "acme", "email", EMAIL) is None and not conn.exists(ledger_key("acme", shop.pid))
    assert not list(conn.scan_iter("erasing*"))
