"""The console with what senders write (Flask test client, real Redis): where a login goes on to,
a person's own traits, event properties and dead-letter payloads as written, any text in the
people search, values isolated from the text around them."""

from __future__ import annotations

import html
import re
import zlib
from pathlib import Path
from typing import Any

import pytest
import redis

from connector import clock
from connector.config import load_accounts
from connector.profiles import lookup
from connector.sync.deadletters import DeadLetters
from connector.worker import sizes
from tests.ops.api.conftest import Mint
from tests.ops.console.test_console import csrf_of
from tests.profile_helpers import apply, ev

RLO = "\u202e"


def log_in_going_to(api: Any, secret: str, target: str) -> Any:
    page = api.get("/console/login", query_string={"next": target})
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    return api.post("/console/login", data={"token": secret, "csrf": csrf_of(html), "next": target})


@pytest.mark.parametrize(
    "target",
    [
        "/console/a/demo/\r\nX:1",
        "/console/a/demo/\nSet-Cookie: x=1",
        "/console/a/acme/\x00",
        "/console/a/acme/\t",
        "/console/a/acme/\x7f",
        "/console/a/acme/\x85",  # a C1 control (NEL)
        "/console/a/acme/%0d%0aX:1",
        "//evil.example/console/",
        "/\\evil.example/console/",
        "\\\\evil.example/console/",
        "https://evil.example/console/",
        "javascript:alert(1)//console/",
        "/consolex",
        "/console/../api/v1/tokens",
        "/console/%2e%2e/api/v1/tokens",
        "/api/v1/accounts",
        "console/a/acme/",
        "/console/" + "a" * 3000,
    ],
)
def test_a_login_goes_to_the_console_s_home_unless_next_is_a_plain_console_path(
    api: Any, mint: Mint, target: str
) -> None:
    res = log_in_going_to(api, mint("viewer", "acme"), target)
    assert res.status_code == 302, res.get_data(as_text=True)[:300]
    assert res.headers["Location"] == "/console/"
    assert "sc_console=" in res.headers["Set-Cookie"]


def test_the_login_page_asked_with_a_line_break_in_next_logs_in(api: Any, mint: Mint) -> None:
    """The address a person was given (``next`` with ``%0d%0a``) as a browser follows it."""
    page = api.get("/console/login?next=/console/a/demo/%0d%0aX:1")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    given = re.search(r'name="next" value="([^"]*)"', html, re.S)
    assert given is not None
    res = api.post(
        "/console/login",
        data={"token": mint("viewer", "acme"), "csrf": csrf_of(html), "next": "/console/a/demo/\r\nX:1"},
    )
    assert (res.status_code, res.headers["Location"]) == (302, "/console/")


@pytest.mark.parametrize(
    ("target", "location"),
    [
        ("/console/a/acme/segments", "/console/a/acme/segments"),
        ("/console/a/acme/segments/vip?q=bo&cursor=x", "/console/a/acme/segments/vip?q=bo&cursor=x"),
        ("/console/a/acme/segments/ויפ", "/console/a/acme/segments/%D7%95%D7%99%D7%A4"),
        ("/console", "/console"),
    ],
)
def test_a_login_goes_on_to_the_console_page_that_asked_for_it(
    api: Any, mint: Mint, target: str, location: str
) -> None:
    res = log_in_going_to(api, mint("viewer", "acme"), target)
    assert (res.status_code, res.headers["Location"]) == (302, location)


def odd_person(conn: redis.Redis, config_dir: Path, email: str) -> str:
    """A person whose identify call and order hold text in Hebrew and Arabic, an apostrophe, markup
    and an object trait; a member of ``vip``."""
    accounts = load_accounts(config_dir)
    tag = zlib.crc32(email.encode())
    traits = {
        "first_name": "Dana",
        "name": "דנה <b>כהן</b>",
        "address": {"city": "عمان", "street": "O'Connell"},
        "tags": ["vip", "חדש"],
        "age": 41,
    }
    apply(
        conn,
        accounts,
        ev(f"i-{tag}", "identify", type="identify", traits=traits, email=email),
        ev(
            f"o-{tag}",
            "order_completed",
            at=1,
            props={"revenue": 500.0, "note": "שלום it's مرحبا"},
            email=email,
        ),
        ev(f"w-{tag}", f"{RLO}weird_event", at=2, props={"a": 1}, email=email),
    )
    pid = lookup(conn, "acme", "email", email)
    assert pid is not None
    pipe = conn.pipeline()
    sizes.record_transitions(pipe, "acme", ["vip"], [], clock.now(), profile_id=pid)
    pipe.execute()
    return pid


def login(api: Any, secret: str) -> None:
    assert log_in_going_to(api, secret, "").status_code == 302


def test_the_person_page_shows_the_person_s_own_traits(
    api: Any, mint: Mint, api_accounts: Path, redis_client: redis.Redis
) -> None:
    pid = odd_person(redis_client, api_accounts, "dana@example.com")
    login(api, mint("viewer", "acme"))
    page = api.get(f"/console/a/acme/people/{pid}").get_data(as_text=True)
    card = page[page.index("Identities and traits") : page.index("Why, per segment")]
    assert "first_name" in card and "Dana" in card
    assert "דנה &lt;b&gt;כהן&lt;/b&gt;" in card and "<b>כהן" not in card  # escaped
    assert re.search(r"&#34;city&#34;: &#34;عمان&#34;,\s+&#34;street&#34;: &#34;O&#39;Connell&#34;", card)
    assert re.search(r'\[\s+"vip",\s+"חדש"\s+\]', html.unescape(card))  # a list as JSON
    assert "age" in card and "41" in card
    assert "lifetime_revenue" in card  # the computed traits still there


