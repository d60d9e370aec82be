"""Health: ``/healthz`` answers while the process is up; ``/readyz`` while Redis is reachable, and
reports the account files that are invalid now (their last valid version keeps serving) and the
destinations paused (a refused or missing credential: their changes wait)."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, current_app, jsonify

from connector.errors import StoreUnavailable
from connector.ops.metrics import scrape_token_given
from connector.runtime import config_errors
from connector.sync.control import paused

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
        stopped = [
            {"account": a, "destination": d, "reason": str(r.get("reason", "")), "since": r.get("at")}
            for (a, d), r in sorted(paused(queue_conn).items())
        ]
    except redis.RedisError as err:
        raise StoreUnavailable("redis unreachable") from err
    # a file's changed rules replacing an API version is a deploy doing its job, not a fault: it is
    # reported (and recorded in the audit log once), the status stays ready
    status = "degraded" if problems or stopped else "ready"
    if not (problems or superseded or stopped):
        return jsonify(status=status)
    # still 200 when degraded: the last valid accounts keep serving; a failing readiness would take
    # every web pod out of rotation for a file the workers are coping with
    if not scrape_token_given():  # which files and accounts: for the scrape token's holder only
        return jsonify(
            status=status,
            config_error_count=len(problems),
            rules_superseded_count=len(superseded),
            destinations_paused_count=len(stopped),
            details="the files and accounts are shown to a request with the scrape token "
            "(CONNECTOR_METRICS_TOKEN) as a bearer token",
        )
    return jsonify(
        status=status,
        config_errors=[p.as_dict() for p in problems],
        rules_superseded=superseded,
        destinations_paused=stopped,
    )
