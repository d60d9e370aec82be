"""The sync queue and worker on real Redis, with a recording ESP (the adapters have their own tests)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from adapters.change import APPLIED, DEFERRED, FAILED, Change, OwnedState, Result
from adapters.errors import AuthError, PermanentError, RateLimited, TransientError
from adapters.mailchimp import MailchimpAdapter, MailchimpConfig
from connector import clock, sync
from connector.config import Account, load_account_file
from connector.destinations import destinations
from connector.profiles.erasure import Erased
from connector.sync.deadletters import DeadLetters
from connector.worker.erasure import purge_dead_letters

NOW = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)


class RecordingEsp:
    """Holds each contact's tags like an ESP would; can be told to fail."""

    name = "fake"
    batch_size = 500

    def __init__(self) -> None:
        self.calls: list[list[Change]] = []
        self.owned_seen: list[Mapping[str, OwnedState]] = []
        self.tags: dict[str, set[str]] = {}
        self.fail: Exception | None = None
        self.fail_items: dict[str, Exception] = {}

    def apply(self, changes: Sequence[Change], owned: Mapping[str, OwnedState]) -> list[Result]:
        self.calls.append(list(changes))
        self.owned_seen.append(dict(owned))
        if self.fail is not None:
            raise self.fail
        out = []
        for change in changes:
            err = self.fail_items.get(change.profile_id)
            if err is not None:
                out.append(Result(change.profile_id, change.version, FAILED, error=err))
                continue
            if change.erase:
                self.tags.pop(change.profile_id, None)
                out.append(Result(change.profile_id, change.version, APPLIED, None, note="deleted"))
                continue
            mine = self.tags.setdefault(change.profile_id, set())
            mine -= owned[change.profile_id].tags - change.tags
            mine |= change.tags
            out.append(Result(change.profile_id, change.version, APPLIED, OwnedState.of(change, "r1")))
        return out


def account(tmp_path: Path, **dest: Any) -> Account:
    cfg = {
        "api_key_env": "FAKE_KEY",
        "list_id": "aud1",
        "segments": {
            "cart_abandoner": {"tags": ["cart abandoner"], "lists": ["77"]},
            "vip": {"tags": ["vip"]},
        },
        "fields": {"ltv": "LTV"},
        "batch_delay_ms": 500,
    }
    cfg.update(dest)
    path = tmp_path / "acme.yaml"
    path.write_text(yaml.safe_dump({"account": "acme", "destinations": {"mailchimp": cfg}}))
    return load_account_file(path, env={})


def flusher(conn: redis.Redis, acct: Account, esp: Any) -> sync.Flusher:
    return sync.Flusher(conn, destinations(acct)["mailchimp"], esp, rng=lambda: 0.5)


def submit(
    conn: redis.Redis,
    acct: Account,
    pid: str,
    version: int,
    segments: list[str],
    now: datetime = NOW,
    **kw: Any,
) -> list[str]:
    return sync.submit(
        conn,
        acct,
        pid,
        version,
        segments,
        kw.pop("traits", {}),
        kw.pop("email", f"{pid}@example.com"),
        kw.pop("consent", "unknown"),
        now,
        **kw,
    )


