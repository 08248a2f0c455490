"""The etcd client every store goes through, with one error boundary.

Whatever goes wrong between a store and etcd (a connection refused or dropped, a deadline
passed, a node the client has marked failed, any gRPC error) reaches the store as
`Unavailable`, with a message for people, never as the client library's own exception.
The pieces of a transaction (`put`, `get_prefix`, `mod_equals`...) are built here too,
so the stores never touch the client library. An etcd that checks who calls it (TLS with
client certificates, etcd users) is reached through `EtcdAccess`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pyetcd
from pyetcd import etcdrpc

from donut_common.errors import Unavailable
from donut_common.metrics import ETCD_TXN_CONFLICTS, ETCD_TXN_SECONDS

log = logging.getLogger(__name__)

CALL_TIMEOUT = 5.0  # seconds an etcd call may take before it is Unavailable
RETRY_FAILED = 1.0  # seconds an endpoint that failed is left alone (the client's default: 300)
PAGE_KEYS = 500  # keys per read: a page of the largest records stays far under an answer's limit
MAX_ANSWER_BYTES = 64 * 1024 * 1024  # what one answer may carry (gRPC's default: 4 MiB)

Op = Any       # an etcdrpc.RequestOp
Compare = Any  # an etcdrpc.Compare


@contextlib.contextmanager
def boundary(what: str) -> Iterator[None]:
    """Turns every failure to reach etcd into Unavailable."""
    try:
        yield
    except grpc.RpcError as e:
        raise Unavailable(f"etcd unavailable ({what}: {e.code().name}: {e.details()})") from e
    except pyetcd.exceptions.Etcd3Exception as e:
        raise Unavailable(f"etcd unavailable ({what}: {type(e).__name__} {e})".rstrip()) from e
    except ValueError as e:
        if "failed node" not in str(e):  # the client's own word for an endpoint it gave up on
            raise
        raise Unavailable(f"etcd unavailable ({what}: {e})") from e


# ---- the pieces of a transaction ------------------------------------------------------------


def put(key: str, value: str | bytes, lease: int = 0) -> Op:
    data = value.encode() if isinstance(value, str) else value
    return etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=key.encode(), value=data, lease=lease))


def get(key: str) -> Op:
    return etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=key.encode()))


def get_prefix(prefix: str) -> Op:
    start = prefix.encode()
    return etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=start, range_end=_prefix_end(start)))


def delete(key: str) -> Op:
    return etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=key.encode()))


def delete_prefix(prefix: str) -> Op:
    start = prefix.encode()
    return etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=start, range_end=_prefix_end(start)))


def absent(key: str) -> Compare:
    """The key does not exist."""
    return etcdrpc.Compare(key=key.encode(), target=etcdrpc.Compare.CREATE, result=etcdrpc.Compare.EQUAL,
                           create_revision=0)


def mod_equals(key: str, revision: int) -> Compare:
    """The key was last changed at `revision` (0: it does not exist)."""
    return etcdrpc.Compare(key=key.encode(), target=etcdrpc.Compare.MOD, result=etcdrpc.Compare.EQUAL,
                           mod_revision=revision)


def value_equals(key: str, value: bytes) -> Compare:
    return etcdrpc.Compare(key=key.encode(), target=etcdrpc.Compare.VALUE, result=etcdrpc.Compare.EQUAL,
                           value=value)


def lease_equals(key: str, lease: int) -> Compare:
    """The key exists and is bound to `lease`."""
    return etcdrpc.Compare(key=key.encode(), target=etcdrpc.Compare.LEASE, result=etcdrpc.Compare.EQUAL,
                           lease=lease)


def prefix_end(prefix: str) -> str:
    """The first key after every key under `prefix`."""
    return _prefix_end(prefix.encode()).decode()


def _prefix_end(start: bytes) -> bytes:
    return start[:-1] + bytes([start[-1] + 1])


# ---- what comes back ------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    ranges: list[list[KeyValue]]  # the key-values each range read of the transaction found, in order


class Lease:
    """A lease: `refresh` keeps it, `revoke` ends it and removes the keys bound to it."""

    def __init__(self, lease: Any, calling: Callable[[str], contextlib.AbstractContextManager[None]]) -> None:
        self._lease = lease
        self._calling = calling
        self.id: int = lease.id

    def refresh(self) -> bool:
        """Keeps the lease; False when it has ended already (etcd let it expire)."""
        with self._calling("refreshing a lease"):
            answers = self._lease.refresh()
        return bool(answers) and answers[0].TTL > 0

    def revoke(self) -> None:
        with self._calling("revoking a lease"):
            self._lease.revoke()


# ---- the client -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EtcdAccess:
    """What a client shows an etcd that checks its callers; the default: nothing, plain http."""

    ca: Path | None = None
    """PEM of the CA that signed the members' certificates: TLS (also when an endpoint
    says https://, then with the system's CAs when this is None)."""
    cert: Path | None = None
    """PEM client certificate, for members that ask for one (`--client-cert-auth`); with key."""
    key: Path | None = None
    """PEM private key of cert."""
    user: str = ""
    """etcd user, with password (etcd auth)."""
    password: str = field(default="", repr=False)

    def credentials(self) -> grpc.ChannelCredentials:
        """TLS credentials from the files; ValueError naming the one that cannot be read."""
        if (self.cert is None) != (self.key is None):
            raise ValueError("etcd client certificate and key go together")
        return grpc.ssl_channel_credentials(*(_read(what, path) for what, path in (
            ("etcd CA", self.ca), ("etcd client key", self.key), ("etcd client certificate", self.cert))))


