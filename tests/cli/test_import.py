"""``connector import``: Segment and RudderStack JSON lines, Shopify customers and orders CSV exports,
through the live normalization, identity stitching and dedupe; idempotent; rejected lines reported with
their line numbers; --dry-run stores nothing; segment changes reach the destinations only with --push."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from connector import clock
from connector.cli.main import _register, cli
from connector.dev.sandbox import SANDBOX_MAILCHIMP_KEY, SANDBOX_MAILCHIMP_LIST
from connector.profiles import load_profile, lookup
from connector.sync import pending
from connector.worker.ledger import Ledger
from tests.conftest import ACME, GLOBEX, write_accounts

T0 = datetime(2024, 6, 3, 10, 0, tzinfo=UTC)
RULES = {
    "segments": [
        {"name": "buyers", "when": {"count": {"event": "order_completed", "gte": 1}}},
        {"name": "repeat_buyers", "when": {"count": {"event": "order_completed", "gte": 2}}},
        {"name": "browsers", "when": {"count": {"event": "product_viewed", "gte": 1}}},
        {"name": "subscribed", "when": {"trait": {"name": "accepts_marketing", "eq": True}}},
    ]
}


@pytest.fixture(scope="module", autouse=True)
def commands() -> None:
    _register()


@pytest.fixture
def account(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("IMPORT_MC_KEY", SANDBOX_MAILCHIMP_KEY)
    mailchimp = {
        "api_key_env": "IMPORT_MC_KEY",
        "base_url": "http://127.0.0.1:9/3.0",
        "sandbox": True,
        "list_id": SANDBOX_MAILCHIMP_LIST,
        "segments": {"buyers": {"tags": ["buyer"]}},
    }
    write_accounts(config_dir, {**ACME, "rules": RULES, "destinations": {"mailchimp": mailchimp}}, GLOBEX)
    return "acme"


def run(*args: str) -> tuple[int, str]:
    with clock.frozen(T0):
        result = CliRunner().invoke(cli, ["import", *args], catch_exceptions=False)
    return result.exit_code, result.output


def write_lines(path: Path, messages: list[Any]) -> Path:
    path.write_text("".join((m if isinstance(m, str) else json.dumps(m)) + "\n" for m in messages))
    return path


def track(mid: str, event: str, user: str, email: str | None = None, **props: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "track",
        "event": event,
        "userId": user,
        "messageId": mid,
        "timestamp": "2024-05-01T12:00:00Z",
        "properties": props,
    }
    if email:
        message["context"] = {"traits": {"email": email}}
    return message


def segments_of(conn: redis.Redis, pid: str | None) -> frozenset[str]:
    assert pid is not None
    state = Ledger(conn).state("acme", pid)
    assert state is not None
    return state.segments


def profile_of(conn: redis.Redis, kind: str, value: str) -> Any:
    pid = lookup(conn, "acme", kind, value)
    assert pid is not None, f"no profile for {kind}={value}"
    profile = load_profile(conn, "acme", pid, T0)
    assert profile is not None
    return profile


def test_segment_jsonl_applies_stitches_and_evaluates_once(
    account: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    path = write_lines(
        tmp_path / "segment.jsonl",
        [
            {"type": "page", "anonymousId": "anon-1", "messageId": "p1", "timestamp": "2024-05-01T10:00:00Z",
             "name": "Home"},
            {"type": "alias", "previousId": "anon-1", "userId": "u-1", "messageId": "a1",
             "timestamp": "2024-05-01T10:01:00Z"},
            {"type": "identify", "userId": "u-1", "messageId": "i1", "timestamp": "2024-05-01T10:02:00Z",
             "traits": {"email": "Jane@Example.com", "accepts_marketing": True}},
            track("t1", "Product Viewed", "u-1", sku="A"),
            track("t2", "Order Completed", "u-1", revenue=40),
        ],
    )  # fmt: skip
    code, out = run("--account", account, "--no-progress", str(path))
    assert code == 0, out
    assert "segment: 5 records read, 5 valid events (imported)" in out
    assert "history events stored 3, already there 0; 1 profiles evaluated, 1 changed" in out
    profile = profile_of(redis_client, "email", "jane@example.com")
    assert profile.identities["anonymous_id"] == ("anon-1",)  # stitched through the alias
    assert sorted(e.name for e in profile.events) == ["order_completed", "page_viewed", "product_viewed"]
    state = Ledger(redis_client).state("acme", profile.profile_id)
    assert state is not None and set(state.segments) == {"buyers", "browsers", "subscribed"}


def test_rudderstack_jsonl_is_detected_and_deduped_against_itself(
    account: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    rudder = {
        "context": {"library": {"name": "RudderLabs JavaScript SDK"}, "traits": {"email": "r@example.com"}}
    }
    first = {**track("r1", "Order Completed", "u-r"), **rudder, "rudderId": "x"}
    path = write_lines(
        tmp_path / "rudder.jsonl", [first, {**track("r2", "Order Completed", "u-r"), **rudder}, first]
    )
    code, out = run("--account", account, "--no-progress", str(path))
    assert code == 0, out
    assert out.startswith("rudderstack: 3 records read, 3 valid events")
    assert "stored 2, already there 1" in out
    profile = profile_of(redis_client, "user_id", "u-r")
    assert len(profile.events) == 2
    assert segments_of(redis_client, profile.profile_id) == frozenset({"buyers", "repeat_buyers"})


def test_importing_twice_changes_nothing(account: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", [track(f"m{i}", "Order Completed", "u-2", "two@example.com")
                                             for i in range(3)])  # fmt: skip
    assert run("--account", account, "--no-progress", str(path))[0] == 0
    pid = lookup(redis_client, "acme", "email", "two@example.com")
    assert pid is not None
    before = Ledger(redis_client).state("acme", pid)
    code, out = run("--account", account, "--no-progress", str(path))
    assert code == 0
    assert "stored 0, already there 3; 1 profiles evaluated, 0 changed" in out
    after = Ledger(redis_client).state("acme", pid)
    assert after is not None and before is not None and after.version == before.version
    assert len(profile_of(redis_client, "email", "two@example.com").events) == 3


def test_rejected_lines_are_reported_with_their_line_numbers(
    account: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    path = write_lines(
        tmp_path / "bad.jsonl",
        [
            track("ok1", "Order Completed", "u-3"),
            "{not json",
            {"type": "track", "userId": "u-3", "messageId": "x"},  # no event name
            "",
            {"type": "delete", "userId": "u-3", "messageId": "d"},
            {"type": "track", "event": "Viewed", "messageId": "anon", "timestamp": "2024-05-01T12:00:00Z"},
            {"type": "track", "event": "Viewed", "userId": "u-3", "timestamp": "yesterday"},
        ],
    )
    code, out = run("--account", account, "--no-progress", "--format", "segment", str(path))
    assert code == 0, out
    assert "rejected: 5" in out
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("line ")]
    assert lines[0].startswith("line 2: line is not valid JSON")
    assert lines[1] == "line 3: message.event is required for a track call"
    assert lines[2].startswith("line 5: type delete is not imported")
    assert lines[3].startswith("line 6: no identity")
    assert lines[4].startswith("line 7: message.timestamp")
    assert "stored 1," in out
    code, out = run("--account", account, "--no-progress", "--json", str(path))
    report = json.loads(out)
    assert [r["line"] for r in report["rejected"]] == [2, 3, 5, 6, 7]


def test_dry_run_stores_nothing(account: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", [track("d1", "Order Completed", "u-4"), "[]"])
    code, out = run("--account", account, "--no-progress", "--dry-run", str(path))
    assert code == 0, out
    assert "2 records read, 1 valid events (would import)" in out
    assert "order_completed: 1" in out and "line 2: message must be a JSON object" in out
    assert lookup(redis_client, "acme", "user_id", "u-4") is None
    assert not redis_client.keys("*acme*")


CUSTOMERS = (
    "Customer ID,First Name,Last Name,Email,Accepts Email Marketing,Default Address Company,"
    "Default Address Address1,Default Address Address2,Default Address City,Default Address Province Code,"
    "Default Address Country Code,Default Address Zip,Default Address Phone,Phone,Accepts SMS Marketing,"
    "Total Spent,Total Orders,Note,Tax Exempt,Tags\n"
    '\'7001,Ada,Lovelace,Ada@Example.com,yes,,1 Main St,,London,,GB,N1,,+441234,no,"1,250.50",7,,no,'
    '"vip, newsletter"\n'
    "7002,Alan,Turing,alan@example.com,no,,,,,,,,,,no,0.00,0,,no,\n"
    "7003,No,Email,,no,,,,,,,,,,no,0.00,0,,no,\n"
)


def test_shopify_customers_csv(account: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    path = tmp_path / "customers_export.csv"
    path.write_text(CUSTOMERS)
    code, out = run("--account", account, "--no-progress", str(path))
    assert code == 0, out
    assert out.startswith("shopify-customers: 3 records read, 3 valid events")
    ada = profile_of(redis_client, "email", "ada@example.com")
    assert ada.identities["shopify_customer_id"] == ("7001",)
    assert ada.traits["total_spent"] == 1250.5
    assert ada.traits["orders_count"] == 7
    assert ada.traits["accepts_marketing"] is True
    assert ada.traits["tags"] == ["vip", "newsletter"]
    assert ada.traits["first_name"] == "Ada"
    assert segments_of(redis_client, ada.profile_id) == frozenset({"subscribed"})
    alan = profile_of(redis_client, "shopify_customer_id", "7002")
    assert alan.traits["accepts_marketing"] is False
    assert lookup(redis_client, "acme", "shopify_customer_id", "7003") is not None
    code, out = run("--account", account, "--no-progress", str(path))
    assert "0 changed" in out


ORDERS_HEADER = (
    "Name,Email,Financial Status,Paid at,Fulfillment Status,Fulfilled at,Accepts Marketing,Currency,Subtotal,"
    "Shipping,Taxes,Total,Discount Code,Discount Amount,Shipping Method,Created at,Lineitem quantity,"
    "Lineitem name,Lineitem price,Lineitem compare at price,Lineitem sku,Lineitem requires shipping,"
    "Lineitem taxable,Lineitem fulfillment status,Id,Vendor\n"
)
ORDERS = ORDERS_HEADER + (
    "#1001,buyer@example.com,paid,2024-04-02 10:05:00 +0200,fulfilled,,yes,EUR,90.00,5.00,15.00,110.00,,0.00,"
    "Standard,2024-04-02 10:00:00 +0200,2,Red Shoes,30.00,,SH-RED,true,true,fulfilled,5550001,Acme\n"
    "#1001,,,,,,,,,,,,,,,,1,Blue Hat,30.00,,HAT-BLU,true,true,fulfilled,5550001,Acme\n"
    "#1002,buyer@example.com,refunded,,,,yes,EUR,20.00,0.00,0.00,20.00,,0.00,Standard,"
    "2024-05-02 09:00:00 +0200,1,Socks,20.00,,SO-1,true,true,,5550002,Acme\n"
    "#1003,,paid,,,,no,EUR,20.00,0.00,0.00,20.00,,0.00,Standard,2024-05-03 09:00:00 +0200,1,Socks,20.00,,"
    "SO-1,true,true,,5550003,Acme\n"
)


def test_shopify_orders_csv_groups_line_items_by_order(
    account: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "orders_export_1.csv"
    path.write_text(ORDERS)
    code, out = run("--account", account, "--no-progress", str(path))
    assert code == 0, out
    assert out.startswith("shopify-orders: 3 records read, 2 valid events")
    assert "line 5: no Email" in out  # #1003 starts on line 5
    profile = profile_of(redis_client, "email", "buyer@example.com")
    orders = profile.events_named("order_completed")
    assert len(orders) == 2
    assert orders[0].occurred_at == datetime(2024, 4, 2, 8, 0, tzinfo=UTC)
    assert segments_of(redis_client, profile.profile_id) == frozenset({"buyers", "repeat_buyers"})
    code, out = run("--account", account, "--no-progress", str(path))
    assert "stored 0, already there 2" in out


def test_csv_without_the_needed_columns_is_refused(account: str, tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("Name,Email,Lineitem name\n#1,a@example.com,Shoe\n")
    code, out = run("--account", account, "--no-progress", str(path))
    assert code == 1
    assert "missing column(s) Created at" in out


def test_segment_changes_reach_the_destinations_only_with_push(
    account: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    quiet = write_lines(
        tmp_path / "quiet.jsonl", [track("q1", "Order Completed", "u-q", "quiet@example.com")]
    )
    assert run("--account", account, "--no-progress", str(quiet))[0] == 0
    pid = lookup(redis_client, "acme", "email", "quiet@example.com")
    assert segments_of(redis_client, pid) == frozenset({"buyers"})  # recorded
    assert pending(redis_client, "acme", "mailchimp") == {}  # not sent
    loud = write_lines(tmp_path / "loud.jsonl", [track("l1", "Order Completed", "u-l", "loud@example.com")])
    code, out = run("--account", account, "--no-progress", "--push", str(loud))
    assert code == 0, out
    assert "queued for the destinations" in out
    loud_pid = lookup(redis_client, "acme", "email", "loud@example.com")
    queued = pending(redis_client, "acme", "mailchimp")
    assert set(queued) == {loud_pid}


def test_a_message_without_a_time_is_rejected_so_importing_again_adds_nothing(
    account: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    untimed = {"type": "track", "event": "Viewed", "userId": "u-9", "messageId": "m-untimed"}
    path = write_lines(tmp_path / "t.jsonl", [untimed, track("m-timed", "Viewed", "u-9")])
    for _ in range(2):
        code, out = run("--account", account, "--no-progress", str(path))
        assert code == 0, out
        assert "line 1: no time: an imported message needs timestamp, originalTimestamp or receivedAt" in out
    events = profile_of(redis_client, "user_id", "u-9").events
    assert [e.name for e in events] == ["viewed"]  # the timed one, once


def test_events_older_than_the_retention_are_counted_not_passed_over(
    account: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    old = {**track("m-old", "Viewed", "u-8"), "timestamp": "2019-01-01T00:00:00Z"}
    path = write_lines(tmp_path / "old.jsonl", [old, track("m-new", "Viewed", "u-8")])
    code, out = run("--account", account, "--no-progress", str(path))
    assert code == 0, out
    assert "history events stored 1, already there 0" in out
    assert "older than the account's retention (max_age_days), not stored: 1" in out
    code, out = run("--account", account, "--no-progress", "--json", str(path))
    assert json.loads(out)["expired"] == 1


@pytest.mark.parametrize(
    ("rows", "line"),
    [
        (['q1@example.com,11,"Ann', "q2@example.com,2,Bo", "q3@example.com,3,Cy"], 2),  # never closed
        (["q1@example.com,11,Ann", 'q2@example.com,2,"Bo"x', "q3@example.com,3,Cy"], 3),  # closed wrongly
        (["q1@example.com,11,Ann", "q2@example.com,2," + "A" * 200_000], 3),  # past the csv module's limit
    ],
)
def test_a_csv_whose_quoting_breaks_stops_naming_the_line_and_never_merges_rows(
    account: str, redis_client: redis.Redis, tmp_path: Path, rows: list[str], line: int
) -> None:
    path = tmp_path / "customers_export.csv"
    path.write_text("\n".join(["Email,Customer ID,First Name", *rows]) + "\n")
    code, out = run("--account", account, "--no-progress", str(path))
    assert code == 1
    assert f"{path}: line {line}: not CSV from here on (" in out
    assert "Traceback" not in out
    for n in (2, 3):  # no row after the break is taken, nor folded into another's cell
        assert lookup(redis_client, "acme", "email", f"q{n}@example.com") is None
    first = lookup(redis_client, "acme", "email", "q1@example.com")
    assert (first is not None) == (line > 2)  # the row before the break is imported
    if first is not None:
        profile = load_profile(redis_client, "acme", first, T0)
        assert profile is not None and "q2@example.com" not in json.dumps(profile.traits)


def test_a_negative_number_of_rejected_lines_to_show_is_a_usage_error(account: str, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", [track("m1", "Viewed", "u-1")])
    result = CliRunner().invoke(cli, ["import", "--account", account, "--show-rejected", "-1", str(path)])
    assert result.exit_code == 2 and "--show-rejected" in result.output


def test_an_event_name_longer_than_the_workers_keep_is_rejected_as_live(
    account: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    path = write_lines(
        tmp_path / "long.jsonl", [track("m-long", "E" * 300, "u-7"), track("m-ok", "Viewed", "u-7")]
    )
    code, out = run("--account", account, "--no-progress", str(path))
    assert code == 0, out
    assert "line 1: the event name is 300 characters, more than the 200 kept" in out
    assert [e.name for e in profile_of(redis_client, "user_id", "u-7").events] == ["viewed"]


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (
            lambda text: __import__("gzip").compress(text.encode()),
            "a gzip file: decompress it first (gunzip)",
        ),
        (lambda text: text.encode("utf-16"), "UTF-16 text: save it as UTF-8"),
    ],
)
@pytest.mark.parametrize("fmt", [[], ["--format", "segment"]])
def test_a_file_that_is_no_text_is_refused_saying_what_it_is(
    account: str, tmp_path: Path, make: Any, what: str, fmt: list[str]
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(make(json.dumps(track("m1", "Viewed", "u-1")) + "\n"))
    code, out = run("--account", account, "--no-progress", *fmt, str(path))
    assert code == 1
    assert out.strip().endswith(f"{path}: {what}")


def test_a_csv_row_with_bytes_that_are_not_utf8_is_rejected_naming_the_column(
    account: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "customers_export.csv"
    path.write_bytes(b"Email,Customer ID,First Name\nlat@example.com,1,Ren\xe9\nok@example.com,2,Ann\n")
    code, out = run("--account", account, "--no-progress", str(path))
    assert code == 0, out
    assert "line 2: First Name: byte 4 of the cell is not UTF-8 text; save the export as UTF-8" in out
    assert lookup(redis_client, "acme", "email", "lat@example.com") is None
    assert lookup(redis_client, "acme", "email", "ok@example.com") is not None


def test_the_help_names_the_file_alike_in_the_usage_line_and_the_text() -> None:
    _register()
    shown = CliRunner().invoke(cli, ["import", "--help"]).output
    assert "Usage: cli import [OPTIONS] FILE" in shown and "from FILE" in shown
    assert "PATH" not in shown
    missing = CliRunner().invoke(cli, ["import", "--account", "acme", "no-such.jsonl"])
    assert missing.exit_code == 2 and "Invalid value for 'FILE'" in missing.output


def test_a_push_that_changed_nothing_says_nothing_was_queued(
    account: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    order = {
        "type": "track",
        "event": "Order Completed",
        "userId": "u-1",
        "messageId": "m-1",
        "timestamp": "2024-05-01T12:00:00Z",
        "context": {"traits": {"email": "bo@example.com"}},
        "properties": {"order_id": "1"},
    }
    path = tmp_path / "orders.jsonl"
    path.write_text(json.dumps(order) + "\n")
    code, first = run("--account", account, "--no-progress", "--push", str(path))
    assert code == 0, first
    assert "1 profiles evaluated, 1 changed" in first
    assert "segment changes: queued for the destinations (the 1 changed profile)" in first
    redis_client.delete(*redis_client.keys("sync:acme:mailchimp:*"))  # as if sent meanwhile
    code, again = run("--account", account, "--no-progress", "--push", str(path))
    assert code == 0, again
    assert "1 profiles evaluated, 0 changed" in again
    assert "segment changes: nothing queued (no profile changed)" in again
    assert "queued for the destinations" not in again
    assert pending(redis_client, "acme", "mailchimp") == {}


def _evaluated(conn: redis.Redis, email: str) -> bool:
    pid = lookup(conn, "acme", "email", email)
    return pid is not None and bool(conn.exists(f"ledger:{{acme:{pid}}}"))


def test_a_file_that_breaks_part_way_keeps_and_evaluates_every_row_before_it(
    account: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """More rows than one chunk, then broken quoting: the rows before the break are all imported
    (the last chunk was only partly filled) and every profile they touched is evaluated."""
    rows = [f"r{n}@example.com,{1000 + n},Ann" for n in range(1_100)]
    path = tmp_path / "customers_export.csv"
    path.write_text("\n".join(["Email,Customer ID,First Name", *rows, 'bad@example.com,9,"Bo']) + "\n")
    code, out = run("--account", account, "--no-progress", str(path))
    assert code == 1
    assert f"{path}: line 1102: not CSV from here on (" in out
    assert "the 1100 events read before it were imported and their profiles evaluated" in out
    assert "1100 profiles evaluated" in out
    assert _evaluated(redis_client, "r0@example.com") and _evaluated(redis_client, "r1099@example.com")
    assert lookup(redis_client, "acme", "email", "bad@example.com") is None


def test_an_interrupted_import_keeps_and_evaluates_what_it_read(
    account: str, redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.worker import importer

    parse = importer.parse_file

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        for n, event in enumerate(parse(*args, **kwargs)):
            if n == 3:
                raise KeyboardInterrupt  # Ctrl-C while the fourth record is read
            yield event

    monkeypatch.setattr(importer, "parse_file", interrupted)
    messages = [track(f"m{n}", "Viewed", f"u-{n}", email=f"i{n}@example.com") for n in range(6)]
    code, out = run("--account", account, "--no-progress", str(write_lines(tmp_path / "i.jsonl", messages)))
    assert code == 1
    assert "interrupted after" in out and "the 3 events read before it were imported" in out
    assert [_evaluated(redis_client, f"i{n}@example.com") for n in range(6)] == [True] * 3 + [False] * 3


def test_ctrl_c_while_a_chunk_is_applied_finishes_that_chunk_and_counts_no_duplicates(
    account: str, redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real SIGINT arriving while the first chunk of 1,000 is written: the chunk is applied
    whole, once, then the import stops; nothing of it is applied again and counted as duplicates."""
    import os
    import signal

    from connector.worker import importer

    apply = importer.apply_events
    calls: list[int] = []

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        outcome = apply(*args, **kwargs)
        calls.append(len(args[3]))
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the chunk's writes end
        return outcome

    monkeypatch.setattr(importer, "apply_events", interrupted)
    messages = [track(f"c{n}", "Viewed", f"cu-{n}", email=f"c{n}@example.com") for n in range(1_200)]
    code, out = run("--account", account, "--no-progress", str(write_lines(tmp_path / "c.jsonl", messages)))
    assert code == 1 and "interrupted after" in out
    assert calls == [1_000]  # applied once, not once more after the stop
    assert "history events stored 1000, already there 0" in out
    assert _evaluated(redis_client, "c999@example.com") and not _evaluated(redis_client, "c1000@example.com")
