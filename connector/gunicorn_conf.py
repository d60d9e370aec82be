"""gunicorn settings for the web process (the Procfile and bench/ingest use these)."""

import multiprocessing
import os

bind = os.environ.get("CONNECTOR_BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
worker_class = "sync"
keepalive = 5
timeout = 30
accesslog = os.environ.get("CONNECTOR_ACCESS_LOG") or None
