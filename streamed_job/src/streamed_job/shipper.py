"""Ships a job's output to dagger over `PushLogs`, so that no line is lost or stored twice.

Lines are gathered into batches (closed by size or by age) numbered 1, 2, 3... per
attempt. A batch stays here until dagger acknowledges it; when the connection drops, the
shipper reconnects with bounded backoff and sends every unacknowledged batch again, and
dagger, which stores a batch only if its sequence is above the last one it stored, keeps
each batch once. dagger ends a stream that stays silent (a quiet job), so a stream is
opened only once there is a batch to send, and such an end is no failure. Batches are kept
serialised, so a resend costs no re-encoding; beyond a memory limit they spill to an
unnamed temporary file and are read back in order, so a slow or absent dagger never makes
the wrapper grow without bound or hold up the command.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import grpc

from donut.dagger.v1 import dagger_pb2 as pb

log = logging.getLogger(__name__)

PUSH_LOGS = "/donut.dagger.v1.Dagger/PushLogs"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_LINE_BYTES = 1024 * 1024   # longer lines go out in pieces (the pump splits them already)
LINE_OVERHEAD = 8              # protobuf framing per line, near enough for size accounting
POLL = 0.2                     # seconds: how often a waiting sender looks at its connection


@dataclass(frozen=True)
class ShipperSettings:
    batch_bytes: int = 256 * 1024
    """A batch is sent once its lines add up to about this many bytes..."""
    linger: float = 0.05
    """...or once its first line has waited this many seconds."""
    memory_bytes: int = 16 * 1024 * 1024
    """Unacknowledged batches kept in memory; beyond this they spill to a temporary file."""
    spill_dir: str | None = None
    """Where the spill file is made (None: the system's temporary directory)."""
    backoff_initial: float = 0.05
    """Seconds before the first reconnect after a dropped connection; doubled each time..."""
    backoff_max: float = 2.0
    """...up to this."""
    ack_timeout: float = 30.0
    """A connection with batches sent and no acknowledgement for this long is replaced."""


def channel_to(endpoint: str, tls_ca: str = "") -> grpc.Channel:
    """A channel with the services' message limits whose own reconnects are as quick as the
    shipper's backoff (gRPC's default waits up to two minutes between tries); TLS when the
    spec carries the CA (PEM text) to trust."""
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if tls_ca:
        credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca.encode())
        return grpc.secure_channel(endpoint, credentials, options=options)
    return grpc.insecure_channel(endpoint, options=options)


@dataclass
class _Batch:
    sequence: int
    size: int
    data: bytes | None  # the serialised LogBatch, or None when it is in the spill file
    offset: int = 0        # where it is in the spill file


class _Connection:
    """One PushLogs call: its sender stops once `over` is set."""

    def __init__(self) -> None:
        self.over = False
        self.call: grpc.Call | None = None