def test_submit_builds_the_change_from_the_destination_config(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    acct = account(tmp_path)
    assert submit(redis_client, acct, "p1", 1, ["cart_abandoner", "unmapped"], traits={"ltv": 42}) == [
        "mailchimp"
    ]
    change = sync.pending(redis_client, "acme", "mailchimp")["p1"]
    assert change.tags == {"cart abandoner"} and change.lists == {"77"}
    assert change.fields == {"LTV": 42} and change.segments == {"cart_abandoner"}
    assert redis_client.exists(sync.key("acme", "mailchimp", "armed"))


def test_enter_exit_enter_in_one_window_collapses_to_one_call(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    acct = account(tmp_path)
    submit(redis_client, acct, "p1", 1, ["vip"])
    submit(redis_client, acct, "p1", 2, [])
    submit(redis_client, acct, "p1", 3, ["vip"])
    esp = RecordingEsp()
    flusher(redis_client, acct, esp).flush(NOW + timedelta(seconds=1))
    assert [[c.version for c in call] for call in esp.calls] == [[3]]
    assert sync.applied_version(redis_client, "acme", "mailchimp", "p1") == 3


def test_enter_then_exit_before_any_send_makes_no_call(redis_client: redis.Redis, tmp_path: Path) -> None:
    acct = account(tmp_path)
    submit(redis_client, acct, "p1", 1, ["vip"])
    submit(redis_client, acct, "p1", 2, [])
    esp = RecordingEsp()
    counts = flusher(redis_client, acct, esp).flush(NOW + timedelta(seconds=1))
    assert esp.calls == [] and counts == {"unchanged": 1}
    # and the same state sent again later is not re-sent either
    submit(redis_client, acct, "p2", 1, ["vip"])
    flusher(redis_client, acct, esp).flush(NOW + timedelta(seconds=1))
    submit(redis_client, acct, "p2", 2, ["vip"], now=NOW + timedelta(seconds=5))
    flusher(redis_client, acct, esp).flush(NOW + timedelta(seconds=6))
    assert len(esp.calls) == 1


def test_an_older_version_never_overwrites_a_newer_one(redis_client: redis.Redis, tmp_path: Path) -> None:
    acct = account(tmp_path)
    esp = RecordingEsp()
    submit(redis_client, acct, "p1", 5, ["vip"])
    flusher(redis_client, acct, esp).flush(NOW + timedelta(seconds=1))
    assert submit(redis_client, acct, "p1", 4, []) == []  # a retried older change
    assert sync.pending(redis_client, "acme", "mailchimp") == {}
    # a newer pending one is not replaced by an older one either
    submit(redis_client, acct, "p1", 7, [])
    submit(redis_client, acct, "p1", 6, ["vip"])
    assert sync.pending(redis_client, "acme", "mailchimp")["p1"].version == 7


def test_batch_delay_and_size(redis_client: redis.Redis, tmp_path: Path) -> None:
    acct = account(tmp_path)
    esp = RecordingEsp()
    submit(redis_client, acct, "p1", 1, ["vip"])
    f = flusher(redis_client, acct, esp)
    f.flush(NOW + timedelta(milliseconds=100))
    assert esp.calls == []  # waits for the batch delay
    f.flush(NOW + timedelta(milliseconds=500))
    assert len(esp.calls) == 1
    for i in range(1200):
        submit(redis_client, acct, f"q{i}", 1, ["vip"])
    f.flush(NOW)  # full batches go without waiting for the delay
    assert [len(c) for c in esp.calls[1:]] == [500, 500]
    f.flush(NOW + timedelta(seconds=1))
    assert [len(c) for c in esp.calls[1:]] == [500, 500, 200]


def test_once_the_first_change_is_ready_the_batch_takes_those_due_within_the_delay(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A steady flow makes one batch per batch delay, not one small batch per round trip."""
    acct = account(tmp_path)
    esp = RecordingEsp()
    submit(redis_client, acct, "p1", 1, ["vip"], now=NOW)  # ready at +0.5 s
    submit(redis_client, acct, "p2", 1, ["vip"], now=NOW + timedelta(milliseconds=300))  # +0.8 s
    submit(redis_client, acct, "p3", 1, ["vip"], now=NOW + timedelta(milliseconds=1200))  # +1.7 s
    f = flusher(redis_client, acct, esp)
    f.flush(NOW + timedelta(milliseconds=400))
    assert esp.calls == []  # nobody has waited the batch delay yet
    f.flush(NOW + timedelta(milliseconds=500))
    assert [[c.profile_id for c in call] for call in esp.calls] == [["p1", "p2"]]
    f.flush(NOW + timedelta(milliseconds=900))
    assert len(esp.calls) == 1  # p3 is more than a batch delay away: it waits for its own turn
    f.flush(NOW + timedelta(milliseconds=1700))
    assert [[c.profile_id for c in call] for call in esp.calls][1:] == [["p3"]]


def test_the_ledger_reaches_the_adapter(redis_client: redis.Redis, tmp_path: Path) -> None:
    acct = account(tmp_path)
    esp = RecordingEsp()
    esp.tags["p1"] = {"hand set"}
    submit(redis_client, acct, "p1", 1, ["vip", "cart_abandoner"])
    flusher(redis_client, acct, esp).flush(NOW + timedelta(seconds=1))
    submit(redis_client, acct, "p1", 2, ["vip"], now=NOW + timedelta(seconds=2))
    flusher(redis_client, acct, esp).flush(NOW + timedelta(seconds=3))
    assert esp.owned_seen[1]["p1"].tags == {"vip", "cart abandoner"}
    assert esp.tags["p1"] == {"hand set", "vip"}
    owned = sync.owned_state(redis_client, "acme", "mailchimp", "p1")
    assert owned is not None and owned.tags == {"vip"} and owned.lists == frozenset()


def test_an_outage_is_retried_with_backoff_and_ends_at_the_final_state(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    acct = account(tmp_path)
    esp = RecordingEsp()
    esp.fail = TransientError("503 down", status=503)
    f = flusher(redis_client, acct, esp)
    submit(redis_client, acct, "p1", 1, ["vip"])
    now = NOW + timedelta(seconds=1)
    waits = []
    for _ in range(6):
        f.flush(now)
        nxt = f.next_ready()
        assert nxt is not None
        waits.append(nxt - now.timestamp())
        now = datetime.fromtimestamp(nxt, UTC)
    assert waits == sorted(waits) and waits[0] < waits[-1]  # exponential backoff
    submit(redis_client, acct, "p1", 2, ["vip", "cart_abandoner"], now=now)  # changed meanwhile
    assert redis_client.zscore("sync:due", sync.member("acme", "mailchimp")) is not None
    esp.fail = None
    f.flush(now + timedelta(minutes=20))
    assert esp.tags["p1"] == {"vip", "cart abandoner"}
    assert sync.applied_version(redis_client, "acme", "mailchimp", "p1") == 2
    assert DeadLetters(redis_client).count("sync:mailchimp") == 0


def test_retries_stop_after_the_retry_window_with_a_dead_letter(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    acct = account(tmp_path)
    esp = RecordingEsp()
    esp.fail = RateLimited("429", retry_after=600)
    f = flusher(redis_client, acct, esp)
    submit(redis_client, acct, "p1", 1, ["vip"], traits={"ltv": 5})
    now = NOW + timedelta(seconds=1)
    for _ in range(400):
        f.flush(now)
        nxt = f.next_ready()
        if nxt is None:
            break
        window_end = (NOW + timedelta(seconds=1, hours=24)).timestamp()
        assert nxt - now.timestamp() >= 600 or nxt == window_end  # Retry-After honoured, in the window
        now = datetime.fromtimestamp(nxt, UTC)
    assert now - NOW >= timedelta(hours=24)
    assert now - NOW < timedelta(hours=25)
    items = list(DeadLetters(redis_client).list("sync:mailchimp"))
    assert len(items) == 1
    payload = items[0].payload
    assert payload["error"]["type"] == "RateLimited" and payload["attempts"] > 100
    assert payload["change"]["tags"] == ["vip"] and payload["change"]["fields"] == {"LTV": 5}
    assert sync.pending(redis_client, "acme", "mailchimp") == {}


def test_permanent_error_dead_letters_then_replays(redis_client: redis.Redis, tmp_path: Path) -> None:
    acct = account(tmp_path)
    esp = RecordingEsp()
    esp.fail_items["bad"] = PermanentError("400 Invalid Resource", status=400, code="Invalid Resource")
    f = flusher(redis_client, acct, esp)
    submit(redis_client, acct, "bad", 1, ["vip"])
    submit(redis_client, acct, "good", 1, ["vip"])
    counts = f.flush(NOW + timedelta(seconds=1))
    assert counts == {"dead": 1, "applied": 1}
    [item] = list(DeadLetters(redis_client).list("sync:mailchimp"))
    assert item.account == "acme" and "Invalid Resource" in item.reason
    esp.fail_items.clear()
    assert sync.replay(redis_client, item.payload, NOW) == "queued"
    f.flush(NOW + timedelta(seconds=2))
    assert esp.tags["bad"] == {"vip"}


def test_replay_of_a_superseded_change_does_not_overwrite(redis_client: redis.Redis, tmp_path: Path) -> None:
    acct = account(tmp_path)
    esp = RecordingEsp()
    old = Change("acme", "mailchimp", "p1", 1, "p1@example.com", tags=frozenset({"vip"}))
    submit(redis_client, acct, "p1", 2, [])
    submit(redis_client, acct, "p1", 3, ["cart_abandoner"])
    flusher(redis_client, acct, esp).flush(NOW + timedelta(seconds=1))
    assert sync.replay(redis_client, {"change": old.to_dict()}, NOW) == "superseded"
    assert sync.pending(redis_client, "acme", "mailchimp") == {}


def test_bad_credentials_pause_the_destination_without_losing_changes(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    acct = account(tmp_path)
    esp = RecordingEsp()
    esp.fail = AuthError("401 API Key Invalid", status=401, code="API Key Invalid")
    f = flusher(redis_client, acct, esp)
    submit(redis_client, acct, "p1", 1, ["vip"])
    assert f.flush(NOW + timedelta(seconds=1)) == {"paused": 1}
    assert sync.is_paused(redis_client, "acme", "mailchimp")
    assert sync.paused(redis_client)[("acme", "mailchimp")]["status"] == 401
    f.flush(NOW + timedelta(seconds=2))
    assert len(esp.calls) == 1  # no retries burned while paused
    assert "p1" in sync.pending(redis_client, "acme", "mailchimp")
    esp.fail = None
    sync.resume(redis_client, "acme", "mailchimp", NOW)
    f.flush(NOW + timedelta(seconds=3))
    assert esp.tags["p1"] == {"vip"}
    assert DeadLetters(redis_client).count("sync:mailchimp") == 0


def test_erasure_keeps_another_persons_dead_letter_with_the_erased_identifiers_taken_out(
    redis_client: redis.Redis,
) -> None:
    # an ESP refusing a whole batch names one contact in the reason of every change of it
    letters = DeadLetters(redis_client)
    reason = "400 P1@Example.com looks fake or invalid"
    mine = letters.put("sync:mailchimp", reason, {"change": {"profile_id": "p1"}}, NOW, "acme")
    payload = {"change": {"profile_id": "p2", "email": "p2@example.com"}, "error": {"detail": reason}}
    theirs = letters.put("sync:mailchimp", reason, payload, NOW, "acme")
    untouched = letters.put("sync:mailchimp", "400", {"change": {"profile_id": "p3"}}, NOW, "acme")
    erased = Erased("acme", "p1", (), {"email": ["p1@example.com"]})
    assert purge_dead_letters(redis_client, "acme", erased) == 1
    assert letters.get(mine) is None
    kept = letters.get(theirs)
    assert kept is not None and kept.reason == "400 [erased] looks fake or invalid"
    assert kept.payload == {
        "change": {"profile_id": "p2", "email": "p2@example.com"},
        "error": {"detail": "400 [erased] looks fake or invalid"},
    }
    kept_too = letters.get(untouched)
    assert kept_too is not None and kept_too.reason == "400"
    assert letters.count("sync:mailchimp") == 2
    assert redis_client.ttl(f"dlq:item:{theirs}") == redis_client.ttl(f"dlq:item:{untouched}")


def test_erasing_a_short_identifier_takes_it_out_whole_never_digits_of_other_values(
    redis_client: redis.Redis,
) -> None:
    letters = DeadLetters(redis_client)
    change = {"profile_id": "f00d42beef000001", "email": "bob42@example.com", "at": "2024-01-01T00:00:42Z"}
    theirs = letters.put(
        "sync:hubspot", "batch refused: ann.lee@example.com", {"change": change}, NOW, "acme"
    )
    events = letters.put(
        "events", "delivered more than 5 times without success", '{"name": "x"}', NOW, "acme"
    )
    erased = Erased("acme", "p1", (), {"email": ["ann.lee@example.com"], "user_id": ["42", "5"]})
    assert purge_dead_letters(redis_client, "acme", erased) == 0
    kept = letters.get(theirs)
    assert kept is not None and kept.reason == "batch refused: [erased]"
    assert kept.payload == {"change": change}  # the other person's change, to be replayed as it is
    assert letters.get(events) is not None  # "5" in a reason's text is not the user id 5


def test_erasure_fans_out_and_is_recorded_without_personal_data(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    acct = account(tmp_path)
    esp = RecordingEsp()
    f = flusher(redis_client, acct, esp)
    submit(redis_client, acct, "p1", 1, ["vip"])
    f.flush(NOW + timedelta(seconds=1))
    esp.fail_items["p1"] = PermanentError("400", status=400)
    submit(redis_client, acct, "p1", 2, ["vip", "cart_abandoner"], now=NOW + timedelta(seconds=1))
    f.flush(NOW + timedelta(seconds=2))
    assert DeadLetters(redis_client).count("sync:mailchimp") == 1
    esp.fail_items.clear()
    erased = Erased("acme", "p1", (), {"email": ["p1@example.com"]})
    assert purge_dead_letters(redis_client, "acme", erased) == 1  # the erasure service's part
    assert DeadLetters(redis_client).count("sync:mailchimp") == 0  # personal data purged
    assert sync.erase(redis_client, acct, "p1", "p1@example.com", NOW) == ["mailchimp"]
    f.flush(NOW + timedelta(seconds=2))
    assert esp.calls[-1][0].erase and "p1" not in esp.tags
    assert sync.owned_state(redis_client, "acme", "mailchimp", "p1") is None
    # once the ESP erased the contact, the sync keeps nothing that names the profile
    for what in ("pending", "applied", "owned", "digest", "failing"):
        assert not redis_client.hexists(sync.key("acme", "mailchimp", what), "p1")
    [record] = sync.erasures(redis_client)
    assert record["outcome"] == APPLIED and record["destination"] == "mailchimp"
    assert "p1" not in json.dumps(record) and "example.com" not in json.dumps(record)
    # a late, older change cannot bring the contact back
    assert submit(redis_client, acct, "p1", 2, ["vip"]) == []


def test_with_the_mailchimp_adapter_end_to_end(redis_client: redis.Redis, tmp_path: Path) -> None:
    acct = account(tmp_path)
    seen: list[tuple[str, str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.method, request.url.path, body))
        if request.url.path.endswith("/segments/77"):
            return httpx.Response(
                200,
                json={
                    "members_added": [],
                    "members_removed": [],
                    "errors": [],
                    "total_added": 0,
                    "total_removed": 0,
                    "error_count": 0,
                },
            )
        if request.url.path.endswith("/tags"):
            return httpx.Response(204)
        written = [{"email_address": m["email_address"]} for m in body["members"]]
        return httpx.Response(
            200,
            json={
                "new_members": [] if body["update_existing"] else written,
                "updated_members": written if body["update_existing"] else [],
                "errors": [],
                "total_created": 0 if body["update_existing"] else len(written),
                "total_updated": len(written) if body["update_existing"] else 0,
                "error_count": 0,
            },
        )

    esp = MailchimpAdapter(
        MailchimpConfig(api_key="k-us1", list_id="aud1", base_url="https://mc.test/3.0"),
        http_transport=httpx.MockTransport(handler),
    )
    f = flusher(redis_client, acct, esp)
    for i in range(3):
        submit(redis_client, acct, f"p{i}", 1, ["cart_abandoner"])
    f.flush(NOW + timedelta(seconds=1))
    assert [(m, p) for m, p, _ in seen] == [
        ("POST", "/3.0/lists/aud1"),
        ("POST", "/3.0/lists/aud1/segments/77"),
    ]
    for i in range(3):
        submit(redis_client, acct, f"p{i}", 2, [], now=NOW + timedelta(seconds=2))
    f.flush(NOW + timedelta(seconds=3))
    removal = [b for m, p, b in seen[2:] if p.endswith("/segments/77")]
    assert len(removal) == 1 and len(removal[0]["members_to_remove"]) == 3
    tag_calls = [b for m, p, b in seen if p.endswith("/tags")]
    assert all(b["tags"] == [{"name": "cart abandoner", "status": "inactive"}] for b in tag_calls)


@pytest.fixture
def acct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Account:
    return job_account(tmp_path, monkeypatch)


def job_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **dest: Any) -> Account:
    """The test account written to a config directory that the flush job reads."""
    directory = tmp_path / "accounts"
    directory.mkdir()
    monkeypatch.setenv("CONNECTOR_CONFIG_DIR", str(directory))
    return account(directory, **dest)


def test_flush_job_drains_and_releases(
    redis_client: redis.Redis, acct: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    esp = RecordingEsp()
    with clock.frozen(NOW) as frozen:
        submit(redis_client, acct, "p1", 1, ["vip"])
        totals = sync.flush_job(
            "acme",
            "mailchimp",
            conn=redis_client,
            factory=lambda d: esp,
            sleep=lambda s: frozen.advance(timedelta(seconds=s)),
        )
    assert totals == {"applied": 1}
    assert not redis_client.exists(sync.key("acme", "mailchimp", "armed"))
    assert not redis_client.exists(sync.key("acme", "mailchimp", "lock"))


def test_flush_job_stops_between_batches_when_its_time_is_spent_and_queues_the_rest(
    redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = job_account(tmp_path, monkeypatch, batch_size=2)
    esp = RecordingEsp()
    with clock.frozen(NOW) as frozen:
        for i in range(5):
            submit(redis_client, small, f"p{i}", 1, ["vip"])
        frozen.advance(timedelta(seconds=1))  # all five are ready: three batches of at most two
        totals = sync.flush_job(
            "acme",
            "mailchimp",
            conn=redis_client,
            factory=lambda d: esp,
            sleep=lambda s: None,
            time_budget=0.0,
        )
    assert totals == {"applied": 2} and len(esp.calls) == 1  # one batch, then the budget was spent
    assert redis_client.exists(sync.key("acme", "mailchimp", "armed"))  # the rest has a job queued
    assert not redis_client.exists(sync.key("acme", "mailchimp", "lock"))
    assert len(sync.pending(redis_client, "acme", "mailchimp")) == 3


def test_flush_job_pauses_when_the_credential_variable_is_missing(
    redis_client: redis.Redis, acct: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FAKE_KEY", raising=False)
    with clock.frozen(NOW):
        submit(redis_client, acct, "p1", 1, ["vip"])
        assert sync.flush_job("acme", "mailchimp", conn=redis_client) == {"paused": 1}
    info = sync.paused(redis_client)[("acme", "mailchimp")]
    assert "FAKE_KEY" in info["reason"]


def test_fire_due_arms_destinations_with_due_retries(redis_client: redis.Redis, tmp_path: Path) -> None:
    acct = account(tmp_path)
    esp = RecordingEsp()
    esp.fail = TransientError("boom")
    submit(redis_client, acct, "p1", 1, ["vip"])
    redis_client.delete(sync.key("acme", "mailchimp", "armed"))
    flusher(redis_client, acct, esp).flush(NOW + timedelta(seconds=1))
    assert sync.fire_due(redis_client, NOW + timedelta(seconds=1)) == 0  # retry not yet due
    assert sync.fire_due(redis_client, NOW + timedelta(minutes=5)) == 1


def test_only_one_flush_runs_per_destination(
    redis_client: redis.Redis, acct: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    esp = RecordingEsp()
    with clock.frozen(NOW):
        submit(redis_client, acct, "p1", 1, ["vip"])
        redis_client.set(sync.key("acme", "mailchimp", "lock"), "other-worker")
        assert sync.flush_job("acme", "mailchimp", conn=redis_client, factory=lambda d: esp) == {}
    assert esp.calls == [] and "p1" in sync.pending(redis_client, "acme", "mailchimp")


def test_flush_job_stops_when_the_destination_is_paused(
    redis_client: redis.Redis, acct: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    esp = RecordingEsp()
    esp.fail = AuthError("401", status=401)
    with clock.frozen(NOW) as frozen:
        submit(redis_client, acct, "p1", 1, ["vip"])
        totals = sync.flush_job(
            "acme",
            "mailchimp",
            conn=redis_client,
            factory=lambda d: esp,
            sleep=lambda s: frozen.advance(timedelta(seconds=s)),
        )
    assert totals == {"paused": 1} and len(esp.calls) == 1
    assert not redis_client.exists(sync.key("acme", "mailchimp", "armed"))
    assert "p1" in sync.pending(redis_client, "acme", "mailchimp")


def test_a_change_the_adapter_gives_no_result_for_is_retried(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    acct = account(tmp_path)

    class Forgetful(RecordingEsp):
        def apply(self, changes: Sequence[Change], owned: Mapping[str, OwnedState]) -> list[Result]:
            return super().apply(changes, owned)[:-1]

    esp = Forgetful()
    submit(redis_client, acct, "p1", 1, ["vip"])
    submit(redis_client, acct, "p2", 1, ["vip"])
    counts = flusher(redis_client, acct, esp).flush(NOW + timedelta(seconds=1))
    assert counts == {"applied": 1, "retry": 1}


def test_an_unexpected_adapter_exception_is_retried_then_dead_lettered(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    acct = account(tmp_path)
    esp = RecordingEsp()
    esp.fail = KeyError("results")  # e.g. an ESP answer shape nobody foresaw
    f = flusher(redis_client, acct, esp)
    submit(redis_client, acct, "p1", 1, ["vip"])
    submit(redis_client, acct, "p2", 1, ["cart_abandoner"])
    now = NOW + timedelta(seconds=1)
    counts = f.flush(now)
    assert counts == {"retry": 2}  # the job itself did not fail, and nothing was dropped
    for _ in range(400):
        nxt = f.next_ready()
        if nxt is None:
            break
        now = datetime.fromtimestamp(nxt, UTC)
        f.flush(now)
    assert now - NOW >= timedelta(hours=24)
    items = list(DeadLetters(redis_client).list("sync:mailchimp"))
    assert sorted(i.payload["change"]["profile_id"] for i in items) == ["p1", "p2"]
    assert items[0].payload["error"]["code"] == "unexpected"
    esp.fail = None  # the defect is fixed: a replay delivers
    for item in items:
        sync.replay(redis_client, item.payload, now)
    f.flush(now + timedelta(seconds=5))
    assert esp.tags == {"p1": {"vip"}, "p2": {"cart abandoner"}}


class BudgetedEsp(RecordingEsp):
    """Carries out at most ``per_batch`` changes of each batch and defers the others."""

    def __init__(self, per_batch: int) -> None:
        super().__init__()
        self.per_batch = per_batch
        self.offered: list[int] = []

    def apply(self, changes: Sequence[Change], owned: Mapping[str, OwnedState]) -> list[Result]:
        self.offered.append(len(changes))
        now, later = changes[: self.per_batch], changes[self.per_batch :]
        done = super().apply(now, owned)
        return done + [Result(c.profile_id, c.version, DEFERRED, note="budget") for c in later]


def test_deferred_changes_go_with_the_next_batch_and_are_not_failures(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    acct = account(tmp_path)
    esp = BudgetedEsp(per_batch=4)
    for i in range(10):
        submit(redis_client, acct, f"p{i}", 1, ["vip"])
    counts = flusher(redis_client, acct, esp).flush(NOW + timedelta(seconds=1))
    assert counts == {"applied": 10, "deferred": 6 + 2}
    assert esp.offered == [10, 6, 2]
    assert all(esp.tags[f"p{i}"] == {"vip"} for i in range(10))
    assert not redis_client.hlen(sync.key("acme", "mailchimp", "failing"))
    assert DeadLetters(redis_client).count("sync:mailchimp") == 0


def test_a_retry_is_never_scheduled_past_the_retry_window(redis_client: redis.Redis, tmp_path: Path) -> None:
    """An ESP asks for a wait longer than the window: the last attempt is at the window's end, then
    the change is a dead letter (not parked for days)."""
    acct = account(tmp_path, retry_hours=1)
    esp = RecordingEsp()
    esp.fail = RateLimited("429 daily", retry_after=20 * 3600, scope="DAILY")
    f = flusher(redis_client, acct, esp)
    submit(redis_client, acct, "p1", 1, ["vip"])
    now = NOW + timedelta(seconds=1)
    f.flush(now)
    record = json.loads(redis_client.hget(sync.key("acme", "mailchimp", "failing"), "p1") or "{}")
    assert record["next_at"] == now.timestamp() + 3600
    assert f.next_ready() == now.timestamp() + 3600
    assert redis_client.zscore("sync:due", sync.member("acme", "mailchimp")) == now.timestamp() + 3600
    f.flush(now + timedelta(hours=1))
    assert DeadLetters(redis_client).count("sync:mailchimp") == 1
    assert sync.pending(redis_client, "acme", "mailchimp") == {}


def test_a_wait_that_is_not_a_number_is_the_backoff(redis_client: redis.Redis, tmp_path: Path) -> None:
    acct = account(tmp_path)
    esp = RecordingEsp()
    err = RateLimited("429", retry_after=None)
    err.retry_after = float("inf")  # however it came to be
    esp.fail = err
    f = flusher(redis_client, acct, esp)
    submit(redis_client, acct, "p1", 1, ["vip"])
    now = NOW + timedelta(seconds=1)
    f.flush(now)
    raw = redis_client.hget(sync.key("acme", "mailchimp", "failing"), "p1") or b"{}"
    assert "Infinity" not in raw.decode()
    nxt = f.next_ready()
    assert nxt is not None and nxt - now.timestamp() <= 1.0


def test_a_retry_stored_without_an_instant_by_an_older_release_is_due_again(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    acct = account(tmp_path)
    esp = RecordingEsp()
    submit(redis_client, acct, "p1", 1, ["vip"])
    redis_client.zadd(sync.key("acme", "mailchimp", "ready"), {"p1": float("inf")})
    redis_client.zadd("sync:due", {sync.member("acme", "mailchimp"): float("inf")})
    f = flusher(redis_client, acct, esp)
    now = NOW + timedelta(seconds=1)
    f.flush(now)
    assert redis_client.zscore("sync:due", sync.member("acme", "mailchimp")) == now.timestamp()
    f.flush(now)
    assert esp.tags["p1"] == {"vip"}
