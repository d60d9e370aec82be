"""Live events: each delivery to a known account, as it happens, over Server-Sent Events.

(While the account is watched the event worker and the sync add where each delivery's events landed
and what the ESPs answered to the same stream: :mod:`connector.livefeed`.)

Entries go to a capped Redis stream per account, ``live:{account}`` (``XADD MAXLEN ~``, queue
Redis): the sender, the outcome (``accepted``, ``duplicate``, ``refused``), the HTTP status, the
refusal's real reason (the sender itself only gets a bare 401), how many events were stored and
how many were duplicates, and per event its id, type, name and masked identities
(``j***@example.com``). Refusals on a route whose account or sender is unknown are not published
anywhere: the stream would confirm which accounts exist.

Stored deliveries are published only while someone watches the account: the stream endpoint keeps
a watcher key, ``live:watch:{account}``, alive (TTL ``WATCH_TTL_SECONDS``, refreshed every
``WATCH_REFRESH_SECONDS`` while a stream is open), and the ingest script (connector.ingest.queue)
says, in the reply that stores the events, whether that key exists. While it does, the request
queues the delivery in its web process, and the process's flushing thread writes the deliveries
of each ``FLUSH_SECONDS`` as stream entries of up to ``LINES_PER_ENTRY`` deliveries, one per line,
in one script call per account that leaves out the deliveries of a person erased since they were
received (:class:`Publisher`): building the entries and the Redis write are paid once per flush,
not once per request. With nobody watching, a delivery costs the ``EXISTS`` and nothing in Python.
Past ``SHOWN_PER_SECOND`` stored deliveries of an account in a second, a web process counts the
rest per sender and shows them as one ``not_shown`` line per sender and second (their number,
events stored and duplicates), as Segment's debugger shows a sample. Refusals are always
published, one entry each (one write on a connection with ``CLIENT REPLY OFF``, no reply awaited):
the overview's attention list reads them. Readers see entries, never rows: the stream endpoint
sends one SSE message per delivery, the last of a row with the row's id.

``GET /api/v1/accounts/{id}/live`` (viewer; bearer token as the rest of the API) answers
``text/event-stream``: the latest ``backlog`` entries (default 50) or, with ``Last-Event-ID``, the
entries after that one, and ends, telling the client to ask again in ``RETRY_MS`` (the browser's
EventSource does so by itself, with ``Last-Event-ID``). An answer takes one Redis round trip (the
read and the watcher key in one transaction) and a few milliseconds of a web worker, so a console
never holds one of the few sync workers that serve webhooks, and an entry reaches the page within
about ``FLUSH_SECONDS`` + ``RETRY_MS`` of being stored. A client that wants a held answer passes
``window`` (up to 25 s, under gunicorn's worker timeout): new entries are then read in batches
(``XREAD COUNT``: the read waits for the first new entry and, after a read that found some, the
stream waits ``COALESCE_SECONDS`` before reading again), holding a web worker for the window.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

import redis
from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint

from connector import clock, livefeed
from connector.clock import isoformat
from connector.config import Account
from connector.ingest import queue
from connector.livefeed import mask, masked_identities
from connector.ops.api import auth, errors
from connector.ops.gunicorn_conf import web_workers
from connector.profiles.erasure import tombstone_keys
from connector.redis_conn import cached_script, pipelined

log = logging.getLogger(__name__)

MAXLEN = livefeed.MAXLEN
MAX_EVENTS_SHOWN = 5  # per delivery; a batch of 500 shows its first five and the count
DEFAULT_BACKLOG = 50
DEFAULT_WINDOW_SECONDS = 0.0  # an answer sends what is new and ends; the client asks again
MAX_WINDOW_SECONDS = 25.0  # a held answer (``window``) stays under gunicorn's 30 s worker timeout
# Held answers running at once, over every web process: each takes a sync worker that also serves the
# webhooks, so a quarter of the workers at most (none below four); past it an answer ends at once,
# as with ``window=0`` (``X-Live-Window: 0``), and the client asks again as after any answer.
HELD_KEY = "live:held"  # member: a token per held answer; score: when it ends at the latest (epoch s)
HELD_MARGIN_SECONDS = 10  # a held answer of a worker killed meanwhile frees its place this long after
_HOLD = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
return 1
"""


