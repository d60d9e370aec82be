"""The console in a real browser: Debian's Chromium driven by Playwright, against the real app
(werkzeug server in a thread on an ephemeral port) and real Redis; the worker drains in-process.

Screenshots of each page go to the test's temporary directory, or to ``CONSOLE_SCREENSHOTS_DIR``
when set (``CONSOLE_SCREENSHOTS_DIR=docs pytest tests/ops/console/test_browser.py`` refreshes the
README's images). Skipped, with the reason, only when Chromium or Playwright is missing; CI
installs both (.ci/run, the dev extras).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from werkzeug.serving import make_server

from connector import clock
from connector.ingest.queue import EventQueue
from connector.ingest.receivers.segment import sign
from connector.sync.deadletters import DeadLetters
from connector.worker.jobs import drain_events
from tests.conftest import ACME_ENV
from tests.ingest.signing import signed
from tests.ops.api.conftest import Mint

CHROMIUM = os.environ.get("CONNECTOR_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)
if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
    pytest.skip(
        f"chromium not found at {CHROMIUM}: apt-get install -y chromium (CI installs it in .ci/run)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def server(api_app: Any) -> Iterator[str]:
    http = make_server("127.0.0.1", 0, api_app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}"
    http.shutdown()
    thread.join(5)


@pytest.fixture
def page(browser: Any, tmp_path: Path) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(5000)
    opened = context.new_page()
    yield opened
    context.close()


def shot(page: Any, name: str, tmp_path: Path) -> None:
    directory = Path(os.environ.get("CONSOLE_SCREENSHOTS_DIR") or tmp_path)
    path = directory / f"console-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5000


def log_in(page: Any, base: str, secret: str) -> None:
    page.goto(f"{base}/console/")
    page.fill("#token", secret)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/console/a/acme/$"))


def order(base: str, n: int, revenue: float, email: str | None = None) -> None:
    body = json.dumps(
        {
            "type": "track",
            "event": "Order Completed",
            "messageId": f"order-{n}",
            "userId": f"buyer-{n}",
            "context": {"traits": {"email": email or f"buyer{n}@example.com"}},
            "properties": {"revenue": revenue},
            "timestamp": "2024-03-01T11:00:00Z",
        }
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Signature": sign(ACME_ENV["ACME_SEGMENT_SECRET"].encode(), body),
    }
    import httpx

    answer = httpx.post(f"{base}/webhooks/acme/segment", content=body, headers=headers)
    assert answer.status_code == 200, answer.text


def drain(redis_client: redis.Redis) -> None:
    for shard in range(EventQueue(redis_client, 4).shards):
        drain_events(shard, conn=redis_client)


def size_cell(page: Any) -> str:
    return str(page.inner_text('tr[data-segment="vip"] td.size')).strip()


def test_a_walk_through_the_console(
    browser: Any, page: Any, server: str, mint: Mint, redis_client: redis.Redis, tmp_path: Path
) -> None:
    log_in(page, server, mint("editor", "acme"))

    # two signed orders arrive and the worker applies them; find one of the buyers
    page.click("text=Segments")
    before = int(size_cell(page))
    for n in (1, 2):
        order(server, n, 150.0 * n)
    drain(redis_client)
    page.click("nav >> text=People")
    page.fill("input[name=email]", "buyer2@example.com")
    page.click("text=Find")

    # the person: timeline with the order and the entry, and the explanation in words
    page.wait_for_url(re.compile(r".*/people/.*"))
    timeline = page.inner_text("#timeline")
    assert "order_completed" in timeline and "entered vip" in timeline
    assert "In vip" in page.inner_text("ul.explain")
    # each condition on its own line, indented under the one it belongs to
    assert page.locator("ul.explain ul.reasons li.d0").count() >= 3
    assert page.locator("ul.explain ul.reasons li.d1").count() >= 1
    shot(page, "person", tmp_path)

    # live events: deliveries are recorded while the page is open; a refused one shows its reason
    page.click("text=Live events")
    page.wait_for_function("document.getElementById('live-state').textContent === 'live'")
    order(server, 3, 400.0)
    page.wait_for_selector("#live tbody tr.accepted")
    assert "b***@example.com" in page.inner_text("#live") and "buyer3@" not in page.inner_text("#live")
    # the worker applies it: the profile it landed on and its transition show under the delivery
    drain(redis_client)
    landed = page.wait_for_selector("#live tbody tr.accepted .sub.landed")
    assert "entered vip" in landed.inner_text() and "profile" in landed.inner_text()
    assert page.locator("#live tbody tr.landed").count() == 0  # matched to its delivery, no row of its own
    path, headers = signed("shopify", b'{"id": 7}')
    del headers["X-Shopify-Topic"]
    import httpx

    assert httpx.post(server + path, content=b'{"id": 7}', headers=headers).status_code == 401
    page.select_option("#f-outcome", "refused")
    refused = page.wait_for_selector("#live tbody tr.refused:not([hidden])", timeout=3000)
    assert "X-Shopify-Topic" in refused.inner_text()
    assert page.locator("#live tbody tr.accepted:not([hidden])").count() == 0
    page.select_option("#f-outcome", "")
    shot(page, "live", tmp_path)

    # dead letters: inspect one, replay it
    change = {
        "account": "acme",
        "destination": "mailchimp",
        "profile_id": "p1",
        "version": 1,
        "email": "a@x.test",
    }
    dead = DeadLetters(redis_client)
    item = dead.put(
        "sync:mailchimp", "429 too many requests", {"change": change}, clock.now(), account="acme"
    )
    page.click("text=Overview")
    attention = page.inner_text("ul.attention")
    assert "has 1 dead letter" in attention and "1 dead letters" not in attention
    assert "shopify: 1 refused" in page.inner_text("ul.attention")
    shot(page, "overview", tmp_path)
    page.click("text=Dead letters")
    shot(page, "deadletters", tmp_path)
    page.check(f'input[value="{item}"]')
    page.click("text=Replay selected")
    assert "1 selected; 1 queued" in page.inner_text("main")
    assert dead.get(item) is None
    page.click("text=Segments")
    assert int(size_cell(page)) >= before
    shot(page, "segments", tmp_path)
    page.click('tr[data-segment="vip"] a')
    assert '"gte": 100' in page.inner_text("pre.definition")  # the rule in force, $threshold replaced
    assert "threshold = 100" in page.inner_text("main")
    shot(page, "segment", tmp_path)


def test_a_viewer_sees_no_replay_and_login_screens(
    page: Any, server: str, mint: Mint, redis_client: redis.Redis, tmp_path: Path
) -> None:
    page.goto(f"{server}/console/a/acme/segments")
    assert "/console/login" in page.url
    page.fill("#token", "sc_000000000000_" + "x" * 43)
    page.click("button[type=submit]")
    assert "not valid" in page.inner_text(".alert")
    shot(page, "login", tmp_path)
    page.fill("#token", mint("viewer", "acme"))
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/console/a/acme/segments$"))  # back where it was going
    DeadLetters(redis_client).put("sync:mailchimp", "400 bad", {"change": {}}, clock.now(), account="acme")
    page.click("text=Dead letters")
    assert page.locator("text=Replay selected").count() == 0
    assert "need an editor token" in page.inner_text("main")


def test_a_segments_size_grows_as_signed_webhooks_arrive(
    page: Any, server: str, mint: Mint, redis_client: redis.Redis, tmp_path: Path
) -> None:
    log_in(page, server, mint("viewer", "acme"))
    page.click("text=Segments")
    assert size_cell(page) == "0"
    order(server, 10, 500.0)
    drain(redis_client)
    page.reload()
    assert size_cell(page) == "1"
    page.click('tr[data-segment="vip"] a')
    assert "buyer10@example.com" in page.inner_text("#members")


def test_the_rule_editor_dry_runs_and_publishes_with_progress(
    page: Any, server: str, mint: Mint, redis_client: redis.Redis, tmp_path: Path
) -> None:
    from rq import Queue, SimpleWorker

    from connector.worker.jobs import BACKFILL_QUEUE

    for n, revenue in ((21, 150.0), (22, 400.0)):
        order(server, n, revenue)
    drain(redis_client)
    log_in(page, server, mint("editor", "acme"))
    page.click("nav >> text=Rules")
    page.wait_for_url(re.compile(r".*/console/a/acme/rules$"))
    assert "the account file" in page.inner_text("#rules-source")

    # a typo is named with its path as you type
    page.fill("#rules-text", "segments:\n  - name: a\n    when: {count: {event: x, gte: lots}}\n")
    page.wait_for_selector("#rules-status.bad")
    assert "rules.segments[0].when.count.gte: must be a number" in page.inner_text("#rules-status")

    # valid, but on a name the spec's senders store under another one: said under the editor
    page.fill(
        "#rules-text",
        "include:\n  - cart_abandonment\n  - template: vip\n    params: {threshold: 100}\n"
        "segments:\n  - name: a\n    when: {count: {event: product_added, gte: 1}}\n",
    )
    warning = page.wait_for_selector("#rules-warnings li")
    assert warning.inner_text().startswith("rules.segments[0].when.count.event: event `product_added`")
    assert "`Product Added` is stored as `add_to_cart`" in warning.inner_text()
    assert "good" in (page.get_attribute("#rules-status", "class") or "")
    shot(page, "rules-warning", tmp_path)

    # raise the VIP threshold: the dry run shows the 150 buyer leaving, before anything is published
    page.fill(
        "#rules-text", "include:\n  - cart_abandonment\n  - template: vip\n    params: {threshold: 300}\n"
    )
    page.wait_for_selector("#rules-warnings", state="hidden")
    page.wait_for_selector("#rules-status.good")
    assert page.is_disabled("#publish")
    page.click("#dry-run")
    exit_cell = page.wait_for_selector('#diff-table tr[data-segment="vip"] td.exit')
    assert "buyer21@example.com" in exit_cell.inner_text()
    assert "buyer22@example.com" not in page.inner_text("#diff-table")

    # publish: the progress bar follows the re-evaluation to 100 %
    page.click("#publish")
    page.wait_for_selector("#publish-progress:not([hidden])")
    page.wait_for_function("document.getElementById('progress-text').textContent.includes('profiles')")
    with clock.frozen(clock.now()):
        SimpleWorker([Queue(BACKFILL_QUEUE, connection=redis_client)], connection=redis_client).work(
            burst=True
        )
    page.wait_for_function("document.getElementById('progress-text').textContent.includes('(100 %)')")
    assert page.eval_on_selector("#progress-bar", "el => el.value") == 100
    shot(page, "rules", tmp_path)
    page.reload()
    assert "API version 1" in page.inner_text("#rules-source")


def test_past_the_deliveries_shown_a_second_the_live_page_shows_a_counted_row(
    browser: Any, page: Any, server: str, api_app: Any, mint: Mint, tmp_path: Path
) -> None:
    api_app.wsgi_app.observer.shown_per_second = 2
    log_in(page, server, mint("viewer", "acme"))
    page.click("text=Live events")
    page.wait_for_function("document.getElementById('live-state').textContent === 'live'")
    for n in range(5):  # within two seconds at most: at least one past the two shown a second
        order(server, 100 + n, 20.0)
    page.select_option("#f-outcome", "not_shown")
    row = page.wait_for_selector("#live tbody tr.not_shown:not([hidden])")
    assert re.search(
        r"\d+ more deliver(y|ies) \(\d+ events? stored, 0 duplicate\), over 2 deliveries", row.inner_text()
    )
    shown = page.locator("#live tbody tr.accepted").count()
    assert 2 <= shown <= 4
    page.select_option("#f-outcome", "")
    shot(page, "live-counted", tmp_path)


def test_a_worker_line_that_comes_before_its_delivery_goes_under_it_and_rows_keep_their_time_order(
    page: Any, server: str, mint: Mint, redis_client: redis.Redis
) -> None:
    from connector import livefeed

    log_in(page, server, mint("viewer", "acme"))
    page.click("text=Live events")
    page.wait_for_function("document.getElementById('live-state').textContent === 'live'")
    landed = {
        "kind": "landed", "at": "2026-12-03T20:00:00.700000Z", "sender": "segment", "outcome": "landed",
        "profiles": [{"profile": "p-early", "sender": "segment", "events": ["ev-1"], "event_count": 1,
                      "entered": ["vip"], "exited": [], "traits": {}}],
        "profile_count": 1,
    }  # fmt: skip

    def delivery(at: str, event_id: str, outcome: str = "accepted") -> dict[str, Any]:
        return {
            "at": at, "sender": "segment", "outcome": outcome, "accepted": 1, "duplicates": 0,
            "events": [{"id": event_id, "name": "order_completed", "identities": {}}], "event_count": 1,
        }  # fmt: skip

    # the worker wrote first; the three in one transaction, so the page reads them in one answer
    # whatever the machine's load (a line still waiting past WAIT_MS gets a row of its own)
    with redis_client.pipeline(transaction=True) as pipe:
        for entry in (landed, delivery("2026-12-03T20:00:00.525000Z", "ev-2")):
            livefeed.write(pipe, "acme", entry)  # type: ignore[arg-type]
        livefeed.write(pipe, "acme", delivery("2026-12-03T20:00:00.452000Z", "ev-1"))  # type: ignore[arg-type]
        pipe.execute()
    sub = page.wait_for_selector("#live tbody tr.accepted .sub.landed")
    assert "entered vip" in sub.inner_text()
    rows = page.locator("#live tbody tr", has_text="2026-12-03T20:00:00")  # these entries' rows
    assert rows.count() == 2  # no row of its own for the worker's line
    assert "ev-1" not in rows.nth(0).inner_text() and "entered vip" in rows.nth(1).inner_text()
    assert rows.nth(0).locator("td").first.inner_text().endswith("00.525000Z")


def test_select_all_on_the_page_and_replay_all_matching_after_a_confirmation_with_the_count(
    page: Any,
    server: str,
    mint: Mint,
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    api_clock: clock.FrozenClock,
) -> None:
    from connector.ops.api import deadletters as api_deadletters

    monkeypatch.setattr(api_deadletters, "MAX_SELECTED", 25)  # three batches: the page goes on by itself
    dead = DeadLetters(redis_client)

    def put(n: int, reason: str) -> str:
        change = {"account": "acme", "destination": "mailchimp", "profile_id": f"p{n}", "version": n}
        return dead.put("sync:mailchimp", f"{reason} (#{n})", {"change": change}, clock.now(), account="acme")

    throttled = [put(n, "429 too many requests") for n in range(60)]  # more than a page (50)
    refused = [put(100 + n, "400 invalid email") for n in range(5)]
    log_in(page, server, mint("editor", "acme"))
    page.click("text=Dead letters")
    page.fill("input[name=filter]", "too many")  # no hex digit: no id holds it
    page.click("text=Filter")
    assert "60 dead letters match these filters; this page shows 50" in page.inner_text("#dl-matching")

    # select all on this page: every box of the page, and a note that 60 match in all
    select_all = page.locator("#dl-select-all")
    assert select_all.is_visible()
    select_all.check()
    assert page.locator('#deadletters input[name="ids"]:checked').count() == 50
    assert "All 50 dead letters on this page are selected; 60 match in all" in page.inner_text(
        "#dl-page-note"
    )
    page.locator('#deadletters input[name="ids"]').first.uncheck()
    assert page.evaluate("document.getElementById('dl-select-all').indeterminate") is True
    assert page.locator("#dl-page-note").is_hidden()
    select_all.check()
    shot(page, "deadletters-bulk", tmp_path)

    # replay all 60 matching (not only the 50 shown), after a confirmation stating the count
    page.click("#dl-replay-all")
    assert page.inner_text("h1") == "Replay all 60 matching?"
    assert "Replay 60 dead letters of acme matching text" in page.inner_text("#dl-confirm-text")
    shot(page, "deadletters-confirm", tmp_path)
    api_clock.advance(timedelta(seconds=1))
    put(999, "429 too many requests (after the count)")  # stored after the confirmation: left alone
    page.click("#dl-confirm")
    done = page.wait_for_selector("#dl-done", timeout=20000)  # three batches, each a page
    assert "Replay: all 60 matching dead letters; 60 queued." in done.inner_text()
    assert not any(dead.get(i) for i in throttled)
    assert all(dead.get(i) for i in refused)
    left = [i.reason for i in dead.list(limit=100)]
    assert sorted(left) == sorted(
        [f"400 invalid email (#{100 + n})" for n in range(5)]
        + ["429 too many requests (after the count) (#999)"]
    )
