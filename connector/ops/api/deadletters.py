"""``/api/v1/accounts/{id}/deadletters``: list, show, replay and discard (the CLI's filters)."""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from connector import clock
from connector.destinations import TYPES
from connector.ops import deadletter_actions as actions
from connector.ops.api import auth, errors
from connector.ops.api.schemas import (
    DeadLetterCountQuery,
    DeadLetterCountSchema,
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
ALL_SECONDS = 10.0  # and, with all, about how long one answer of it acts before giving a next_cursor
COUNT_LIMIT = 100_000  # items a count with a text filter reads
READ_CHUNK = 500  # items read at once
_ID = re.compile(r"[0-9a-f]{1,64}")


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
        errors.fail(422, "select what to act on: kind, filter, ids, or all (an empty selection is refused)")
    ids = set(body.get("ids") or ())
    found = []
    for _, item in _items(dead, account_id, _kinds(dead, body.get("kind")), (0, 0)):
        if (not ids or item.id in ids) and _matches(item, body.get("filter")):
            found.append(item)
            if len(found) >= MAX_SELECTED:
                break
    return found


# --- every matching dead letter ("all"), in batches ----------------------------------------


@dataclass(frozen=True)
class Position:
    """Where an ``all`` run is: after the item ``id`` stored at ``score`` of ``kind``, acting on
    none stored after ``until``."""

    kind: str
    score: float
    id: str
    until: float

    def cursor(self) -> str:
        raw = json.dumps([self.kind, self.score, self.id, self.until]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def parse(cls, cursor: str) -> Position:
        found: Position | None
        try:
            padded = cursor + "=" * (-len(cursor) % 4)
            kind, score, item_id, until = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
            found = cls(kind, float(score), item_id, float(until))
        except (ValueError, TypeError, UnicodeError):
            found = None
        if not (
            found is not None
            and isinstance(found.kind, str)
            and isinstance(found.id, str)
            and _ID.fullmatch(found.id)
            and math.isfinite(found.score)
            and math.isfinite(found.until)
        ):
            errors.fail(422, f"invalid cursor {cursor[:80]!r}: pass the next_cursor of the previous answer")
        return found


class Matching:
    """The account's dead letters of ``kinds`` matching ``text``, stored up to ``until``, in order
    (kinds by name, then by when stored, then by id) after ``after``. ``position`` is where the
    last item taken is, ``read`` how many items were read (matching or not)."""

    def __init__(
        self,
        dead: DeadLetters,
        account_id: str,
        kinds: list[str],
        text: str | None,
        until: float,
        after: Position | None = None,
        most: int | None = None,
    ) -> None:
        self.dead, self.account_id, self.kinds, self.text = dead, account_id, sorted(kinds), text
        self.until, self.after = until, after
        self.position = after
        self.read = 0
        self.most = most  # items read at most; ``cut`` tells whether some were left unread
        self.cut = False

    def _stored(self, kind: str) -> list[tuple[float, str]]:
        """(score, id) of the kind's items after ``after``, up to ``until``, read at once: items
        removed while the run goes do not move it."""
        after = self.after if self.after is not None and self.after.kind == kind else None
        rows = self.dead.conn.zrangebyscore(
            account_index(self.account_id, kind),
            repr(after.score) if after else "-inf",
            repr(self.until),
            withscores=True,
        )
        found = [(float(score), raw.decode()) for raw, score in rows]
        return [row for row in found if after is None or row > (after.score, after.id)]

    def __iter__(self) -> Iterator[DeadLetter]:
        for kind in self.kinds:
            if self.after is not None and kind < self.after.kind:
                continue
            stored = self._stored(kind)
            for start in range(0, len(stored), READ_CHUNK):
                part = stored[start : start + READ_CHUNK]
                if self.most is not None and len(part) > self.most - self.read:
                    part, self.cut = part[: self.most - self.read], True  # the rest is left unread
                if not part:
                    return
                raws = self.dead.conn.mget([f"dlq:item:{item_id}" for _, item_id in part])
                for (score, item_id), raw in zip(part, raws, strict=True):
                    self.read += 1
                    self.position = Position(kind, score, item_id, self.until)
                    item = DeadLetter(**json.loads(raw)) if raw is not None else None
                    if item is not None and item.matches(self.text):
                        yield item


def _newest(dead: DeadLetters, account_id: str, kinds: list[str]) -> float | None:
    """When the newest of the account's dead letters of ``kinds`` was stored; None without any."""
    scores = [
        float(rows[0][1])
        for kind in kinds
        if (rows := dead.conn.zrevrange(account_index(account_id, kind), 0, 0, withscores=True))
    ]
    return max(scores) if scores else None


def _count(
    dead: DeadLetters, account_id: str, kinds: list[str], text: str | None, until: float
) -> tuple[int, bool]:
    """How many match, and whether all were looked at (a text filter reads at most COUNT_LIMIT)."""
    if not text:
        keys = [account_index(account_id, k) for k in kinds]
        return sum(int(dead.conn.zcount(key, "-inf", repr(until))) for key in keys), True
    matching = Matching(dead, account_id, kinds, text, until, most=COUNT_LIMIT)
    total = sum(1 for _ in matching)
    return total, not matching.cut


@blp.route("/count")
class DeadLetterCount(MethodView):
    @auth.access(blp, "viewer")
    @blp.arguments(DeadLetterCountQuery, location="query")
    @blp.response(200, DeadLetterCountSchema)
    def get(self, query: dict[str, Any], account_id: str) -> dict[str, Any]:
        """How many of the account's dead letters match ``kind`` and ``filter``, all of them, not a
        page: what a replay or discard with ``all`` (and ``until``) acts on. A text filter reads the
        items, at most 100,000 (``complete`` is false past that)."""
        dead = DeadLetters(auth.runtime().queue_redis)
        kinds = _kinds(dead, query.get("kind"))
        until = _newest(dead, account_id, kinds)
        if until is None:
            return {"matching": 0, "complete": True, "until": None}
        matching, complete = _count(dead, account_id, kinds, query.get("filter"), until)
        return {"matching": matching, "complete": complete, "until": until}


def _check_all(body: dict[str, Any]) -> None:
    if body.get("all"):
        if body.get("ids"):
            errors.fail(422, "all acts on every dead letter matching kind and filter: send ids without it")
    elif "cursor" in body or "until" in body:
        errors.fail(422, "cursor and until go with all: true (every matching dead letter)")


def _act_on_all(action: str, account_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """One batch of an ``all`` run: matching items in order from the cursor, until they run out,
    MAX_SELECTED were handled or ALL_SECONDS passed; one audit entry for the batch."""
    conn = auth.runtime().queue_redis
    dead = DeadLetters(conn)
    kinds = _kinds(dead, body.get("kind"))
    after = Position.parse(body["cursor"]) if body.get("cursor") else None
    until = after.until if after else body.get("until", _newest(dead, account_id, kinds))
    now = clock.now()
    done = actions.Run()
    nxt = None
    if until is not None:
        matching = Matching(dead, account_id, kinds, body.get("filter"), until, after)
        stop = actions.budget(MAX_SELECTED, ALL_SECONDS)
        actions.run(conn, dead, action, matching, now, stop=stop, into=done)
        if done.stopped and matching.position is not None:
            nxt = matching.position.cursor()
    selection = {"all": True, "kind": body.get("kind"), "filter": body.get("filter"), "until": until}
    actions.record(
        conn,
        auth.token().id,
        action,
        account_id,
        selection,
        done.outcomes,
        now,
        matched=len(done.done),
        continued=after is not None,
        finished=nxt is None,
    )
    return {"matched": len(done.done), "outcomes": done.outcomes, "next_cursor": nxt}


def _act(action: str, account_id: str, body: dict[str, Any]) -> dict[str, Any]:
    _check_all(body)
    if body.get("all"):
        return _act_on_all(action, account_id, body)
    conn = auth.runtime().queue_redis
    dead = DeadLetters(conn)
    items = _selected(dead, account_id, body)
    done = actions.run(conn, dead, action, items, clock.now())
    actions.record(conn, auth.token().id, action, account_id, body, done.outcomes, clock.now())
    return {"matched": len(items), "outcomes": done.outcomes}


@blp.route("/replay")
class Replay(MethodView):
    @auth.access(blp, "editor")
    @blp.arguments(DeadLetterSelectSchema)
    @blp.response(200, DeadLetterOutcomeSchema)
    def post(self, body: dict[str, Any], account_id: str) -> dict[str, Any]:
        """Put the selected sync dead letters back in the sync queue and events on their stream
        (others are not replayable). With ``all``: every one matching ``kind`` and ``filter``, a
        batch an answer (``next_cursor`` goes on)."""
        return _act(actions.REPLAY, account_id, body)


@blp.route("/discard")
class Discard(MethodView):
    @auth.access(blp, "editor")
    @blp.arguments(DeadLetterSelectSchema)
    @blp.response(200, DeadLetterOutcomeSchema)
    def post(self, body: dict[str, Any], account_id: str) -> dict[str, Any]:
        """Delete the selected dead letters. With ``all``: every one matching ``kind`` and
        ``filter``, a batch an answer (``next_cursor`` goes on)."""
        return _act(actions.DISCARD, account_id, body)


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