def max_held() -> int:
    """Held answers allowed at once: a quarter of the web workers (none below four workers)."""
    return web_workers() // 4


RETRY_MS = 500  # how long the browser's EventSource waits before asking again
BLOCK_MS = 1000  # a read waits this long for a new entry before the stream sends a keep-alive line
READ_COUNT = 1000  # entries per read
COALESCE_SECONDS = 0.25  # after a read that found entries, the stream waits this long before the next
WATCH_TTL_SECONDS = 10  # a watcher key outlives a reconnect between two answers
WATCH_REFRESH_SECONDS = 2.0
FIELD = "d"
FLUSH_SECONDS = 0.1  # the deliveries of this long go out in one write
# Stored deliveries shown one by one per account, second and web process; past it they are counted
# and shown as one "not shown" line per sender and flush (as Segment's debugger shows a sample): a
# person reads a few a second, and a watched account at thousands a second costs ingest nothing.
SHOWN_PER_SECOND = 20  # CONNECTOR_LIVE_SHOWN_PER_SECOND; 0 there: every delivery (EVERY_DELIVERY)
EVERY_DELIVERY = 2**62
COUNTED_SECONDS = 1.0  # the "not shown" counts of a web process go out at most once this often
LINES_PER_ENTRY = 20  # a stream entry holds at most this many deliveries (one line each)
IDLE_SECONDS = 5.0  # a publishing connection idle this long is replaced before the next write
_STREAM_ID = re.compile(r"^\d{1,15}-\d{1,10}$")


def key(account_id: str) -> str:
    return livefeed.live_key(account_id)


def watch_key(account_id: str) -> str:
    return queue.live_watch_key(account_id)


# masking: connector.livefeed (the worker and the sync mask the same way)


# --- entries ------------------------------------------------------------------------------


def delivered_entry(events: Sequence[Any], accepted: int, duplicates: int) -> dict[str, Any]:
    """What a stored delivery shows: its sender, outcome, counts and (the first few) events."""
    first = events[0]
    outcome = "duplicate" if accepted == 0 else "accepted"
    return {
        "at": isoformat(clock.now()),
        "sender": first.source,
        "outcome": outcome,
        "status": 200,
        "reason": None,
        "accepted": accepted,
        "duplicates": duplicates,
        "events": [
            {"id": e.event_id, "type": e.type, "name": e.name, "identities": masked_identities(e.identities)}
            for e in events[:MAX_EVENTS_SHOWN]
        ],
        "event_count": len(events),
    }


def not_shown_entry(
    sender: str, deliveries: int, accepted: int, duplicates: int, event_count: int, limit: int
) -> dict[str, Any]:
    """The deliveries of a sender that a web process stored past its ``limit`` a second and did not
    show one by one: how many, and their counts."""
    reason = f"over {limit} deliveries a second in a web process: counted, not shown one by one"
    entry = _entry_without_events(sender, "not_shown", 200, reason, accepted, duplicates, event_count)
    return {**entry, "deliveries": deliveries}


def refused_entry(sender: str, status: int, reason: str) -> dict[str, Any]:
    return _entry_without_events(sender, "refused", status, reason)


def _entry_without_events(
    sender: str,
    outcome: str,
    status: int,
    reason: str,
    accepted: int = 0,
    duplicates: int = 0,
    event_count: int = 0,
) -> dict[str, Any]:
    return {
        "at": isoformat(clock.now()),
        "sender": sender,
        "outcome": outcome,
        "status": status,
        "reason": reason,
        "accepted": accepted,
        "duplicates": duplicates,
        "events": [],
        "event_count": event_count,
    }


# --- publishing ---------------------------------------------------------------------------


def entry_start(events: Sequence[Any], now: datetime | None = None) -> str:
    """The start of a stored delivery's entry, as :func:`delivered_entry` would write it but
    without the dedupe result (``,"outcome":...}``, :func:`_closing`). ``now``: the instant the
    request was received (read from the clock when not given).

    This runs for every delivery to a watched account, so it is kept to string formatting with the
    quoted forms of the few repeating strings (identity kinds, event types, senders) remembered;
    event ids are hex digests, which JSON needs no escaping for."""
    known = _QUOTED
    shown = []
    for e in events[:MAX_EVENTS_SHOWN]:
        ids = ",".join(
            [f"{known.get(k) or _quoted(k)}:{_quote(mask(k, str(v)))}" for k, v in e.identities.items()]
        )
        kind = known.get(e.type) or _quoted(e.type)
        shown.append(f'{{"id":"{e.event_id}","type":{kind},"name":{_quote(e.name)},"identities":{{{ids}}}}}')
    at = _instant(clock.now() if now is None else now)
    sender = known.get(events[0].source) or _quoted(events[0].source)
    return f'{{"at":"{at}","sender":{sender},"events":[{",".join(shown)}],"event_count":{len(events)}'


