"""Server bootstrap and error translation shared by every gRPC service.

`create_server` gives each service the same server: health checking and reflection on,
bound to an address (port 0 in tests), with domain errors mapped to statuses by
`translate_errors`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from donut_common.errors import DonutError

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
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


Registration = tuple[Callable[[Any, grpc.Server], None], Any, str]
"""(add_XServicer_to_server, servicer instance, full service name)"""


def create_server(
    address: str,
    services: Iterable[Registration] | Callable[[int], Iterable[Registration]],
    *,
    max_workers: int = 64,
    interceptors: Iterable[grpc.ServerInterceptor[Any, Any]] = (),
    tls: tuple[bytes, bytes] | None = None,
) -> tuple[grpc.Server, int]:
    """A ready (not yet started) server with the services, health and reflection; with
    `tls` (certificate chain PEM, private key PEM) it only speaks TLS. `services` may be
    a function of the bound port, for services that must know their own address.

    Returns the server and the bound port (useful with port 0)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        interceptors=list(interceptors),
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
    carries it; with `tls_ca` (PEM of the CA to trust), the channel speaks TLS."""
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    if tls_ca is not None:
        plain = grpc.secure_channel(endpoint, grpc.ssl_channel_credentials(root_certificates=tls_ca), options)
    else:
        plain = grpc.insecure_channel(endpoint, options)
    return grpc.intercept_channel(plain, _Bearer(token)) if token else plain
