"""Importing history from files: Segment or RudderStack messages (JSON lines) and Shopify's customer and
order CSV exports, through the same normalization, identity stitching and dedupe as live events.

Each line (or CSV row, or order) becomes an :class:`~connector.event.Event` with the live receivers'
normalization (:func:`connector.ingest.receivers.spec.normalize`; the Shopify receiver's ``orders/create``
parsing), so its event id is the one the live event has or would have had: ``messageId`` for Segment and
RudderStack, the order id for Shopify orders. Events are applied in chunks
(:func:`connector.profiles.apply.apply_events`, which dedupes within each profile's history), so
importing a file twice changes nothing the second time, and memory stays flat however long the file.
Every touched profile is evaluated once at the end (:func:`connector.worker.evaluation.evaluate_profiles`):
the ledger records the result and the due index its next change; the destinations receive it only with
``push``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from connector import unicode_text
from connector.config import Account, SenderConfig
from connector.errors import ConnectorError
from connector.event import Event
from connector.ingest.admission import event_problem
from connector.ingest.receivers.base import WHOLE_BODY, Inbound, identities, parse_json
from connector.ingest.receivers.shopify import TRAIT_FIELDS, ShopifyReceiver
from connector.ingest.receivers.spec import normalize
from connector.profiles.apply import apply_events, count_drops
from connector.worker import evaluation

FORMATS = ("segment", "rudderstack", "shopify-customers", "shopify-orders")
IMPORTED_TYPES = ("track", "identify", "page", "screen", "group", "alias")
CHUNK = 1000
MAX_KEPT_REJECTIONS = 10_000

Progress = Callable[[int], None]  # called with the number of bytes read since the last call


class ImportFileError(ConnectorError):
    """The file cannot be imported at all (unknown format, missing CSV columns)."""


class ImportStopped(ImportFileError):
    """The file stopped being readable part-way (broken CSV quoting) or the import was interrupted:
    every event read before the stop was applied and its profiles evaluated (``report``)."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class Rejection:
    line: int
    reason: str


@dataclass
class Report:
    format: str
    records: int = 0  # lines, customer rows or orders read
    events: int = 0  # valid events
    applied: int = 0
    duplicates: int = 0
    rejected_total: int = 0
    rejected: list[Rejection] = field(default_factory=list)  # the first MAX_KEPT_REJECTIONS
    rejected_by_store: int = 0  # refused when stored (blocked identity values ...): connector events rejected
    expired: int = 0  # older than the account's retention: not stored
    by_name: dict[str, int] = field(default_factory=dict)
    profiles: int = 0
    changed: int = 0  # profiles whose ledger changed
    pushed: bool = False
    dry_run: bool = False

    def reject(self, line: int, reason: str) -> None:
        self.rejected_total += 1
        if len(self.rejected) < MAX_KEPT_REJECTIONS:
            self.rejected.append(Rejection(line, reason))

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["rejected"] = [r.__dict__ for r in self.rejected]
        return out


Parsed = tuple[int, Event | str]  # (line number, the event or the reason it was rejected)


# -- reading ---------------------------------------------------------------------------------------


def _lines(path: Path, progress: Progress | None) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if progress is not None:
                progress(len(line))
            yield number, line


def _text_lines(path: Path, progress: Progress | None) -> Iterator[str]:
    for number, line in _lines(path, progress):
        text = line.decode("utf-8", errors="surrogateescape")  # bytes that are not UTF-8: _undecodable
        yield text.lstrip("\ufeff") if number == 1 else text


_NOT_TEXT = (  # (first bytes, what the file is and what to do)
    (b"\x1f\x8b", "a gzip file: decompress it first (gunzip)"),
    (b"PK\x03\x04", "a zip archive: extract the export from it first"),
    (b"\xff\xfe", "UTF-16 text: save it as UTF-8"),
    (b"\xfe\xff", "UTF-16 text: save it as UTF-8"),
)


