"""The official JavaScript SDKs against the tracking API over loopback HTTP: Segment's analytics.js
(npm ``@segment/analytics-next``) in Debian's Chromium, on a page served from another origin than
the API, and ``@segment/analytics-node`` in Node. Each test then reads what was stored.

The SDKs' versions are pinned in ``js_sdks/package-lock.json``. They are installed with ``npm ci``
from the npm registry (no install scripts) and analytics.js is bundled into one browser file with
esbuild, once, into ``js_sdks/build/`` (rebuilt when a source there changes). The page loads
analytics.js with its settings inline (``cdnSettings``), so nothing is fetched from Segment; every
request the page makes outside the two loopback origins makes the test fail.
Skipped, with the reason, only when node and npm are missing or npm cannot install the SDKs, and
(the browser tests) when Chromium or Playwright is missing; CI installs all of them (.ci/run, the
dev extras).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from connector.clock import isoformat
from tests.conftest import ACME_ENV
from tests.helpers import stored_events
from tests.ingest.conftest import serving

KEY = ACME_ENV["ACME_WRITE_KEY"]
JS = Path(__file__).resolve().parent / "js_sdks"
SOURCES = ("package.json", "package-lock.json", "browser.js", "node-send.mjs")
BUNDLE = "analytics-next.js"


def _build(build: Path, npm: str, node: str) -> None:
    for name in SOURCES:
        shutil.copyfile(JS / name, build / name)
    try:
        installed = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=build,
            capture_output=True,
            text=True,
            timeout=180,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("npm ci found no npm registry within 180 s: the JavaScript SDKs could not be installed")
    if installed.returncode != 0:
        lines = [line.removeprefix("npm error").strip() for line in installed.stderr.splitlines()]
        generic = ("A complete log", "If you are behind")
        said = [line for line in lines if line and not line.startswith(generic)]
        pytest.skip(f"npm ci could not install the JavaScript SDKs: {' / '.join(said[:3])}")
    esbuild = build / "node_modules" / "esbuild" / "bin" / "esbuild"
    bundle = [str(esbuild), "browser.js", "--bundle", "--format=iife", f"--outfile={BUNDLE}"]
    subprocess.run([node, *bundle, "--log-level=warning"], cwd=build, check=True, timeout=120)


@pytest.fixture(scope="session")
def js_sdks() -> Path:
    """``js_sdks/build``: the SDKs installed and analytics.js bundled (built once, then reused
    while the sources are unchanged; a lock keeps concurrent test runs from building at once)."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip(
            "node and npm are needed for the JavaScript SDKs: apt-get install -y nodejs npm (CI: .ci/run)"
        )
    build = JS / "build"
    build.mkdir(exist_ok=True)
    digest = hashlib.sha256(b"".join((JS / name).read_bytes() for name in SOURCES)).hexdigest()
    with (build / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = build / "built-from"
        if not (stamp.exists() and stamp.read_text() == digest and (build / BUNDLE).exists()):
            _build(build, npm, node)
            stamp.write_text(digest)
    return build


# --- analytics-node ---------------------------------------------------------------------------


def send_with_node(build: Path, host: str, calls: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The calls sent by @segment/analytics-node (one batch): what it sent, the statuses, failures."""
    node = shutil.which("node")
    assert node is not None
    document = json.dumps({"host": host, "writeKey": KEY, "calls": calls})
    done = subprocess.run(
        [node, "node-send.mjs"], cwd=build, input=document, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_analytics_node(js_sdks: Path, tracking_server: str, redis_client: redis.Redis) -> None:
    calls = [
        (
            "identify",
            {"userId": "node-user-1", "traits": {"email": "Grace.Hopper@example.com", "plan": "pro"}},
        ),
        (
            "track",
            {
                "userId": "node-user-1",
                "event": "Order Completed",
                "properties": {"order_id": "2001", "revenue": 18.25, "currency": "EUR"},
                "timestamp": "2024-05-01T12:00:00.000Z",
            },
        ),
        ("page", {"anonymousId": "anon-node", "name": "Pricing", "properties": {"path": "/pricing"}}),
        ("group", {"userId": "node-user-1", "groupId": "team-7", "traits": {"plan": "team"}}),
        ("alias", {"userId": "node-user-1", "previousId": "anon-node"}),
    ]
    result = send_with_node(js_sdks, tracking_server, calls)
    assert (result["answers"], result["failures"]) == ([200], [])
    [body] = result["sent"]
    assert body["writeKey"] == KEY and body["sentAt"]
    stored = {event["source_event_id"]: event for event in stored_events(redis_client)}
    assert sorted(stored) == sorted(message["messageId"] for message in body["batch"])
    for message in body["batch"]:
        event = stored[message["messageId"]]
        assert event["account"] == "acme" and event["type"] == message["type"]
        assert event["occurred_at"] == isoformat(datetime.fromisoformat(message["timestamp"]))
    by_type = {event["type"]: event for event in stored.values()}
    assert by_type["track"]["name"] == "order_completed"
    assert by_type["track"]["occurred_at"] == "2024-05-01T12:00:00Z"
    assert by_type["track"]["properties"] == {"order_id": "2001", "revenue": 18.25, "currency": "EUR"}
    assert by_type["identify"]["identities"] == {
        "user_id": "node-user-1",
        "email": "grace.hopper@example.com",
    }
    assert by_type["identify"]["traits"] == {"email": "Grace.Hopper@example.com", "plan": "pro"}
    assert by_type["page"]["properties"] == {"path": "/pricing", "name": "Pricing"}
    assert by_type["alias"]["identities"] == {"user_id": "node-user-1", "previous_id": "anon-node"}


# --- analytics.js in Chromium -----------------------------------------------------------------


class Recorder:
    """The app, recording each request's method, path and ``Origin`` with the status it answered."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.seen: list[tuple[str, str, str | None, int]] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def recording(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            request = (environ["REQUEST_METHOD"], environ["PATH_INFO"], environ.get("HTTP_ORIGIN"))
            self.seen.append((*request, int(status.split()[0])))
            return start_response(status, headers, *exc)

        return self.app(environ, recording)


def page_site(build: Path) -> Callable[..., Iterable[bytes]]:
    """The site of the page: an empty page, and analytics.js as the one file it loads."""
    html = b'<!doctype html><meta charset="utf-8"><title>shop</title><script src="/analytics.js"></script>\n'

    def site(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/analytics.js":
            body, kind = (build / BUNDLE).read_bytes(), "text/javascript"
        else:
            body, kind = html, "text/html; charset=utf-8"
        start_response("200 OK", [("Content-Type", kind), ("Content-Length", str(len(body)))])
        return [body]

    return site


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # the console's browser tests say how Chromium is found and started, and when they are skipped
    from tests.ops.console.test_browser import ARGS, CHROMIUM, sync_api

    with sync_api.sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


class Site:
    """A page of another origin than the API's; the requests it makes outside the two origins."""

    def __init__(self, page: Any, origin: str, api: str, recorder: Recorder) -> None:
        self.page, self.origin, self.api, self.recorder = page, origin, api, recorder
        self.outside: list[str] = []

    def call(self, script: str, **args: Any) -> Any:
        return self.page.evaluate(
            script, {"writeKey": KEY, "apiHost": self.api.split("//")[1] + "/v1", **args}
        )


@pytest.fixture
def site(js_sdks: Path, browser: Any, app: Any, redis_client: redis.Redis) -> Iterator[Site]:
    recorder = Recorder(app)
    with serving(recorder) as api, serving(page_site(js_sdks)) as origin:
        assert origin != api
        context = browser.new_context()
        context.set_default_timeout(10000)
        page = context.new_page()
        opened = Site(page, origin, api, recorder)

        def only_loopback(request: Any) -> None:  # seen, not intercepted (that would answer preflights)
            if not request.url.startswith((origin + "/", api + "/")):
                opened.outside.append(request.url)

        page.on("request", only_loopback)
        page.goto(origin + "/")
        try:
            yield opened
            assert opened.outside == []  # nothing was asked of Segment's CDN or API
        finally:
            context.close()


# Loads analytics.js pointed at the connector (settings inline: no CDN), as docs/senders.md says.
LOAD = """
async ({writeKey, apiHost, strategy}) => {
  const integrations = {'Segment.io': {apiKey: writeKey, apiHost, protocol: 'http'}}
  if (strategy) integrations['Segment.io'].deliveryStrategy = strategy
  const cdnSettings = {integrations, metrics: {sampleRate: 0}}
  const [analytics] = await AnalyticsBrowser.load({writeKey, cdnSettings})
  window.analytics = analytics
}
"""

CALLS = """
async () => {
  const contexts = [
    await analytics.identify('web-user-1', {email: 'Ada.Lovelace@example.com', plan: 'pro'}),
    await analytics.track('Product Viewed', {sku: 'sku-1', price: 12.5}),
    await analytics.page('Docs', 'Pricing', {path: '/pricing'}),
    await analytics.group('team-3', {plan: 'team'}),
    await analytics.track('Order Completed', {order_id: '3001', revenue: 42}),
  ]
  return contexts.map((ctx) => ({
    type: ctx.event.type,
    messageId: ctx.event.messageId,
    timestamp: new Date(ctx.event.timestamp).toISOString(),
    anonymousId: ctx.event.anonymousId,
    failed: ctx.failedDelivery() ? String(ctx.failedDelivery().reason) : null,
  }))
}
"""


@pytest.mark.parametrize(
    ("strategy", "path"),
    [(None, "/v1/t"), ({"strategy": "batching", "config": {"size": 5, "timeout": 60000}}, "/v1/b")],
    ids=["one-request-per-call", "batching"],
)
def test_analytics_js_from_another_origin(
    site: Site, redis_client: redis.Redis, strategy: Any, path: str
) -> None:
    site.call(LOAD, strategy=strategy)
    sent = site.page.evaluate(CALLS)
    assert [s["failed"] for s in sent] == [None] * 5
    stored = {event["source_event_id"]: event for event in stored_events(redis_client)}
    assert sorted(stored) == sorted(s["messageId"] for s in sent)
    anonymous = sent[0]["anonymousId"]
    for s in sent:
        event = stored[s["messageId"]]
        assert (event["account"], event["source"], event["type"]) == ("acme", "tracking", s["type"])
        assert event["occurred_at"] == isoformat(datetime.fromisoformat(s["timestamp"]))
        assert event["identities"]["user_id"] == "web-user-1"
        assert event["identities"]["anonymous_id"] == anonymous
        assert "writeKey" not in event["raw"]
    names = [stored[s["messageId"]]["name"] for s in sent]
    assert names == ["identify", "product_viewed", "page_viewed", "group", "order_completed"]
    identify, viewed, page, group, order = (stored[s["messageId"]] for s in sent)
    assert identify["identities"]["email"] == "ada.lovelace@example.com"
    assert identify["traits"] == {"email": "Ada.Lovelace@example.com", "plan": "pro"}
    assert viewed["properties"] == {"sku": "sku-1", "price": 12.5}
    assert page["properties"]["path"] == "/pricing" and page["properties"]["name"] == "Pricing"
    assert group["identities"]["group_id"] == "team-3" and group["traits"] == {"plan": "team"}
    assert order["properties"] == {"order_id": "3001", "revenue": 42}
    # cross-origin: each POST (it names its key in an Authorization header) after a preflight
    posts = [(method, status) for method, p, origin, status in site.recorder.seen if p == path]
    assert ("OPTIONS", 204) in posts and ("POST", 200) in posts
    assert {origin for _, _, origin, _ in site.recorder.seen} == {site.origin}


def test_analytics_js_is_told_a_refused_event(site: Site, redis_client: redis.Redis) -> None:
    # the refusal reaches analytics.js (which drops the event) instead of a network error it retries
    site.call(LOAD, strategy=None)
    failed = site.page.evaluate(
        """async () => {
        const ctx = await analytics.track('Order Completed', {order_id: '1', revenue: 1e307})
        return String(ctx.failedDelivery()?.reason)
    }"""
    )
    assert failed == "NonRetryableError: Non-retryable error: 400"
    assert stored_events(redis_client) == []


def test_no_credentials_and_no_admin_api_across_origins(site: Site, redis_client: redis.Redis) -> None:
    answers = site.page.evaluate(
        """async ({api, writeKey}) => {
        const body = JSON.stringify({event: 'E', userId: 'u', messageId: 'cred-1'})
        const auth = {'Content-Type': 'text/plain', Authorization: 'Basic ' + btoa(writeKey + ':')}
        const attempt = (url, init) =>
          fetch(url, init).then((res) => String(res.status), (err) => err.name)
        return [
          await attempt(api + '/v1/track', {method: 'POST', headers: auth, body}),
          await attempt(api + '/v1/track', {method: 'POST', headers: auth, body, credentials: 'include'}),
          await attempt(api + '/api/v1/accounts', {headers: {Authorization: 'Bearer x'}}),
          await attempt(api + '/api/v1/accounts', {}),
          await attempt(api + '/healthz', {}),
        ]
    }""",
        {"api": site.api, "writeKey": KEY},
    )
    # with cookies the preflight fails and nothing is sent; the admin API and the rest stay closed
    assert answers == ["200", "TypeError", "TypeError", "TypeError", "TypeError"]
    assert [e["source_event_id"] for e in stored_events(redis_client)] == ["cred-1"]
