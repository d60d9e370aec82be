"""``/api/v1/tokens`` (admin) and ``/api/v1/audit``: token management and the audit log."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from connector import clock
from connector.ops import audit, tokens
from connector.ops.api import auth, errors
from connector.ops.api.accounts import page
from connector.ops.api.schemas import (
    AuditPageSchema,
    AuditQuery,
    PageQuery,
    TokenCreatedSchema,
    TokenCreateSchema,
    TokenPageSchema,
    TokenSchema,
)

blp = Blueprint("api_admin", __name__, url_prefix="/api/v1", description="Tokens and audit log")
errors.install(blp)
_STREAM_ID = re.compile(r"^\d{1,15}-\d{1,10}$")


def _within(token: tokens.Token, accounts: tuple[str, ...]) -> bool:
    """The caller may see or manage a token only inside its own accounts."""
    caller = auth.token()
    return caller.all_accounts or (
        tokens.ALL_ACCOUNTS not in accounts and set(accounts) <= set(caller.accounts)
    )


def _within_creator(expires: str | None, now: datetime) -> timedelta:
    """How long the new token lives: a token made through the API expires no later than the token
    making it, so a leaked short-lived admin token cannot mint lasting access. Not given: the
    default, shortened to the creator's remaining life."""
    creator = auth.token()
    left = max(creator.expires() - now, timedelta(0))
    if expires is None:
        return min(tokens.parse_expiry(tokens.DEFAULT_EXPIRY), left)
    span = tokens.parse_expiry(expires)
    if span > left:
        if left >= timedelta(days=1):
            advice = f"ask for {left // timedelta(days=1)}d or less"
        elif left >= timedelta(hours=1):
            advice = f"ask for {left // timedelta(hours=1)}h or less"
        else:  # no duration of whole hours fits: leave it out, the token gets what is left
            advice = "leave `expires` out (the new token then lives as long as this one)"
        raise tokens.TokenError(
            "expires: a token cannot outlive the token creating it, which expires at "
            f"{creator.expires_at}: {advice}, or create it with `connector tokens create`"
        )
    return span


@blp.route("/tokens")
class Tokens(MethodView):
    @auth.access(blp, "admin")
    @blp.arguments(PageQuery, location="query")
    @blp.response(200, TokenPageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """Tokens within the caller's accounts (never their secrets)."""
        found = [t.public() for t in tokens.tokens(auth.runtime().queue_redis) if _within(t, t.accounts)]
        return page(found, query.get("cursor"), query["limit"])

    @auth.access(blp, "admin")
    @blp.arguments(TokenCreateSchema)
    @blp.response(201, TokenCreatedSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a token for accounts the caller covers. Its secret is in this answer only."""
        rt, now = auth.runtime(), clock.now()
        wanted = tuple(body["accounts"])
        if not _within(auth.token(), wanted):
            errors.fail(404, "an account of the new token is not one of this token's accounts")
        unknown = [a for a in wanted if a != tokens.ALL_ACCOUNTS and rt.account(a) is None]
        if unknown:
            errors.fail(404, f"no account {unknown[0]!r}")
        try:
            span = _within_creator(body["expires"], now)
            token, secret = tokens.create(rt.queue_redis, wanted, body["role"], span, now, body["note"])
        except tokens.TokenError as err:
            errors.fail(422, str(err))
        audit.record(
            rt.queue_redis,
            auth.token().id,
            "token.create",
            token.id,
            token.accounts,
            None,
            token.public(),
            now,
        )
        return {"token": token.public(), "secret": secret}


@blp.route("/tokens/<string:token_id>")
class TokenOne(MethodView):
    @auth.access(blp, "admin")
    @blp.response(200, TokenSchema)
    def delete(self, token_id: str) -> dict[str, Any]:
        """Revoke a token: it stops working at once. Answers the token as it was."""
        rt = auth.runtime()
        found = tokens.get(rt.queue_redis, token_id)
        if found is None or not _within(found, found.accounts):
            errors.fail(404, f"no token {token_id!r}")
        gone = tokens.revoke(rt.queue_redis, token_id)
        if gone is None:
            errors.fail(404, f"no token {token_id!r}")
        audit.record(
            rt.queue_redis,
            auth.token().id,
            "token.revoke",
            gone.id,
            gone.accounts,
            gone.public(),
            None,
            clock.now(),
        )
        return gone.public()


@blp.route("/audit")
class Audit(MethodView):
    @auth.access(blp, "viewer")
    @blp.arguments(AuditQuery, location="query")
    @blp.response(200, AuditPageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """Changes made through the API and ``connector tokens``, newest first, of the token's accounts."""
        cursor = query.get("cursor")
        if cursor is not None and not _STREAM_ID.match(cursor):
            errors.fail(422, f"invalid cursor {cursor!r}: pass the next_cursor of the previous page")
        entries, nxt = audit.read(auth.runtime().queue_redis, auth.token().accounts, cursor, query["limit"])
        return {"items": [e.as_dict() for e in entries], "next_cursor": nxt}
