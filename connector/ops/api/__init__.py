"""The admin API, ``/api/v1`` (OpenAPI 3 at ``/api/v1/openapi.json``), served by the web process.

Bearer tokens (:mod:`connector.ops.tokens`) scoped to accounts with a role; every change is in the
audit log (:mod:`connector.ops.audit`). Resources: accounts and their health, segments (sizes kept
by :mod:`connector.worker.sizes`), people, dead letters, tokens and the audit log. See docs/api.md.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask_smorest import Api as SmorestApi

from connector.ops.api import accounts, admin, analytics, deadletters, people, rules, segments
from connector.ops.api.schemas import ErrorSchema

BLUEPRINTS = (
    accounts.blp,
    segments.blp,
    analytics.blp,
    rules.blp,
    people.blp,
    deadletters.blp,
    admin.blp,
)


class Api(SmorestApi):
    """flask-smorest's Api whose error handlers stay on the API's blueprints (the rest of the app
    keeps its own), and whose operations declare each answer they give (no catch-all default)."""

    ERROR_SCHEMA = ErrorSchema
    DEFAULT_ERROR_RESPONSE_NAME = None

    def _register_error_handlers(self) -> None:
        return None


def install(app: Flask) -> Api:
    """Serve ``/api/v1`` on ``app`` (its runtime is ``app.extensions["connector.runtime"]``)."""
    config: dict[str, Any] = {
        "API_TITLE": "segment-connector admin API",
        "API_VERSION": "v1",
        "OPENAPI_VERSION": "3.0.3",
        "OPENAPI_URL_PREFIX": "/api/v1",
        "OPENAPI_JSON_PATH": "openapi.json",
    }
    for name, value in config.items():
        app.config.setdefault(name, value)
    api = Api(
        app,
        spec_kwargs={
            "info": {"description": "Accounts, segments, people and dead letters; see docs/api.md."},
            "servers": [{"url": "/"}],
        },
    )
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
    for blp in BLUEPRINTS:
        api.register_blueprint(blp)
    return api
