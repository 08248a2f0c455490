"""The LogShipper against a real dagger gRPC server: batches, acks, reconnects, spilling."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from donut_common.config import ServerLimits
from streamed_job.shipper import POLL, LogShipper, ShipperSettings, channel_to
from tests.wrapper.conftest import LogServer

STDOUT, STDERR, SYSTEM = 1, 2, 3


def wait_for(predicate: Callable[[], object], timeout: float = 10, what: str = "the condition") -> None:
    """Polls `predicate` every few ms until it is true; fails the test once `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def shipper_for(server: LogServer, **settings: float) -> tuple[LogShipper, str]:
    workflow_id = str(uuid.uuid4())
    shipper = LogShipper(channel_to(server.endpoint), workflow_id, "job", 1, server.grant(workflow_id, "job"),
                         ShipperSettings(**settings))  # type: ignore[arg-type]
    return shipper, workflow_id


def numbered(start: int, count: int) -> list[bytes]:
    return [b"line %d" % i for i in range(start, start + count)]


def test_lines_go_out_in_numbered_batches_in_order(log_server: LogServer) -> None:
    shipper, workflow_id = shipper_for(log_server, batch_bytes=4096)
    expected = []
    for start in range(0, 20_000, 1000):
        lines = numbered(start, 1000)
        shipper.add(STDOUT, lines)
        expected += lines

    assert shipper.close(timeout=10)
    assert log_server.texts(workflow_id, "job") == expected
    # about 4 KiB per batch, every one stored and acknowledged (a resend of batch 0 is dropped,
    # which tells the last sequence stored)
    stored = log_server.logs.append(workflow_id, "job", 1, [], sequence=0)
    assert shipper.acknowledged == stored > 30


def test_a_quiet_line_goes_out_after_the_linger_not_at_close(log_server: LogServer) -> None:
    shipper, workflow_id = shipper_for(log_server, linger=0.05)
    shipper.add(STDERR, [b"alone"])
    wait_for(lambda: log_server.lines(workflow_id, "job"), what="the line to be stored before close")
    assert log_server.lines(workflow_id, "job") == [(STDERR, b"alone")]
    assert shipper.close(timeout=5)


def test_a_quiet_stream_keeps_its_connection(log_server: LogServer) -> None:
    shipper, workflow_id = shipper_for(log_server, ack_timeout=0.5)
    shipper.add(STDOUT, [b"one"])
    wait_for(lambda: shipper.acknowledged >= 1, what="the first batch to be acknowledged")
    # Proves a negative, so it has to sleep: longer than the ack timeout with nothing outstanding,
    # plus two of the sender's polls (it checks the timeout once per POLL) for a wrong reconnect to show.
    time.sleep(shipper.settings.ack_timeout + 2 * POLL)
    shipper.add(STDOUT, [b"two"])
    wait_for(lambda: shipper.acknowledged >= 2, what="the second batch to be acknowledged")
    assert shipper.close(timeout=5)
    assert log_server.texts(workflow_id, "job") == [b"one", b"two"]
    assert shipper.reconnects == 0


def test_a_stream_dagger_ends_for_its_silence_is_opened_again_when_there_is_more(tmp_path: Path) -> None:
    """dagger ends a client stream that sends nothing for a while (a quiet job): the shipper
    opens one only when it has a batch to send, and takes the end as no failure."""
    server = LogServer(tmp_path, ServerLimits(first_message_timeout=0.3, idle_timeout=0.3)).start()
    try:
        shipper, workflow_id = shipper_for(server)
        time.sleep(1.0)  # quiet from the start, longer than the first-message timeout
        shipper.add(STDOUT, [b"one"])
        wait_for(lambda: shipper.acknowledged >= 1, what="the first batch to be acknowledged")
        time.sleep(1.0)  # quiet again, longer than the idle timeout
        shipper.add(STDOUT, [b"two"])
        assert shipper.close(timeout=5)
        assert server.texts(workflow_id, "job") == [b"one", b"two"]
        assert shipper.reconnects == 0
    finally:
        server.stop()
        server.logs.close()


def test_a_dagger_that_stops_acknowledging_is_left_for_a_new_connection(log_server: LogServer) -> None:
    shipper, workflow_id = shipper_for(log_server, ack_timeout=0.3)
    log_server.service.storing.clear()  # stuck: the batch is received, never stored or acknowledged
    shipper.add(STDOUT, [b"one"])
    wait_for(lambda: shipper.reconnects >= 1, what="the shipper to give up on the silent connection")
    log_server.service.storing.set()
    assert shipper.close(timeout=5)
    assert log_server.texts(workflow_id, "job") == [b"one"]
    assert shipper.reconnects >= 1


def test_without_a_valid_token_nothing_is_stored(log_server: LogServer) -> None:
    workflow_id = str(uuid.uuid4())
    shipper = LogShipper(channel_to(log_server.endpoint), workflow_id, "job", 1, "dd_wrong")
    shipper.add(STDOUT, [b"secret"])
    assert not shipper.close(timeout=0.5)
    assert log_server.lines(workflow_id, "job") == []


def test_binary_empty_and_huge_lines_are_stored_as_given(log_server: LogServer) -> None:
    shipper, workflow_id = shipper_for(log_server)
    huge = bytes(range(256)) * (3 * 4096 + 10)  # 3 MiB and a bit: pieces of 1 MiB
    shipper.add(STDOUT, [b"\xff\xfe not utf-8 \x00\x01", b"", "caf\u00e9".encode("latin-1")])
    shipper.add(STDERR, [huge])
    shipper.add(STDOUT, [])
    assert shipper.close(timeout=10)

    stored = log_server.lines(workflow_id, "job")
    assert stored[:3] == [(STDOUT, b"\xff\xfe not utf-8 \x00\x01"), (STDOUT, b""), (STDOUT, b"caf\xe9")]
    pieces = [t for s, t in stored[3:] if s == STDERR]
    # the store turns newlines inside a line into spaces; bytes(range(256)) holds one
    assert b"".join(pieces) == huge.replace(b"\n", b" ")
    assert [len(p) for p in pieces] == [1024 * 1024] * 3 + [len(huge) - 3 * 1024 * 1024]


def test_many_threads_add_at_once(log_server: LogServer) -> None:
    shipper, workflow_id = shipper_for(log_server, batch_bytes=2048)

    def write(n: int) -> None:
        for start in range(0, 5000, 100):
            shipper.add(STDOUT, [b"%d:%d" % (n, i) for i in range(start, start + 100)])

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shipper.close(timeout=10)

    stored = log_server.texts(workflow_id, "job")
    assert len(stored) == 8 * 5000
    for n in range(8):  # each writer's lines in its own order, none lost or doubled
        assert [int(t.split(b":")[1]) for t in stored if t.startswith(b"%d:" % n)] == list(range(5000))


Flowing = tuple[LogShipper, str, Callable[[], None], list[bytes]]


@pytest.fixture
def flowing(log_server: LogServer) -> Iterator[Flowing]:
    """A shipper fed by a thread that adds lines steadily until `halt()` stops it (and waits
    for it to end, so that every line in `sent` was added before the shipper closes)."""
    shipper, workflow_id = shipper_for(log_server, batch_bytes=8192, backoff_max=0.2)
    stop = threading.Event()
    sent: list[bytes] = []

    def feed() -> None:
        start = 0
        while not stop.is_set():
            lines = numbered(start, 200)
            shipper.add(STDOUT, lines)
            sent.extend(lines)
            start += 200
            time.sleep(0.002)  # pacing: a steady producer, not a wait for something to happen

    thread = threading.Thread(target=feed)
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join()

    yield shipper, workflow_id, halt, sent
    halt()


def test_server_restarts_while_lines_flow_nothing_lost_or_doubled(
        log_server: LogServer, flowing: Flowing, monkeypatch: pytest.MonkeyPatch) -> None:
    shipper, workflow_id, halt, sent = flowing
    received = [0]  # batches that reached dagger's push_logs (stuck there while it is not storing)
    push_logs = log_server.service.push_logs

    def counting_push_logs(*args: Any) -> int:
        received[0] += 1
        return push_logs(*args)

    monkeypatch.setattr(log_server.service, "push_logs", counting_push_logs)

    def flow(what: str, until: Callable[[], object] = lambda: True) -> None:
        """Waits for `until` while at least 10,000 more lines are added (6 phases: over 50,000 in all);
        the producer is never held up, not even while dagger is away."""
        lines = len(sent)
        wait_for(lambda: len(sent) >= lines + 10_000 and until(), what=what)

    flow("lines to be acknowledged", lambda: shipper.acknowledged >= 1)
    log_server.service.storing.clear()  # dagger stops storing: batches pile up in flight...
    stuck = received[0]
    flow("a batch to be held at dagger", lambda: received[0] > stuck)
    log_server.stop()                   # ...and are lost with the connection
    log_server.service.storing.set()
    reconnects = shipper.reconnects
    flow("the broken connection to be noticed", lambda: shipper.reconnects > reconnects)
    acked = shipper.acknowledged
    log_server.start()                  # same port, same store (which remembers the last sequence)
    flow("acknowledgements after the restart", lambda: shipper.acknowledged >= acked + 2)
    log_server.stop()                   # once more, without warning
    reconnects = shipper.reconnects
    flow("the second broken connection to be noticed", lambda: shipper.reconnects > reconnects)
    acked = shipper.acknowledged
    log_server.start()
    flow("acknowledgements after the second restart", lambda: shipper.acknowledged >= acked + 2)
    halt()

    assert shipper.close(timeout=20)
    stored = log_server.texts(workflow_id, "job")
    assert len(sent) > 50_000
    assert len(stored) == len(sent)
    assert stored == sent
    assert shipper.reconnects >= 2 and shipper.resent > 0


def test_batches_spill_to_disk_beyond_the_memory_limit_and_come_back_in_order(
        tmp_path: Path, log_server: LogServer) -> None:
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    log_server.stop()  # dagger away: nothing is acknowledged, everything must be kept
    shipper, workflow_id = shipper_for(log_server, batch_bytes=4096, memory_bytes=32 * 1024,
                                       backoff_max=0.1, spill_dir=str(spill_dir))
    expected = []
    for start in range(0, 100_000, 500):
        lines = numbered(start, 500)
        shipper.add(STDOUT, lines)
        expected += lines
    assert shipper.spilled > 100
    assert shipper.peak_memory <= 32 * 1024
    assert list(spill_dir.iterdir()) == []  # the spill file has no name: it goes with the process

    log_server.start()
    assert shipper.close(timeout=20)
    assert log_server.texts(workflow_id, "job") == expected