_QUOTED: dict[str, str] = {}
_QUOTED_MAX = 256  # identity kinds, event types and senders: a handful each


def _quoted(value: str) -> str:
    """``value`` as a JSON string, for the few strings that repeat on every delivery."""
    quoted = _QUOTED.get(value)
    if quoted is None:
        quoted = _quote(value)
        if len(_QUOTED) < _QUOTED_MAX:
            _QUOTED[value] = quoted
    return quoted


_second: tuple[tuple[int, ...], str] = ((), "")  # the last second formatted, and its text


def _instant(now: datetime) -> str:
    """:func:`connector.clock.isoformat` (ASCII, nothing to escape), for an instant in UTC (the
    clock's) with the text up to the second remembered: ``datetime.isoformat`` is a third of an
    entry start's cost."""
    global _second
    if now.tzinfo is not UTC:
        return isoformat(now)
    second = (now.year, now.month, now.day, now.hour, now.minute, now.second)
    seen, text = _second
    if second != seen:
        text = now.isoformat(timespec="seconds")[:-6]
        _second = (second, text)
    us = now.microsecond
    return f"{text}.{us:06d}Z" if us else f"{text}Z"


class Publisher:
    """The ingest side: ``Ingress.observer``. Never raises into the request.

    A stored delivery to a watched account (the ingest script's reply says so) is queued in this
    process, as it came, and a flushing thread, woken by the first one, gathers what arrives in
    ``flush_seconds`` and writes it: the entries (:func:`entry_start` closed with the dedupe result)
    of each account as stream entries of up to ``LINES_PER_ENTRY`` lines, one per delivery, in one
    script call (:data:`_FLUSH`, on a connection with replies off, no reply awaited) that leaves out
    a delivery whose person was erased at or after its receipt. The request itself only appends
    to a queue; the entries are built and written once per flush, not once per request. Past
    ``shown_per_second`` deliveries of an account in a second (of their ``now``), the request only
    adds the delivery to its sender's counts, which a flush writes as one ``not_shown`` line per
    sender, once a second.
    :meth:`flush` writes what is queued now (tests, and a process that stops)."""

    def __init__(
        self,
        client: redis.Redis,
        maxlen: int = MAXLEN,
        flush_seconds: float = FLUSH_SECONDS,
        shown_per_second: int = SHOWN_PER_SECOND,
    ) -> None:
        self.pool = client.connection_pool
        self.maxlen = maxlen
        self.flush_seconds = flush_seconds
        self.shown_per_second = shown_per_second
        self._second = 0
        self._shown: dict[str, int] = {}  # deliveries queued this second, per account
        self._skipped: dict[tuple[str, str], list[int]] = {}  # (account, sender): the counts not shown
        self._local = threading.local()
        self._pending: deque[tuple[str, Sequence[Any], datetime, int, int]] = deque()
        self._wake = threading.Event()
        self._flusher_pid = 0
        self._flushing = threading.Lock()
        self._counting = threading.Lock()
        self._counted_at = 0.0  # when the last "not shown" lines were written (clock.monotonic)

    def delivered(self, account: Account, events: Sequence[Any], result: Any, now: datetime) -> None:
        """After the events were stored (received at ``now``): while the account is watched,
        queue the delivery for the next flush (empty deliveries are not shown), or, past the
        account's ``shown_per_second`` deliveries of that second in this process, count it for
        the flush's "not shown" line."""
        if not (result.watched and events):
            return
        second = int(now.timestamp())
        with self._counting:  # request threads (gthread) and the flush share the counts
            if second > self._second:  # only forward: a request of the second before counts here
                self._second, self._shown = second, {}
            shown = self._shown.get(account.id, 0)
            show = shown < self.shown_per_second
            if show:
                self._shown[account.id] = shown + 1
            else:
                at = (account.id, events[0].source)
                counts = self._skipped.get(at)
                if counts is None:
                    counts = self._skipped[at] = [0, 0, 0, 0]
                counts[0] += 1
                counts[1] += result.accepted
                counts[2] += result.duplicates
                counts[3] += len(events)
        if show:
            self._pending.append((account.id, events, now, result.accepted, result.duplicates))
        if self._flusher_pid != os.getpid():
            self._start_flusher()
        wake = self._wake
        if not wake.is_set():  # set: the flusher has not cleared it yet, and will flush this one
            wake.set()

    def _start_flusher(self) -> None:
        with self._flushing:  # one flushing thread per process (a forked worker starts its own)
            if self._flusher_pid != os.getpid():
                self._wake = threading.Event()
                threading.Thread(target=self._flush_forever, name="live-flush", daemon=True).start()
                self._flusher_pid = os.getpid()

    def _flush_forever(self) -> None:
        atexit.register(self.flush)  # a process that stops (gunicorn's graceful exit) writes the rest
        wake = self._wake
        while True:
            wake.wait(COUNTED_SECONDS if self._skipped else None)  # counts held back: written in time
            time.sleep(self.flush_seconds)  # let the deliveries of the next moments gather
            wake.clear()  # a delivery queued from here on wakes the next round
            try:
                self.flush(final=False)
            except Exception:  # a delivery it could not show: logged, and the thread goes on
                log.exception("live entries not published")

    def flush(self, final: bool = True) -> int:
        """Write the queued deliveries now; returns how many it took from the queue (one left out
        because its person was erased counts too: the write is not awaited). The counts of the
        deliveries not shown go out once per ``COUNTED_SECONDS`` (one line per sender, not one per
        flush), or now when ``final`` (a process that stops, tests).

        A delivery whose shown events name a person erased at or after it was received is not
        written (:data:`_FLUSH`): an erasure removes from the stream what was written before it
        (:func:`connector.worker.erasure.forget_live`, after the tombstones), and a delivery still
        queued here then would otherwise bring the person's masked identities back."""
        by_account: dict[str, list[tuple[str, float, list[str]]]] = {}
        pending = self._pending
        count = 0
        while pending:
            try:
                account_id, events, now, accepted, duplicates = pending.popleft()
            except IndexError:
                break
            line = entry_start(events, now) + _closing(accepted, duplicates)
            names = {name for e in events[:MAX_EVENTS_SHOWN] for name in tombstone_keys(e)}
            by_account.setdefault(account_id, []).append((line, now.timestamp(), list(names)))
            count += 1
        skipped: dict[tuple[str, str], list[int]] = {}
        with self._counting:
            moment = clock.monotonic()
            if final or moment - self._counted_at >= COUNTED_SECONDS:
                skipped, self._skipped, self._counted_at = self._skipped, {}, moment
        for (account_id, sender), (deliveries, accepted, duplicates, events_count) in skipped.items():
            entry = not_shown_entry(
                sender, deliveries, accepted, duplicates, events_count, self.shown_per_second
            )
            line = json.dumps(entry, separators=(",", ":"))
            by_account.setdefault(account_id, []).append((line, 0.0, []))  # no identity shown
            count += deliveries
        for account_id, lines in by_account.items():
            self._send(_flush_command(key(account_id), self.maxlen, lines))
        return count

    def refused(self, account: Account, sender: str, err: Any) -> None:
        """A delivery to a known account and sender that was refused, with the real reason."""
        self.publish(account.id, refused_entry(sender, int(err.status), str(err.message)))

    def _connection(self, fresh: bool = False) -> Any:
        """This thread's connection with replies off. Nothing is read from it, so a socket the
        server or the network closed while idle would swallow the next write unnoticed: one idle
        for ``IDLE_SECONDS`` is replaced before writing (``fresh``: replaced now)."""
        local = self._local
        conn = getattr(local, "conn", None)
        now = time.monotonic()
        if fresh or conn is None or local.pid != os.getpid() or now - local.used > IDLE_SECONDS:
            if conn is not None and local.pid == os.getpid():
                conn.disconnect()
            conn = self.pool.connection_class(**self.pool.connection_kwargs)
            conn.connect()
            conn.send_packed_command(conn.pack_command("CLIENT", "REPLY", "OFF"), check_health=False)
            local.conn, local.pid = conn, os.getpid()
        local.used = now
        return conn

    def publish(self, account_id: str, entry: dict[str, Any]) -> None:
        data = json.dumps(entry, separators=(",", ":"))
        self._send(("XADD", key(account_id), "MAXLEN", "~", self.maxlen, "*", FIELD, data))

    def _send(self, command: tuple[Any, ...]) -> None:
        for fresh in (False, True):  # once more on a new connection when the one in hand failed
            try:
                conn = self._connection(fresh)
                conn.send_packed_command(conn.pack_command(*command), check_health=False)
                return
            except (redis.RedisError, OSError) as err:
                self._local.conn = None
                failed = err
        log.debug("live entry not published: %s", type(failed).__name__)


