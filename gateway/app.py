"""The gateway's Flask app factory. Until the GUI lands it serves a page pointing at the
gRPC endpoint and the CLI, a health check, and the files of signed download links
(`gateway.links`), which it streams from cellar with the services' token."""

from __future__ import annotations

import mimetypes
import posixpath
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import grpc
from flask import Flask, Response, jsonify, request

from donut.cellar.v1 import cellar_pb2 as cpb
from donut.cellar.v1 import cellar_pb2_grpc
from gateway.links import ROUTE, link_problem

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>donut-dagger</title></head>
<body>
<h1>donut-dagger</h1>
<p>The stack is running. gRPC endpoint: <code>{endpoint}</code>.</p>
<p>Submit a workflow with <code>donut submit examples/fruit_gather.yaml --wait</code>;
follow a job with <code>donut logs ID JOB --follow</code>.</p>
</body></html>
"""

CELLAR = "donut.cellar"  # app.extensions: the cellar stub of download links, when configured


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """`config` keys besides Flask's: DONUT_ENDPOINT (host:port of the services),
    DONUT_SERVICE_TOKEN and DONUT_URL_SIGNING_KEY (bytes) to serve download links,
    DONUT_TLS_CA (PEM bytes) when the services speak TLS."""
    app = Flask(__name__)
    app.config.update({"DONUT_ENDPOINT": "127.0.0.1:7000"})
    app.config.update(config or {})
    if app.config.get("DONUT_URL_SIGNING_KEY") and app.config.get("DONUT_SERVICE_TOKEN"):
        app.extensions[CELLAR] = _Cellar(app.config["DONUT_ENDPOINT"], app.config["DONUT_SERVICE_TOKEN"],
                                          app.config.get("DONUT_TLS_CA"))

    @app.get("/")
    def index() -> str:
        return PAGE.format(endpoint=app.config["DONUT_ENDPOINT"])

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify(status="ok")

    @app.get(f"{ROUTE}/<kind>/<scope>/<path:path>")
    def download(kind: str, scope: str, path: str) -> Response:
        cellar: _Cellar | None = app.extensions.get(CELLAR)
        if cellar is None:
            return _text(404, "download links are not served here")
        job = request.args.get("job", "")
        problem = link_problem(app.config["DONUT_URL_SIGNING_KEY"], kind, scope, job, path,
                               request.args.get("expires", ""), request.args.get("signature", ""), time.time())
        if problem is not None:
            return _text(403, problem)
        return cellar.download(cpb.FileRef(kind=cpb.Kind.Value(f"KIND_{kind.upper()}"), scope=scope, job=job,
                                           path=path))

    return app


def close(app: Flask) -> None:
    """Lets go of what the app holds (its channel to cellar)."""
    cellar: _Cellar | None = app.extensions.pop(CELLAR, None)
    if cellar is not None:
        cellar.channel.close()


class _Cellar:
    """The gateway's way to cellar, with the services' token."""

    def __init__(self, endpoint: str, token: str, tls_ca: bytes | None) -> None:
        if tls_ca:
            self.channel = grpc.secure_channel(endpoint, grpc.ssl_channel_credentials(root_certificates=tls_ca))
        else:
            self.channel = grpc.insecure_channel(endpoint)
        self.stub = cellar_pb2_grpc.CellarStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),)

    def download(self, ref: cpb.FileRef) -> Response:
        call = self.stub.Get(cpb.GetRequest(ref=ref), metadata=self.metadata)
        responses = iter(call)
        try:
            first = next(responses)
        except grpc.RpcError as e:
            call.cancel()
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return _text(404, "no such file")
            return _text(503, "storage unavailable, try again later")
        name = posixpath.basename(ref.path)
        fallback = name.encode("ascii", "replace").decode().replace('"', "_").replace("\\", "_")
        headers = {
            "Content-Length": str(first.info.size),
            "Content-Disposition": f"attachment; filename=\"{fallback}\"; "
                                   f"filename*=UTF-8''{urllib.parse.quote(name, safe='')}",
        }

        def chunks() -> Iterator[bytes]:
            for message in responses:
                yield message.data

        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        response = Response(chunks(), headers=headers, content_type=content_type, direct_passthrough=True)
        response.call_on_close(call.cancel)  # sent, cut off by the client, or a HEAD: the call ends too
        return response


def _text(status: int, text: str) -> Response:
    return Response(text + "\n", status=status, content_type="text/plain; charset=utf-8")
