"""gunicorn settings for the web process (the Procfile and bench/ingest use these)."""

import multiprocessing
import os

bind = os.environ.get("CONNECTOR_BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")


def web_workers() -> int:
    """gunicorn's worker processes: ``WEB_CONCURRENCY``, by default two per core."""
    return int(os.environ.get("WEB_CONCURRENCY") or multiprocessing.cpu_count() * 2)


workers = web_workers()
worker_class = "sync"
keepalive = 5
timeout = 30
accesslog = os.environ.get("CONNECTOR_ACCESS_LOG") or None
# Path only: the query string can carry a sender's URL token (Mailchimp `?secret=`) and the Basic
# auth user is the tracking API's write key, so neither is logged.
access_log_format = '%(h)s %(t)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms'

# No control socket (gunicorn >= 25.1 opens one for `gunicornc` by default). Its default path,
# $XDG_RUNTIME_DIR/gunicorn.ctl or ~/.gunicorn/gunicorn.ctl, is the same for every gunicorn of a user
# on the host: each instance that starts removes the socket of the one before and takes the path, so
# a control command would reach the wrong instance (another connector, another deployment). The
# product does not use it: reload and stop with signals (HUP, TERM) to the master, as docs/deploy.md
# says. Older gunicorns ignore the unknown setting.
control_socket_disable = True