# One account's flush: its lines (stored deliveries, "not shown" counts) as stream entries of
# ARGV[2] lines each, without the deliveries a tombstone (connector.profiles.erasure) names with an
# erasure instant at or after their receipt. Atomic, so a delivery is either in the stream when the
# erasure's forget_live reads it (the tombstones are written before) or checked against them.
# KEYS[1]: the stream; KEYS[2..]: tombstones. ARGV[1]: MAXLEN; ARGV[2]: lines per entry; ARGV[3]: the
# entry's field; then per line: its text, its receipt instant (epoch seconds, as the tombstones hold
# the erasure's), n, and the n indices into KEYS of its tombstones.
# Sent with EVAL (the connection has replies off: a NOSCRIPT could not be seen); a few hundred bytes
# once per flush and account. Nothing it raised would be seen either, so a tombstone key that cannot
# be read as one leaves out the deliveries naming it, not the account's whole flush.
_FLUSH = """
local erased = {}
for i = 2, #KEYS do
  local at = redis.pcall('GET', KEYS[i])
  if type(at) == 'table' then erased[i] = math.huge  -- not a tombstone's value: left out, unjudged
  elseif at then erased[i] = tonumber(at) or math.huge end
end
local lines, i = {}, 4
while i <= #ARGV do
  local received, n = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local keep = true
  for j = 1, n do
    local at = erased[tonumber(ARGV[i + 2 + j])]
    if at and received <= at then keep = false end
  end
  if keep then lines[#lines + 1] = ARGV[i] end
  i = i + 3 + n
end
local per = tonumber(ARGV[2])
for first = 1, #lines, per do
  local text = table.concat(lines, '\\n', first, math.min(first + per - 1, #lines))
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', ARGV[3], text)
end
return #lines
"""


