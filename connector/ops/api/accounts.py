"""``/api/v1/accounts``: configuration without secrets, and the health of senders and destinations."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from connector import sync
from connector.config import Account, SenderConfig
from connector.destinations import Destination, destinations
from connector.errors import file_name_shown
from connector.ingest.web import REJECTED_KEY
from connector.ops.api import auth, errors
from connector.ops.api.schemas import AccountPageSchema, AccountSchema, PageQuery
from connector.sync.deadletters import account_index
from connector.sync.keys import key as sync_key

blp = Blueprint("api_accounts", __name__, url_prefix="/api/v1/accounts", description="Accounts and health")
errors.install(blp)

COUNTERS = {"ingest": "metrics:ingest", "worker": "metrics:worker", "sync": "metrics:sync"}
# Sender options that name or hold a credential; never shown.
SECRET_OPTIONS = ("secret_env", "header")


def offset(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not cursor.isdigit() or len(cursor) > 9:
        errors.fail(422, f"invalid cursor {cursor!r}: pass the next_cursor of the previous page")
    return int(cursor)


def page(items: list[Any], cursor: str | None, limit: int) -> dict[str, Any]:
    start = offset(cursor)
    end = start + limit
    return {"items": items[start:end], "next_cursor": str(end) if end < len(items) else None}


def visible_accounts() -> list[Account]:
    token = auth.token()
    return sorted((a for a in auth.runtime().accounts if token.covers(a.id)), key=lambda a: a.id)


def summary(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "senders": sorted(account.senders),
        "destinations": sorted(destinations(account)),
        "segments": list(account.ruleset.segment_names),
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _secret_values(account: Account) -> set[str]:
    return {s.value for sender in account.senders.values() for s in sender.secrets if s.value}


def _clean(value: Any, secret_values: set[str]) -> Any:
    if isinstance(value, str):
        return "[redacted]" if any(s in value for s in secret_values) else value
    if isinstance(value, list | tuple):
        return [_clean(v, secret_values) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v, secret_values) for k, v in value.items()}
    return value


def _sender(
    sender: SenderConfig, refusals: dict[str, dict[str, int]] | None, secret_values: set[str]
) -> dict[str, Any]:
    options = {k: v for k, v in sender.options.items() if k not in SECRET_OPTIONS and not k.endswith("_env")}
    return {
        "name": sender.name,
        "type": sender.name,
        "options": _clean(options, secret_values),
        "refusals": None if refusals is None else refusals.get(sender.name, {}),
    }


def _refusals() -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for field, value in auth.runtime().queue_redis.hgetall(REJECTED_KEY).items():
        sender, _, status = _text(field).partition(":")
        out.setdefault(sender, {})[status] = int(value)
    return out


def _counters(account_id: str) -> dict[str, dict[str, int]]:
    conn = auth.runtime().queue_redis
    out: dict[str, dict[str, int]] = {}
    for name, key in COUNTERS.items():
        counts: dict[str, int] = {}
        for field, value in conn.hgetall(key).items():
            outcome, _, account = _text(field).partition(":")
            if account == account_id:
                counts[outcome] = int(value)
        out[name] = counts
    return out


def destination_health(
    account_id: str, dest: Destination, pauses: dict[tuple[str, str], Any]
) -> dict[str, Any]:
    conn = auth.runtime().queue_redis
    pause = pauses.get((account_id, dest.name))
    kinds = (f"sync:{dest.name}",)
    return {
        "paused": pause is not None,
        "pause": (
            {"reason": pause.get("reason"), "status": pause.get("status"), "at": pause.get("at")}
            if pause
            else None
        ),
        "pending": int(conn.hlen(sync_key(account_id, dest.name, "pending"))),
        "dead_letters": sum(int(conn.zcard(account_index(account_id, k))) for k in kinds),
    }


def _destination(account_id: str, dest: Destination, pauses: dict[tuple[str, str], Any]) -> dict[str, Any]:
    return {
        "name": dest.name,
        "type": dest.type,
        "enabled": dest.enabled,
        "segments": {
            seg: {"tags": sorted(m.tags), "lists": sorted(m.lists)}
            for seg, m in sorted(dest.segments.items())
        },
        "fields_": dict(dest.fields),
        "health": destination_health(account_id, dest, pauses),
    }


def detail(account: Account) -> dict[str, Any]:
    secret_values = _secret_values(account)
    refusals = _refusals() if auth.token().all_accounts else None
    pauses = sync.paused(auth.runtime().queue_redis)
    return {
        "id": account.id,
        "senders": [_sender(account.senders[n], refusals, secret_values) for n in sorted(account.senders)],
        "destinations": [
            _destination(account.id, d, pauses) for _, d in sorted(destinations(account).items())
        ],
        "segments": list(account.ruleset.segment_names),
        "traits": list(account.ruleset.trait_names),
        "counters": _counters(account.id),
        "file_error": file_error(account),
    }


def file_error(account: Account) -> dict[str, Any] | None:
    """Why the account's file, as it is now on disk, is refused (its last valid version serves
    meanwhile): the file's name, the path inside it and the reason; None when it loads."""
    for error in auth.runtime().provider.errors:
        if error.file == account.file:
            return {"file": file_name_shown(error.file), "path": error.path, "reason": error.reason}
    return None


@blp.route("")
class Accounts(MethodView):
    @auth.access(blp, "viewer")
    @blp.arguments(PageQuery, location="query")
    @blp.response(200, AccountPageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """The accounts of the token."""
        items = [summary(a) for a in visible_accounts()]
        return page(items, query.get("cursor"), query["limit"])


@blp.route("/<string:account_id>")
class AccountOne(MethodView):
    @auth.access(blp, "viewer")
    @blp.response(200, AccountSchema)
    def get(self, account_id: str) -> dict[str, Any]:
        """Configuration (no secret, no variable name) and health of senders and destinations."""
        return detail(auth.account(account_id))
