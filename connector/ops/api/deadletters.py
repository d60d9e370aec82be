"""``/api/v1/accounts/{id}/deadletters``: list, show, replay and discard (the CLI's filters)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from connector import clock, sync
from connector.destinations import TYPES
from connector.ops import audit
from connector.ops.api import auth, errors
from connector.ops.api.schemas import (
    DeadLetterDetailSchema,
    DeadLetterOutcomeSchema,
    DeadLetterPageSchema,
    DeadLetterQuery,
    DeadLetterSelectSchema,
)
from connector.suggest import unknown
from connector.sync.deadletters import DeadLetter, DeadLetters, account_index

blp = Blueprint(
    "api_deadletters",
    __name__,
    url_prefix="/api/v1/accounts/<string:account_id>/deadletters",
    description="Dead letters",
)
errors.install(blp)
SCAN_LIMIT = 5000  # items looked at per list request when a text filter is given
MAX_SELECTED = 10_000  # items one replay or discard handles


def _kinds(dead: DeadLetters, kind: str | None) -> list[str]:
    """The stored kinds ``kind`` selects; a kind no one could mean (a typo) is a 422, as in the CLI."""
    if kind is not None and kind not in (known := dead.known_kinds(TYPES)):
        errors.fail(422, unknown("kind", kind, known))
    return [k for k in dead.kinds() if kind is None or k == kind or k.startswith(f"{kind}:")]


def _parse_cursor(cursor: str | None) -> tuple[int, int]:
    if cursor is None:
        return 0, 0
    head, _, tail = cursor.partition(".")
    if not (head.isdigit() and tail.isdigit() and len(cursor) < 20):
        errors.fail(422, f"invalid cursor {cursor!r}: pass the next_cursor of the previous page")
    return int(head), int(tail)


def _items(
    dead: DeadLetters, account_id: str, kinds: list[str], start: tuple[int, int]
) -> Iterator[tuple[str, DeadLetter]]:
    """The account's items of ``kinds`` in order from ``start``, each with the cursor after it."""
    for k_index in range(start[0], len(kinds)):
        offset = start[1] if k_index == start[0] else 0
        ids = dead.conn.zrange(account_index(account_id, kinds[k_index]), offset, -1)
        for n, raw_id in enumerate(ids, start=offset + 1):
            item = dead.get(raw_id.decode())
            if item is not None:
                yield f"{k_index}.{n}", item


def _matches(item: DeadLetter, text: str | None) -> bool:
    return item.matches(text)


def summary(item: DeadLetter) -> dict[str, Any]:
    return {"id": item.id, "kind": item.kind, "reason": item.reason, "at": item.at, "account": item.account}


@blp.route("")
class DeadLetterList(MethodView):
    @auth.access(blp, "viewer")
    @blp.arguments(DeadLetterQuery, location="query")
    @blp.response(200, DeadLetterPageSchema)
    def get(self, query: dict[str, Any], account_id: str) -> dict[str, Any]:
        """The account's dead letters, oldest first per kind; ``kind`` and ``filter`` as in the CLI."""
        dead = DeadLetters(auth.runtime().queue_redis)
        kinds = _kinds(dead, query.get("kind"))
        out: list[dict[str, Any]] = []
        start = _parse_cursor(query.get("cursor"))
        for looked, (cursor, item) in enumerate(_items(dead, account_id, kinds, start), start=1):
            if _matches(item, query.get("filter")):
                out.append(summary(item))
            if len(out) >= query["limit"] or looked >= SCAN_LIMIT:
                return {"items": out, "next_cursor": cursor}
        return {"items": out, "next_cursor": None}


def _selected(dead: DeadLetters, account_id: str, body: dict[str, Any]) -> list[DeadLetter]:
    if not any(body.get(k) for k in ("kind", "filter", "ids")):
        errors.fail(422, "select what to act on: kind, filter or ids (an empty selection is refused)")
    ids = set(body.get("ids") or ())
    found = []
    for _, item in _items(dead, account_id, _kinds(dead, body.get("kind")), (0, 0)):
        if (not ids or item.id in ids) and _matches(item, body.get("filter")):
            found.append(item)
            if len(found) >= MAX_SELECTED:
                break
    return found


def selection_recorded(body: dict[str, Any]) -> dict[str, Any]:
    """The selection as the audit log keeps it: ``kind`` and ``ids`` as given, the text ``filter``
    (often an email) as :func:`connector.ops.audit.filter_digest` only."""
    out: dict[str, Any] = {k: body[k] for k in ("kind", "ids") if k in body}
    if body.get("filter"):
        out.update(audit.filter_digest(body["filter"]))
    return out


def _record(action: str, account_id: str, body: dict[str, Any], outcomes: dict[str, int]) -> None:
    audit.record(
        auth.runtime().queue_redis,
        auth.token().id,
        action,
        f"deadletters:{account_id}",
        [account_id],
        {"selection": selection_recorded(body)},
        {"outcomes": outcomes},
        clock.now(),
    )


@blp.route("/replay")
class Replay(MethodView):
    @auth.access(blp, "editor")
    @blp.arguments(DeadLetterSelectSchema)
    @blp.response(200, DeadLetterOutcomeSchema)
    def post(self, body: dict[str, Any], account_id: str) -> dict[str, Any]:
        """Put the selected sync dead letters back in the sync queue and events on their stream
        (others are not replayable)."""
        conn = auth.runtime().queue_redis
        dead = DeadLetters(conn)
        items = _selected(dead, account_id, body)
        outcomes: dict[str, int] = {}
        now = clock.now()
        for item in items:
            outcome = sync.replay_dead_letter(conn, dead, item, now)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        _record("deadletters.replay", account_id, body, outcomes)
        return {"matched": len(items), "outcomes": outcomes}


@blp.route("/discard")
class Discard(MethodView):
    @auth.access(blp, "editor")
    @blp.arguments(DeadLetterSelectSchema)
    @blp.response(200, DeadLetterOutcomeSchema)
    def post(self, body: dict[str, Any], account_id: str) -> dict[str, Any]:
        """Delete the selected dead letters."""
        dead = DeadLetters(auth.runtime().queue_redis)
        items = _selected(dead, account_id, body)
        for item in items:
            dead.remove(item)
        outcomes = {"discarded": len(items)} if items else {}
        _record("deadletters.discard", account_id, body, outcomes)
        return {"matched": len(items), "outcomes": outcomes}


@blp.route("/<string:kind>/<string:item_id>")
class DeadLetterOne(MethodView):
    @auth.access(blp, "viewer")
    @blp.response(200, DeadLetterDetailSchema)
    def get(self, account_id: str, kind: str, item_id: str) -> dict[str, Any]:
        """One dead letter with its error and payload."""
        item = DeadLetters(auth.runtime().queue_redis).get(item_id)
        if item is None or item.account != account_id or item.kind != kind:
            errors.fail(404, f"no dead letter {item_id!r} of kind {kind!r} in account {account_id!r}")
        return {**summary(item), "payload": item.payload}
