"""The console's calls to the admin API: in-process WSGI requests acting for the session's token.

The console never reads Redis for what the API serves: each page asks ``/api/v1`` as any client
would, so role checks, account scope and the audit log are the API's. The session keeps no token,
so a call carries the token's id and digest in its WSGI environ (:class:`auth.ActingFor`), which
the API checks as it checks a bearer token (revoked or expired: 401).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Response, current_app, g
from werkzeug.test import EnvironBuilder

from connector.ops.api.auth import ACTING_FOR, ActingFor


class ApiError(Exception):
    """A non-2xx answer of the API: its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def call(method: str, path: str, query: dict[str, Any] | None = None, body: Any = None) -> Any:
    """The JSON answer of ``method path`` (``path`` under /api/v1); :class:`ApiError` otherwise."""
    params = {k: v for k, v in (query or {}).items() if v is not None and v != ""}
    builder = EnvironBuilder(
        path=f"/api/v1{path}",
        method=method,
        query_string=params,
        json=body,
    )
    try:
        environ = builder.get_environ()
    finally:
        builder.close()
    environ[ACTING_FOR] = ActingFor(g.console.token_id, g.console.token_sha256)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    response = Response.from_app(app.wsgi_app, environ)
    data = json.loads(response.get_data() or b"null")
    if response.status_code >= 300:
        message = data.get("message") if isinstance(data, dict) else None
        raise ApiError(response.status_code, message or response.status)
    return data


def get(path: str, **query: Any) -> Any:
    return call("GET", path, query)


def post(path: str, body: Any) -> Any:
    return call("POST", path, body=body)
