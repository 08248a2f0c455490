"""The gateway's Flask app factory: the web GUI (server-rendered pages, progressively
enhanced by the scripts in `static/`), the JSON and server-sent events those pages use,
and the files of signed download links (`gateway.links`), streamed from cellar with the
services' token. Everything the GUI does goes through the services' gRPC API as the
signed-in user."""

from __future__ import annotations

import mimetypes
import os
import posixpath
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import grpc
from flask import Flask, Response, jsonify, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException

from donut.cellar.v1 import cellar_pb2 as cpb
from gateway import auth, jobs, tokens, workflows
from gateway.links import ROUTE, link_problem
from gateway.services import EXTENSION, Services, services

CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")
PAGE_ERRORS = {  # what the pages make of the services' refusals
    grpc.StatusCode.NOT_FOUND: (404, "Not found"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "Not allowed"),
    grpc.StatusCode.INVALID_ARGUMENT: (400, "Refused"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "Not now"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "Too much"),
    grpc.StatusCode.UNAVAILABLE: (503, "Unavailable"),
}


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """`config` keys besides Flask's (SECRET_KEY signs the session cookies):
    DONUT_ENDPOINT (host:port of the services), DONUT_SERVICE_TOKEN, DONUT_URL_SIGNING_KEY
    (bytes) to serve download links, DONUT_TLS_CA (PEM bytes) when the services speak TLS,
    DONUT_PUBLIC_URL (what browsers call the gateway, behind a proxy), and for GitHub
    sign-in DONUT_GITHUB_CLIENT_ID, DONUT_GITHUB_CLIENT_SECRET, DONUT_GITHUB_URL and the
    tuples DONUT_GITHUB_USERS, DONUT_GITHUB_ORGS (both empty: any GitHub account)."""
    app = Flask(__name__)
    app.config.update({"DONUT_ENDPOINT": "127.0.0.1:7000", "DONUT_SERVICE_TOKEN": "", "DONUT_PUBLIC_URL": "",
                       "SESSION_COOKIE_SAMESITE": "Lax", "PERMANENT_SESSION_LIFETIME": auth.SESSION_SECONDS,
                       "WTF_CSRF_TIME_LIMIT": None, "WTF_CSRF_SSL_STRICT": False})
    app.config.update(config or {})
    if not app.config.get("SECRET_KEY"):  # sessions then last as long as this process
        app.config["SECRET_KEY"] = os.urandom(32)
    public = urllib.parse.urlsplit(app.config["DONUT_PUBLIC_URL"])
    app.config["SESSION_COOKIE_SECURE"] = public.scheme == "https"
    if public.netloc:
        app.wsgi_app = _PublicAddress(app.wsgi_app, public.scheme, public.netloc,  # type: ignore[method-assign]
                                      public.path.rstrip("/"))
    app.extensions[EXTENSION] = Services(app.config["DONUT_ENDPOINT"], app.config["DONUT_SERVICE_TOKEN"],
                                         app.config.get("DONUT_TLS_CA"))
    CSRFProtect(app)
    app.register_blueprint(auth.blueprint)
    auth.init_github(app)
    app.register_blueprint(workflows.blueprint)
    app.register_blueprint(jobs.blueprint)
    app.register_blueprint(tokens.blueprint)

    @app.get("/")
    def index() -> ResponseReturnValue:
        return redirect(url_for("workflows.listing"))

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify(status="ok")

    @app.get(f"{ROUTE}/<kind>/<scope>/<path:path>")
    def download(kind: str, scope: str, path: str) -> Response:
        key = app.config.get("DONUT_URL_SIGNING_KEY")
        if not key or not app.config["DONUT_SERVICE_TOKEN"]:
            return _text(404, "download links are not served here")
        job = request.args.get("job", "")
        problem = link_problem(key, kind, scope, job, path, request.args.get("expires", ""),
                               request.args.get("signature", ""), time.time())
        if problem is not None:
            return _text(403, problem)
        return stream_file(cpb.FileRef(kind=cpb.Kind.Value(f"KIND_{kind.upper()}"), scope=scope, job=job, path=path),
                           services().as_gateway)

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.errorhandler(grpc.RpcError)
    def refused(e: grpc.RpcError) -> ResponseReturnValue:
        code = e.code()
        if code == grpc.StatusCode.UNAUTHENTICATED:  # the session's token expired or was revoked
            session.clear()
            return auth.not_signed_in()
        status, title = PAGE_ERRORS.get(code, (500, "Something went wrong"))
        details = e.details() or ""
        if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
            details = "There is nothing here, or it is not yours."
        return error_page(status, title, details.splitlines())

    @app.errorhandler(CSRFError)
    def csrf_refused(e: CSRFError) -> ResponseReturnValue:
        return error_page(400, "Refused", [f"{e.description} Reload the page and try again."])

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> ResponseReturnValue:
        return error_page(e.code or 500, e.name, [e.description or ""])

    return app


def error_page(status: int, title: str, lines: list[str]) -> ResponseReturnValue:
    if auth.wants_json():
        return {"error": title, "details": lines}, status
    return render_template("error.html", title=title, lines=lines), status


def close(app: Flask) -> None:
    """Lets go of what the app holds (its channel to the services)."""
    found: Services | None = app.extensions.pop(EXTENSION, None)
    if found is not None:
        found.close()


def stream_file(ref: cpb.FileRef, metadata: tuple[tuple[str, str], ...], inline: bool = False) -> Response:
    """A file of cellar's, streamed to the browser as it comes (a download unless inline)."""
    call = services().cellar.Get(cpb.GetRequest(ref=ref), metadata=metadata)
    responses = iter(call)
    try:
        first = next(responses)
    except grpc.RpcError as e:
        call.cancel()
        if e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
            return _text(404, "no such file")
        return _text(503, "storage unavailable, try again later")
    name = posixpath.basename(ref.path)
    fallback = name.encode("ascii", "replace").decode().replace('"', "_").replace("\\", "_")
    headers = {
        "Content-Length": str(first.info.size),
        "Content-Disposition": f"{'inline' if inline else 'attachment'}; filename=\"{fallback}\"; "
                               f"filename*=UTF-8''{urllib.parse.quote(name, safe='')}",
    }
    if inline:  # shown in the page, never run: a result is whatever a job wrote
        headers["Content-Security-Policy"] = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"

    def chunks() -> Iterator[bytes]:
        for message in responses:
            yield message.data

    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if inline and not content_type.startswith("image/"):
        content_type = "text/plain; charset=utf-8"
    response = Response(chunks(), headers=headers, content_type=content_type, direct_passthrough=True)
    response.call_on_close(call.cancel)  # sent, cut off by the client, or a HEAD: the call ends too
    return response


def _text(status: int, text: str) -> Response:
    return Response(text + "\n", status=status, content_type="text/plain; charset=utf-8")


class _PublicAddress:
    """Makes every request look as it does from outside (scheme, host, path prefix) when
    the gateway sits behind a proxy: OAuth callbacks and links use the public address."""

    def __init__(self, app: Any, scheme: str, host: str, prefix: str) -> None:
        self.app, self.scheme, self.host, self.prefix = app, scheme, host, prefix

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        environ["wsgi.url_scheme"] = self.scheme
        environ["HTTP_HOST"] = self.host
        environ["SCRIPT_NAME"] = self.prefix
        return self.app(environ, start_response)
