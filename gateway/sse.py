"""Server-sent events fed by a gRPC stream: the stream is read by a thread of its own, so
the response can send keep-alives while the stream is quiet, and the stream is cancelled
as soon as the browser goes (the next keep-alive fails to send) or the response ends."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc
from flask import Response

KEEP_ALIVE_SECONDS = 15.0
Message = TypeVar("Message")
Event = tuple[str, Any]
"""An event's name and its JSON data."""


def event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def events_response(call: grpc.Call, to_events: Callable[[Message], Iterable[Event]],
                    end: Callable[[], Iterable[Event]] = lambda: [("end", {})]) -> Response:
    """The response streaming `to_events` of every message of `call` (a server-streaming
    call's iterator), then `end`'s events; a failed call ends with a `failure` event (so
    the caller checks first what deserves a status of its own, like a 404)."""
    messages: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=64)  # a slow browser slows the stream down
    gone = threading.Event()

    def put(item: tuple[str, Any]) -> None:
        while not gone.is_set():
            try:
                return messages.put(item, timeout=1)
            except queue.Full:
                continue

    def read() -> None:
        try:
            for message in call:  # type: ignore[attr-defined]  # a streaming call is its own iterator
                put(("message", message))
            put(("end", None))
        except grpc.RpcError as e:
            put(("error", e))

    def stream() -> Iterator[str]:
        threading.Thread(target=read, name="sse-reader", daemon=True).start()
        try:
            yield "retry: 2000\n\n"
            while True:
                try:
                    kind, value = messages.get(timeout=KEEP_ALIVE_SECONDS)
                except queue.Empty:
                    yield ": keep-alive\n\n"
                    continue
                if kind == "message":
                    yield "".join(event(name, data) for name, data in to_events(value))
                elif kind == "end":
                    yield "".join(event(name, data) for name, data in end())
                    return
                else:
                    yield event("failure", {"code": value.code().name, "message": value.details() or ""})
                    return
        finally:
            gone.set()
            call.cancel()

    return Response(stream(), content_type="text/event-stream",
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
