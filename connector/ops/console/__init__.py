"""The web console, ``/console``: server-rendered pages over the admin API (docs/console.md).

Log in with an API token; the console keeps the session in the queue Redis (the HttpOnly cookie
holds only a random session id, never the token) and makes every read and every change as an
in-process call to ``/api/v1`` acting for that token, so roles, account scope and the audit log are
the API's own. Every form carries a CSRF token.
"""

from __future__ import annotations

from flask import Flask

from connector.ops.console.views import bp


def install(app: Flask) -> None:
    app.register_blueprint(bp)