def check_text(path: Path) -> None:
    """Refuse, saying what it is, a file that is no text to read lines from (compressed, archived,
    UTF-16): its bytes would only come back as lines that cannot be read."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as err:
        raise ImportFileError(f"{path}: cannot read: {err.strerror}") from err
    for magic, what in _NOT_TEXT:
        if head.startswith(magic):
            raise ImportFileError(f"{path}: {what}")


def detect_format(path: Path) -> str:
    """``shopify-customers`` / ``shopify-orders`` from a CSV header, else JSON lines: ``rudderstack``
    when the first message carries RudderStack's marks (``rudderId``, a RudderStack library), else
    ``segment``."""
    check_text(path)
    with path.open("rb") as handle:
        first = b""
        for line in handle:
            if line.strip():
                first = line.lstrip(b"\xef\xbb\xbf").strip()
                break
    if not first:
        raise ImportFileError(f"{path}: the file is empty")
    if not first.startswith(b"{"):
        header = next(csv.reader([first.decode("utf-8", errors="replace")]))
        if "Lineitem name" in header:
            return "shopify-orders"
        if "Email" in header and ("Customer ID" in header or "Total Spent" in header):
            return "shopify-customers"
        raise ImportFileError(
            f"{path}: not JSON lines, and not a Shopify customers or orders CSV export (header: "
            f"{', '.join(header[:6])} ...); choose --format"
        )
    try:
        message = json.loads(first)
    except ValueError:
        return "segment"  # the first line's problem is reported with its line number
    return "rudderstack" if isinstance(message, dict) and _rudderstack(message) else "segment"


def _rudderstack(message: dict[str, Any]) -> bool:
    context = message.get("context")
    library = context.get("library") if isinstance(context, dict) else None
    name = library.get("name") if isinstance(library, dict) else None
    return "rudderId" in message or (isinstance(name, str) and name.lower().startswith("rudder"))


# -- JSON lines (Segment / RudderStack) -------------------------------------------------------------


TIME_KEYS = ("timestamp", "originalTimestamp", "receivedAt")


def _message(account: str, source: str, line: bytes, now: datetime) -> Event | str:
    try:
        message = parse_json(line, "line")
        event = normalize(message, account=account, source=source, received_at=now, where="message")
    except ConnectorError as err:
        return str(err)
    if event.type not in IMPORTED_TYPES:
        return f"type {event.type} is not imported (only {', '.join(IMPORTED_TYPES)})"
    if all(message.get(key) in (None, "") for key in TIME_KEYS):
        # the import's own instant would make the event new at every import of the file
        return "no time: an imported message needs timestamp, originalTimestamp or receivedAt"
    return event


def parse_jsonl(
    path: Path, account: str, source: str, now: datetime, progress: Progress | None = None
) -> Iterator[Parsed]:
    for number, line in _lines(path, progress):
        if line.strip():
            yield number, _message(account, source, line, now)


# -- Shopify CSV exports ----------------------------------------------------------------------------


def _rows(
    path: Path, required: tuple[str, ...], progress: Progress | None
) -> Iterator[tuple[int, dict[str, str]]]:
    # strict: a quote left open is an error, not a cell that runs on over the rows that follow it
    reader = csv.reader(_text_lines(path, progress), strict=True)
    start = 1
    try:
        header = next(reader, None)
        if header is None:
            raise ImportFileError(f"{path}: the file is empty")
        missing = [name for name in required if name not in header]
        if missing:
            raise ImportFileError(f"{path}: missing column(s) {', '.join(missing)}")
        start = reader.line_num + 1
        for row in reader:
            if any(cell.strip() for cell in row):
                yield start, {name: (row[i].strip() if i < len(row) else "") for i, name in enumerate(header)}
            start = reader.line_num + 1
    except csv.Error as err:
        # the quoting is broken from here on: nothing after it can be read as rows (what came before
        # was imported, and importing the repaired file again adds only what is missing)
        raise ImportFileError(
            f"{path}: line {start}: not CSV from here on ({err}); a quote opened there is not closed"
            if "end of data" in str(err) or "expected after" in str(err)
            else f"{path}: line {start}: not CSV from here on ({err})"
        ) from err


def _number(text: str) -> float | int | None:
    cleaned = text.replace(",", "").strip()
    if not cleaned:
        return None
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return int(value) if value.is_integer() else value


def _yes(text: str) -> bool | None:
    lowered = text.strip().lower()
    if lowered in ("yes", "true", "subscribed"):
        return True
    if lowered in ("no", "false", "not_subscribed", "unsubscribed"):
        return False
    return None


_CUSTOMER_COLUMNS = {
    "First Name": "first_name",
    "Last Name": "last_name",
    "Phone": "phone",
    "Email": "email",
}


def _customer_traits(row: dict[str, str]) -> dict[str, Any]:
    traits: dict[str, Any] = {k: row[c] for c, k in _CUSTOMER_COLUMNS.items() if row.get(c)}
    consent = _yes(row.get("Accepts Email Marketing") or row.get("Accepts Marketing") or "")
    if consent is not None:
        traits["accepts_marketing"] = consent
    spent = _number(row.get("Total Spent", ""))
    if spent is not None:
        traits["total_spent"] = spent
    orders = _number(row.get("Total Orders", ""))
    if orders is not None:
        traits["orders_count"] = orders
    tags = [t.strip() for t in row.get("Tags", "").split(",") if t.strip()]
    if tags:
        traits["tags"] = tags
    if "email" in traits:
        traits["email"] = traits["email"].lower()
    return {k: v for k, v in traits.items() if k in TRAIT_FIELDS}


def _customer(account: str, row: dict[str, str], now: datetime) -> Event | str:
    customer_id = row.get("Customer ID", "").lstrip("'")
    ids = identities(email=row.get("Email") or None, shopify_customer_id=customer_id or None)
    if not ids:
        return "no Email and no Customer ID"
    canonical_row = json.dumps(row, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical_row.encode()).hexdigest()[:16]
    return Event(
        account=account,
        source=ShopifyReceiver.source,
        source_event_id=f"customers/import:{customer_id or ids['email']}@{digest}",
        type="identify",
        name="identify",
        original_name="customers/import",
        occurred_at=now,
        received_at=now,
        identities=ids,
        traits=_customer_traits(row),
        raw=row,
    )


def _undecodable(rows: Iterable[dict[str, str]]) -> str | None:
    """Why rows read from the file cannot be taken: a cell holding bytes that are not UTF-8 (kept
    as lone surrogates by the reading), or None."""
    for row in rows:
        for column, cell in row.items():
            if (at := unicode_text.first_byte_not_text(cell)) is not None:
                return f"{column}: byte {at} of the cell is not UTF-8 text; save the export as UTF-8"
    return None


def parse_customers(
    path: Path, account: str, now: datetime, progress: Progress | None = None
) -> Iterator[Parsed]:
    for number, row in _rows(path, ("Email",), progress):
        yield number, _undecodable([row]) or _customer(account, row, now)


_ORDER_FIELDS = {
    "Email": "email",
    "Financial Status": "financial_status",
    "Created at": "created_at",
    "Currency": "currency",
    "Total": "total_price",
    "Subtotal": "subtotal_price",
    "Taxes": "total_tax",
    "Discount Amount": "total_discounts",
    "Source": "source_name",
}
_LINE_FIELDS = {
    "Lineitem name": "name",
    "Lineitem quantity": "quantity",
    "Lineitem price": "price",
    "Lineitem sku": "sku",
    "Vendor": "vendor",
}
_SHOPIFY_SENDER = SenderConfig(name="shopify", secrets=())
_RECEIVER = ShopifyReceiver()


def _order_payload(rows: list[dict[str, str]]) -> dict[str, Any]:
    head = rows[0]
    raw_id = (head.get("Id") or "").strip()
    # Shopify's order id is a number; an export without the Id column is keyed on the order's Name
    order_id: int | str = int(raw_id) if raw_id.isdigit() else head["Name"]
    payload: dict[str, Any] = {"id": order_id, "name": head["Name"]}
    for column, key in _ORDER_FIELDS.items():
        value = head.get(column)
        if value:
            payload[key] = value
    if head.get("Paid at"):
        payload["paid_at"] = head["Paid at"]
    items = []
    for row in rows:
        item: dict[str, Any] = {k: row[c] for c, k in _LINE_FIELDS.items() if row.get(c)}
        quantity = _number(item.get("quantity", ""))
        if quantity is not None:
            item["quantity"] = quantity
        if item:
            items.append(item)
    payload["line_items"] = items
    return payload


def _order(account: Account, rows: list[dict[str, str]], now: datetime) -> Event | str:
    payload = _order_payload(rows)
    if not payload.get("created_at"):
        return "no Created at"
    source_id = payload["id"]
    if not isinstance(source_id, int):
        payload["id"] = 0  # the body's shape wants a number; the event keeps the Name as its id
    inbound = Inbound(
        method="POST",
        url="import",
        args={},
        headers={"Content-Type": "application/json", "X-Shopify-Topic": "orders/create"},
        body=json.dumps(payload).encode(),
    )
    try:
        (event,) = _RECEIVER.parse(inbound, account, _SHOPIFY_SENDER, now, WHOLE_BODY)
    except ConnectorError as err:
        return str(err)
    if not event.identities:
        return "no Email"
    properties = {**event.properties, "topic": "orders/import"}
    if not isinstance(source_id, int):
        properties.pop("order_id", None)  # only the Name identifies this order
    if "paid_at" in payload:
        properties["paid_at"] = payload["paid_at"]
    return replace(event, source_event_id=f"orders/create:{source_id}", properties=properties)


def parse_orders(
    path: Path, account: Account, now: datetime, progress: Progress | None = None
) -> Iterator[Parsed]:
    """One event per order: an order's rows (one per line item) are consecutive and share its Name."""
    rows: list[dict[str, str]] = []
    first_line = 0
    for number, row in _rows(path, ("Name", "Email", "Created at", "Lineitem name"), progress):
        if rows and row["Name"] != rows[0]["Name"]:
            yield first_line, _undecodable(rows) or _order(account, rows, now)
            rows = []
        if not rows:
            first_line = number
        rows.append(row)
    if rows:
        yield first_line, _undecodable(rows) or _order(account, rows, now)


