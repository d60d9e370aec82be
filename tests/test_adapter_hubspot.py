"""HubSpot adapter against a stateful transport fake (v3 paths and body shapes only)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis

from adapters.change import APPLIED, FAILED, Change, OwnedState
from adapters.errors import AuthError, PermanentError, RateLimited
from adapters.hubspot import HubSpotAdapter, HubSpotConfig, existing_id
from adapters.ratelimit import RateLimiter

TOKEN = "pat-na1-test-token"
Handler = Callable[[httpx.Request, Any], httpx.Response | None]


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
        if path == "/crm/v3/properties/contacts/esp_tags":
            if self.options is None:
                return httpx.Response(
                    404, json={"status": "error", "category": "OBJECT_NOT_FOUND", "message": "no"}
                )
            if request.method == "PATCH":
                self.options = body["options"]
            return httpx.Response(200, json={"name": "esp_tags", "options": self.options})
        if path == "/crm/v3/properties/contacts" and request.method == "POST":
            if body["name"] != "esp_tags":
                assert (body["type"], body["fieldType"]) in (("string", "text"), ("number", "number"))
                self.properties[body["name"]] = body
                return httpx.Response(201, json=body)
            assert body["type"] == "enumeration" and body["fieldType"] == "checkbox"
            self.options = body["options"]
            return httpx.Response(201, json=body)
        if path.startswith("/crm/v3/properties/contacts/") and request.method == "GET":
            name = path.rsplit("/", 1)[-1]
            if name in self.properties:
                return httpx.Response(200, json=self.properties[name])
            return httpx.Response(
                404, json={"status": "error", "category": "OBJECT_NOT_FOUND", "message": "no"}
            )
        if path == "/crm/v3/objects/contacts/batch/read":
            assert body["idProperty"] == "email" and len(body["inputs"]) <= 100
            results = [
                {"id": c["id"], "properties": {k: c["properties"].get(k) for k in body["properties"]}}
                for i in body["inputs"]
                if (c := self.contacts.get(i["id"]))
            ]
            return httpx.Response(200, json={"status": "COMPLETE", "results": results})
        if path == "/crm/v3/objects/contacts/batch/upsert":
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
                contact = self.contacts.setdefault(item["id"], {"id": str(self.next_id), "properties": {}})
                self.next_id += 1
                contact["properties"].update(item["properties"])
                results.append(
                    {
                        "id": contact["id"],
                        "new": False,
                        "properties": contact["properties"],
                        "objectWriteTraceId": item["objectWriteTraceId"],
                    }
                )
            out: dict[str, Any] = {"status": "COMPLETE", "results": results}
            if errors:
                out.update(errors=errors, numErrors=len(errors))
            return httpx.Response(207 if errors else 200, json=out)
        if path.startswith("/crm/v3/lists/") and request.method == "PUT":
            _, _, _, list_id, _, action = path.strip("/").split("/")
            assert isinstance(body, list) and all(isinstance(x, str) for x in body)
            members = self.lists.setdefault(list_id, set())
            if action == "add":
                members.update(body)
            else:
                members.difference_update(body)
            return httpx.Response(
                200, json={"recordIdsMissing": [], "recordIdsRemoved": [], "recordsIdsAdded": body}
            )
        if path == "/crm/v3/objects/contacts/gdpr-delete":
            assert body == {"objectId": body["objectId"], "idProperty": "email"}
            self.contacts.pop(body["objectId"], None)
            return httpx.Response(204)
        return httpx.Response(404, json={"status": "error", "category": "OBJECT_NOT_FOUND", "message": path})


class SimClock:
    def __init__(self) -> None:
        self.t = datetime(2024, 3, 5, 22, 0, tzinfo=UTC).timestamp()
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def adapter(fake: FakeHubSpot, clock: SimClock | None = None, **kw: Any) -> HubSpotAdapter:
    clock = clock or SimClock()
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
    clock = SimClock()  # 22:00 UTC = 23:00 in Paris (winter)
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
    clock = SimClock()
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
    results = adapter(fake, clock).apply([change("p1")], {})
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
