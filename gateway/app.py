"""The gateway's Flask app factory. Until the GUI lands it serves a page pointing at the
gRPC endpoint and the CLI, plus a health check."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>donut-dagger</title></head>
<body>
<h1>donut-dagger</h1>
<p>The stack is running. gRPC endpoint: <code>{endpoint}</code>.</p>
<p>Submit a workflow with <code>donut submit examples/fruit_gather.yaml --wait</code>;
follow a job with <code>donut logs ID JOB --follow</code>.</p>
</body></html>
"""


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update({"DONUT_ENDPOINT": "127.0.0.1:7000"})
    app.config.update(config or {})

    @app.get("/")
    def index() -> str:
        return PAGE.format(endpoint=app.config["DONUT_ENDPOINT"])

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify(status="ok")

    return app