def _flush_command(
    stream: str, maxlen: int, lines: Sequence[tuple[str, float, Sequence[str]]]
) -> tuple[Any, ...]:
    """The ``EVAL`` of :data:`_FLUSH` for one account's ``(line, received, tombstones)``."""
    index: dict[str, int] = {}
    args: list[Any] = [maxlen, LINES_PER_ENTRY, FIELD]
    for line, received, names in lines:
        args += [line, repr(received), len(names)]
        args += [index.setdefault(name, len(index) + 2) for name in names]
    return ("EVAL", _FLUSH, 1 + len(index), stream, *index, *args)


def _closing(accepted: int, duplicates: int) -> str:
    """The end of a stored delivery's entry: its dedupe result (as :func:`delivered_entry`)."""
    outcome = "duplicate" if accepted == 0 else "accepted"
    counts = f'"accepted":{accepted},"duplicates":{duplicates}}}'
    return f',"outcome":"{outcome}","status":200,"reason":null,{counts}'


# --- reading ------------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(rows: Sequence[Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(stream id, entry)`` per entry of the rows, oldest first (a stream entry of stored
    deliveries holds several, one per line: each is returned with its row's id)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for entry_id, fields in rows:
        raw = fields.get(FIELD.encode()) or fields.get(FIELD)
        if raw is not None:
            out.extend((_text(entry_id), json.loads(line)) for line in _bytes(raw).split(b"\n"))
    return out


def latest(conn: redis.Redis, account_id: str, count: int) -> list[tuple[str, dict[str, Any]]]:
    """The account's latest ``count`` entries, oldest first."""
    if count <= 0:
        return []
    return _decode(list(reversed(conn.xrevrange(key(account_id), count=count))))[-count:]


