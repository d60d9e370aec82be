"""HubSpot adapter against a stateful transport fake (v3 paths and body shapes only)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from adapters.change import APPLIED, FAILED, Change, OwnedState
from adapters.errors import AuthError, PermanentError, RateLimited, TransientError
from adapters.hubspot import DailyQuotaClient, HubSpotAdapter, HubSpotConfig, existing_id
from adapters.ratelimit import RateLimiter
from connector.config import load_account_file
from connector.destinations import build_adapter, destinations
from connector.dev.sandbox import FakeHubSpot as SandboxHubSpot
from connector.dev.sandbox import serving
from connector.errors import ConfigError
from tests.helpers import SimClock

TOKEN = "pat-na1-test-token"
Handler = Callable[[httpx.Request, Any], httpx.Response | None]
Route = Callable[[httpx.Request, Any], httpx.Response]


class FakeHubSpot:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.contacts: dict[str, dict[str, Any]] = {}  # email → {"id", "properties"}
        self.options: list[dict[str, str]] | None = None
        self.lists: dict[str, set[str]] = {}
        self.before: Handler | None = None
        self.next_id = 100
        self.properties: dict[str, Any] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        body = json.loads(request.content) if request.content else None
        path = request.url.path
        self.calls.append((request.method, path, body))
        if self.before:
            early = self.before(request, body)
            if early is not None:
                return early
        assert "/contacts/v1/" not in path  # the retired v1 lists API is never used
        for method, matches, handle in self.routes():
            if method in (None, request.method) and matches(path):
                return handle(request, body)
        return not_found(path)

    def routes(self) -> list[tuple[str | None, Callable[[str], bool], Route]]:
        return [
            (None, "/crm/v3/properties/contacts/esp_tags".__eq__, self.tags_property),
            ("POST", "/crm/v3/properties/contacts".__eq__, self.create_property),
            ("GET", lambda p: p.startswith("/crm/v3/properties/contacts/"), self.read_property),
            (None, "/crm/v3/objects/contacts/batch/read".__eq__, self.batch_read),
            (None, "/crm/v3/objects/contacts/batch/upsert".__eq__, self.batch_upsert),
            ("PUT", lambda p: p.startswith("/crm/v3/lists/"), self.list_members),
            (None, "/crm/v3/objects/contacts/gdpr-delete".__eq__, self.gdpr_delete),
        ]

    def tags_property(self, request: httpx.Request, body: Any) -> httpx.Response:
        if self.options is None:
            return not_found("no")
        if request.method == "PATCH":
            self.options = body["options"]
        return httpx.Response(200, json={"name": "esp_tags", "options": self.options})

    def create_property(self, request: httpx.Request, body: Any) -> httpx.Response:
        if body["name"] != "esp_tags":
            assert (body["type"], body["fieldType"]) in (("string", "text"), ("number", "number"))
            self.properties[body["name"]] = body
            return httpx.Response(201, json=body)
        assert body["type"] == "enumeration" and body["fieldType"] == "checkbox"
        self.options = body["options"]
        return httpx.Response(201, json=body)

    def read_property(self, request: httpx.Request, body: Any) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[-1]
        if name in self.properties:
            return httpx.Response(200, json=self.properties[name])
        return not_found("no")

    def batch_read(self, request: httpx.Request, body: Any) -> httpx.Response:
        assert body["idProperty"] == "email" and len(body["inputs"]) <= 100
        results = [
            {"id": c["id"], "properties": {k: c["properties"].get(k) for k in body["properties"]}}
            for i in body["inputs"]
            if (c := self.contacts.get(i["id"]))
        ]
        return httpx.Response(200, json={"status": "COMPLETE", "results": results})

    def batch_upsert(self, request: httpx.Request, body: Any) -> httpx.Response:
        inputs = body["inputs"]
        assert 1 <= len(inputs) <= 100
        ids = [i["id"] for i in inputs]
        assert len(set(ids)) == len(ids), "Duplicate IDs found in batch input"
        allowed = {o["value"] for o in self.options or []}
        results, errors = [], []
        for item in inputs:
            assert item["idProperty"] == "email"
            tags = [t for t in item["properties"].get("esp_tags", "").split(";") if t]
            if any(t not in allowed for t in tags):
                errors.append(
                    {
                        "status": "error",
                        "category": "VALIDATION_ERROR",
                        "message": "INVALID_OPTION",
                        "context": {"objectWriteTraceId": [item["objectWriteTraceId"]]},
                    }
                )
                continue
            results.append(self.upsert_one(item))
        out: dict[str, Any] = {"status": "COMPLETE", "results": results}
        if errors:
            out.update(errors=errors, numErrors=len(errors))
        return httpx.Response(207 if errors else 200, json=out)

    def upsert_one(self, item: dict[str, Any]) -> dict[str, Any]:
        contact = self.contacts.setdefault(item["id"], {"id": str(self.next_id), "properties": {}})
        self.next_id += 1
        contact["properties"].update(item["properties"])
        return {
            "id": contact["id"],
            "new": False,
            "properties": contact["properties"],
            "objectWriteTraceId": item["objectWriteTraceId"],
        }

    def list_members(self, request: httpx.Request, body: Any) -> httpx.Response:
        _, _, _, list_id, _, action = request.url.path.strip("/").split("/")
        assert isinstance(body, list) and all(isinstance(x, str) for x in body)
        members = self.lists.setdefault(list_id, set())
        if action == "add":
            members.update(body)
        else:
            members.difference_update(body)
        return httpx.Response(
            200, json={"recordIdsMissing": [], "recordIdsRemoved": [], "recordsIdsAdded": body}
        )

    def gdpr_delete(self, request: httpx.Request, body: Any) -> httpx.Response:
        assert body == {"objectId": body["objectId"], "idProperty": "email"}
        self.contacts.pop(body["objectId"], None)
        return httpx.Response(204)


def not_found(message: str) -> httpx.Response:
    return httpx.Response(404, json={"status": "error", "category": "OBJECT_NOT_FOUND", "message": message})


EVENING = datetime(2024, 3, 5, 22, 0, tzinfo=UTC).timestamp()  # 23:00 in Paris (winter)


def adapter(fake: FakeHubSpot, clock: SimClock | None = None, **kw: Any) -> HubSpotAdapter:
    clock = clock or SimClock(EVENING)
    limiter = kw.pop("limiter", None)
    cfg = HubSpotConfig(token=TOKEN, base_url="https://api.hubapi.test", **kw)
    return HubSpotAdapter(
        cfg,
        http_transport=httpx.MockTransport(fake),
        clock=clock,
        sleep=clock.sleep,
        limiter=limiter,
    )


def change(pid: str, version: int = 1, **kw: Any) -> Change:
    kw.setdefault("email", f"{pid}@example.com")
    return Change(account="acme", destination="hubspot", profile_id=pid, version=version, **kw)


def test_upsert_creates_the_tags_property_then_writes_by_email() -> None:
    fake = FakeHubSpot()
    results = adapter(fake).apply([change("p1", tags=frozenset({"vip", "cart"}), fields={"ltv": 10})], {})
    assert results[0].status == APPLIED and results[0].owned is not None
    assert results[0].owned.remote_id == fake.contacts["p1@example.com"]["id"]
    assert {o["value"] for o in fake.options or []} == {"vip", "cart"}
    upsert = next(c for c in fake.calls if c[1].endswith("batch/upsert"))[2]["inputs"][0]
    assert fake.properties["ltv"]["type"] == "number"  # created for the mapped computed trait
    assert upsert == {
        "id": "p1@example.com",
        "idProperty": "email",
        "objectWriteTraceId": "p1",
        "properties": {"email": "p1@example.com", "ltv": 10, "esp_tags": "cart;vip"},
    }


def test_new_options_are_added_to_the_full_list() -> None:
    fake = FakeHubSpot()
    fake.options = [{"label": "Hand made", "value": "hand"}]
    adapter(fake).apply([change("p1", tags=frozenset({"vip"}))], {})
    assert [o["value"] for o in fake.options] == ["hand", "vip"]


def test_hand_set_tags_are_kept_and_only_owned_tags_removed() -> None:
    fake = FakeHubSpot()
    fake.options = [{"label": x, "value": x} for x in ("hand", "vip", "cart")]
    fake.contacts["p1@example.com"] = {
        "id": "7",
        "properties": {"email": "p1@example.com", "esp_tags": "hand;cart"},
    }
    owned = {"p1": OwnedState(tags=frozenset({"cart"}), remote_id="7")}
    adapter(fake).apply([change("p1", tags=frozenset({"vip"}))], owned)
    assert fake.contacts["p1@example.com"]["properties"]["esp_tags"] == "hand;vip"


def test_lists_add_and_remove_by_record_id() -> None:
    fake = FakeHubSpot()
    fake.lists["L"] = set()
    fake.lists["M"] = {"55"}
    fake.contacts["old@example.com"] = {"id": "55", "properties": {}}
    results = adapter(fake).apply(
        [change("p1", lists=frozenset({"L"})), change("old", lists=frozenset())],
        {"old": OwnedState(lists=frozenset({"M"}), remote_id="55")},
    )
    assert all(r.status == APPLIED for r in results)
    assert fake.lists["L"] == {fake.contacts["p1@example.com"]["id"]}
    assert fake.lists["M"] == set()
    puts = [(c[1]) for c in fake.calls if c[0] == "PUT"]
    assert puts == ["/crm/v3/lists/L/memberships/add", "/crm/v3/lists/M/memberships/remove"]


def test_207_redrives_only_failed_items() -> None:
    fake = FakeHubSpot()
    fake.options = [{"label": "a", "value": "a"}]
    state = {"removed": False}

    def drop_option_once(request: httpx.Request, body: Any) -> None:
        # an option removed by hand between our read and the write
        if request.url.path.endswith("batch/upsert") and not state["removed"]:
            state["removed"] = True
            fake.options = []
        return None

    ad = adapter(fake)
    ad._options = {"a"}  # cached from an earlier batch
    fake.before = drop_option_once
    results = ad.apply([change("p1", tags=frozenset({"a"})), change("p2")], {})
    assert [r.status for r in results] == [APPLIED, APPLIED]
    upserts = [c[2]["inputs"] for c in fake.calls if c[1].endswith("batch/upsert")]
    assert [len(u) for u in upserts] == [2, 1]
    assert upserts[1][0]["objectWriteTraceId"] == "p1"


def test_validation_errors_in_207_are_permanent() -> None:
    fake = FakeHubSpot()

    def reject(request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.url.path.endswith("batch/upsert"):
            return httpx.Response(
                207,
                json={
                    "status": "COMPLETE",
                    "results": [{"id": "1", "objectWriteTraceId": "ok", "properties": {}}],
                    "errors": [
                        {
                            "status": "error",
                            "category": "VALIDATION_ERROR",
                            "message": "bad date",
                            "context": {"objectWriteTraceId": ["bad"]},
                        }
                    ],
                    "numErrors": 1,
                },
            )
        return None

    fake.before = reject
    results = {r.profile_id: r for r in adapter(fake).apply([change("ok"), change("bad")], {})}
    assert results["ok"].status == APPLIED
    assert results["bad"].status == FAILED and isinstance(results["bad"].error, PermanentError)


def test_whole_batch_400_redrives_singly_and_409_resolves_the_existing_id() -> None:
    fake = FakeHubSpot()

    def route(request: httpx.Request, body: Any) -> httpx.Response | None:
        path = request.url.path
        if path.endswith("batch/upsert"):
            return httpx.Response(
                400, json={"status": "error", "category": "VALIDATION_ERROR", "message": "bad"}
            )
        if path == "/crm/v3/objects/contacts" and request.method == "POST":
            if body["properties"]["email"] == "dup@example.com":
                return httpx.Response(
                    409,
                    json={
                        "status": "error",
                        "category": "CONFLICT",
                        "message": "Contact already exists. Existing ID: 512",
                    },
                )
            return httpx.Response(201, json={"id": "900", "properties": body["properties"]})
        if path == "/crm/v3/objects/contacts/512" and request.method == "PATCH":
            return httpx.Response(200, json={"id": "512", "properties": body["properties"]})
        return None

    fake.before = route
    results = {
        r.profile_id: r
        for r in adapter(fake, preserve_unowned_tags=False).apply([change("dup"), change("fresh")], {})
    }
    assert results["dup"].owned and results["dup"].owned.remote_id == "512"
    assert results["fresh"].owned and results["fresh"].owned.remote_id == "900"
    assert existing_id({"message": "Contact already exists. Existing ID: 77"}) == "77"


def test_daily_429_waits_for_the_reset_in_the_account_time_zone(redis_client: redis.Redis) -> None:
    fake = FakeHubSpot()
    clock = SimClock(EVENING)  # 22:00 UTC = 23:00 in Paris (winter)
    limiter = RateLimiter(redis_client, clock=clock, sleep=clock.sleep)

    def daily(request: httpx.Request, body: Any) -> httpx.Response:
        return httpx.Response(
            429,
            json={
                "status": "error",
                "message": "You have reached your daily limit.",
                "errorType": "RATE_LIMIT",
                "policyName": "DAILY",
            },
        )

    fake.before = daily
    ad = adapter(fake, clock, timezone="Europe/Paris", limiter=limiter)
    with pytest.raises(RateLimited) as info:
        ad.apply([change("p1")], {})
    assert info.value.scope == "DAILY"
    assert info.value.retry_after == pytest.approx(3600, abs=1)
    assert clock.slept == []  # not waited in the call: the worker defers the batch
    assert limiter.blocked_for(ad.client.t.limiter_key) == pytest.approx(3600, abs=1)


def test_ten_secondly_429_waits_the_interval_and_retries() -> None:
    fake = FakeHubSpot()
    clock = SimClock(EVENING)
    hits = {"n": 0}

    def once(request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.url.path.endswith("batch/read") and hits["n"] == 0:
            hits["n"] += 1
            return httpx.Response(
                429,
                headers={"X-HubSpot-RateLimit-Interval-Milliseconds": "10000"},
                json={
                    "status": "error",
                    "policyName": "TEN_SECONDLY_ROLLING",
                    "errorType": "RATE_LIMIT",
                    "message": "ten_secondly_rolling",
                },
            )
        return None

    fake.before = once
    results = adapter(fake, clock, preserve_unowned_tags=True).apply(
        [change("p1", tags=frozenset({"vip"}))], {}
    )
    assert results[0].status == APPLIED
    assert clock.slept == [10.0]


def test_auth_errors_raise_and_erase_uses_gdpr_delete() -> None:
    fake = FakeHubSpot()
    fake.before = lambda r, b: httpx.Response(
        403, json={"status": "error", "category": "MISSING_SCOPES", "message": "scopes"}
    )
    with pytest.raises(AuthError):
        adapter(fake).apply([change("p1", tags=frozenset({"x"}))], {})
    fake = FakeHubSpot()
    fake.contacts["p1@example.com"] = {"id": "1", "properties": {}}
    results = adapter(fake).apply([change("p1", erase=True)], {})
    assert results[0].status == APPLIED and "p1@example.com" not in fake.contacts


# -- every input confirmed or failed (207 / 200 answers) -------------------------------------------


def _answer(results: list[dict[str, Any]], errors: list[dict[str, Any]]) -> Handler:
    def route(request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.url.path.endswith("batch/upsert"):
            out: dict[str, Any] = {"status": "COMPLETE", "results": results}
            if errors:
                out.update(errors=errors, numErrors=len(errors))
            return httpx.Response(207 if errors else 200, json=out)
        return None

    return route


def test_207_errors_without_trace_ids_and_unreported_inputs_are_never_applied() -> None:
    fake = FakeHubSpot()
    fake.before = _answer(
        # "ok" confirmed by its email only (no trace id on the result)
        [{"id": "1", "properties": {"email": "OK@example.com"}}],
        [
            {  # named by context ids (the email sent as id), the fake's own untraced shape
                "status": "error",
                "category": "VALIDATION_ERROR",
                "message": "Property values were not valid: INVALID_EMAIL",
                "context": {"ids": ["bad@example.com"]},
            },
            {  # no context at all: only the message names the input
                "status": "error",
                "category": "VALIDATION_ERROR",
                "message": 'Property values were not valid: "Email address joann@example.com is invalid"',
            },
        ],
    )
    changes = [change(p) for p in ("ok", "bad", "joann", "ann", "lost")]
    results = {r.profile_id: r for r in adapter(fake, preserve_unowned_tags=False).apply(changes, {})}
    assert results["ok"].status == APPLIED and results["ok"].owned is not None
    assert results["ok"].owned.remote_id == "1"
    for pid in ("bad", "joann"):  # HubSpot's own error for that input
        assert results[pid].status == FAILED and isinstance(results[pid].error, PermanentError), pid
    # "ann@example.com" is only part of "joann@example.com"; "lost" is in neither list: both are
    # retried later (transient), never reported as applied
    for pid in ("ann", "lost"):
        err = results[pid].error
        assert results[pid].status == FAILED and isinstance(err, TransientError), pid
        assert not isinstance(err, PermanentError) and err.code == "unconfirmed"


def test_a_200_answer_missing_an_input_or_its_id_does_not_confirm_it() -> None:
    fake = FakeHubSpot()
    fake.before = _answer(
        [
            {"id": "7", "objectWriteTraceId": "p1", "properties": {}},
            {"objectWriteTraceId": "p2", "properties": {"email": "p2@example.com"}},  # no id
        ],
        [],
    )
    results = adapter(fake, preserve_unowned_tags=False).apply([change("p1"), change("p2"), change("p3")], {})
    assert [r.status for r in results] == [APPLIED, FAILED, FAILED]
    assert all(isinstance(r.error, TransientError) for r in results[1:])


# -- recordIdsMissing --------------------------------------------------------------------------------


def test_record_ids_missing_from_a_membership_call_fail_that_contact() -> None:
    fake = FakeHubSpot()
    fake.lists["L"] = set()
    missing: set[str] = set()

    def lists_miss(request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.method == "PUT" and "/memberships/" in request.url.path:
            gone = sorted(set(body) & missing)
            fake.lists["L"].update(set(body) - missing)
            added = sorted(set(body) - missing)
            return httpx.Response(
                200, json={"recordIdsMissing": gone, "recordIdsRemoved": [], "recordsIdsAdded": added}
            )
        return None

    fake.before = lists_miss
    ad = adapter(fake)
    ad.apply([change("warm", lists=frozenset({"L"}))], {})  # p1's record id is 101 from here on
    missing.add("101")  # merged away / not yet seen by the lists service
    stale = {"p1": OwnedState(remote_id="55")}
    results = ad.apply([change("p1", lists=frozenset({"L"})), change("p2", lists=frozenset({"L"}))], stale)
    by = {r.profile_id: r for r in results}
    assert by["p1"].status == FAILED and by["p1"].owned is None
    assert isinstance(by["p1"].error, TransientError) and by["p1"].error.code == "record_missing"
    assert by["p2"].status == APPLIED and by["p2"].owned and by["p2"].owned.lists == {"L"}
    # the next attempt upserts by email again and takes the id HubSpot answers, not a cached one
    missing.clear()
    again = ad.apply([change("p1", lists=frozenset({"L"}))], stale)
    assert again[0].status == APPLIED and again[0].owned and again[0].owned.remote_id == "101"
    assert "101" in fake.lists["L"] and "55" not in fake.lists["L"]


# -- an option that cannot be added during a 207 re-drive --------------------------------------------


def test_option_patch_failure_in_a_redrive_fails_only_the_contacts_that_need_it() -> None:
    fake = FakeHubSpot()
    fake.options = [{"label": "a", "value": "a"}]
    state = {"upserts": 0}

    def route(request: httpx.Request, body: Any) -> httpx.Response | None:
        path = request.url.path
        if path.endswith("batch/upsert"):
            state["upserts"] += 1
            if state["upserts"] == 1:
                fake.options = []  # "a" removed by hand between our read and the write...
        elif path.endswith("/esp_tags") and request.method == "GET":
            fake.options = [{"label": "a", "value": "a"}]  # ...and put back before the re-read
        elif path.endswith("/esp_tags") and request.method == "PATCH":
            return httpx.Response(
                400, json={"status": "error", "category": "VALIDATION_ERROR", "message": "too many options"}
            )
        return None

    ad = adapter(fake, preserve_unowned_tags=False)
    ad._options = {"a", "b"}  # cached from an earlier batch; "b" has been deleted since
    ad._options_read_at = ad.client.t.clock()
    fake.before = route
    changes = [
        change("needs_b", tags=frozenset({"b"})),
        change("a_only", tags=frozenset({"a"})),
        change("plain"),
    ]
    results = {r.profile_id: r for r in ad.apply(changes, {})}
    assert results["needs_b"].status == FAILED and isinstance(results["needs_b"].error, PermanentError)
    assert results["a_only"].status == APPLIED  # re-driven: its option exists again
    assert results["plain"].status == APPLIED  # written in the first call, never dead-lettered
    assert fake.contacts["a_only@example.com"]["properties"]["esp_tags"] == "a"


# -- the daily quota ---------------------------------------------------------------------------------


def test_per_day_counts_the_account_day_and_the_adaptive_factor_does_not_shrink_it(
    redis_client: redis.Redis,
) -> None:
    fake = FakeHubSpot()
    clock = SimClock(EVENING)  # 22:00 UTC, the account's time zone
    limiter = RateLimiter(redis_client, clock=clock, sleep=clock.sleep)
    ad = adapter(fake, clock, limiter=limiter, per_day=6)
    # the tags property's lookup and creation, batch/read, batch/upsert
    assert ad.apply([change("p1", tags=frozenset({"vip"}))], {})[0].status == APPLIED
    for _ in range(4):  # 429s from another app on the same token: the burst rate drops to 1/16
        limiter.penalize(ad.client.t.limiter_key)
    clock.t += 20
    assert ad.apply([change("p2", tags=frozenset({"vip"}))], {})[0].status == APPLIED  # 6 of 6 today
    clock.t += 3600
    with pytest.raises(RateLimited) as info:
        ad.apply([change("p3", tags=frozenset({"vip"}))], {})
    assert info.value.scope == "DAILY"
    assert info.value.retry_after == pytest.approx(3580, abs=1)  # until the account's midnight
    assert clock.slept == []  # deferred to the sync worker, never waited in the call
    assert len([c for c in fake.calls if c[1].endswith("batch/upsert")]) == 2
    clock.t += 3600  # the next day: a fresh quota
    assert ad.apply([change("p3", tags=frozenset({"vip"}))], {})[0].status == APPLIED
    assert len([c for c in fake.calls if c[1].endswith("batch/upsert")]) == 3


def _account_file(tmp_path: Path, hubspot: dict[str, Any]) -> Path:
    path = tmp_path / "acme.yaml"
    cfg = {"account": "acme", "destinations": {"hubspot": {"api_key_env": "HS_TOKEN", **hubspot}}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_per_day_setting_is_validated_and_reaches_the_limiter(tmp_path: Path) -> None:
    env = {"HS_TOKEN": TOKEN}
    for setting, limit in (({}, 250_000), ({"per_day": 650_000}, 650_000)):
        dest = destinations(load_account_file(_account_file(tmp_path, setting), env))["hubspot"]
        built = build_adapter(dest, None, clock=lambda: 0.0, sleep=lambda s: None, env=env)
        assert isinstance(built, HubSpotAdapter) and isinstance(built.client, DailyQuotaClient)
        assert built.config.per_day == limit
        assert built.client.per_day == limit
    for bad in (0, "lots"):
        with pytest.raises(ConfigError) as info:
            destinations(load_account_file(_account_file(tmp_path, {"per_day": bad}), env))
        assert info.value.path == "destinations.hubspot.per_day"


# -- against the loopback fake -------------------------------------------------------------------


@pytest.fixture
def sandbox() -> Iterator[tuple[SandboxHubSpot, HubSpotAdapter]]:
    fake = SandboxHubSpot(tokens=[TOKEN])
    # the tags property exists already (a batch without tags does not create it)
    fake.properties["esp_tags"] = {"type": "enumeration", "fieldType": "checkbox", "options": []}
    with serving(fake) as server:
        cfg = HubSpotConfig(token=TOKEN, base_url=server.url)
        clock = SimClock(EVENING)
        ad = HubSpotAdapter(cfg, clock=clock, sleep=clock.sleep)
        yield fake, ad
        ad.client.close()


@pytest.mark.parametrize("context", ["ids", "none"])
def test_loopback_untraced_207_errors_and_unreported_inputs_fail(
    sandbox: tuple[SandboxHubSpot, HubSpotAdapter], context: str
) -> None:
    fake, ad = sandbox
    fake.error_context = context  # the error names the input by its email, or only in its message
    fake.invalid_emails.add("bad@example.com")
    fake.unreported_emails.add("quiet@example.com")
    results = {r.profile_id: r for r in ad.apply([change("ok"), change("bad"), change("quiet")], {})}
    assert results["ok"].status == APPLIED
    assert results["bad"].status == FAILED and isinstance(results["bad"].error, PermanentError)
    quiet = results["quiet"]
    assert quiet.status == FAILED and isinstance(quiet.error, TransientError)
    assert not isinstance(quiet.error, PermanentError)
    assert fake.contact_by_email("quiet@example.com") is not None  # written, just not confirmed
    fake.unreported_emails.clear()
    assert ad.apply([change("quiet")], {})[0].status == APPLIED


def test_loopback_record_ids_missing_are_not_recorded_as_memberships(
    sandbox: tuple[SandboxHubSpot, HubSpotAdapter],
) -> None:
    fake, ad = sandbox
    cart = fake.add_list("Cart")
    fake.lists_missing_emails.add("late@example.com")
    changes = [change("late", lists=frozenset({cart.id})), change("on_time", lists=frozenset({cart.id}))]
    results = {r.profile_id: r for r in ad.apply(changes, {})}
    assert results["late"].status == FAILED and isinstance(results["late"].error, TransientError)
    assert results["on_time"].status == APPLIED
    assert fake.emails_in_list("Cart") == {"on_time@example.com"}
    fake.lists_missing_emails.clear()
    assert ad.apply([change("late", lists=frozenset({cart.id}))], {})[0].status == APPLIED
    assert fake.emails_in_list("Cart") == {"on_time@example.com", "late@example.com"}


def test_a_contact_never_tagged_leaves_the_tags_property_alone() -> None:
    """A destination mapped to lists and fields only works on a portal without the tags property."""
    fake = FakeHubSpot()
    clock = SimClock(EVENING)
    ad = adapter(fake, clock)
    results = ad.apply([change("p1", tags=frozenset(), fields={"ltv": 5})], {})
    assert results[0].status == APPLIED
    upserts = [c for c in fake.calls if c[1].endswith("batch/upsert")]
    assert upserts and all("esp_tags" not in i["properties"] for i in upserts[0][2]["inputs"])
    touched = [c for c in fake.calls if c[1].endswith("batch/read") or "properties/contacts/esp_tags" in c[1]]
    assert touched == []


# -- whose tags property: written whole or read first -------------------------------------------


@pytest.fixture
def loopback() -> Iterator[tuple[SandboxHubSpot, str]]:
    fake = SandboxHubSpot(tokens=[TOKEN])
    with serving(fake) as server:
        yield fake, server.url


def loopback_adapter(url: str, clock: SimClock, **kw: Any) -> HubSpotAdapter:
    return HubSpotAdapter(HubSpotConfig(token=TOKEN, base_url=url, **kw), clock=clock, sleep=clock.sleep)


def reads(fake: SandboxHubSpot) -> int:
    return sum(1 for r in fake.requests if r.path.endswith("/batch/read"))


def tags_of(fake: SandboxHubSpot, email: str) -> set[str]:
    contact = fake.contact_by_email(email)
    assert contact is not None
    return set(filter(None, contact.properties.get("esp_tags", "").split(";")))


def test_the_connectors_own_property_is_written_whole_without_reading_it(
    loopback: tuple[SandboxHubSpot, str],
) -> None:
    fake, url = loopback
    ad = loopback_adapter(url, SimClock(EVENING))
    owned = {}
    for pid in ("p1", "p2"):
        result = ad.apply([change(pid, tags=frozenset({"vip"}))], {})[0]
        assert result.status == APPLIED and result.owned is not None
        owned[pid] = result.owned
    ad.apply([change("p1", 2, tags=frozenset({"cart"}))], owned)
    assert reads(fake) == 0
    assert tags_of(fake, "p1@example.com") == {"cart"}
    prop = fake.properties["esp_tags"]
    assert "Managed by segment-connector" in prop["description"]  # what a marketer sees in HubSpot
    assert [o["value"] for o in prop["options"]] == ["vip", "cart"]
    assert all("segment-connector" in o["description"] for o in prop["options"])


def test_an_option_added_by_hand_makes_the_connector_read_first_and_keep_hand_set_values(
    loopback: tuple[SandboxHubSpot, str],
) -> None:
    fake, url = loopback
    clock = SimClock(EVENING)
    ad = loopback_adapter(url, clock)
    first = ad.apply([change("p1", tags=frozenset({"vip"}))], {})[0]
    assert first.owned is not None
    # a marketer adds an option of their own to the property and ticks it on the contact
    fake.properties["esp_tags"]["options"].append({"label": "Trade fair", "value": "fair"})
    fake.write("p1@example.com", {"esp_tags": "vip;fair"})
    clock.t += 301  # the adapter reads the property's options again after property_refresh_seconds
    ad.apply([change("p1", 2, tags=frozenset({"cart"}))], {"p1": first.owned})
    assert reads(fake) == 1
    assert tags_of(fake, "p1@example.com") == {"fair", "cart"}


def test_a_property_the_team_made_is_read_first(loopback: tuple[SandboxHubSpot, str]) -> None:
    fake, url = loopback
    fake.properties["esp_tags"] = {
        "label": "Tags",
        "type": "enumeration",
        "fieldType": "checkbox",
        "groupName": "contactinformation",
        "description": "",
        "options": [{"label": "hand", "value": "hand"}],
    }
    fake.write("p1@example.com", {"esp_tags": "hand"})
    ad = loopback_adapter(url, SimClock(EVENING))
    ad.apply([change("p1", tags=frozenset({"vip"}))], {})
    assert reads(fake) == 1
    assert tags_of(fake, "p1@example.com") == {"hand", "vip"}
    # the option the connector added to the team's property is marked, the team's own is kept as it was
    options = {o["value"]: o for o in fake.properties["esp_tags"]["options"]}
    assert options["hand"] == {"label": "hand", "value": "hand"}
    assert "segment-connector" in options["vip"]["description"]


@pytest.mark.parametrize(("setting", "expected_reads"), [(True, 1), (False, 0)])
def test_preserve_unowned_tags_set_explicitly_wins(
    loopback: tuple[SandboxHubSpot, str], setting: bool, expected_reads: int
) -> None:
    fake, url = loopback
    ad = loopback_adapter(url, SimClock(EVENING), preserve_unowned_tags=setting)
    ad.apply([change("p1", tags=frozenset({"vip"}))], {})
    assert reads(fake) == expected_reads


def test_preserve_unowned_tags_must_be_true_false_or_auto(tmp_path: Path) -> None:
    path = tmp_path / "acme.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "account": "acme",
                "destinations": {
                    "hubspot": {"api_key_env": "HS_TOKEN", "preserve_unowned_tags": "sometimes"}
                },
            }
        )
    )
    with pytest.raises(ConfigError, match=r"destinations\.hubspot\.preserve_unowned_tags: must be true"):
        destinations(load_account_file(path))


# -- answers that confirm (or not) what was sent ---------------------------------------------------

NOT_JSON = httpx.Response(200, text="<html>OK</html>", headers={"Content-Type": "text/html"})


def test_a_membership_answer_that_cannot_be_read_fails_its_contacts_transiently() -> None:
    fake = FakeHubSpot()
    fake.before = lambda r, b: NOT_JSON if "/memberships/" in r.url.path else None
    result = adapter(fake, preserve_unowned_tags=False).apply(
        [change("p1", tags=frozenset({"vip"}), lists=frozenset({"L"}))], {}
    )[0]
    assert result.status == FAILED and isinstance(result.error, TransientError)
    assert result.error.code == "unreadable_answer"
    assert result.owned is not None and result.owned.lists == frozenset()  # the upsert stands
    assert result.owned.tags == {"vip"}


def test_reads_that_cannot_be_read_are_not_taken_as_empty() -> None:
    """The team's tags property read back unreadable would drop hand-set values; the property's
    options read back unreadable would replace its option list: neither is written."""
    for unreadable in ("/batch/read", "/properties/contacts/esp_tags"):
        fake = FakeHubSpot()
        fake.options = [{"label": "hand", "value": "hand"}]
        fake.contacts["p1@example.com"] = {
            "id": "7",
            "properties": {"email": "p1@example.com", "esp_tags": "hand"},
        }
        fake.before = lambda r, b, path=unreadable: (
            NOT_JSON if r.url.path.endswith(path) and r.method in ("GET", "POST") else None
        )
        result = adapter(fake, preserve_unowned_tags=True).apply([change("p1", tags=frozenset({"vip"}))], {})[
            0
        ]
        assert result.status == FAILED and isinstance(result.error, TransientError), unreadable
        assert not [c for c in fake.calls if c[1].endswith("batch/upsert")]
        if unreadable.endswith("esp_tags"):
            assert not [c for c in fake.calls if c[0] == "PATCH"]  # the option list stays as it was
        assert fake.contacts["p1@example.com"]["properties"]["esp_tags"] == "hand"


def test_an_update_answered_without_the_record_is_not_done() -> None:
    fake = FakeHubSpot()

    def route(request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.url.path.endswith("batch/upsert"):
            return httpx.Response(
                400, json={"status": "error", "category": "VALIDATION_ERROR", "message": "x"}
            )
        if request.url.path == "/crm/v3/objects/contacts" and request.method == "POST":
            message = "Contact already exists. Existing ID: 512"
            return httpx.Response(409, json={"status": "error", "category": "CONFLICT", "message": message})
        if request.method == "PATCH":
            return httpx.Response(200, text="")
        return None

    fake.before = route
    results = adapter(fake, preserve_unowned_tags=False).apply([change("p1"), change("p2")], {})
    for result in results:
        assert result.status == FAILED and isinstance(result.error, TransientError)
