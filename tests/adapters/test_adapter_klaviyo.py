"""Klaviyo adapter against a transport fake that checks headers, paths and JSON:API bodies."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from adapters.change import APPLIED, DEFERRED, FAILED, Change, OwnedState
from adapters.errors import AuthError, PermanentError, TransientError
from adapters.klaviyo import KlaviyoAdapter, KlaviyoConfig, map_error

KEY = "pk_test_0123456789"
Handler = Callable[[httpx.Request, Any], httpx.Response | None]
Route = Callable[[httpx.Request, Any], httpx.Response]


class FakeKlaviyo:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.profiles: dict[str, dict[str, Any]] = {}  # email → {"id", "properties"}
        self.lists: dict[str, set[str]] = {}
        self.before: Handler | None = None
        self.jobs = 0
        self.job_status = "queued"

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == f"Klaviyo-API-Key {KEY}"
        assert request.headers["revision"] == "2024-10-15"
        assert request.headers["Accept"] == "application/vnd.api+json"
        body = json.loads(request.content) if request.content else None
        if body is not None:
            assert request.headers["Content-Type"] == "application/vnd.api+json"
        path = request.url.path
        self.calls.append((request.method, path, body))
        if self.before:
            early = self.before(request, body)
            if early is not None:
                return early
        for method, matches, handle in self.routes():
            if method in (None, request.method) and matches(path):
                return handle(request, body)
        return httpx.Response(
            404, json={"errors": [{"status": 404, "code": "not_found", "title": "Not found."}]}
        )

    def routes(self) -> list[tuple[str | None, Callable[[str], bool], Route]]:
        return [
            ("POST", "/api/profile-import".__eq__, self.profile_import),
            ("GET", "/api/profiles".__eq__, self.profiles_by_email),
            ("POST", "/api/profile-bulk-import-jobs".__eq__, self.bulk_job),
            ("GET", lambda p: p.startswith("/api/profile-bulk-import-jobs/"), self.poll_job),
            (
                None,
                lambda p: p.startswith("/api/lists/") and p.endswith("/relationships/profiles"),
                self.list_members,
            ),
            ("POST", "/api/events".__eq__, self.event),
            (None, "/api/data-privacy-deletion-jobs".__eq__, self.deletion_job),
        ]

    def profile_import(self, request: httpx.Request, body: Any) -> httpx.Response:
        data = body["data"]
        assert data["type"] == "profile"
        attrs = data["attributes"]
        created = attrs["email"] not in self.profiles
        prof = self.profiles.setdefault(attrs["email"], {"id": f"01P{len(self.profiles)}", "properties": {}})
        prof["properties"].update(attrs.get("properties", {}))
        patch = (data.get("meta") or {}).get("patch_properties") or {}
        for name, values in (patch.get("append") or {}).items():
            prof["properties"].setdefault(name, []).extend(values)
        for name, values in (patch.get("unappend") or {}).items():
            prof["properties"][name] = [v for v in prof["properties"].get(name, []) if v not in values]
        for name in patch.get("unset") or []:
            prof["properties"].pop(name, None)
        return httpx.Response(
            201 if created else 200,
            json={"data": {"type": "profile", "id": prof["id"], "attributes": attrs}},
        )

    def profiles_by_email(self, request: httpx.Request, body: Any) -> httpx.Response:
        expr = request.url.params["filter"]
        assert expr.startswith("any(email,") and request.url.params["page[size]"] == "100"
        wanted = {e.lower() for e in json.loads(expr[len("any(email,") : -1])}
        assert len(wanted) <= 100
        data = [
            {"type": "profile", "id": p["id"], "attributes": {"email": e, "properties": p["properties"]}}
            for e, p in self.profiles.items()
            if e in wanted
        ]
        return httpx.Response(200, json={"data": data, "links": {"next": None}})

    def bulk_job(self, request: httpx.Request, body: Any) -> httpx.Response:
        data = body["data"]
        assert data["type"] == "profile-bulk-import-job" and set(data) <= {
            "type",
            "attributes",
            "relationships",
        }
        profiles = data["attributes"]["profiles"]["data"]
        assert 1 <= len(profiles) <= 10_000 and len(request.content) <= 5 * 1024 * 1024
        lists = [i["id"] for i in (data.get("relationships") or {}).get("lists", {}).get("data", [])]
        for item in profiles:
            attrs = item["attributes"]
            prof = self.profiles.setdefault(
                attrs["email"], {"id": f"01B{len(self.profiles)}", "properties": {}}
            )
            prof["properties"].update(attrs.get("properties", {}))
            for list_id in lists:
                self.lists.setdefault(list_id, set()).add(prof["id"])
        self.jobs += 1
        return httpx.Response(
            202,
            json={
                "data": {
                    "type": "profile-bulk-import-job",
                    "id": f"job{self.jobs}",
                    "attributes": {"status": self.job_status},
                }
            },
        )

    def poll_job(self, request: httpx.Request, body: Any) -> httpx.Response:
        self.job_status = "complete"
        return httpx.Response(
            200,
            json={
                "data": {
                    "type": "profile-bulk-import-job",
                    "id": request.url.path.rsplit("/")[-1],
                    "attributes": {"status": "complete", "failed_count": 0},
                }
            },
        )

    def list_members(self, request: httpx.Request, body: Any) -> httpx.Response:
        list_id = request.url.path.split("/")[3]
        items = body["data"]
        assert 1 <= len(items) <= 1000 and all(i["type"] == "profile" and i["id"] for i in items)
        members = self.lists.setdefault(list_id, set())
        ids = {i["id"] for i in items}
        if request.method == "POST":
            members |= ids
        else:
            assert request.method == "DELETE"
            members -= ids
        return httpx.Response(204)

    def event(self, request: httpx.Request, body: Any) -> httpx.Response:
        attrs = body["data"]["attributes"]
        assert attrs["metric"]["data"]["attributes"]["name"] in ("Segment Entered", "Segment Exited")
        assert attrs["unique_id"]
        return httpx.Response(202)

    def deletion_job(self, request: httpx.Request, body: Any) -> httpx.Response:
        assert body["data"]["type"] == "data-privacy-deletion-job"
        return httpx.Response(202)


def adapter(fake: FakeKlaviyo, **kw: Any) -> KlaviyoAdapter:
    slept: list[float] = []
    ad = KlaviyoAdapter(
        KlaviyoConfig(api_key=KEY, base_url="https://a.klaviyo.test", **kw),
        http_transport=httpx.MockTransport(fake),
        sleep=slept.append,
    )
    ad.slept = slept  # type: ignore[attr-defined]
    return ad


def change(pid: str, version: int = 1, **kw: Any) -> Change:
    kw.setdefault("email", f"{pid}@example.com")
    kw.setdefault("fields", {"plan": "gold"})
    return Change(account="acme", destination="klaviyo", profile_id=pid, version=version, **kw)


def test_import_appends_tags_and_sets_properties() -> None:
    fake = FakeKlaviyo()
    results = adapter(fake, bulk_threshold=10).apply(
        [change("p1", tags=frozenset({"vip"}), fields={"ltv": 12})], {}
    )
    assert results[0].status == APPLIED and results[0].owned
    assert results[0].owned.remote_id == "01P0"
    body = fake.calls[0][2]
    assert body == {
        "data": {
            "type": "profile",
            "attributes": {"email": "p1@example.com", "properties": {"ltv": 12}},
            "meta": {"patch_properties": {"append": {"esp_tags": ["vip"]}}},
        }
    }


def test_only_owned_tags_are_unappended_and_hand_values_stay() -> None:
    fake = FakeKlaviyo()
    fake.profiles["p1@example.com"] = {"id": "01X", "properties": {"esp_tags": ["hand", "cart"], "ltv": 3}}
    owned = {"p1": OwnedState(tags=frozenset({"cart"}), fields=frozenset({"ltv"}), remote_id="01X")}
    adapter(fake).apply([change("p1", tags=frozenset({"vip"}), fields={})], owned)
    props = fake.profiles["p1@example.com"]["properties"]
    assert props == {"esp_tags": ["hand", "vip"]}
    patch = fake.calls[0][2]["data"]["meta"]["patch_properties"]
    assert patch == {"append": {"esp_tags": ["vip"]}, "unappend": {"esp_tags": ["cart"]}, "unset": ["ltv"]}


def test_list_relationships_by_profile_id_and_cached_id_skips_import() -> None:
    fake = FakeKlaviyo()
    fake.lists["M"] = {"01OLD"}
    owned = {"old": OwnedState(lists=frozenset({"M"}), remote_id="01OLD")}
    results = adapter(fake).apply(
        [change(f"p{i}", lists=frozenset({"L"}), fields={}) for i in range(3)] + [change("old", fields={})],
        owned,
    )
    assert all(r.status == APPLIED for r in results)
    assert fake.lists["L"] == {"01P0", "01P1", "01P2"}
    assert fake.lists["M"] == set()
    assert [c[1] for c in fake.calls].count(
        "/api/profile-import"
    ) == 3  # "old": id known, nothing else changed
    list_calls = [(c[0], c[1]) for c in fake.calls if "/lists/" in c[1]]
    assert list_calls == [
        ("POST", "/api/lists/L/relationships/profiles"),
        ("DELETE", "/api/lists/M/relationships/profiles"),
    ]


def test_list_calls_are_chunked_at_1000() -> None:
    fake = FakeKlaviyo()
    owned = {f"p{i}": OwnedState(remote_id=f"id{i}") for i in range(2500)}
    adapter(fake).apply([change(f"p{i}", lists=frozenset({"L"}), fields={}) for i in range(2500)], owned)
    sizes = [len(c[2]["data"]) for c in fake.calls if "/lists/" in c[1]]
    assert sizes == [1000, 1000, 500]


def test_segment_events_are_optional() -> None:
    fake = FakeKlaviyo()
    owned = {"p1": OwnedState(segments=frozenset({"old"}), remote_id="01X")}
    adapter(fake, segment_events=True).apply([change("p1", segments=frozenset({"new"}))], owned)
    events = [c[2]["data"]["attributes"] for c in fake.calls if c[1] == "/api/events"]
    assert [(e["metric"]["data"]["attributes"]["name"], e["properties"]["segment"]) for e in events] == [
        ("Segment Entered", "new"),
        ("Segment Exited", "old"),
    ]
    assert events[0]["unique_id"] == "p1:new:1:in"
    fake = FakeKlaviyo()
    adapter(fake).apply([change("p1", segments=frozenset({"new"}))], {})
    assert not [c for c in fake.calls if c[1] == "/api/events"]


def test_409_duplicate_profile_uses_the_existing_id() -> None:
    fake = FakeKlaviyo()
    state = {"n": 0}

    def conflict(request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.url.path == "/api/profile-import" and state["n"] == 0:
            state["n"] += 1
            return httpx.Response(
                409,
                json={
                    "errors": [
                        {
                            "id": "e1",
                            "status": 409,
                            "code": "duplicate_profile",
                            "title": "Conflict.",
                            "detail": "A profile already exists with one of these identifiers.",
                            "source": {"pointer": "/data/attributes"},
                            "meta": {"duplicate_profile_id": "01DUP"},
                        }
                    ]
                },
            )
        return None

    fake.before = conflict
    adapter(fake).apply([change("p1")], {})
    second = [c[2] for c in fake.calls if c[1] == "/api/profile-import"][1]
    assert second["data"]["id"] == "01DUP"


def test_retry_after_is_honoured_and_errors_are_mapped() -> None:
    fake = FakeKlaviyo()
    state = {"n": 0}

    def throttle(request: httpx.Request, body: Any) -> httpx.Response | None:
        if state["n"] == 0:
            state["n"] += 1
            return httpx.Response(
                429,
                headers={"Retry-After": "3"},
                json={"errors": [{"status": 429, "code": "throttled", "detail": "slow down"}]},
            )
        return None

    fake.before = throttle
    ad = adapter(fake)
    assert ad.apply([change("p1")], {})[0].status == APPLIED
    assert ad.slept == [3.0]  # type: ignore[attr-defined]
    bad = map_error(
        httpx.Response(
            400,
            json={
                "errors": [
                    {
                        "status": 400,
                        "code": "invalid",
                        "detail": "bad email",
                        "source": {"pointer": "/data/attributes/email"},
                    }
                ]
            },
        )
    )
    assert isinstance(bad, PermanentError) and "/data/attributes/email" in bad.detail
    assert isinstance(map_error(httpx.Response(401, json={"errors": []})), AuthError)


def test_permanent_item_error_fails_only_that_contact() -> None:
    fake = FakeKlaviyo()

    def reject(request: httpx.Request, body: Any) -> httpx.Response | None:
        if body and body.get("data", {}).get("attributes", {}).get("email") == "bad@example.com":
            return httpx.Response(400, json={"errors": [{"status": 400, "code": "invalid", "detail": "bad"}]})
        return None

    fake.before = reject
    results = {r.profile_id: r for r in adapter(fake).apply([change("ok"), change("bad")], {})}
    assert results["ok"].status == APPLIED and results["bad"].status == FAILED


def test_auth_error_and_erase() -> None:
    fake = FakeKlaviyo()
    fake.before = lambda r, b: httpx.Response(
        403, json={"errors": [{"status": 403, "code": "permission_denied"}]}
    )
    with pytest.raises(AuthError):
        adapter(fake).apply([change("p1")], {})
    fake = FakeKlaviyo()
    results = adapter(fake).apply([change("p1", erase=True)], {})
    assert results[0].status == APPLIED and fake.calls[0][1] == "/api/data-privacy-deletion-jobs"
    assert (
        fake.calls[0][2]["data"]["attributes"]["profile"]["data"]["attributes"]["email"] == "p1@example.com"
    )


def test_backfills_use_bulk_import_jobs_with_the_list_relationship() -> None:
    fake = FakeKlaviyo()
    changes = [change(f"p{i}", lists=frozenset({"L"}), fields={"ltv": i}) for i in range(250)]
    changes.append(change("unset", fields={}))  # clears an owned field: a job cannot, so one by one
    owned = {"unset": OwnedState(fields=frozenset({"plan"}))}
    results = adapter(fake, bulk_threshold=100).apply(changes, owned)
    assert all(r.status == APPLIED for r in results)
    jobs = [c for c in fake.calls if c[1] == "/api/profile-bulk-import-jobs"]
    assert len(jobs) == 1
    assert jobs[0][2]["data"]["relationships"] == {"lists": {"data": [{"type": "list", "id": "L"}]}}
    assert len(fake.lists["L"]) == 250
    assert fake.profiles["p7@example.com"]["properties"] == {"ltv": 7}
    assert [c[1] for c in fake.calls].count("/api/profile-import") == 1
    assert [c[1] for c in fake.calls].count("/api/profiles") == 0  # no tags moved: nothing to read
    assert not [c for c in fake.calls if c[1] == "/api/lists/L/relationships/profiles"]
    polls = [c for c in fake.calls if c[1].startswith("/api/profile-bulk-import-jobs/")]
    assert len(polls) == 1  # queued → one status poll → complete


def test_a_failed_bulk_job_is_redriven_one_by_one() -> None:
    fake = FakeKlaviyo()

    def failing_job(request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.url.path.startswith("/api/profile-bulk-import-jobs"):
            return httpx.Response(
                202,
                json={
                    "data": {
                        "type": "profile-bulk-import-job",
                        "id": "j1",
                        "attributes": {"status": "complete", "failed_count": 2},
                    }
                },
            )
        return None

    fake.before = failing_job
    changes = [change(f"p{i}", lists=frozenset({"L"})) for i in range(5)]
    results = adapter(fake, bulk_threshold=5).apply(changes, {})
    assert all(r.status == APPLIED for r in results)
    assert [c[1] for c in fake.calls].count("/api/profile-import") == 5
    assert len(fake.lists["L"]) == 5

    # the re-drive is paid from the batch's per-contact budget; the rest waits for the next batch
    fake = FakeKlaviyo()
    fake.before = failing_job
    results = adapter(fake, bulk_threshold=5, per_contact_budget=3).apply(changes, {})
    assert [r.status for r in results] == [APPLIED] * 3 + [DEFERRED] * 2
    assert [c[1] for c in fake.calls].count("/api/profile-import") == 3
    assert len(fake.lists["L"]) == 3


def test_leaving_a_list_without_a_known_id_looks_the_profile_up_by_email() -> None:
    fake = FakeKlaviyo()
    fake.profiles["p1@example.com"] = {"id": "01K", "properties": {}}
    fake.lists["L"] = {"01K"}
    owned = {"p1": OwnedState(lists=frozenset({"L"})), "p2": OwnedState(lists=frozenset({"L"}))}
    results = adapter(fake).apply([change("p1", fields={}), change("p2", fields={})], owned)
    assert all(r.status == APPLIED for r in results)
    assert fake.lists["L"] == set()
    assert [c[1] for c in fake.calls].count("/api/profiles") == 1  # both emails in one lookup
    assert results[0].owned and results[0].owned.remote_id == "01K"
    assert "p2@example.com" not in fake.profiles  # not created just to leave a list it is not in


def test_ratelimit_remaining_zero_holds_the_key(redis_client: Any) -> None:
    from adapters.ratelimit import RateLimiter

    clock = {"t": 1_700_000_000.0}
    limiter = RateLimiter(redis_client, clock=lambda: clock["t"], sleep=lambda s: None)
    fake = FakeKlaviyo()

    def headers(request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.url.path == "/api/profile-import":
            return httpx.Response(
                200,
                headers={"RateLimit-Remaining": "0", "RateLimit-Reset": "42"},
                json={"data": {"type": "profile", "id": "01R"}},
            )
        return None

    fake.before = headers
    ad = KlaviyoAdapter(
        KlaviyoConfig(api_key=KEY, base_url="https://a.klaviyo.test"),
        http_transport=httpx.MockTransport(fake),
        limiter=limiter,
        clock=lambda: clock["t"],
    )
    ad.apply([change("p1")], {})
    assert 41 <= limiter.blocked_for(ad.client.t.limiter_key) <= 42


def test_an_outage_defers_the_rest_of_the_batch_instead_of_retrying_each_contact() -> None:
    fake = FakeKlaviyo()
    fake.before = lambda request, body: httpx.Response(
        503, json={"errors": [{"status": 503, "code": "error"}]}
    )
    ad = adapter(fake, bulk_threshold=100)  # the per-contact path
    results = ad.apply([change(f"p{i}") for i in range(20)], {})
    imports = [c for c in fake.calls if c[1] == "/api/profile-import"]
    attempts_for_one_contact = len(imports)
    assert 1 <= attempts_for_one_contact <= 5  # the in-call retries of the first contact only
    assert {r.status for r in results} == {FAILED}
    assert all(r.error is not None and r.error.retryable for r in results)


def test_bulk_jobs_write_tags_whole_and_keep_the_values_set_by_hand() -> None:
    fake = FakeKlaviyo()
    # p3 had "cart" from the connector and "hand" from a marketer; p4 exists with a hand value only
    fake.profiles["p3@example.com"] = {"id": "01X3", "properties": {"esp_tags": ["cart", "hand"]}}
    fake.profiles["p4@example.com"] = {"id": "01X4", "properties": {"esp_tags": ["hand"]}}
    changes = [change(f"p{i}", tags=frozenset({"vip"}), fields={"ltv": i}) for i in range(150)]
    owned = {"p3": OwnedState(tags=frozenset({"cart"}))}
    results = adapter(fake, bulk_threshold=100).apply(changes, owned)
    assert all(r.status == APPLIED for r in results)
    paths = [c[1] for c in fake.calls]
    assert paths.count("/api/profiles") == 2  # current values, 100 emails per lookup
    assert paths.count("/api/profile-bulk-import-jobs") == 1
    assert "/api/profile-import" not in paths  # no request per contact
    assert fake.profiles["p3@example.com"]["properties"]["esp_tags"] == ["hand", "vip"]  # cart was ours
    assert fake.profiles["p4@example.com"]["properties"]["esp_tags"] == ["hand", "vip"]
    assert fake.profiles["p9@example.com"]["properties"] == {"ltv": 9, "esp_tags": ["vip"]}
    assert results[3].owned and results[3].owned.remote_id == "01X3"  # the lookup's id is kept
    assert results[3].owned.tags == frozenset({"vip"})


def test_a_failed_tags_lookup_sends_those_changes_one_by_one() -> None:
    fake = FakeKlaviyo()

    def lookup_down(request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.url.path == "/api/profiles":
            return httpx.Response(400, json={"errors": [{"status": 400, "code": "invalid", "title": "Bad"}]})
        return None

    fake.before = lookup_down
    changes = [change(f"p{i}", tags=frozenset({"vip"})) for i in range(120)]
    changes += [change(f"q{i}", fields={"ltv": i}) for i in range(10)]
    results = adapter(fake, bulk_threshold=100).apply(changes, {})
    assert all(r.status == APPLIED for r in results)
    paths = [c[1] for c in fake.calls]
    assert paths.count("/api/profile-import") == 120  # append through patch_properties instead
    assert paths.count("/api/profile-bulk-import-jobs") == 1  # the ten without tags
    assert fake.profiles["p5@example.com"]["properties"]["esp_tags"] == ["vip"]


def test_a_bulk_job_refused_for_one_row_fails_only_that_row() -> None:
    fake = FakeKlaviyo()

    def one_bad_row(request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.url.path == "/api/profile-bulk-import-jobs":
            error = {"status": 400, "code": "invalid", "title": "Invalid input.", "detail": "bad email",
                     "source": {"pointer": "/data/attributes/profiles/data/3/attributes/email"}}  # fmt: skip
            return httpx.Response(400, json={"errors": [error]})
        if (
            request.url.path == "/api/profile-import"
            and body["data"]["attributes"]["email"] == "p3@example.com"
        ):
            return httpx.Response(400, json={"errors": [{"status": 400, "code": "invalid", "title": "Bad."}]})
        return None

    fake.before = one_bad_row
    changes = [change(f"p{i}", lists=frozenset({"L"})) for i in range(120)]
    results = adapter(fake, bulk_threshold=100).apply(changes, {})
    failed = [r.profile_id for r in results if r.status == FAILED]
    assert failed == ["p3"]  # not the 119 others
    assert all(r.status == APPLIED for r in results if r.profile_id != "p3")
    assert len(fake.lists["L"]) == 119


def test_a_stale_profile_id_is_looked_up_again_and_the_list_call_resent() -> None:
    fake = FakeKlaviyo()
    fake.profiles["p1@example.com"] = {"id": "01NEW", "properties": {}}
    fake.lists["L"] = set()

    def unknown_ids(request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.url.path == "/api/lists/L/relationships/profiles":
            known = {p["id"] for p in fake.profiles.values()}
            if any(item["id"] not in known for item in body["data"]):
                return httpx.Response(
                    404, json={"errors": [{"status": 404, "code": "not_found", "title": "Not found."}]}
                )
        return None

    fake.before = unknown_ids
    owned = {"p1": OwnedState(remote_id="01GONE"), "p2": OwnedState(remote_id="01GONE2")}
    changes = [
        change("p1", lists=frozenset({"L"}), fields={}),
        change("p2", lists=frozenset({"L"}), fields={}),
    ]
    results = adapter(fake).apply(changes, owned)
    assert all(r.status == APPLIED for r in results), [r.error for r in results]
    assert results[0].owned and results[0].owned.remote_id == "01NEW"
    assert results[1].owned and results[1].owned.remote_id not in (None, "01GONE2")  # p2 was imported again
    assert fake.lists["L"] == {"01NEW", results[1].owned.remote_id}


def test_changes_past_the_per_contact_budget_are_deferred_untouched() -> None:
    fake = FakeKlaviyo()
    owned = {f"p{i}": OwnedState(segments=frozenset({"old"})) for i in range(6)}
    changes = [change(f"p{i}", segments=frozenset({"old", "new"})) for i in range(6)]
    results = adapter(fake, segment_events=True, per_contact_budget=5, bulk_threshold=100).apply(
        changes, owned
    )
    # each change costs an import and one "Segment Entered" event: two fit in a budget of 5
    assert [r.status for r in results] == [APPLIED, APPLIED, DEFERRED, DEFERRED, DEFERRED, DEFERRED]
    sent = [c[2] for c in fake.calls if c[1] in ("/api/profile-import", "/api/events")]
    assert len(sent) == 4
    assert not any(f"p{i}@example.com" in json.dumps(body) for body in sent for i in range(2, 6))
    # one change that alone costs more than the budget still goes, so every batch makes progress
    lone = adapter(FakeKlaviyo(), segment_events=True, per_contact_budget=1).apply(changes[:2], owned)
    assert [r.status for r in lone] == [APPLIED, DEFERRED]


def test_bulk_jobs_cost_no_per_contact_budget() -> None:
    fake = FakeKlaviyo()
    changes = [change(f"b{i}", lists=frozenset({"L1"})) for i in range(150)]
    results = adapter(fake, bulk_threshold=100, per_contact_budget=10).apply(changes, {})
    assert {r.status for r in results} == {APPLIED}
    assert not [c for c in fake.calls if c[1] == "/api/profile-import"]


def test_a_steady_flow_goes_in_one_bulk_job_per_batch_from_five_imports() -> None:
    """profile-import allows 750/min: a batch of five or more new contacts (two batches a second
    at the default batch delay would be 600/min and more) is one job carrying tags, fields and the
    list; fewer keep the per-contact import (no read-before-write of the tags)."""
    fake = FakeKlaviyo()
    five = [change(f"p{i}", tags=frozenset({"vip"}), lists=frozenset({"L"})) for i in range(5)]
    ad = adapter(fake)
    assert {r.status for r in ad.apply(five, {})} == {APPLIED}
    paths = [c[1] for c in fake.calls]
    assert paths.count("/api/profile-bulk-import-jobs") == 1 and "/api/profile-import" not in paths
    assert paths.count("/api/profiles") == 1  # the tags' current values, 100 emails per read
    assert fake.profiles["p3@example.com"]["properties"]["esp_tags"] == ["vip"]
    assert len(fake.lists["L"]) == 5
    assert ad.slept == [0.2]  # the job is polled after 0.2 s, not a whole second

    fake = FakeKlaviyo()
    four = [change(f"q{i}", tags=frozenset({"vip"}), lists=frozenset({"L"})) for i in range(4)]
    assert {r.status for r in adapter(fake).apply(four, {})} == {APPLIED}
    paths = [c[1] for c in fake.calls]
    assert paths.count("/api/profile-import") == 4 and "/api/profile-bulk-import-jobs" not in paths


def test_a_slow_bulk_job_is_polled_ever_less_often_up_to_the_poll_interval() -> None:
    fake = FakeKlaviyo()
    polls = [0]

    def slow(request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.method == "GET" and request.url.path.startswith("/api/profile-bulk-import-jobs/"):
            polls[0] += 1
            status = "complete" if polls[0] >= 5 else "processing"
            return httpx.Response(
                200,
                json={
                    "data": {"type": "profile-bulk-import-job", "id": "j", "attributes": {"status": status}}
                },
            )
        return None

    fake.before = slow
    ad = adapter(fake)
    results = ad.apply([change(f"p{i}", lists=frozenset({"L"})) for i in range(5)], {})
    assert {r.status for r in results} == {APPLIED}
    assert ad.slept == [0.2, 0.4, 0.8, 1.0, 1.0]


# -- answers that confirm (or not) what was sent ---------------------------------------------------

NOT_JSON = httpx.Response(200, text="<html>OK</html>", headers={"Content-Type": "text/html"})


@pytest.mark.parametrize(
    "response",
    [NOT_JSON, httpx.Response(200, json={"data": {"type": "profile"}}), httpx.Response(200, json=[])],
    ids=["html", "no-id", "array"],
)
def test_an_import_answered_without_a_profile_is_retried_not_dead_lettered(response: httpx.Response) -> None:
    fake = FakeKlaviyo()
    fake.before = lambda r, b: response if r.url.path == "/api/profile-import" else None
    result = adapter(fake, bulk_threshold=10).apply([change("p1", tags=frozenset({"vip"}))], {})[0]
    assert result.status == FAILED and isinstance(result.error, TransientError)
    assert result.error.retryable and result.owned is None


def test_a_bulk_job_answered_without_a_job_is_retried_as_a_whole() -> None:
    fake = FakeKlaviyo()
    fake.before = lambda r, b: (
        httpx.Response(202, json={"data": {}}) if r.url.path == "/api/profile-bulk-import-jobs" else None
    )
    results = adapter(fake, bulk_threshold=5).apply([change(f"p{i}") for i in range(6)], {})
    assert all(r.status == FAILED and isinstance(r.error, TransientError) for r in results)
    assert "/api/profile-import" not in [c[1] for c in fake.calls]  # not re-sent one by one


def test_a_tags_lookup_that_cannot_be_read_sends_those_changes_one_by_one() -> None:
    fake = FakeKlaviyo()
    fake.profiles["p3@example.com"] = {"id": "01X3", "properties": {"esp_tags": ["hand"]}}
    fake.before = lambda r, b: NOT_JSON if r.url.path == "/api/profiles" else None
    changes = [change(f"p{i}", tags=frozenset({"vip"})) for i in range(6)]
    results = adapter(fake, bulk_threshold=5).apply(changes, {})
    assert all(r.status == APPLIED for r in results)
    assert fake.profiles["p3@example.com"]["properties"]["esp_tags"] == ["hand", "vip"]  # hand value kept
    assert "/api/profile-bulk-import-jobs" not in [c[1] for c in fake.calls]