def parse_file(
    path: Path, fmt: str, account: Account, now: datetime, progress: Progress | None = None
) -> Iterator[Parsed]:
    check_text(path)
    if fmt in ("segment", "rudderstack"):
        return parse_jsonl(path, account.id, fmt, now, progress)
    if fmt == "shopify-customers":
        return parse_customers(path, account.id, now, progress)
    if fmt == "shopify-orders":
        return parse_orders(path, account, now, progress)
    raise ImportFileError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")


# -- importing -------------------------------------------------------------------------------------


def _valid(parsed: Iterable[Parsed], report: Report) -> Iterator[Event]:
    for number, item in parsed:
        report.records += 1
        if isinstance(item, str):
            report.reject(number, item)
            continue
        if not item.identities:
            report.reject(number, "no identity (userId, anonymousId or email)")
            continue
        if (problem := event_problem(item)) is not None:
            report.reject(number, problem)
            continue
        report.events += 1
        report.by_name[item.name] = report.by_name.get(item.name, 0) + 1
        yield item


@dataclass
class _Touched:
    profiles: set[str] = field(default_factory=set)
    restate: set[str] = field(default_factory=set)  # survivors of merges


def import_file(
    path: Path,
    account: Account,
    now: datetime,
    conn: redis.Redis,
    queue_conn: redis.Redis,
    *,
    fmt: str | None = None,
    dry_run: bool = False,
    push: bool = False,
    chunk_size: int = CHUNK,
    progress: Progress | None = None,
) -> Report:
    """Import one file into ``account``'s profiles; see the module's description."""
    fmt = fmt or detect_format(path)
    report = Report(format=fmt, dry_run=dry_run, pushed=push and not dry_run)
    events = _valid(parse_file(path, fmt, account, now, progress), report)
    if dry_run:
        for _ in events:
            pass
        return report
    touched = _Touched()
    chunk: list[Event] = []
    stop: str | None = None
    try:
        for event in events:
            chunk.append(event)
            if len(chunk) >= chunk_size:
                with _interrupt_after():  # a chunk is applied whole: applied twice, it would count duplicates
                    _apply_chunk(conn, queue_conn, account, chunk, now, report, touched)
                    chunk = []
    except ImportFileError as err:  # the file breaks here: what was read before it is imported
        stop = str(err)
    except KeyboardInterrupt:
        stop = f"{path}: interrupted after {report.records} records"
    # what was read before a stop is applied, and every profile touched is evaluated: a profile
    # stored but never evaluated would stay out of its segments until its next event
    if chunk:
        _apply_chunk(conn, queue_conn, account, chunk, now, report, touched)
    _evaluate(account, touched, now, conn, queue_conn, push, chunk_size, report)
    if stop is not None:
        raise ImportStopped(stop, report)
    return report