def _read(what: str, path: Path | None) -> bytes | None:
    try:
        return None if path is None else path.read_bytes()
    except OSError as e:
        raise ValueError(f"{what}: cannot read {path}: {e.strerror}") from None


class Etcd:
    """An etcd client for the stores: plain reads and writes, transactions, leases and
    watches, every failure an Unavailable."""

    def __init__(self, client: pyetcd.Etcd3Client, access: EtcdAccess = EtcdAccess()) -> None:
        self._client = client
        self._access = access
        self._closed = False
        # The user's token goes with every call as metadata (the client library's call
        # credentials would refuse plain http); one list, changed in place when the token is
        # renewed, so that the watcher made with it sends the new one too.
        self._token: list[tuple[str, str]] = []
        client.metadata = self._token

    @classmethod
    def connect(cls, endpoints: str, timeout: float = CALL_TIMEOUT, access: EtcdAccess = EtcdAccess()) -> Etcd:
        """A client of comma-separated `[https://]host:port` endpoints (it moves to another
        when one fails); Unavailable when none answers, or none lets it in; ValueError when
        a file of `access` cannot be read."""
        items = [e.strip() for e in endpoints.split(",")]
        secure = access.ca is not None or any(e.startswith("https://") for e in items)
        credentials = access.credentials() if secure else None
        members = []
        for endpoint in items:
            host, _, port = endpoint.removeprefix("http://").removeprefix("https://").rpartition(":")
            members.append(pyetcd.Endpoint(host or "127.0.0.1", int(port), secure=secure, creds=credentials,
                                           time_retry=RETRY_FAILED,
                                           opts=[("grpc.max_receive_message_length", MAX_ANSWER_BYTES)]))
        etcd = cls(pyetcd.MultiEndpointEtcd3Client(endpoints=members, timeout=timeout, failover=True), access)
        problem: Unavailable | None = None
        for _ in members:  # an endpoint that fails is passed over by the next call
            try:
                with etcd._calling("connecting"):
                    etcd._client.status()  # passes over an endpoint that does not answer
                    etcd._log_in()
                return etcd
            except Unavailable as e:
                problem = e
        etcd._client.close()
        raise Unavailable(f"cannot reach etcd at {endpoints}: {problem}")

    def _log_in(self) -> None:
        """Gets the user a (new) token; with no user, nothing to do."""
        if self._access.user:
            request = etcdrpc.AuthenticateRequest(name=self._access.user, password=self._access.password)
            answer = self._client.authstub.Authenticate(request, self._client.timeout)
            self._token[:] = [("token", answer.token)]

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        """The boundary, and a new token when etcd no longer takes the user's (it expired,
        or etcd restarted): this call is Unavailable, the next one goes through."""
        try:
            with boundary(what):
                yield
        except Unavailable as e:
            refused = isinstance(e.__cause__, grpc.RpcError) and e.__cause__.code() == grpc.StatusCode.UNAUTHENTICATED
            if refused and self._access.user and self._token:
                with contextlib.suppress(Unavailable), boundary("logging in again"):
                    self._log_in()
            raise

    def close(self) -> None:
        """Closes the client; broken watches are not taken up again after this."""
        self._closed = True
        self._client.close()

    def get(self, key: str) -> KeyValue | None:
        with self._calling(f"reading {key}"):
            value, meta = self._client.get(key)
        return None if value is None else KeyValue(key, value, meta.mod_revision)

    def get_prefix(self, prefix: str, revision: int = 0) -> list[KeyValue]:
        """Every key under `prefix`, as it was at `revision` (0: now), read in pages so
        that no answer grows with the number of keys."""
        start, end = prefix.encode(), _prefix_end(prefix.encode())
        found: list[KeyValue] = []
        while True:
            request = etcdrpc.RangeRequest(key=start, range_end=end, limit=PAGE_KEYS, revision=revision)
            with self._calling(f"reading {prefix}"):
                response = self._client.kvstub.Range(request, self._client.timeout, metadata=self._token)
            found.extend(KeyValue(kv.key.decode(), kv.value, kv.mod_revision) for kv in response.kvs)
            if not response.more or not response.kvs:
                return found
            revision = revision or response.header.revision  # every page as the first one saw it
            start = response.kvs[-1].key + b"\0"

    def get_range(self, start: str, end: str, limit: int, newest_first: bool = False) -> list[KeyValue]:
        """The first `limit` keys from `start` up to (not including) `end`, in key order
        (or, newest_first, the last ones, in reverse order)."""
        request = etcdrpc.RangeRequest(key=start.encode(), range_end=end.encode(), limit=limit)
        if newest_first:
            request.sort_order = etcdrpc.RangeRequest.DESCEND
            request.sort_target = etcdrpc.RangeRequest.KEY
        with self._calling(f"reading {start}"):
            response = self._client.kvstub.Range(request, self._client.timeout, metadata=self._token)
        return [KeyValue(kv.key.decode(), kv.value, kv.mod_revision) for kv in response.kvs]

    def put(self, key: str, value: str | bytes) -> None:
        with self._calling(f"writing {key}"):
            self._client.put(key, value)

    def delete(self, key: str) -> None:
        with self._calling(f"deleting {key}"):
            self._client.delete(key)

    def delete_prefix(self, prefix: str) -> None:
        with self._calling(f"deleting {prefix}"):
            self._client.delete_prefix(prefix)

    def txn(self, compare: list[Compare], success: list[Op]) -> TxnResult:
        """Runs `success` if every `compare` holds; the range reads among them come back."""
        with self._calling("a transaction"), ETCD_TXN_SECONDS.time():
            response = self._client.kvstub.Txn(etcdrpc.TxnRequest(compare=compare, success=success),
                                               self._client.timeout, metadata=self._token)
        if not response.succeeded:
            ETCD_TXN_CONFLICTS.inc()
        ranges = [[KeyValue(kv.key.decode(), kv.value, kv.mod_revision) for kv in r.response_range.kvs]
                  for r in response.responses if r.WhichOneof("response") == "response_range"]
        return TxnResult(response.succeeded, response.header.revision, ranges)

    def revision(self) -> int:
        """The store's current revision."""
        with self._calling("reading the revision"):
            return int(self._client.get_response("\0").header.revision)  # an empty read's header

    def lease(self, ttl: int) -> Lease:
        with self._calling("granting a lease"):
            return Lease(self._client.lease(ttl), self._calling)

    def lease_remaining(self, lease_id: int) -> int:
        """Seconds the lease has left (-1: it has ended)."""
        with self._calling("reading a lease"):
            answer = self._client.leasestub.LeaseTimeToLive(etcdrpc.LeaseTimeToLiveRequest(ID=lease_id),
                                                              self._client.timeout, metadata=self._token)
        return int(answer.TTL)

    def watch_prefix(self, prefix: str, on_event: Callable[[str, bytes | None], None],
                     start_revision: int | None = None) -> Callable[[], None]:
        """Calls on_event(key, value or None when deleted) for every change under prefix,
        re-subscribing after a broken stream from the last revision seen. Returns cancel."""
        state: dict[str, Any] = {"revision": start_revision, "watch_id": None, "stopped": False}
        lock = threading.Lock()

        def callback(response: Any) -> None:
            if isinstance(response, Exception):
                if not (state["stopped"] or self._closed):
                    threading.Thread(target=resubscribe, daemon=True, name="etcd-rewatch").start()
                return
            for event in response.events:
                state["revision"] = event.mod_revision + 1
                deleted = isinstance(event, pyetcd.events.DeleteEvent)
                on_event(event.key.decode(), None if deleted else event.value)

        def subscribe() -> None:
            kwargs = {} if state["revision"] is None else {"start_revision": state["revision"]}
            with self._calling(f"watching {prefix}"):
                if self._access.user:  # a watch etcd refuses (a token it no longer takes) ends without a word
                    start = prefix.encode()  # to the client library: ask with the same right first
                    self._client.kvstub.Range(etcdrpc.RangeRequest(key=start, range_end=_prefix_end(start),
                                                                   count_only=True),
                                              self._client.timeout, metadata=self._token)
                state["watch_id"] = self._client.add_watch_prefix_callback(prefix, callback, **kwargs)

        def resubscribe() -> None:
            delay = 0.1
            while not (state["stopped"] or self._closed):
                try:
                    with lock:
                        subscribe()
                    if state["stopped"]:  # cancelled while it was being taken up again
                        cancel()
                    return
                except Unavailable as e:
                    log.warning("etcd watch on %s lost (%s); retrying", prefix, e)
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)

        def cancel() -> None:
            state["stopped"] = True
            watch_id = state["watch_id"]
            if watch_id is not None:
                with contextlib.suppress(Exception):  # closing anyway
                    self._client.cancel_watch(watch_id)

        with lock:
            subscribe()
        return cancel
