"""The Flask app factory.

The receiving routes (``/webhooks/...`` and ``/v1/...``) are served by :class:`connector.ingest.web.Ingress`,
which the factory installs in front of Flask; Flask serves health, metrics and everything else.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from flask import Flask, Response, redirect, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter

from connector import runtime as process_runtime
from connector.ingest import web
from connector.ingest.queue import EventQueue
from connector.ops import api, console, health, live, metrics
from connector.ops.logs import configure_logging
from connector.runtime import Runtime
from connector.settings import Settings


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> Flask:
    """The web process's entry point: builds its runtime (unless given one) and the app on it."""
    configure_logging()
    if runtime is None:
        settings = settings or Settings.from_env()
        print(f"connector web (pid {os.getpid()}): {settings.describe()}", file=sys.stderr, flush=True)
        runtime = process_runtime.install(Runtime.from_settings(settings))
    settings = runtime.settings
    app = Flask(__name__)
    app.url_map.converters["int"] = AsciiInteger
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["CONNECTOR_SETTINGS"] = settings
    app.extensions["connector.runtime"] = runtime
    queue = EventQueue(runtime.queue_redis, settings.event_shards)
    app.extensions["connector.ingest.queue"] = queue
    app.register_blueprint(health.health)
    metrics.install(app, queue, runtime.profile_redis)
    _error_handlers(app)
    api.install(app)
    app.register_blueprint(live.blp)
    console.install(app)
    web.install(app, lambda: runtime.accounts, queue)
    shown = settings.live_shown_per_second or live.EVERY_DELIVERY
    app.wsgi_app.observer = live.Publisher(runtime.queue_redis, shown_per_second=shown)  # type: ignore[attr-defined]

    @app.get("/")
    def _root() -> Any:
        """A person who opens the server's address lands on the console (its login)."""
        return redirect(url_for("console.home"))

    return app


class AsciiInteger(IntegerConverter):
    """``<int:...>`` of ASCII digits only (Werkzeug's takes any script's digits: an Arabic-Indic one
    was read as 1)."""

    regex = r"[0-9]+"


def _response(answer: web.Answer) -> Response:
    return Response(answer.body, status=answer.status, headers=answer.headers, mimetype="application/json")


def _error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http(err: HTTPException) -> Response:
        code = err.code or 500
        names = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
        message = err.description or err.name
        error = names.get(code, err.name.lower().replace(" ", "_"))
        return _response(web.Answer.json(code, {"error": error, "message": message}))

    @app.errorhandler(Exception)
    def _other(err: Exception) -> Response:
        return _response(web.error_answer(err))
