"""The baseline of bench/ingest: a bare Flask endpoint that answers 200, served by the same gunicorn
settings (connector.ops.gunicorn_conf) as the connector's web process."""

from __future__ import annotations

from flask import Flask, Response, jsonify


def create_app() -> Flask:
    app = Flask(__name__)

    @app.post("/webhooks/<account_id>/<sender>")
    def receive(account_id: str, sender: str) -> Response:
        return jsonify(status="ok")

    return app