def _call(client: redis.Redis, *commands: tuple[Any, ...]) -> list[Any]:
    """The replies to ``commands`` in one round trip (:func:`connector.redis_conn.pipelined`), read
    as the server sent them: a stream read stays nested lists of bytes, which the stream passes
    through, without the client's per-entry conversion into dicts (most of an answer's CPU when
    entries pile up). An error reply raises."""
    replies = pipelined(client, commands)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


Row = tuple[bytes, bytes]  # (entry id, entry JSON) as stored


def _raw(rows: Sequence[Any] | None) -> list[Row]:
    """``(id, entries)`` of a stream reply's rows (``[id, [field, value, ...]]``; every writer
    writes the one field ``d``: one entry's JSON, or several, one per line), as stored: the stream
    passes them through undecoded."""
    if not rows:
        return []
    if not isinstance(rows[0][0], bytes):  # a client that decodes replies
        rows = [(_bytes(i), [_bytes(x) for x in fields]) for i, fields in rows]
    field = _FIELD
    return [(i, f[1]) for i, f in rows if f[0] == field]


_FIELD = FIELD.encode()


def _read_reply(reply: Any) -> list[Row]:
    """The rows of an ``XREAD`` reply for one stream: a map (RESP3) or pairs (RESP2) of stream and
    rows, or nil when nothing came."""
    if not reply:
        return []
    return _raw(next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1])


def after(conn: redis.Redis, account_id: str, last_id: bytes | str, block_ms: int) -> list[Row]:
    """Entries added after ``last_id`` (at most ``READ_COUNT``), waiting up to ``block_ms`` for the
    first one (0: not waiting)."""
    block = ("BLOCK", block_ms) if block_ms else ()
    command = ("XREAD", "COUNT", READ_COUNT, *block, "STREAMS", key(account_id), last_id)
    return _read_reply(_call(conn, command)[0])


def watch(conn: redis.Redis, account_id: str) -> None:
    """Say that someone watches the account: its deliveries are published for ``WATCH_TTL_SECONDS``."""
    conn.set(watch_key(account_id), "1", ex=WATCH_TTL_SECONDS)


def start(conn: redis.Redis, account_id: str, last_id: str | None, backlog: int) -> tuple[list[Row], bytes]:
    """One round trip, in one transaction with (re)setting the watcher key, so that every delivery
    stored afterwards is read next: the entries after ``last_id`` (at most ``READ_COUNT``), or
    without it the latest ``backlog`` ones; oldest first, and the id to read on from."""
    if last_id is not None:
        read: tuple[Any, ...] = ("XREAD", "COUNT", READ_COUNT, "STREAMS", key(account_id), last_id)
    else:
        read = ("XREVRANGE", key(account_id), "+", "-", "COUNT", max(backlog, 1))
    watching = ("SET", watch_key(account_id), "1", "EX", WATCH_TTL_SECONDS)
    found = _call(conn, ("MULTI",), read, watching, ("EXEC",))[-1][0]
    if last_id is not None:
        rows = _read_reply(found)
        return rows, rows[-1][0] if rows else last_id.encode()
    newest = _bytes(found[0][0]) if found else b"0-0"
    return (_last_entries(list(reversed(_raw(found[:backlog]))), backlog) if backlog > 0 else []), newest


def _last_entries(rows: list[Row], count: int) -> list[Row]:
    """The rows holding the last ``count`` entries (the oldest row cut to what is needed)."""
    lines = 0
    for i in range(len(rows) - 1, -1, -1):
        lines += rows[i][1].count(b"\n") + 1
        if lines >= count:
            if lines > count:
                rows[i] = (rows[i][0], b"\n".join(rows[i][1].split(b"\n")[lines - count :]))
            return rows[i:]
    return rows


def _frames(rows: Sequence[Row]) -> bytes:
    """One SSE message per entry; the last of a row's entries carries the row's id (where to
    resume), the others none (EventSource keeps the last id it was given)."""
    out = []
    for entry_id, data in rows:
        if b"\n" in data:
            *first, last = data.split(b"\n")
            out.extend([b"event: delivery\ndata: %s\n\n" % line for line in first])
            data = last
        out.append(b"id: %s\nevent: delivery\ndata: %s\n\n" % (entry_id, data))
    return b"".join(out)


