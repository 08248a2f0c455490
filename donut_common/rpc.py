"""Server bootstrap and error translation shared by every gRPC service.

`create_server` gives each service the same server: health checking and reflection on,
bound to an address (port 0 in tests), with domain errors mapped to statuses by
`translate_errors`, and `ServerLimits` kept by `StreamGuard`: the sync server gives every
open stream a thread for its whole life, so idle streams could take them all and leave
health checks and token checks waiting forever. Streams are counted per caller and for the
whole server (fewer than the threads), and a client stream that stops sending is ended.
Every call is counted by method and status code (`RequestCounter`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from donut_common.auth import Principal, current_principal
from donut_common.config import ServerLimits
from donut_common.errors import DeadlineExceeded, DonutError, ResourceExhausted, Unauthenticated
from donut_common.metrics import GRPC_REQUESTS

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_LIMITS = ServerLimits()
T = TypeVar("T")


def _abort(context: grpc.ServicerContext, error: DonutError) -> None:
    context.abort(getattr(grpc.StatusCode, error.code_name), str(error))


@contextlib.contextmanager
def _statuses(context: grpc.ServicerContext, rpc_name: str) -> Iterator[None]:
    """Aborts the call with the status of a DonutError, or INTERNAL (logged) for anything
    else, never with a Python repr; an RpcError of a client that went away is swallowed:
    nothing to answer or log."""
    try:
        yield
    except DonutError as e:
        _abort(context, e)
    except grpc.RpcError as e:
        if not context.is_active():
            return
        code = e.code() if isinstance(e, grpc.Call) else None
        log.warning("rpc %s: a call it made failed: %s", rpc_name, e)
        if code == grpc.StatusCode.UNAVAILABLE:
            context.abort(grpc.StatusCode.UNAVAILABLE, "a service it needs is unavailable; try again")
        context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")
    except Exception:
        log.exception("rpc %s failed", rpc_name)
        context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")


def translate_errors(cls: type[T]) -> type[T]:
    """Wraps every RPC method of a servicer class so DonutErrors become gRPC statuses
    and anything else becomes INTERNAL with the traceback logged, not sent."""

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isgeneratorfunction(method):

            @functools.wraps(method)
            def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
                with _statuses(context, method.__name__):
                    yield from method(self, request, context)

            return stream

        @functools.wraps(method)
        def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            with _statuses(context, method.__name__):
                return method(self, request, context)
            return None  # the client went away: nothing to answer

        return unary

    for name, member in list(vars(cls).items()):
        if callable(member) and name[:1].isupper():
            setattr(cls, name, wrap(member))
    return cls


if TYPE_CHECKING:  # generic in grpc-stubs only
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.ServerInterceptor


def _caller() -> str:
    """Whose streams a stream counts among: its user's, or for a job token its attempt's
    (a user's running jobs never crowd out the user), or the anonymous callers' (health
    watches, reflection)."""
    try:
        principal: Principal = current_principal()
    except Unauthenticated:
        return "anonymous callers"
    attempt = principal.attempt
    return f"job attempt {attempt[0]}/{attempt[1]}/{attempt[2]}" if attempt else f"user {principal.login}"


class StreamGuard(_ServerInterceptor):
    """Keeps `ServerLimits` for every streaming call: a stream over its caller's limit or the
    server's is refused with RESOURCE_EXHAUSTED, its place is given back however it ends,
    and a client stream that sends nothing in time ends with DEADLINE_EXCEEDED. Comes after
    the AuthInterceptor, which names the caller."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()

    @contextlib.contextmanager
    def _held(self, context: grpc.ServicerContext) -> Iterator[None]:
        caller = _caller()
        try:
            with self._lock:
                if self._open.total() >= self.limits.streams:
                    raise ResourceExhausted(f"the server has {self.limits.streams} streams open at once, its "
                                            "limit; try again later")
                if self._open[caller] >= self.limits.streams_per_caller:
                    raise ResourceExhausted(f"{caller} has {self.limits.streams_per_caller} streams open at once, "
                                            "the limit; end one first")
                self._open[caller] += 1
            try:
                yield
            finally:
                with self._lock:
                    self._open[caller] -= 1
                    if not self._open[caller]:
                        del self._open[caller]
        except DonutError as e:  # the limits' own, and a timeout seen by a servicer not of ours
            _abort(context, e)

    def _bounded(self, requests: Iterator[T]) -> Iterator[T]:
        return _bounded(requests, self.limits.first_message_timeout, self.limits.idle_timeout)

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is not None:
            return handler
        serializers = handler.request_deserializer, handler.response_serializer

        if handler.unary_stream is not None:
            def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                with self._held(context):
                    yield from handler.unary_stream(request, context)

            return grpc.unary_stream_rpc_method_handler(unary_stream, *serializers)
        if handler.stream_unary is not None:
            def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                with self._held(context):
                    return handler.stream_unary(self._bounded(requests), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, *serializers)

        def stream_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            with self._held(context):
                yield from handler.stream_stream(self._bounded(requests), context)

        return grpc.stream_stream_rpc_method_handler(stream_stream, *serializers)


class RequestCounter(_ServerInterceptor):
    """Counts every call in GRPC_REQUESTS by method and the code it ended with, refusals of
    the interceptors after it (UNAUTHENTICATED, RESOURCE_EXHAUSTED) included: it comes first.
    A method the server does not have is not counted (any name could be made up)."""

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        serializers = handler.request_deserializer, handler.response_serializer

        def counted(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                error: BaseException | None = None
                try:
                    return behavior(request, context)
                except BaseException as e:
                    error = e
                    raise
                finally:
                    GRPC_REQUESTS.labels(method, _code(context, error)).inc()

            return call

        def counted_stream(behavior: Callable[..., Any]) -> Callable[..., Iterator[Any]]:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                error: BaseException | None = None
                try:
                    yield from behavior(request, context)
                except BaseException as e:
                    error = e
                    raise
                finally:
                    GRPC_REQUESTS.labels(method, _code(context, error)).inc()

            return call

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(counted(handler.unary_unary), *serializers)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(counted_stream(handler.unary_stream), *serializers)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(counted(handler.stream_unary), *serializers)
        return grpc.stream_stream_rpc_method_handler(counted_stream(handler.stream_stream), *serializers)


def _code(context: grpc.ServicerContext, error: BaseException | None) -> str:
    """The name of the status a call ended with: the one set on its context (an abort sets
    it), else OK; UNKNOWN for an exception grpc answers for us, CANCELLED for a stream the
    client left."""
    code = context.code()  # type: ignore[attr-defined]  # grpc has it (1.38 on), its stubs do not
    if isinstance(code, grpc.StatusCode):
        return code.name
    if error is None:
        return "OK"
    return "CANCELLED" if isinstance(error, GeneratorExit) else "UNKNOWN"


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _bounded(requests: Iterator[T], first_timeout: float, idle_timeout: float) -> Iterator[T]:
    """The requests of a client stream, each read on demand by a helper thread (the sync
    server's iterator blocks with no timeout); DeadlineExceeded when the first takes longer
    than first_timeout, or a later one longer than idle_timeout. The helper ends once the
    call does."""
    wanted: queue.SimpleQueue[bool] = queue.SimpleQueue()
    results: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()  # (is a request, request or end)

    def read() -> None:
        while wanted.get():
            try:
                results.put((True, next(requests)))
            except BaseException as e:  # noqa: BLE001 - StopIteration, or the call's RpcError: handed over
                results.put((False, e))
                return

    threading.Thread(target=read, name="rpc-requests", daemon=True).start()
    try:
        timeout, first = first_timeout, True
        while True:
            wanted.put(True)
            try:
                is_request, value = results.get(timeout=timeout)
            except queue.Empty:
                raise DeadlineExceeded(
                    f"no message in {_seconds(timeout)}: a client stream must send its first message sooner" if first
                    else f"no message for {_seconds(timeout)}: a client stream may not stay silent longer") from None
            if not is_request:
                if isinstance(value, StopIteration):
                    return
                raise value
            yield value
            timeout, first = idle_timeout, False
    finally:
        wanted.put(False)


Registration = tuple[Callable[[Any, grpc.Server], None], Any, str]
"""(add_XServicer_to_server, servicer instance, full service name)"""


def create_server(
    address: str,
    services: Iterable[Registration] | Callable[[int], Iterable[Registration]],
    *,
    limits: ServerLimits = DEFAULT_LIMITS,
    interceptors: Iterable[grpc.ServerInterceptor[Any, Any]] = (),
    tls: tuple[bytes, bytes] | None = None,
) -> tuple[grpc.Server, int]:
    """A ready (not yet started) server with the services, health and reflection, keeping
    `limits` (see StreamGuard); with `tls` (certificate chain PEM, private key PEM) it
    only speaks TLS. `services` may be a function of the bound port, for services that
    must know their own address.

    Returns the server and the bound port (useful with port 0)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=limits.threads, thread_name_prefix="rpc"),
        interceptors=[RequestCounter(), *interceptors, StreamGuard(limits)],
        maximum_concurrent_rpcs=limits.threads + limits.queued,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    if tls is not None:
        port = server.add_secure_port(address, grpc.ssl_server_credentials([(tls[1], tls[0])]))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    try:
        registrations = list(services(port) if callable(services) else services)
    except BaseException:
        server.stop(None)  # frees the port
        raise
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
    for add, servicer, name in registrations:
        add(servicer, server)
        names.append(name)
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
    return server, port


if TYPE_CHECKING:  # generic in grpc-stubs only
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary, _UnaryStream = grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor
    _StreamUnary, _StreamStream = grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor


class _Bearer(_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream):
    """Adds `authorization: Bearer <token>` to every call of a channel."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        metadata = [m for m in (details.metadata or ()) if m[0] != "authorization"] + [self.header]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


def channel(endpoint: str, token: str = "", tls_ca: bytes | None = None) -> grpc.Channel:
    """A client channel with the message limits the servers use; with a token, every call
    carries it; with `tls_ca` (PEM of the CA to trust), the channel speaks TLS. Several
    replicas (`host:port,host:port,...`, or a `dns:///name:port` that resolves to several)
    are called in turn (gRPC's round_robin), passing over one that is gone, and a call
    refused as UNAVAILABLE is tried again on another, a few times."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    target = endpoint
    if "," in endpoint or endpoint.startswith("dns:"):
        options.append(("grpc.service_config", REPLICAS_SERVICE_CONFIG))
        if "," in endpoint:
            target, host = _replicas_target(endpoint)
            if tls_ca is not None:  # the certificate names the host, not its address
                options.append(("grpc.ssl_target_name_override", host))
    if tls_ca is not None:
        plain = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=tls_ca), options)
    else:
        plain = grpc.insecure_channel(target, options)
    return grpc.intercept_channel(plain, _Bearer(token)) if token else plain


REPLICAS_SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{"name": [{}], "retryPolicy": {
        "maxAttempts": 4, "initialBackoff": "0.2s", "maxBackoff": "2s", "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"]}}],
})


def _replicas_target(endpoints: str) -> tuple[str, str]:
    """A gRPC target of every address of `host:port,host:port,...`, and the first host."""
    import socket

    addresses: list[str] = []
    hosts = []
    for item in (e.strip() for e in endpoints.split(",") if e.strip()):
        host, _, port = item.rpartition(":")
        host = host.strip("[]")
        hosts.append(host)
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError) as e:
            raise ValueError(f"endpoint {item!r}: {e}") from None
        v4 = [i for i in infos if i[0] == socket.AF_INET]
        address = str((v4 or infos)[0][4][0])
        addresses.append(f"{address}:{port}" if ":" not in address else f"[{address}]:{port}")
    scheme = "ipv6" if any(a.startswith("[") for a in addresses) else "ipv4"
    return f"{scheme}:{','.join(addresses)}", hosts[0]
