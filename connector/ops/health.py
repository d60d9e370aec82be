"""Health: ``/healthz`` answers while the process is up; ``/readyz`` while Redis is reachable, and
reports the account files that are invalid now (their last valid version keeps serving)."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, current_app, jsonify

from connector.errors import StoreUnavailable
from connector.ops.metrics import scrape_token_given
from connector.runtime import config_errors

health = Blueprint("health", __name__)


@health.route("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@health.route("/readyz")
def readyz() -> Response | tuple[Response, int]:
    try:
        queue_conn = current_app.extensions["connector.runtime"].queue_redis
        queue_conn.ping()
        current_app.extensions["connector.runtime"].profile_redis.ping()
        current_app.extensions["connector.runtime"].record_config_errors()
        problems = config_errors(queue_conn)
        superseded = current_app.extensions["connector.runtime"].rules_superseded()
    except redis.RedisError as err:
        raise StoreUnavailable("redis unreachable") from err
    # a file's changed rules replacing an API version is a deploy doing its job, not a fault: it is
    # reported (and recorded in the audit log once), the status stays ready
    status = "degraded" if problems else "ready"
    if not (problems or superseded):
        return jsonify(status=status)
    # still 200 when degraded: the last valid accounts keep serving; a failing readiness would take
    # every web pod out of rotation for a file the workers are coping with
    if not scrape_token_given():  # which files and accounts: for the scrape token's holder only
        return jsonify(
            status=status,
            config_error_count=len(problems),
            rules_superseded_count=len(superseded),
            details="the files and accounts are shown to a request with the scrape token "
            "(CONNECTOR_METRICS_TOKEN) as a bearer token",
        )
    return jsonify(status=status, config_errors=[p.as_dict() for p in problems], rules_superseded=superseded)
