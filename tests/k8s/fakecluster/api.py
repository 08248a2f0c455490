"""The HTTP face of the test Kubernetes API server: the REST paths the official client
calls for Jobs, Pods and Secrets (create, get, list, watch, patch, replace, delete, the
status subresource, pod logs, `/version`), bearer-token checked, with the faults a test
injects (an error status or a slow answer for the next N requests of a kind) and a log of
every request."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.k8s.fakecluster.store import (
    KINDS,
    ApiError,
    Event,
    Obj,
    Store,
    field_selector_matches,
    label_selector_matches,
    merge_patch,
)

VERSION = {
    "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "gitCommit": "0" * 40, "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc", "platform": "linux/amd64",
}

_PATH = re.compile(
    r"^/(?:api/v1|apis/batch/v1)(?:/namespaces/(?P<namespace>[^/]+))?/(?P<plural>pods|secrets|jobs)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<subresource>status|log))?)?/?$"
)


@dataclass
class RequestRecord:
    """One request as the server saw it, logged when it arrives. `verb` is create, get,
    list, watch, patch, update or delete; `plural` is pods, secrets or jobs (empty for
    other paths)."""

    method: str
    path: str
    query: str
    verb: str
    plural: str
    started: float
    """time.monotonic() when the request arrived."""
    status: int = 0
    """The HTTP status answered; 0 until then."""


@dataclass
class Fault:
    """Answers the next `remaining` requests matching verb and plural with `status`
    (nothing stored) or, with `delay`, carries them out `delay` seconds late."""

    verb: str
    plural: str
    remaining: int
    status: int = 0
    delay: float = 0.0

    def matches(self, verb: str, plural: str) -> bool:
        return self.remaining > 0 and self.verb in ("*", verb) and self.plural in ("*", plural)


@dataclass
class ApiState:
    """What the HTTP layer needs besides the store."""

    store: Store
    token: str
    logs_dir: Path
    faults: list[Fault] = field(default_factory=list)
    requests: list[RequestRecord] = field(default_factory=list)
    gone_watches: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_fault(self, verb: str, plural: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(verb, plural):
                    fault.remaining -= 1
                    return fault
            return None

    def take_gone_watch(self, plural: str) -> bool:
        with self.lock:
            for key in (plural, "*"):
                if self.gone_watches.get(key, 0) > 0:
                    self.gone_watches[key] -= 1
                    return True
            return False


def status_object(code: int, reason: str, message: str) -> Obj:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _verb(method: str, name: str | None, watch: bool) -> str:
    if method == "POST":
        return "create"
    if method == "GET":
        return "get" if name else ("watch" if watch else "list")
    return {"PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(method, method.lower())


def create_app(state: ApiState) -> Callable[..., Any]:
    """The WSGI application over `state`."""

    @Request.application
    def app(request: Request) -> Response:
        started = time.monotonic()
        match = _PATH.match(request.path)
        watch = request.args.get("watch") in ("true", "1")
        plural = match["plural"] if match else ""
        verb = _verb(request.method, match["name"] if match else None, watch)
        record = RequestRecord(request.method, request.path, request.query_string.decode(), verb, plural, started)
        with state.lock:
            state.requests.append(record)
        response = _answer(state, request, match, verb, plural, watch)
        record.status = response.status_code
        return response

    return app


def _answer(state: ApiState, request: Request, match: re.Match[str] | None, verb: str, plural: str,
            watch: bool) -> Response:
    if request.headers.get("Authorization") != f"Bearer {state.token}":
        return _json(status_object(401, "Unauthorized", "Unauthorized"), 401)
    if request.path.rstrip("/") == "/version":
        return _json(VERSION)
    if match is None:
        message = f"the server could not find the requested resource ({request.path})"
        return _json(status_object(404, "NotFound", message), 404)
    fault = state.take_fault(verb, plural)
    if fault is not None and fault.status:
        message = f"injected fault: {fault.status} on {verb} {plural}"
        response = _json(status_object(fault.status, "InternalError" if fault.status >= 500 else "TooManyRequests",
                                       message), fault.status)
        if fault.status == 429:
            response.headers["Retry-After"] = "1"
        return response
    if fault is not None and fault.delay:
        time.sleep(fault.delay)
    try:
        return _dispatch(state, request, match, verb, plural, watch)
    except ApiError as error:
        return _json(status_object(error.code, error.reason, error.message), error.code)


def _body(request: Request) -> Any:
    try:
        return json.loads(request.get_data() or b"null")
    except ValueError as error:
        raise ApiError(400, "BadRequest", f"the body is not JSON: {error}") from error


def _dispatch(state: ApiState, request: Request, match: re.Match[str], verb: str, plural: str,
              watch: bool) -> Response:
    store = state.store
    namespace, name, subresource = match["namespace"], match["name"], match["subresource"]
    if namespace is None and verb not in ("list", "watch"):
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    if subresource == "log":
        if plural != "pods" or verb != "get":
            raise ApiError(405, "MethodNotAllowed", "only GET on pods/log")
        store.get("pods", namespace, name)
        log = state.logs_dir / f"{namespace}_{name}.log"
        return Response(log.read_bytes() if log.exists() else b"", mimetype="text/plain")
    if subresource == "status" and verb not in ("get", "patch", "update"):
        raise ApiError(405, "MethodNotAllowed", f"{verb} is not allowed on {plural}/status")
    if verb == "create":
        body = _body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be an object")
        if subresource is None and plural != "secrets":
            body.pop("status", None)
        return _json(store.create(plural, namespace, body), 201)
    if verb == "get":
        return _json(store.get(plural, namespace, name))
    if verb == "list":
        items, revision = store.list(plural, namespace, request.args.get("labelSelector"),
                                     request.args.get("fieldSelector"))
        kind = KINDS[plural]
        return _json({"kind": kind.kind + "List", "apiVersion": kind.api_version,
                      "metadata": {"resourceVersion": str(revision)}, "items": items})
    if verb == "watch":
        return _watch(state, request, plural, namespace)
    if verb in ("patch", "update"):
        body = _body(request)
        if not isinstance(body, dict):
            raise ApiError(415, "UnsupportedMediaType", "only merge and strategic merge patches are supported")

        def change(current: Obj) -> Obj:
            updated = merge_patch(current, body) if verb == "patch" else dict(body)
            updated.setdefault("metadata", {})
            if subresource == "status":
                current["status"] = updated.get("status") or {}
                return current
            if plural != "secrets":
                updated["status"] = current.get("status") or {}
            updated["apiVersion"], updated["kind"] = current["apiVersion"], current["kind"]
            return updated

        expected = (body.get("metadata") or {}).get("resourceVersion") if verb == "update" else None
        return _json(store.update(plural, namespace, name, change, expected))
    if verb == "delete":
        body = _body(request) or {}
        propagation = request.args.get("propagationPolicy") or body.get("propagationPolicy")
        if propagation is None and body.get("orphanDependents") is False:
            propagation = "Background"
        deleted = store.delete(plural, namespace, name, propagation)
        if plural == "pods":
            return _json(deleted)
        return _json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                      "details": {"name": name, "kind": plural, "uid": deleted["metadata"]["uid"]}})
    raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported here")


def _watch(state: ApiState, request: Request, plural: str, namespace: str | None) -> Response:
    """A stream of JSON lines, one event each: ADDED for what exists (unless a
    resourceVersion is given), then every later change; an expired resourceVersion, or an
    injected one, gets the ERROR event with a 410 Status a real server sends."""
    store = state.store
    label_selector = request.args.get("labelSelector")
    field_selector = request.args.get("fieldSelector")
    timeout = float(request.args.get("timeoutSeconds") or 3600)
    deadline = time.monotonic() + timeout
    since = request.args.get("resourceVersion") or ""

    def visible(obj: Obj | None) -> bool:
        return (obj is not None and namespace in (None, obj["metadata"]["namespace"])
                and label_selector_matches(label_selector, obj["metadata"].get("labels") or {})
                and field_selector_matches(field_selector, obj))

    def line(type_: str, obj: Obj) -> bytes:
        return json.dumps({"type": type_, "object": obj}).encode() + b"\n"

    def translate(event: Event) -> bytes | None:
        if event.plural != plural:
            return None
        now, before = visible(event.obj), visible(event.old)
        if event.type == "MODIFIED" and now != before:
            return line("ADDED" if now else "DELETED", event.obj)
        return line(event.type, event.obj) if now else None

    def gone(revision: str) -> bytes:
        return line("ERROR", status_object(410, "Expired", f"too old resource version: {revision} "
                                                            f"({store.compacted_revision + 1})"))

    def stream() -> Iterator[bytes]:
        if state.take_gone_watch(plural):
            yield gone(since or "0")
            return
        with store.changed:
            if since in ("", "0"):
                items, position = store.list(plural, namespace, label_selector, field_selector)
                initial = [line("ADDED", item) for item in items]
            else:
                position = int(since)
                if position < store.compacted_revision:
                    initial = [gone(since)]
                    position = -1
                else:
                    initial = []
        yield from initial
        if position < 0:
            return
        while not store.closed:
            with store.changed:
                pending = [event for event in store.events_after(position)]
                if not pending:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    store.changed.wait(min(remaining, 1.0))
                    pending = [event for event in store.events_after(position)]
            for event in pending:
                position = event.revision
                chunk = translate(event)
                if chunk is not None:
                    yield chunk
            if time.monotonic() >= deadline:
                return

    return Response(stream(), mimetype="application/json", direct_passthrough=True)
