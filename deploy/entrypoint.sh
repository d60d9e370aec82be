#!/usr/bin/env bash
# Container entrypoint: `web`, `worker`, `scheduler` and `sync` run the Procfile's command of that process
# (extra arguments are appended); anything else is run as given, e.g.
# `connector config validate /config/accounts`. The command replaces this shell (exec), so
# SIGTERM from the container runtime reaches gunicorn or the worker directly and they stop
# gracefully.
set -euo pipefail

usage() {
    echo "usage: entrypoint.sh web|worker|scheduler|sync [ARGS...]   or   entrypoint.sh COMMAND [ARGS...]" >&2
}

require_redis() {
    # Outside a container the connector falls back to redis://127.0.0.1:6379/0 when no URL is set;
    # inside one that is the container itself, so the process would only retry a Redis that is not
    # there. Refuse to start instead, naming what is missing.
    if [[ -n "${REDIS_URL:-}" ]]; then
        return 0
    fi
    if [[ -n "${CONNECTOR_QUEUE_REDIS_URL:-}" && -n "${CONNECTOR_PROFILE_REDIS_URL:-}" ]]; then
        return 0
    fi
    echo "entrypoint: REDIS_URL is not set (or set both CONNECTOR_QUEUE_REDIS_URL and" \
        "CONNECTOR_PROFILE_REDIS_URL); see docs/deploy.md" >&2
    exit 64
}

if [[ $# -eq 0 ]]; then
    usage
    exit 2
fi

process="$1"
shift
case "$process" in
    web)
        require_redis
        exec gunicorn --config python:connector.ops.gunicorn_conf 'connector.app:create_app()' "$@"
        ;;
    worker)
        require_redis
        exec connector worker "$@"
        ;;
    scheduler)
        require_redis
        exec connector scheduler "$@"
        ;;
    sync)
        require_redis
        exec connector sync "$@"
        ;;
    -h | --help | help)
        usage
        exit 0
        ;;
    *)
        exec "$process" "$@"
        ;;
esac