@contextmanager
def _interrupt_after() -> Iterator[None]:
    """Ctrl-C (SIGINT) while inside is held until the end of the block, then raised: the chunk in
    progress is applied whole, never cut part-way and applied again. Outside the main thread (where
    signals cannot be handled) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


def _apply_chunk(
    conn: redis.Redis,
    queue_conn: redis.Redis,
    account: Account,
    chunk: list[Event],
    now: datetime,
    report: Report,
    touched: _Touched,
) -> None:
    outcome = apply_events(conn, queue_conn, account, chunk, now)
    counters = queue_conn.pipeline(transaction=False)
    count_drops(counters, outcome)
    counters.execute()
    report.applied += outcome.applied
    report.duplicates += outcome.duplicates
    report.rejected_by_store += outcome.rejected
    report.expired += outcome.expired
    evaluation.forget_absorbed(conn, queue_conn, account, outcome.absorbed, now)
    touched.profiles -= set(outcome.absorbed)
    touched.restate -= set(outcome.absorbed)
    touched.profiles |= outcome.touched
    touched.restate |= set(outcome.absorbed.values()) & outcome.touched


def _evaluate(
    account: Account,
    touched: _Touched,
    now: datetime,
    conn: redis.Redis,
    queue_conn: redis.Redis,
    push: bool,
    chunk_size: int,
    report: Report,
) -> None:
    """Each touched profile once, in chunks: ledger and due index always, destinations only with push."""
    ordered = sorted(touched.profiles)
    report.profiles = len(ordered)
    for start in range(0, len(ordered), chunk_size):
        part = ordered[start : start + chunk_size]
        outcomes = evaluation.evaluate_profiles(
            account, part, now, conn, queue_conn, push=push, restate=touched.restate & set(part)
        )
        report.changed += sum(1 for o in outcomes if o.diff is not None)
