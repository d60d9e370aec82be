"""The receiving routes, ``/webhooks/<account>/<sender>`` and ``/v1/<call>``, and the health checks.

The two receiving families carry nearly all of the traffic, so they are served by
:class:`Ingress`, a small WSGI callable that the app factory puts in front of the Flask app
(``app.wsgi_app``). It reads the raw body once, hands it to the sender's receiver or to the
tracking API, and answers with the contract's JSON bodies; everything else (health, metrics, any
other path) goes on to Flask. Flask's per-request machinery (request and app contexts, URL
map, signals, response objects) costs about as much CPU as the whole ingest work does, which is
why the hot path does without it: ``bench/ingest`` measures both.

The JSON error bodies are written by :func:`error_answer`, which Flask's error handlers use
too, so a route answers the same whichever side serves it.

The tracking API is called by analytics.js from the pages of any site, so ``/v1/<call>`` (and it
alone: never the webhooks, the admin API ``/api/v1``, the console or health) answers CORS: every
answer says ``Access-Control-Allow-Origin: *`` and an ``OPTIONS`` preflight is answered 204. No
answer allows credentials: the write key travels in the ``Authorization`` header or the body, never
in a cookie, so a page's cookies are never sent along (see :func:`preflight_answer`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import redis
from flask import Flask
from werkzeug.datastructures import EnvironHeaders, MultiDict
from werkzeug.wsgi import get_current_url

from connector import clock
from connector.config import Account, Accounts, Secret, SenderConfig
from connector.errors import (
    MalformedPayload,
    PayloadTooLarge,
    RequestRejected,
    StoreUnavailable,
    Unauthorized,
)
from connector.ingest import tracking
from connector.ingest.queue import EventQueue
from connector.ingest.receivers import REGISTRY, Inbound

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"
REJECTED_KEY = "metrics:rejected"

StartResponse = Callable[..., Any]
Headers = list[tuple[str, str]]


class Answer:
    """One HTTP answer: status, JSON body (already encoded) and extra headers."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: Headers | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or []

    @classmethod
    def json(cls, status: int, payload: dict[str, Any], headers: Headers | None = None) -> Answer:
        return cls(status, (json.dumps(payload, separators=(",", ":")) + "\n").encode(), headers)


def accepted_answer(status: str, accepted: int, duplicates: int) -> Answer:
    """The small JSON body of a 2xx, written directly (a generic JSON encoder costs more)."""
    body = f'{{"status":"{status}","accepted":{accepted},"duplicates":{duplicates}}}\n'
    return Answer(200, body.encode())


def _error(err: Exception) -> tuple[int, dict[str, Any], Headers | None]:
    if isinstance(err, Unauthorized):
        # The reason is logged for operators; the sender learns nothing that helps an attacker.
        log.info("rejected: %s", err.message)
        return 401, {"error": "unauthorized"}, None
    if isinstance(err, RequestRejected):
        return err.status, {"error": err.code, "message": err.message}, None
    if isinstance(err, StoreUnavailable | redis.RedisError):
        log.warning("store unavailable: %s", err if isinstance(err, StoreUnavailable) else type(err).__name__)
        message = "storage is unavailable; nothing was accepted, retry later"
        return 503, {"error": "unavailable", "message": message}, [("Retry-After", RETRY_AFTER_SECONDS)]
    log.exception("internal error", exc_info=err)
    return 500, {"error": "internal", "message": "internal error"}, None


def error_answer(err: Exception) -> Answer:
    """The contract's answer to an error raised while serving a request (DESIGN.md §5)."""
    return Answer.json(*_error(err))


def tracking_error_answer(err: Exception) -> Answer:
    """:func:`error_answer` of the tracking API: a body with a ``message`` also has ``code`` (the same
    as ``error``), the two fields Segment's and RudderStack's Python SDKs read from an error; without
    ``code`` RudderStack's fails with a ``KeyError`` and retries a refused batch as a network error."""
    status, payload, headers = _error(err)
    # a 401 is the same for every key and body: nothing about which was wrong
    message = TRACKING_UNAUTHORIZED if status == 401 else payload["message"]
    return tracking_refusal(status, payload["error"], message, headers)


TRACKING_UNAUTHORIZED = "unknown or missing write key"


