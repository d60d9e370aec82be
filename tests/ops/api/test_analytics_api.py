"""The analytics resources of the admin API: a segment's report (the CLI's figures), an exclusive
group's migration matrix, the overlap of two segments with its freshness; scoped, validated."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from connector.analytics import attribution, movement, overlap
from connector.analytics.report import segment_report
from connector.clock import isoformat
from connector.event import Event
from connector.worker import sizes
from tests.conftest import fresh_runtime, write_accounts
from tests.ops.api.conftest import API_NOW, DEST_ENV, Mint, acme_file, bearer, globex_file

T0 = API_NOW - timedelta(days=3)
GROUP = ["lifecycle_win_back", "lifecycle_churned", "lifecycle_at_risk", "lifecycle_loyal"]


@pytest.fixture
def app(config_dir: Path, monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis, settings: Any) -> Any:
    from connector import runtime
    from connector.app import create_app

    for name, value in DEST_ENV.items():
        monkeypatch.setenv(name, value)
    acme = acme_file()
    acme["rules"] = {
        "include": ["cart_abandonment", "lifecycle", {"template": "vip", "params": {"threshold": 100}}]
    }
    write_accounts(config_dir, acme, globex_file())
    fresh_runtime()
    application = create_app(runtime=runtime.current())
    application.config["TESTING"] = True
    return application


def _order(n: int, revenue: float) -> Event:
    at = T0 + timedelta(days=1)
    return Event("acme", "test", f"o{n}", "track", "order_completed", at, at, {}, {"revenue": revenue})


def _fill(conn: redis.Redis) -> None:
    pipe = conn.pipeline()
    for n in range(300):
        arm, pid = ("c" if n % 10 == 0 else "t"), f"p{n}"
        sizes.record_transitions(pipe, "acme", ["cart_abandoner"], [], T0, profile_id=pid)
        movement.record_diff(pipe, "acme", {}, pid, ["cart_abandoner"], [], T0, arms={"cart_abandoner": arm})
        if n % 4 == 0:
            attribution.record(pipe, "acme", pid, [_order(n, 20.0 + n % 7)], [], {"cart_abandoner": arm})
    groups = {"lifecycle": GROUP}
    for n in range(5):
        movement.record_diff(pipe, "acme", groups, f"q{n}", ["lifecycle_at_risk"], [], T0)
    for n in range(2):
        movement.record_diff(
            pipe, "acme", groups, f"q{n}", ["lifecycle_churned"], ["lifecycle_at_risk"], API_NOW
        )
    pipe.execute()


def test_the_report_answers_the_cli_figures(app: Any, mint: Mint, redis_client: redis.Redis) -> None:
    _fill(redis_client)
    got = app.test_client().get(
        "/api/v1/accounts/acme/segments/cart_abandoner/report?since=30d",
        headers=bearer(mint("viewer", "acme")),
    )
    assert got.status_code == 200, got.get_json()
    body = got.get_json()
    cli = segment_report(redis_client, "acme", "cart_abandoner", API_NOW, 30)
    for key in ("members", "deliveries", "conversions", "conversion_rate", "revenue_per_member", "size"):
        assert body[key] == cli[key]
    assert body["members"] == 300 and body["conversions"] == 75 and body["size"] == 300
    assert body["arms"]["c"]["members"] == 30 and body["baseline"] == "c"
    comparison = body["comparisons"]["t"]
    assert "too few members" in comparison["warning"]
    diff = comparison["conversion_difference"]
    assert diff["low"] < diff["estimate"] < diff["high"]
    assert len(body["daily"]) == 30 and body["entered"] == 300


def test_an_unbounded_interval_is_null_not_infinity(app: Any, mint: Mint, redis_client: redis.Redis) -> None:
    pipe = redis_client.pipeline()
    movement.record_diff(pipe, "acme", {}, "x1", ["vip"], [], T0, arms={"vip": "c"})
    movement.record_diff(pipe, "acme", {}, "x2", ["vip"], [], T0, arms={"vip": "t"})
    pipe.execute()
    got = app.test_client().get(
        "/api/v1/accounts/acme/segments/vip/report", headers=bearer(mint("viewer", "acme"))
    )
    assert got.status_code == 200
    assert b"Infinity" not in got.data
    assert got.get_json()["comparisons"]["t"]["revenue_per_member_difference"]["low"] is None


def test_the_migration_matrix_of_an_exclusive_group(app: Any, mint: Mint, redis_client: redis.Redis) -> None:
    _fill(redis_client)
    client, headers = app.test_client(), bearer(mint("viewer", "acme"))
    got = client.get("/api/v1/accounts/acme/groups/lifecycle/migration?since=7d", headers=headers)
    assert got.status_code == 200, got.get_json()
    body = got.get_json()
    assert body["segments"][:4] == GROUP and len(body["segments"]) == 7 and body["days"] == 7
    moves = {(m["from"], m["to"]): m["count"] for m in body["moves"]}
    assert moves == {("-", "lifecycle_at_risk"): 5, ("lifecycle_at_risk", "lifecycle_churned"): 2}
    today = client.get("/api/v1/accounts/acme/groups/lifecycle/migration?since=1d", headers=headers)
    assert {(m["from"], m["to"]) for m in today.get_json()["moves"]} == {
        ("lifecycle_at_risk", "lifecycle_churned")
    }
    missing = client.get("/api/v1/accounts/acme/groups/nope/migration", headers=headers)
    assert missing.status_code == 404 and "nope" in missing.get_json()["message"]


def test_the_overlap_with_its_freshness(app: Any, mint: Mint, redis_client: redis.Redis) -> None:
    client, headers = app.test_client(), bearer(mint("viewer", "acme"))
    url = "/api/v1/accounts/acme/overlap?a=vip&b=cart_abandoner"
    before = client.get(url, headers=headers).get_json()
    assert before["computed_at"] is None and before["age_seconds"] is None
    pipe = redis_client.pipeline()
    sizes.record_transitions(pipe, "acme", ["vip", "cart_abandoner"], [], T0, profile_id="p1")
    sizes.record_transitions(pipe, "acme", ["vip"], [], T0, profile_id="p2")
    pipe.execute()
    overlap.refresh(redis_client, "acme", ["vip", "cart_abandoner"], API_NOW - timedelta(minutes=5))
    after = client.get(url, headers=headers).get_json()
    assert (
        after["both"] == 1
        and after["computed_at"] == isoformat(API_NOW - timedelta(minutes=5))
        and after["age_seconds"] == 300
    )


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("/api/v1/accounts/acme/segments/vip/report?since=30", "query.since"),
        ("/api/v1/accounts/acme/segments/vip/report?since=400d", "query.since"),
        ("/api/v1/accounts/acme/groups/lifecycle/migration?since=0d", "query.since"),
        ("/api/v1/accounts/acme/overlap?a=vip", "query.b"),
        ("/api/v1/accounts/acme/overlap?a=vip&b=ghost", "query.b"),
    ],
)
def test_bad_parameters_are_a_422_naming_them(app: Any, mint: Mint, url: str, where: str) -> None:
    got = app.test_client().get(url, headers=bearer(mint("viewer", "acme")))
    assert got.status_code == 422
    assert where in got.get_json()["message"]


def test_a_period_that_is_no_number_of_days_is_named_once(app: Any, mint: Mint) -> None:
    got = app.test_client().get(
        "/api/v1/accounts/acme/segments/vip/report?since=2w", headers=bearer(mint("viewer", "acme"))
    )
    message = got.get_json()["message"]
    assert got.status_code == 422 and message.count("since must be a number of days") == 1, message
    assert "from 1d to 396d" in message and "'2w'" in message


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/accounts/globex/segments/vip/report",
        "/api/v1/accounts/globex/groups/lifecycle/migration",
        "/api/v1/accounts/globex/overlap?a=vip&b=vip",
        "/api/v1/accounts/acme/segments/ghost/report",
    ],
)
def test_other_accounts_and_unknown_segments_are_404(app: Any, mint: Mint, url: str) -> None:
    got = app.test_client().get(url, headers=bearer(mint("viewer", "acme")))
    assert got.status_code == 404 and got.get_json()["error"] == "not_found"


def test_the_operations_are_in_the_openapi_document(app: Any) -> None:
    paths = app.test_client().get("/api/v1/openapi.json").get_json()["paths"]
    assert "/api/v1/accounts/{account_id}/segments/{name}/report" in paths
    assert "/api/v1/accounts/{account_id}/groups/{group}/migration" in paths
    assert "/api/v1/accounts/{account_id}/overlap" in paths
