"""Ops: what an operator sees. Metrics in the Prometheus format (``metrics``), structured logging
(``logs``) and the web server's settings (``gunicorn_conf``).
"""
