"""Bearer authentication, roles and account scope of the admin API.

Every operation goes through :func:`access`: the token (``Authorization: Bearer <token>``) must be
live (401 otherwise); an account in the path must be one the token covers and one that exists
(404 otherwise, the same answer either way: another account's data is not confirmed to exist);
the token's role must allow the operation (403).

The console's in-process calls (``connector/ops/console/client.py``) send no token: its session
keeps none. They carry :class:`ActingFor` in the WSGI environ (``ACTING_FOR``), the id and stored
digest of the token the session logged in with, and are answered as that token's own requests
would be (401 once it is revoked or expired). The environ of a request from the network holds
only what the server puts there and ``HTTP_*`` headers, and this value is an object, never text:
no client can send it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import current_app, g, request
from flask_smorest import Blueprint

from connector import clock
from connector.config import Account
from connector.ops import tokens
from connector.ops.api import errors
from connector.ops.api.schemas import ErrorSchema
from connector.runtime import Runtime

SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}]
DESCRIPTIONS = {
    401: "No live token: missing, malformed, unknown, revoked or expired.",
    403: "The token's role does not allow this operation.",
    404: "Not found, or not in the token's accounts.",
    503: "The state store (Redis) is out of reach.",
}
ACTING_FOR = "connector.api.acting_for"


@dataclass(frozen=True)
class ActingFor:
    """The token an in-process call acts for: its id and :func:`tokens.sha256`, never the token."""

    token_id: str
    token_sha256: str


def runtime() -> Runtime:
    found: Runtime = current_app.extensions["connector.runtime"]
    return found


def token() -> tokens.Token:
    found: tokens.Token = g.api_token
    return found


def _authenticate() -> tokens.Token:
    acting = request.environ.get(ACTING_FOR)
    if isinstance(acting, ActingFor):
        found = tokens.by_id(runtime().queue_redis, acting.token_id, acting.token_sha256, clock.now())
    else:
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            errors.fail(401, "send 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})
        found = tokens.authenticate(runtime().queue_redis, presented.strip(), clock.now())
    if found is None:
        errors.fail(
            401,
            "the token is not valid (unknown, revoked or expired)",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return found


def account(account_id: str) -> Account:
    """The account, when the request's token covers it; 404 otherwise."""
    found = runtime().account(account_id) if token().covers(account_id) else None
    if found is None:
        errors.fail(404, f"no account {account_id!r}")
    return found


def access(blp: Blueprint, role: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Authenticate, scope to the path's account (``account_id``), check the role; documents the
    security requirement and the 401/403/404/503 answers."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            g.api_token = _authenticate()
            if "account_id" in kwargs:
                account(kwargs["account_id"])
            if not g.api_token.allows(role):
                errors.fail(403, f"this operation needs the {role} role (the token is {g.api_token.role})")
            return view(*args, **kwargs)

        documented = blp.doc(security=SECURITY)(guarded)
        for code, text in DESCRIPTIONS.items():
            documented = blp.alt_response(code, schema=ErrorSchema, description=text)(documented)
        return documented

    return decorate
