"""The Flask app factory.

The receiving routes (``/webhooks/...`` and ``/v1/...``) are served by :class:`connector.ingest.web.Ingress`,
which the factory installs in front of Flask; Flask serves health, metrics and everything else.
"""

from __future__ import annotations

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from connector import redis_conn
from connector.config import Accounts, load_accounts
from connector.ingest import web
from connector.ingest.queue import EventQueue
from connector.ops.logs import configure_logging
from connector.settings import Settings


def create_app(settings: Settings | None = None, accounts: Accounts | None = None) -> Flask:
    configure_logging()
    settings = settings or Settings.from_env()
    if accounts is None:
        accounts = load_accounts(settings.config_dir)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["CONNECTOR_SETTINGS"] = settings
    queue_conn = redis_conn.connection(settings.queue_redis_url)
    app.extensions["connector.accounts"] = accounts
    app.extensions["connector.ingest.queue"] = EventQueue(queue_conn, settings.event_shards)
    app.extensions["connector.profile_redis"] = redis_conn.connection(settings.profile_redis_url)

    from connector.ops import metrics

    app.register_blueprint(web.health)
    metrics.install(app, app.extensions["connector.ingest.queue"])
    _error_handlers(app)
    web.install(app, accounts, app.extensions["connector.ingest.queue"])
    return app


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