def sse(
    conn: redis.Redis,
    account_id: str,
    last_id: str | None,
    *,
    backlog: int = DEFAULT_BACKLOG,
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
) -> Iterator[bytes]:
    """The ``text/event-stream`` body: the backlog (or what followed ``last_id``), then, with a
    ``window_seconds`` above 0, new entries in batches until the window closes (a comment line
    every second without entries keeps proxies from closing it). Keeps the account watched."""
    asked_from = None if last_id is None else last_id.encode()
    rows, position = start(conn, account_id, last_id, backlog)
    yield b"retry: %d\n\n" % RETRY_MS
    if rows:
        yield _frames(rows)
    elif position != asked_from:
        # nothing to show yet: tell the client where to read on from (its Last-Event-ID next time)
        yield b"id: %s\nevent: position\ndata: {}\n\n" % position
    while len(rows) == READ_COUNT:  # more than one read's worth is waiting: read it all now
        rows = after(conn, account_id, position, 0)
        if rows:
            yield _frames(rows)
            position = rows[-1][0]
    refreshed = clock.monotonic()
    deadline = refreshed + window_seconds
    while (now := clock.monotonic()) < deadline:
        if now - refreshed >= WATCH_REFRESH_SECONDS:
            watch(conn, account_id)
            refreshed = now
        rows = after(conn, account_id, position, max(1, min(BLOCK_MS, int((deadline - now) * 1000))))
        if not rows:
            yield b": waiting\n\n"
            continue
        yield _frames(rows)
        position = rows[-1][0]
        if len(rows) < READ_COUNT:
            time.sleep(COALESCE_SECONDS)  # let the next entries gather: one read and one write per batch


def last_event_id(value: str | None) -> str | None:
    """``Last-Event-ID`` (or ``?last_id=``) as a stream id; 422 when it is not one."""
    if value is None or value == "":
        return None
    if not _STREAM_ID.match(value):
        errors.fail(422, f"invalid Last-Event-ID {value!r}: pass the id of the last event received")
    return value


def number_arg(name: str, default: float, low: float, high: float) -> float:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        errors.fail(422, f"invalid query.{name}: {raw!r} is not a number")
    if not low <= value <= high:
        errors.fail(422, f"invalid query.{name}: must be between {low:g} and {high:g}")
    return value


def stream_response(
    conn: redis.Redis, account_id: str, window_seconds: float = DEFAULT_WINDOW_SECONDS
) -> Response:
    """The SSE answer for ``account_id`` (already authorised): reads ``Last-Event-ID``/``last_id``,
    ``backlog`` (0-1000) and ``window`` (0-25 s) from the request."""
    last_id = last_event_id(request.headers.get("Last-Event-ID") or request.args.get("last_id"))
    backlog = int(number_arg("backlog", DEFAULT_BACKLOG, 0, MAXLEN))
    window = number_arg("window", window_seconds, 0, MAX_WINDOW_SECONDS)
    token = _hold(conn, window) if window else None
    if token is None:
        window = 0.0
    frames = sse(conn, account_id, last_id, backlog=backlog, window_seconds=window)
    # an answer that ends at once goes out whole, with its length: one write, no chunked framing
    body: Iterator[bytes] | bytes = _released(conn, token, frames) if token else b"".join(frames)
    return Response(
        body,
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Live-Window": f"{window:g}"},
    )


def _hold(conn: redis.Redis, window: float) -> str | None:
    """A place for one held answer of ``window`` seconds, or None when every place is taken."""
    token = os.urandom(8).hex()
    now = clock.now().timestamp()
    ends = now + window + HELD_MARGIN_SECONDS
    held = cached_script(conn, _HOLD)(keys=[HELD_KEY], args=[now, ends, max_held(), token])
    return token if held else None


def _released(conn: redis.Redis, token: str, frames: Iterator[bytes]) -> Iterator[bytes]:
    """The held answer's frames; its place is given back when it ends or the client leaves."""
    try:
        yield from frames
    finally:
        conn.zrem(HELD_KEY, token)


# --- the API endpoint ---------------------------------------------------------------------

blp = Blueprint("api_live", __name__, url_prefix="/api/v1/accounts", description="Live events")
errors.install(blp)


@blp.route("/<string:account_id>/live")
class Live(MethodView):
    @auth.access(blp, "viewer")
    def get(self, account_id: str) -> Response:
        """The account's deliveries as Server-Sent Events (``text/event-stream``)."""
        return stream_response(auth.runtime().queue_redis, account_id)
