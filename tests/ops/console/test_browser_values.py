"""What senders write, in a real browser (Chromium, as tests/ops/console/test_browser.py): a value
holding a right-to-left override reads in the order it was written and turns nothing around it, a
300-character email wraps instead of widening the page, the people search takes any stored email.

Screenshots go to the test's temporary directory, or to ``CONSOLE_SCREENSHOTS_DIR`` when set."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import redis

from connector import clock
from connector.sync.deadletters import DeadLetters
from tests.ops.api.conftest import Mint
from tests.ops.console.test_browser import browser, log_in, order, page, server, shot
from tests.ops.console.test_console_values import RLO, odd_person

__all__ = ["browser", "page", "server"]

WIDTH = 1280  # the viewport of the page fixture
# the position of each character of the first text node holding ``needle`` under ``selector``
POSITIONS = """([selector, needle]) => {
  const walker = document.createTreeWalker(document.querySelector(selector), NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const at = node.data.indexOf(needle);
    if (at < 0) continue;
    const out = [];
    for (let i = at; i < at + needle.length; i++) {
      const range = document.createRange();
      range.setStart(node, i);
      range.setEnd(node, i + 1);
      const box = range.getBoundingClientRect();
      out.push([box.left, box.top]);
    }
    return out;
  }
  return null;
}"""


def reads_in_order(page: Any, selector: str, needle: str) -> bool:
    """Whether ``needle`` shows left to right (and top to bottom where it wraps)."""
    boxes = page.evaluate(POSITIONS, [selector, needle])
    assert boxes, f"{needle!r} not under {selector}"
    return all(
        top > top0 + 2 or (abs(top - top0) <= 2 and left > left0)
        for (left0, top0), (left, top) in itertools.pairwise(boxes)
    )


def fits(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth") <= WIDTH)


def test_a_value_with_a_right_to_left_override_reads_as_written(
    page: Any, server: str, mint: Mint, api_accounts: Path, redis_client: redis.Redis, tmp_path: Path
) -> None:
    evil = odd_person(redis_client, api_accounts, f"{RLO}evil@example.com")
    log_in(page, server, mint("viewer", "acme"))

    page.goto(f"{server}/console/a/acme/people/{evil}")
    assert page.inner_text("h1") == f"{RLO}evil@example.com"  # the value as stored, to copy
    assert reads_in_order(page, "h1", "evil@example.com")
    assert reads_in_order(page, "#identities", "evil@example.com")
    assert reads_in_order(page, "#timeline", "weird_event")
    assert "דנה <b>כהן</b>" in page.inner_text("#traits")
    assert '"city": "عمان"' in page.inner_text("#traits")
    assert '"note": "שלום it\'s مرحبا"' in page.inner_text("#timeline")
    assert fits(page)
    shot(page, "person-odd", tmp_path)
    page.goto(f"{server}/console/a/acme/segments/vip")
    assert reads_in_order(page, "#members", "evil@example.com")


def test_a_300_character_email_wraps_within_the_page(
    page: Any, server: str, mint: Mint, api_accounts: Path, redis_client: redis.Redis, tmp_path: Path
) -> None:
    long_email = "l" * 288 + "@example.com"
    long = odd_person(redis_client, api_accounts, long_email)
    odd_person(redis_client, api_accounts, f"{RLO}evil@example.com")
    log_in(page, server, mint("viewer", "acme"))
    page.goto(f"{server}/console/a/acme/people/{long}")
    assert page.inner_text("h1") == long_email
    assert fits(page)
    shot(page, "person-long", tmp_path)
    page.goto(f"{server}/console/a/acme/segments/vip")
    assert long_email in page.inner_text("#members")
    assert fits(page)
    shot(page, "members-odd", tmp_path)
    payload = {"change": {"email": long_email, "name": "דנה", "city": "عمان", "note": "it's"}}
    item = DeadLetters(redis_client).put(
        "sync:mailchimp", f"400 invalid {long_email}", payload, clock.now(), account="acme"
    )
    page.goto(f"{server}/console/a/acme/deadletters")
    assert fits(page)
    page.goto(f"{server}/console/a/acme/deadletters/sync:mailchimp/{item}")
    assert '"name": "דנה"' in page.inner_text("pre.json") and '"note": "it\'s"' in page.inner_text("pre.json")
    assert fits(page)
    shot(page, "deadletter-odd", tmp_path)


def test_the_people_search_finds_an_email_a_browser_would_not_call_one(
    page: Any, server: str, mint: Mint, api_accounts: Path, redis_client: redis.Redis
) -> None:
    email = "josé.ñ@exämple.com"  # stored as sent; not an email to the HTML form's validator
    pid = odd_person(redis_client, api_accounts, email)
    log_in(page, server, mint("viewer", "acme"))
    page.click("nav >> text=People")
    page.fill("input[name=email]", email)
    page.click("text=Find")
    page.wait_for_url(re.compile(rf".*/people/{pid}$"), timeout=3000)
    assert page.inner_text("h1") == email


def test_the_live_page_keeps_an_override_to_its_identity(
    page: Any, server: str, mint: Mint, api_accounts: Path, tmp_path: Path
) -> None:
    log_in(page, server, mint("viewer", "acme"))
    page.click("text=Live events")
    page.wait_for_function("document.getElementById('live-state').textContent === 'live'")
    order(server, 1, 20.0, f"{RLO}evil@example.com")
    page.wait_for_selector("#live tbody tr.accepted")
    cell = "#live tbody tr.accepted td:nth-child(5)"  # the identities
    assert f"{RLO}***@example.com" in page.inner_text(cell)  # masked, the override kept
    assert reads_in_order(page, cell, "***@example.com")
    assert reads_in_order(page, cell, "user_id")
    assert fits(page)
    shot(page, "live-odd", tmp_path)