def tracking_refusal(status: int, error: str, message: str, headers: Headers | None = None) -> Answer:
    """A refusal of the tracking API written where it is decided, in the same form as
    :func:`tracking_error_answer`'s."""
    return Answer.json(status, {"error": error, "code": error, "message": message}, headers)


# A preflight's answer may be cached this long (Chromium keeps one at most 2 hours).
PREFLIGHT_MAX_AGE = "7200"
CORS_ANY_ORIGIN = ("Access-Control-Allow-Origin", "*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def preflight_answer(environ: dict[str, Any]) -> Answer:
    """The answer to a CORS preflight (``OPTIONS``) of a tracking call: POST, with the request
    headers the browser asks for (analytics.js sends ``Authorization`` and ``X-Retry-Count``, and a
    site may configure more), from any origin. ``Access-Control-Allow-Credentials`` is never sent,
    so a browser refuses a request that would carry cookies (``credentials: 'include'``)."""
    asked = (environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS") or "").split(",")
    names = [name.strip() for name in asked if _HEADER_NAME.fullmatch(name.strip())]
    headers = [
        ("Access-Control-Allow-Methods", "POST"),
        ("Access-Control-Max-Age", PREFLIGHT_MAX_AGE),
        ("Vary", "Access-Control-Request-Headers"),
    ]
    if names:
        headers.append(("Access-Control-Allow-Headers", ", ".join(names)))
    return Answer(204, b"", headers)


def _status_line(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase.upper()}"
    except ValueError:
        return f"{code} UNKNOWN"


_STATUS_LINES = {code: _status_line(code) for code in (200, 204, 400, 401, 404, 405, 413, 415, 500, 503)}


def _wsgi_text(value: str) -> str:
    """A WSGI environ string (latin-1 code points of the raw bytes) as the UTF-8 text it encodes."""
    return value if value.isascii() else value.encode("latin-1").decode("utf-8", "replace")


class Ingress:
    """WSGI entry point of the receiving routes; any other request goes on to ``fallback``."""

    def __init__(
        self,
        fallback: Callable[[dict[str, Any], StartResponse], Iterable[bytes]],
        accounts: Callable[[], Accounts],
        queue: EventQueue,
        *,
        max_body_bytes: int,
        public_url: str | None,
    ) -> None:
        self.fallback = fallback
        self.accounts = accounts
        self.queue = queue
        self.max_body_bytes = max_body_bytes
        self.public_url = public_url.rstrip("/") if public_url else None
        self._urls: dict[tuple[str | None, ...], str] = {}
        # The live events (connector.ops.live), told of each delivery to a known account:
        # ``delivered(account, events, result, now)`` after storing (published while the account
        # is watched, as the result says), and ``refused(account, sender, err)``. None: nobody.
        self.observer: Any = None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or ""
        parts = path.split("/")
        if len(parts) == 4 and parts[1] == "webhooks" and parts[2] and parts[3]:
            return self._serve(environ, start_response, self._webhook, parts[2], parts[3])
        if len(parts) == 3 and parts[1] == "v1" and parts[2]:
            return self._serve(environ, start_response, self._tracking, parts[2])
        return self.fallback(environ, start_response)

    def _serve(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        handler: Callable[..., Answer],
        *route: str,
    ) -> Iterable[bytes]:
        tracking_call = handler == self._tracking
        try:
            answer = handler(environ, *(_wsgi_text(part) for part in route))
        except Exception as err:  # every error becomes the contract's JSON answer, never a traceback
            answer = tracking_error_answer(err) if tracking_call else error_answer(err)
        if 400 <= answer.status < 500:
            self.count_rejection("tracking" if tracking_call else route[-1], answer.status)
        status = _STATUS_LINES.get(answer.status) or _status_line(answer.status)
        headers = answer.headers
        if answer.status != 204:  # a 204 has no body, and no Content-Length (RFC 9110, 8.6)
            headers = [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(answer.body))),
                *headers,
            ]
        if tracking_call:
            headers = [*headers, CORS_ANY_ORIGIN]
        start_response(status, headers)
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [answer.body]

    def count_rejection(self, sender: str, status: int) -> None:
        """``metrics:rejected`` counts refused requests by sender type and status, so that a wrong
        secret (every delivery a 401) shows on ``/metrics``. Sender types only, never the path's
        account: a label set an anonymous caller could grow without bound is not kept."""
        kind = sender if sender in REGISTRY or sender == "tracking" else "unknown"
        try:
            self.queue.conn.hincrby(REJECTED_KEY, f"{kind}:{status}", 1)
        except redis.RedisError:
            log.debug("rejection not counted: redis unavailable")  # the answer stands as it is

    # --- the request ----------------------------------------------------------------------

    def read_body(self, environ: dict[str, Any]) -> bytes:
        """The raw body, at most ``max_body_bytes`` (413 above it, before reading it)."""
        stream = environ.get("wsgi.input")
        length = environ.get("CONTENT_LENGTH")
        limit = self.max_body_bytes
        if stream is None:
            return b""
        if length:
            try:
                size = int(length)
            except ValueError:
                raise MalformedPayload("Content-Length is not a number") from None
            if size < 0:
                raise MalformedPayload("Content-Length is negative")
            if size > limit:
                raise PayloadTooLarge(f"body is larger than the limit of {limit} bytes")
            body = _read(stream, size) if size else b""
            if len(body) < size:
                raise MalformedPayload("body is shorter than its Content-Length")
            return body
        if environ.get("wsgi.input_terminated"):  # chunked: the server marks the end
            body = _read(stream, limit + 1)
            if len(body) > limit:
                raise PayloadTooLarge(f"body is larger than the limit of {limit} bytes")
            return body
        return b""

    def url(self, environ: dict[str, Any]) -> str:
        """The URL as the sender addressed it (HubSpot and Mandrill sign it).

        Senders post to a handful of URLs and building one is a noticeable share of a request's
        CPU, so it is computed once per distinct set of the request's URL parts.
        """
        query = environ.get("QUERY_STRING") or ""
        key = (query, *(environ.get(part) for part in _URL_PARTS))
        url = self._urls.get(key)
        if url is None:
            if self.public_url:
                path = _wsgi_text(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
                url = self.public_url + path + (f"?{query}" if query else "")
            else:
                url = get_current_url(environ)
            if len(self._urls) >= _URLS_MAX:
                self._urls.clear()
            self._urls[key] = url
        return url

    def inbound(self, environ: dict[str, Any], method: str) -> Inbound:
        query = environ.get("QUERY_STRING")
        args: MultiDict[str, str] = (
            MultiDict(parse_qsl(query, keep_blank_values=True)) if query else MultiDict()
        )
        return Inbound(
            method=method,
            url=self.url(environ),
            args=args,
            headers=EnvironHeaders(environ),
            body=self.read_body(environ),
        )

    # --- the routes -----------------------------------------------------------------------

    def _webhook(self, environ: dict[str, Any], account_id: str, sender: str) -> Answer:
        receiver = REGISTRY.get(sender)
        if receiver is None:
            return Answer.json(404, {"error": "not_found", "message": f"no sender type {sender!r}"})
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in receiver.methods:
            allowed = ", ".join(receiver.methods)
            message = f"{sender} accepts {allowed}"
            return Answer.json(405, {"error": "method_not_allowed", "message": message}, [("Allow", allowed)])
        account = self.accounts().get(account_id)
        cfg = account.senders.get(sender) if account else None
        if account is None or cfg is None:
            decoy_account, decoy_cfg = _decoy(account_id, sender)
            try:
                receiver.handle(self.inbound(environ, method), decoy_account, decoy_cfg, clock.now())
            except Unauthorized:
                pass
            else:
                # a validation probe (nothing to store): answered as accept() answers it for an
                # account with this sender, byte for byte, so it never tells whether one exists
                return accepted_answer(outcome([], 0), 0, 0)
            raise Unauthorized("unknown account or sender")
        now = clock.now()
        try:
            events = receiver.handle(self.inbound(environ, method), account, cfg, now)
        except RequestRejected as err:
            if self.observer is not None:
                self.observer.refused(account, sender, err)
            raise
        return self.accept(account, events, accepted_answer, now)

    def _tracking(self, environ: dict[str, Any], call: str) -> Answer:
        call = tracking.SHORT.get(call, call)
        if call not in tracking.ROUTES:
            return tracking_refusal(404, "not_found", f"no tracking call {call!r}")
        if environ.get("REQUEST_METHOD") == "OPTIONS":
            return preflight_answer(environ)
        if environ.get("REQUEST_METHOD") != "POST":
            message = "tracking calls accept POST"
            return tracking_refusal(405, "method_not_allowed", message, [("Allow", "POST")])
        inbound = self.inbound(environ, "POST")
        now = clock.now()
        account, events = tracking.receive(call, inbound, self.accounts(), self.max_body_bytes, now)
        return self.accept(account, events, tracking_answer, now)

    def accept(
        self,
        account: Account,
        events: list[Any],
        render: Callable[[str, int, int], Answer],
        now: datetime | None = None,
    ) -> Answer:
        """Store the request's events (received at ``now``, the one instant the request reads: the
        clock's when not given) and render the answer."""
        if now is None:
            now = clock.now()
        try:
            result = self.queue.ingest(account.id, events, account.dedupe_ttl_seconds, now)
        except ValueError as err:  # Event.to_json: NaN and infinities are not JSON, never stored
            raise MalformedPayload("an event holds a number that is not finite (NaN or Infinity)") from err
        observer = self.observer
        if observer is not None:
            observer.delivered(account, events, result, now)
        if events and log.isEnabledFor(logging.INFO):
            log.info(
                "accepted",
                extra={"account": account.id, "accepted": result.accepted, "duplicates": result.duplicates},
            )
        return render(outcome(events, result.accepted), result.accepted, result.duplicates)


def outcome(events: list[Any], accepted: int) -> str:
    """The ``status`` of a 2xx: ``duplicate`` when every event of the request was seen before, else
    ``accepted`` (a request with no events too: a validation probe, known account or not)."""
    return "duplicate" if events and accepted == 0 else "accepted"


def _read(stream: Any, size: int) -> bytes:
    """``size`` bytes of the request body, or fewer at its end.

    The server decodes the framing while the body is read (chunk sizes, terminators): a body it
    cannot decode (an invalid chunk size, a connection closed mid-body) raises whatever the server
    raises (gunicorn's ``InvalidChunkSize``, ``NoMoreData`` ...), which is the client's fault: a 400
    naming the framing problem, never a 500."""
    try:
        return bytes(stream.read(size))
    except Exception as err:  # the server's own parse errors have no common base class
        log.info("request body unreadable: %s", type(err).__name__)
        raise MalformedPayload(
            f"the request body could not be read: invalid HTTP framing ({type(err).__name__})"
        ) from err


def tracking_answer(status: str, accepted: int, duplicates: int) -> Answer:
    """Segment's API answers ``{"success": true}``; the counts are the connector's own."""
    del status
    return Answer(200, f'{{"success":true,"accepted":{accepted},"duplicates":{duplicates}}}\n'.encode())


_URL_PARTS = ("wsgi.url_scheme", "HTTP_HOST", "SERVER_NAME", "SERVER_PORT", "SCRIPT_NAME", "PATH_INFO")
_URLS_MAX = 1024


def _decoy(account_id: str, sender: str) -> tuple[Account, SenderConfig]:
    """A throwaway account so that an unknown account costs the same work as a bad signature."""
    secret = Secret("DECOY", os.urandom(24).hex())
    cfg = SenderConfig(name=sender, secrets=(secret,), options={"url": "https://decoy.invalid/"})
    account = Account(
        id=account_id,
        file="",
        senders={sender: cfg},
        dedupe_ttl_seconds=72 * 3600,
        retention_max_age_days=1,
        retention_max_events=1,
        blocked_identity_values=frozenset(),
        destinations={},
        rules={},
    )
    return account, cfg


def install(app: Flask, accounts: Callable[[], Accounts], queue: EventQueue) -> None:
    """Put :class:`Ingress` in front of the app's own WSGI callable; ``accounts`` gives the accounts
    now (the runtime reloads changed files, so a rotated secret needs no restart)."""
    settings = app.config["CONNECTOR_SETTINGS"]
    app.wsgi_app = Ingress(  # type: ignore[method-assign]
        app.wsgi_app,
        accounts,
        queue,
        max_body_bytes=settings.max_body_bytes,
        public_url=settings.public_url,
    )