def test_event_properties_and_dead_letter_payloads_show_as_written(
    api: Any, mint: Mint, api_accounts: Path, redis_client: redis.Redis
) -> None:
    pid = odd_person(redis_client, api_accounts, "dana@example.com")
    login(api, mint("viewer", "acme"))
    timeline = api.get(f"/console/a/acme/people/{pid}").get_data(as_text=True)
    timeline = timeline[timeline.index('id="timeline"') :]
    assert "&#34;note&#34;: &#34;שלום it&#39;s مرحبا&#34;" in timeline
    assert "\\u05e9" not in timeline and "\\u0027" not in timeline
    payload = {"change": {"email": "dana@example.com", "name": "דנה", "city": "عمان", "x": "it's <i>"}}
    item = DeadLetters(redis_client).put("sync:mailchimp", "400 bad", payload, clock.now(), account="acme")
    page = api.get(f"/console/a/acme/deadletters/sync:mailchimp/{item}").get_data(as_text=True)
    assert "&#34;x&#34;: &#34;it&#39;s &lt;i&gt;&#34;" in page and "<i>" not in page  # escaped
    shown = html.unescape(page)
    assert '"name": "דנה"' in shown and '"city": "عمان"' in shown and '"x": "it\'s <i>"' in shown
    assert "\\u05d3" not in page and "\\u0027" not in page and "\\u003c" not in page


def test_pretty_json_shows_invisible_characters_as_escapes() -> None:
    from connector.ops.console.views import pretty_json

    shown = pretty_json({"a": f"{RLO}x\u2028y\x85z\u200f", "b": "שלום", "c": "\ud800"})
    assert '"a": "\\u202ex\\u2028y\\u0085z\\u200f"' in shown
    assert '"b": "שלום"' in shown and '"c": "\ufffd"' in shown


def test_the_people_search_takes_any_text_a_stored_email_may_hold(
    api: Any, mint: Mint, api_accounts: Path, redis_client: redis.Redis
) -> None:
    email = "josé.ñ@exämple.com"
    pid = odd_person(redis_client, api_accounts, email)
    login(api, mint("viewer", "acme"))
    form = api.get("/console/a/acme/people").get_data(as_text=True)
    field = re.search(r'<input[^>]*name="email"[^>]*>', form)
    assert field is not None and 'type="email"' not in field.group(0) and 'type="text"' in field.group(0)
    found = api.get("/console/a/acme/people", query_string={"email": f"  {email.upper()} "})
    assert found.status_code == 302 and found.headers["Location"].endswith(f"/people/{pid}")
    missing = api.get("/console/a/acme/people", query_string={"email": "not an email"})
    assert missing.status_code == 404 and "no profile with that email" in missing.get_data(as_text=True)


def test_values_are_isolated_and_direction_controls_marked(
    api: Any, mint: Mint, api_accounts: Path, redis_client: redis.Redis
) -> None:
    email = f"{RLO}evil@example.com"
    pid = odd_person(redis_client, api_accounts, email)
    login(api, mint("viewer", "acme"))
    marked = '<bdi class="v"><bdi class="ctl" data-cp="U+202E">\u202e</bdi>evil@example.com</bdi>'
    person = api.get(f"/console/a/acme/people/{pid}").get_data(as_text=True)
    assert re.search(r"<h1>\s*" + re.escape(marked), person)
    assert person.count(marked) == 2  # the title and the identities
    assert '<bdi class="v"><bdi class="ctl" data-cp="U+202E">\u202e</bdi>weird_event</bdi>' in person
    assert '<bdi class="v">דנה &lt;b&gt;כהן&lt;/b&gt;</bdi>' in person
    members = api.get("/console/a/acme/segments/vip").get_data(as_text=True)
    assert marked in members


def test_the_timeline_shows_computed_trait_changes_and_says_when_it_is_cut(
    api: Any, mint: Mint, api_accounts: Path, redis_client: redis.Redis
) -> None:
    pid = odd_person(redis_client, api_accounts, "erin@example.com")
    accounts = load_accounts(api_accounts)
    # a second order changes lifetime_revenue and no membership; then more events than the page lists
    apply(
        redis_client,
        accounts,
        ev("o2-erin", "order_completed", at=3, props={"revenue": 20.0}, email="erin@example.com"),
    )
    views = [ev(f"v-erin-{n}", "product_viewed", at=4 + n, email="erin@example.com") for n in range(100)]
    apply(redis_client, accounts, *views)
    login(api, mint("viewer", "acme"))
    page = api.get(f"/console/a/acme/people/{pid}").get_data(as_text=True)
    timeline = page[page.index('id="timeline"') :]
    rows = re.findall(r'<tr class="transition">(.*?)</tr>', timeline, re.S)
    trait_rows = [r for r in rows if "computed traits (v" in r]
    assert trait_rows and "lifetime_revenue = 520" in re.sub(r"<[^>]+>", "", trait_rows[-1])
    assert all("computed traits (v" in r or "entered" in r or "exited" in r for r in rows)  # no blank row
    cut = page[page.index('id="timeline-cut"') :]
    assert "The latest 100 of 103 events" in html.unescape(cut[: cut.index("</p>")])


def test_a_rate_beside_the_longest_arm_bar_fits_in_the_chart() -> None:
    from connector.ops.console.charts import arm_bars

    svg = str(arm_bars({"c": {"conversion_rate": 0.015}, "t": {"conversion_rate": 0.0152}}, width=360))
    label_x = max(float(x) for x in re.findall(r'<text x="([\d.]+)" y="[\d.]+">[\d.]+%</text>', svg))
    assert label_x + 50 <= 360  # "100.0%" is about 45 px wide
