"""Who is calling: the principal behind a bearer token, checked on every RPC.

One gRPC server interceptor serves every service. It reads `authorization: Bearer
<token>`, verifies the token (through a short, bounded cache, so a busy service does not
ask users_svc on every call; a revoked token stops working within the cache's lifetime)
and makes the principal available to the servicer for the call. Health and reflection
stay open.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from donut_common.clock import REAL_CLOCK, Clock
from donut_common.errors import DonutError, PermissionDenied, Unauthenticated

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
SCOPE_USER, SCOPE_ADMIN, SCOPE_SERVICE = "user", "admin", "service"


@dataclass(frozen=True)
class Principal:
    user_id: str
    login: str
    admin: bool = False
    token_id: str = ""
    scopes: tuple[str, ...] = (SCOPE_USER,)
    expires_at: float | None = None

    @property
    def is_admin(self) -> bool:
        return self.admin and SCOPE_ADMIN in self.scopes

    @property
    def is_service(self) -> bool:
        return SCOPE_SERVICE in self.scopes

    @property
    def acts_as_user(self) -> bool:
        return SCOPE_USER in self.scopes or self.is_admin

    @property
    def attempt(self) -> tuple[str, str, int] | None:
        """(workflow id, job, attempt) of a job token: the one attempt it speaks for."""
        for scope in self.scopes:
            if scope.startswith("job:"):
                workflow_id, _, rest = scope[4:].partition("/")
                job, _, number = rest.partition("/")
                if number.isdigit():
                    return workflow_id, job, int(number)
        return None

    @property
    def job(self) -> tuple[str, str] | None:
        """(workflow id, job) of a job token."""
        attempt = self.attempt
        return None if attempt is None else attempt[:2]

    def may_read_cache(self, upload_id: str) -> bool:
        return f"cache:{upload_id}" in self.scopes

    def require_user(self) -> None:
        if not self.acts_as_user:
            raise PermissionDenied("this token may not act as a user (its scopes: " + ", ".join(self.scopes) + ")")

    def require_admin(self) -> None:
        if not self.is_admin:
            raise PermissionDenied("admins only")

    def owns(self, owner: str) -> bool:
        """May act on something this owner owns (admins may act on everything)."""
        return self.is_admin or (self.acts_as_user and owner == self.user_id)


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("donut_principal", default=None)


_recheck: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("donut_recheck", default=None)


def check_still_valid() -> bool:
    """For a stream that waits a long time between messages: raises Unauthenticated once
    the caller's token is revoked or has expired (checked through the verification cache,
    at most every STREAM_RECHECK_SECONDS); else True."""
    recheck = _recheck.get()
    if recheck is not None:
        recheck()
    return True


def current_principal() -> Principal:
    """The caller of the RPC being served (set by AuthInterceptor)."""
    principal = _current.get()
    if principal is None:
        raise Unauthenticated("no principal for this call")
    return principal


class CachedVerifier:
    """Verifies tokens through `verify` (a users_svc call, or its domain object in
    process), remembering answers for `ttl` seconds; at most `max_entries` are kept."""

    def __init__(self, verify: Callable[[str], Principal], ttl: float = 3.0, max_entries: int = 10_000,
                 clock: Clock = REAL_CLOCK) -> None:
        self._verify = verify
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, token: str) -> Principal:
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                principal = hit[1]
                if principal.expires_at is not None and principal.expires_at <= self._clock.time():
                    del self._cache[key]
                    raise Unauthenticated("the token has expired")
                return principal
        principal = self._verify(token)
        with self._lock:
            self._cache[key] = (now + self.ttl, principal)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return principal


def bearer_token(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise Unauthenticated("authorization must be 'Bearer <token>'")
    raise Unauthenticated("missing authorization: Bearer <token> (see `donut token create`)")


STREAM_RECHECK_SECONDS = 1.0  # how often an open stream's token is verified again (through the cache)


if TYPE_CHECKING:  # generic in grpc-stubs only
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.ServerInterceptor


class AuthInterceptor(_ServerInterceptor):
    def __init__(self, verifier: Callable[[str], Principal]) -> None:
        self.verifier = verifier

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        metadata = handler_call_details.invocation_metadata
        verifier = self.verifier

        def authenticate(context: grpc.ServicerContext) -> Principal | None:
            try:
                return verifier(bearer_token(metadata))
            except DonutError as e:  # unknown, revoked or expired; or etcd unavailable
                context.abort(getattr(grpc.StatusCode, e.code_name), str(e))
            except Exception:  # noqa: BLE001 - users_svc unreachable: say so, don't leak details
                context.abort(grpc.StatusCode.UNAVAILABLE, "cannot verify the token right now")
            return None

        def unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                token = _current.set(authenticate(context))
                try:
                    return behavior(request, context)
                finally:
                    _current.reset(token)

            return call

        def streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                principal = authenticate(context)
                checked = time.monotonic()
                last_check = [checked]

                def recheck() -> None:  # between messages, for a stream that waits long for the next
                    if time.monotonic() - last_check[0] >= STREAM_RECHECK_SECONDS:
                        verifier(bearer_token(metadata))
                        last_check[0] = time.monotonic()

                token = _current.set(principal)
                try:
                    responses = behavior(request, context)
                finally:
                    _current.reset(token)
                while True:  # the servicer's generator runs step by step: give each step the principal
                    token, checking = _current.set(principal), _recheck.set(recheck)
                    try:
                        item = next(responses)
                    except StopIteration:
                        return
                    finally:
                        _current.reset(token)
                        _recheck.reset(checking)
                    if time.monotonic() - checked >= STREAM_RECHECK_SECONDS:
                        authenticate(context)  # a long stream ends once its token is revoked or expires
                        checked = time.monotonic()
                    yield item

            return call

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), handler.request_deserializer,
                                                       handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), handler.request_deserializer,
                                                        handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), handler.request_deserializer,
                                                        handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), handler.request_deserializer,
                                                     handler.response_serializer)


def remote_verifier(users_channel: grpc.Channel) -> Callable[[str], Principal]:
    """Verifies tokens by asking users_svc (the channel carries this service's own
    credentials); an unknown, expired or revoked token raises Unauthenticated."""
    from donut.users.v1 import users_pb2, users_pb2_grpc
    from streamed_job.timestamps import seconds

    stub = users_pb2_grpc.UsersStub(users_channel)

    def verify(token: str) -> Principal:
        try:
            answer = stub.VerifyToken(users_pb2.VerifyTokenRequest(token=token), timeout=10)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise Unauthenticated(e.details() or "unknown token") from None
            raise
        token_pb = answer.token
        return Principal(user_id=answer.user.id, login=answer.user.login, admin=answer.user.admin,
                         token_id=token_pb.id, scopes=tuple(token_pb.scopes), expires_at=seconds(token_pb.expires_at))

    return verify


TOKEN_PREFIX = "dd_"  # tokens are dd_<16 hex id>_<secret>
MAX_TOKEN_LIFETIME = 100 * 365 * 86400  # seconds a token may be made to live; longer is "never" (0)


def split_token(token: str) -> tuple[str, str]:
    """(id, secret) of a token; ("", "") if it is not one."""
    token_id, _, secret = token.removeprefix(TOKEN_PREFIX).partition("_")
    if token.startswith(TOKEN_PREFIX) and re.fullmatch(r"[0-9a-f]{16}", token_id) and secret:
        return token_id, secret
    return "", ""


JOB_TOKEN_SLACK = 24 * 3600  # seconds a job token lives beyond its job's timeout (waiting, retries)


class JobTokens:
    """Mints the token of one job attempt (scoped to that job and its workflow's uploads,
    for its owner, expiring when the attempt can no longer run) and revokes it afterwards.
    Used by executors through users_svc, with the scheduler's service credentials."""

    def __init__(self, users_channel: grpc.Channel) -> None:
        from donut.users.v1 import users_pb2_grpc

        self._stub = users_pb2_grpc.UsersStub(users_channel)

    def mint(self, owner: str, workflow_id: str, job: str, attempt: int, upload_id: str = "",
             timeout: float | None = None) -> tuple[str, str]:
        """(token id, secret) of a token for one attempt of a job, which expires a day after
        the job's timeout."""
        from donut.users.v1 import users_pb2

        scopes = [f"job:{workflow_id}/{job}/{attempt}"] + ([f"cache:{upload_id}"] if upload_id else [])
        answer = self._stub.CreateToken(users_pb2.CreateTokenRequest(
            name=f"job {workflow_id}/{job} attempt {attempt}", user_id=owner, scopes=scopes,
            expires_in_seconds=int((timeout or 0) + JOB_TOKEN_SLACK)), timeout=10)
        return answer.token.id, answer.secret

    def revoke(self, token_id: str) -> None:
        """Revokes the token; a failure is only logged (the token expires anyway)."""
        from donut.users.v1 import users_pb2

        try:
            self._stub.RevokeToken(users_pb2.RevokeTokenRequest(id=token_id), timeout=10)
        except grpc.RpcError as e:
            logging.getLogger(__name__).warning("cannot revoke job token %s: %s", token_id, e.code())
