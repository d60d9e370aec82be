"""A person whose address changes: the earlier contact is left before the new one gets the state, and
neither a refusal nor a failure of that leaving loses the new contact's state or repeats the leaving."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path

import redis

from adapters.change import APPLIED, FAILED, Change, OwnedState, Result
from adapters.errors import PermanentError, TransientError
from connector import sync
from connector.sync.keys import contact_key
from connector.sync.submit import Submission, submit_many
from tests.sync.test_sync_worker import NOW, account, flusher

EARLIER, NOW_ADDRESS = "ines.before@example.com", "ines.after@example.com"


class AddressedEsp:
    """Holds each address's tags like an ESP would; can refuse an address, or fail it once."""

    name = "fake"
    batch_size = 500

    def __init__(self) -> None:
        self.calls: list[list[tuple[str | None, frozenset[str]]]] = []
        self.tags: dict[str, set[str]] = {}
        self.refuse: dict[str, Exception] = {}
        self.fail_once: dict[str, Exception] = {}

    def apply(self, changes: Sequence[Change], owned: Mapping[str, OwnedState]) -> list[Result]:
        self.calls.append([(c.email, c.tags) for c in changes])
        out = []
        for change in changes:
            assert change.email is not None
            err = self.refuse.get(change.email) or self.fail_once.pop(change.email, None)
            if err is not None:
                out.append(Result(change.profile_id, change.version, FAILED, error=err))
                continue
            mine = self.tags.setdefault(change.email, set())
            mine -= owned[change.profile_id].tags - change.tags
            mine |= change.tags
            out.append(Result(change.profile_id, change.version, APPLIED, OwnedState.of(change)))
        return out


def _move(conn: redis.Redis, tmp_path: Path) -> AddressedEsp:
    """Ines is a VIP under her earlier address, then her address changes; the ESP she is at."""
    esp = AddressedEsp()
    acct = account(tmp_path)
    sync.submit(conn, acct, "p1", 1, ["vip"], {}, EARLIER, "unknown", NOW)
    assert flusher(conn, acct, esp).flush(NOW + timedelta(seconds=1)) == {"applied": 1}
    assert esp.tags == {EARLIER: {"vip"}}
    moved = Submission("p1", 2, ["vip"], {}, NOW_ADDRESS, "unknown", other_emails=(EARLIER,))
    submit_many(conn, acct, [moved], NOW + timedelta(seconds=2))
    return esp


def _ledger(conn: redis.Redis) -> OwnedState:
    owned = sync.owned_state(conn, "acme", "mailchimp", "p1")
    assert owned is not None
    return owned


def test_a_leaving_the_esp_refuses_for_good_does_not_hold_the_new_contact_back(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    esp = _move(redis_client, tmp_path)
    esp.refuse[EARLIER] = PermanentError("404 Resource Not Found: the member was deleted", status=404)
    counts = flusher(redis_client, account(tmp_path), esp).flush(NOW + timedelta(seconds=3))
    assert counts == {"earlier_contact_refused": 1, "applied": 1}
    assert esp.tags[NOW_ADDRESS] == {"vip"}
    assert _ledger(redis_client).email_key == contact_key(NOW_ADDRESS) and _ledger(redis_client).tags == {
        "vip"
    }


def test_a_leaving_that_may_succeed_later_holds_the_change_and_is_retried(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    esp = _move(redis_client, tmp_path)
    esp.fail_once[EARLIER] = TransientError("503 Service Unavailable", status=503)
    acct = account(tmp_path)
    assert flusher(redis_client, acct, esp).flush(NOW + timedelta(seconds=3)) == {"retry": 1}
    assert esp.calls[-1] == [(EARLIER, frozenset())] and NOW_ADDRESS not in esp.tags
    assert _ledger(redis_client).email_key == contact_key(EARLIER)  # still the earlier contact's
    counts = flusher(redis_client, acct, esp).flush(NOW + timedelta(minutes=5))
    assert counts == {"left_earlier_contact": 1, "applied": 1}
    assert esp.tags == {EARLIER: set(), NOW_ADDRESS: {"vip"}}


def test_a_leaving_done_is_not_repeated_when_the_change_itself_fails(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    esp = _move(redis_client, tmp_path)
    esp.fail_once[NOW_ADDRESS] = TransientError("503 Service Unavailable", status=503)
    acct = account(tmp_path)
    counts = flusher(redis_client, acct, esp).flush(NOW + timedelta(seconds=3))
    assert counts == {"left_earlier_contact": 1, "retry": 1}
    sent = len(esp.calls)
    assert flusher(redis_client, acct, esp).flush(NOW + timedelta(minutes=5)) == {"applied": 1}
    assert esp.calls[sent:] == [[(NOW_ADDRESS, frozenset({"vip"}))]]  # the earlier one is not asked again
    assert esp.tags == {EARLIER: set(), NOW_ADDRESS: {"vip"}}
