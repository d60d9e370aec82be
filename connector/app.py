"""The Flask app factory."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from . import redis_conn
from .config import Accounts, load_accounts
from .errors import RequestRejected, StoreUnavailable, Unauthorized
from .logs import configure_logging
from .queue import EventQueue
from .settings import Settings

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"


def create_app(settings: Settings | None = None, accounts: Accounts | None = None) -> Flask:
    configure_logging()
    settings = settings or Settings.from_env()
    if accounts is None:
        accounts = load_accounts(settings.config_dir)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["CONNECTOR_PUBLIC_URL"] = settings.public_url
    app.config["CONNECTOR_SETTINGS"] = settings
    queue_conn = redis_conn.connection(settings.queue_redis_url)
    app.extensions["connector.accounts"] = accounts
    app.extensions["connector.queue"] = EventQueue(queue_conn, settings.event_shards)
    app.extensions["connector.profile_redis"] = redis_conn.connection(settings.profile_redis_url)

    from .metrics import bp as metrics_bp
    from .tracking import bp as tracking_bp
    from .web import bp as receiver_bp
    from .web import health

    app.register_blueprint(receiver_bp)
    app.register_blueprint(tracking_bp)
    app.register_blueprint(health)
    app.register_blueprint(metrics_bp)
    _error_handlers(app)
    return app


def _error_handlers(app: Flask) -> None:
    @app.errorhandler(Unauthorized)
    def _unauthorized(err: Unauthorized) -> tuple[Response, int]:
        # The reason is logged for operators; the sender learns nothing that helps an attacker.
        log.info("rejected: %s", err.message)
        return jsonify(error="unauthorized"), 401

    @app.errorhandler(RequestRejected)
    def _rejected(err: RequestRejected) -> tuple[Response, int]:
        return jsonify(error=err.code, message=err.message), err.status

    @app.errorhandler(StoreUnavailable)
    def _unavailable(err: StoreUnavailable) -> tuple[Response, int, dict[str, str]]:
        log.warning("store unavailable: %s", err)
        body = jsonify(
            error="unavailable", message="storage is unavailable; nothing was accepted, retry later"
        )
        return body, 503, {"Retry-After": RETRY_AFTER_SECONDS}

    @app.errorhandler(redis.RedisError)
    def _redis(err: redis.RedisError) -> tuple[Response, int, dict[str, str]]:
        return _unavailable(StoreUnavailable(type(err).__name__))

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException) -> tuple[Response, int]:
        code = err.code or 500
        names = {413: "payload_too_large", 404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
        message = err.description or err.name
        if code == 413:
            max_bytes = app.config["MAX_CONTENT_LENGTH"]
            message = f"body is larger than the limit of {max_bytes} bytes"
        return jsonify(error=names.get(code, err.name.lower().replace(" ", "_")), message=message), code

    @app.errorhandler(Exception)
    def _internal(err: Exception) -> Any:
        log.exception("internal error")
        return jsonify(error="internal", message="internal error"), 500