class LogShipper:
    """Takes output lines from any thread (`add`) and delivers them to dagger in order.

    `close(timeout)` sends what is left with `last=True` and waits for dagger to
    acknowledge everything.
    """

    def __init__(self, channel: grpc.Channel, workflow_id: str, job: str, attempt: int,
                 token: str = "", settings: ShipperSettings = ShipperSettings()) -> None:
        self.settings = settings
        self._push = channel.stream_stream(PUSH_LOGS, request_serializer=None,  # batches are bytes already
                                           response_deserializer=pb.LogAck.FromString)
        self._identity = (workflow_id, job, attempt)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._cond = threading.Condition()
        self._open: list[bytes] = []   # encoded lines of the batch being gathered
        self._open_bytes = 0
        self._open_since = 0.0
        self._unacked: deque[_Batch] = deque()
        self._sealed = 0               # sequence of the newest batch
        self._acked = 0                # every batch up to this one is stored
        self._sent = 0                 # the highest sequence handed to gRPC
        self._ack_progress = time.monotonic()  # the last ack, or when the oldest unacked batch left
        self._memory = 0               # bytes of unacknowledged batches held in memory
        self._spill: BinaryIO | None = None  # unnamed: it goes away with the process
        self._spill_end = 0
        self._spilled_now = 0          # unacknowledged batches in the spill file
        self._last = False             # the final batch is sealed: nothing more is taken
        self._stopping = False
        self._connection: _Connection | None = None
        # what happened, for tests, benchmarks and the wrapper's own diagnostics
        self.lines = 0
        self.reconnects = 0
        self.resent = 0
        self.spilled = 0
        self.peak_memory = 0
        self._thread = threading.Thread(target=self._run, name="log-shipper", daemon=True)
        self._thread.start()

    # ---- the producer side (any thread) ----------------------------------------------

    def add(self, stream: int, lines: Iterable[bytes]) -> None:
        """Queues lines (bytes without their newline) of one stream; never blocks on dagger."""
        fragments = _encode(stream, lines, self.settings.batch_bytes)
        if not fragments:
            return
        with self._cond:
            if self._last:
                log.warning("log lines added after the shipper was closed were dropped")
                return
            wake = not self._open  # a waiting sender gets a deadline, or a batch to send
            for data, count in fragments:
                if not self._open:
                    self._open_since = time.monotonic()
                self._open.append(data)
                self._open_bytes += len(data)
                self.lines += count
                if self._open_bytes >= self.settings.batch_bytes:
                    self._seal()
                    wake = True
            if wake:
                self._cond.notify_all()

    def close(self, timeout: float) -> bool:
        """Sends the rest as the last batch and waits up to `timeout` seconds for dagger to
        acknowledge everything; True when it did. Stops the shipper either way."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if not self._last:
                self._seal(last=True)
                self._cond.notify_all()
            while self._acked < self._sealed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            delivered = self._acked >= self._sealed
            if not delivered:
                log.warning("dagger has not acknowledged log batches %d to %d; they are lost",
                            self._acked + 1, self._sealed)
                self._stopping = True
                self._cond.notify_all()
            connection = self._connection
        if not delivered and connection is not None and connection.call is not None:
            connection.call.cancel()
        # Delivered: the stream was half-closed after the last batch and ends by itself.
        self._thread.join(timeout=5)
        with self._cond:
            self._stopping = True
            if self._spill is not None:
                self._spill.close()
                self._spill = None
        return delivered

    @property
    def acknowledged(self) -> int:
        """The highest sequence dagger has stored."""
        with self._cond:
            return self._acked

    # ---- batches (called with the lock held) -----------------------------------------

    def _seal(self, last: bool = False) -> None:
        self._sealed += 1
        workflow_id, job, attempt = self._identity
        header = pb.LogBatch(workflow_id=workflow_id, job=job, attempt=attempt,
                             sequence=self._sealed).SerializeToString()
        # Serialised messages concatenate into their merge: the header, then every line.
        data = header + b"".join(self._open)
        self._open, self._open_bytes = [], 0
        self._last = last
        batch = _Batch(self._sealed, len(data), data)
        if self._memory + batch.size > self.settings.memory_bytes:
            self._spill_out(batch)
        else:
            self._memory += batch.size
            self.peak_memory = max(self.peak_memory, self._memory)
        self._unacked.append(batch)

    def _spill_out(self, batch: _Batch) -> None:
        if self._spill is None:
            self._spill = tempfile.TemporaryFile(  # noqa: SIM115 - kept until `close`
                prefix="streamed-job-logs-", dir=self.settings.spill_dir)
        assert batch.data is not None
        batch.offset = self._spill_end
        written = 0
        while written < batch.size:
            written += os.pwrite(self._spill.fileno(), batch.data[written:], batch.offset + written)
        self._spill_end += batch.size
        batch.data = None
        self._spilled_now += 1
        self.spilled += 1

    def _load(self, batch: _Batch) -> bytes:
        if batch.data is not None:
            return batch.data
        assert self._spill is not None
        data = os.pread(self._spill.fileno(), batch.size, batch.offset)
        if len(data) != batch.size:
            raise OSError(f"log spill file: batch {batch.sequence} is cut short")
        return data

    def _seal_if_due(self) -> float | None:
        """Seals the gathering batch if it has lingered long enough; else the seconds until it has."""
        if not self._open:
            return None
        wait = self._open_since + self.settings.linger - time.monotonic()
        if wait <= 0:
            self._seal()
            return None
        return wait

    def _acknowledge(self, sequence: int) -> None:
        with self._cond:
            if sequence <= self._acked:
                return
            if sequence > self._sealed:
                log.warning("dagger acknowledged log batch %d, beyond the last one sent (%d)", sequence, self._sealed)
                sequence = self._sealed
            self._acked = sequence
            self._ack_progress = time.monotonic()
            while self._unacked and self._unacked[0].sequence <= sequence:
                batch = self._unacked.popleft()
                if batch.data is None:
                    self._spilled_now -= 1
                else:
                    self._memory -= batch.size
            if self._spill is not None and self._spilled_now == 0 and self._spill_end:
                os.ftruncate(self._spill.fileno(), 0)
                self._spill_end = 0
            self._cond.notify_all()

    # ---- the connection (the shipper thread and gRPC's sender thread) ----------------

    def _run(self) -> None:
        delay = self.settings.backoff_initial
        while True:
            with self._cond:
                self._wait_for_a_batch()
                if self._stopping or (self._last and self._acked >= self._sealed):
                    return
                connection = self._connection = _Connection()
                self._ack_progress = time.monotonic()
            call = self._push(self._requests(connection), metadata=self._metadata)
            connection.call = call
            problem, silent = "the stream ended", False
            try:
                for ack in call:
                    self._acknowledge(ack.sequence)
                    delay = self.settings.backoff_initial
            except grpc.RpcError as e:
                problem = f"{e.code().name}: {e.details()}"
                silent = e.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # dagger ends a stream that sends nothing
            finally:
                with self._cond:
                    connection.over = True
                    self._cond.notify_all()
                call.cancel()
            with self._cond:
                if self._stopping or (self._last and self._acked >= self._sealed):
                    return
                if silent and self._acked >= self._sent:
                    continue  # nothing was lost: the next batch opens a new stream
                self.reconnects += 1
                log.warning("log stream to dagger broken (%s); reconnecting in %.2fs", problem, delay)
                resume = time.monotonic() + delay
                while not self._stopping and time.monotonic() < resume:
                    self._cond.wait(resume - time.monotonic())
            delay = min(delay * 2, self.settings.backoff_max)

    def _wait_for_a_batch(self) -> None:
        """Waits (lock held) until a batch is sealed and unacknowledged, or the shipper stops:
        a stream is opened only with something to send, since dagger ends silent ones."""
        while not (self._stopping or self._last) and self._sealed <= self._acked:
            wait = self._seal_if_due()
            if wait is None and self._sealed > self._acked:
                return  # it just sealed the gathering batch
            self._cond.wait(wait)

    def _requests(self, connection: _Connection) -> Iterator[bytes]:
        """The batches of one connection: every unacknowledged one, then each new one."""
        following = 1
        while True:
            with self._cond:
                batch = self._next_batch(connection, following)
            if batch is None:
                return
            following, data = batch
            yield data
            following += 1

    def _next_batch(self, connection: _Connection, following: int) -> tuple[int, bytes] | None:
        """(sequence, data) of the first unacknowledged batch from `following` on, once
        there is one; None when the connection should end. Called with the lock held."""
        while not (connection.over or self._stopping):
            following = max(following, self._acked + 1)
            if following <= self._sealed:
                if following <= self._sent:
                    self.resent += 1
                self._sent = max(self._sent, following)
                if following - 1 <= self._acked:
                    self._ack_progress = time.monotonic()  # the oldest unacknowledged batch leaves now
                return following, self._load(self._unacked[following - self._unacked[0].sequence])
            if self._last:
                return None  # everything is sent: half-close; the acks still come
            if following - 1 > self._acked and time.monotonic() - self._ack_progress > self.settings.ack_timeout:
                log.warning("no acknowledgement from dagger for %.0fs; reconnecting", self.settings.ack_timeout)
                if connection.call is not None:
                    connection.call.cancel()
                return None
            wait = self._seal_if_due()
            if wait is None and following <= self._sealed:
                continue  # it just sealed the gathering batch
            self._cond.wait(POLL if wait is None else min(wait, POLL))
        return None


def _encode(stream: int, lines: Iterable[bytes], limit: int) -> list[tuple[bytes, int]]:
    """(serialised lines, how many) in fragments of about `limit` bytes each."""
    fragments = []
    message = pb.LogBatch()
    add = message.lines.add
    size = count = 0
    for text in lines:
        pieces = [text] if len(text) <= MAX_LINE_BYTES else [
            text[i:i + MAX_LINE_BYTES] for i in range(0, len(text), MAX_LINE_BYTES)]
        for piece in pieces:
            add(stream=stream, text=piece)
            size += len(piece) + LINE_OVERHEAD
            count += 1
            if size >= limit:
                fragments.append((message.SerializeToString(), count))
                message = pb.LogBatch()
                add = message.lines.add
                size = count = 0
    if count:
        fragments.append((message.SerializeToString(), count))
    return fragments
