"""HTTP receiver blueprint: ``/webhooks/<account>/<sender>`` and health endpoints."""

from __future__ import annotations

import logging
import os
from typing import Any

import redis
from flask import Blueprint, Request, Response, current_app, jsonify, request

from . import clock
from .config import Account, Accounts, Secret, SenderConfig
from .errors import StoreUnavailable, Unauthorized
from .queue import EventQueue
from .receivers import REGISTRY, Inbound

log = logging.getLogger(__name__)

bp = Blueprint("receiver", __name__)


def accounts() -> Accounts:
    return current_app.extensions["connector.accounts"]


def event_queue() -> EventQueue:
    return current_app.extensions["connector.queue"]


_URL_PARTS = ("wsgi.url_scheme", "HTTP_HOST", "SERVER_NAME", "SERVER_PORT", "SCRIPT_NAME", "PATH_INFO")
_URLS: dict[tuple[str | None, ...], str] = {}
_URLS_MAX = 1024


def request_url() -> str:
    """The URL as the sender addressed it (HubSpot and Mandrill sign it).

    Building it is a noticeable share of a request's CPU and senders post to a handful of URLs,
    so it is computed once per distinct set of the request's URL parts.
    """
    req = _request()
    public = current_app.config.get("CONNECTOR_PUBLIC_URL")
    env = req.environ
    key = (public, env.get("QUERY_STRING"), *(env.get(part) for part in _URL_PARTS))
    url = _URLS.get(key)
    if url is None:
        if public:
            query = req.query_string.decode("latin-1")
            url = public.rstrip("/") + req.path + (f"?{query}" if query else "")
        else:
            url = req.url
        if len(_URLS) >= _URLS_MAX:
            _URLS.clear()
        _URLS[key] = url
    return url


def _request() -> Request:
    """The request object itself (each attribute read through the ``request`` proxy has a cost)."""
    return request._get_current_object()  # type: ignore[attr-defined]


def inbound_request() -> Inbound:
    url = request_url()
    req = _request()
    return Inbound(
        method=req.method,
        url=url,
        args=req.args,
        headers=req.headers,
        body=req.get_data(cache=True),
    )


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


def accept(account: Account, events: list[Any]) -> Response:
    result = event_queue().ingest(account.id, events, account.dedupe_ttl_seconds)
    if events and log.isEnabledFor(logging.INFO):
        log.info(
            "accepted",
            extra={"account": account.id, "accepted": result.accepted, "duplicates": result.duplicates},
        )
    status = "duplicate" if events and result.accepted == 0 else "accepted"
    return answer(status, result.accepted, result.duplicates)


def answer(status: str, accepted: int, duplicates: int) -> Response:
    """The small JSON body of a 2xx, written directly (the generic JSON provider costs more)."""
    body = f'{{"status":"{status}","accepted":{accepted},"duplicates":{duplicates}}}\n'
    return Response(body, mimetype="application/json")


@bp.route("/webhooks/<account_id>/<sender>", methods=["GET", "HEAD", "POST", "PUT", "PATCH"])
def receive(account_id: str, sender: str) -> Response | tuple[Response, int]:
    receiver = REGISTRY.get(sender)
    if receiver is None:
        return jsonify(error="not_found", message=f"no sender type {sender!r}"), 404
    if request.method not in receiver.methods:
        return jsonify(
            error="method_not_allowed", message=f"{sender} accepts {', '.join(receiver.methods)}"
        ), 405
    account = accounts().get(account_id)
    cfg = account.senders.get(sender) if account else None
    if account is None or cfg is None:
        decoy_account, decoy_cfg = _decoy(account_id, sender)
        try:
            receiver.handle(inbound_request(), decoy_account, decoy_cfg, clock.now())
        except Unauthorized:
            pass
        else:
            # e.g. a validation probe, answered the same whether or not the account exists
            return jsonify(status="ok", accepted=0, duplicates=0)
        raise Unauthorized("unknown account or sender")
    events = receiver.handle(inbound_request(), account, cfg, clock.now())
    return accept(account, events)


health = Blueprint("health", __name__)


@health.route("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@health.route("/readyz")
def readyz() -> Response | tuple[Response, int]:
    try:
        event_queue().conn.ping()
        current_app.extensions["connector.profile_redis"].ping()
    except redis.RedisError as err:
        raise StoreUnavailable("redis unreachable") from err
    return jsonify(status="ready")
