"""The LogShipper against a real dagger gRPC server: batches, acks, reconnects, spilling."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamed_job.shipper import LogShipper, ShipperSettings, channel_to
from tests.wrapper.conftest import LogServer

STDOUT, STDERR, SYSTEM = 1, 2, 3


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
    # about 4 KiB per batch, every one acknowledged, the last one empty and marked last
    assert shipper.acknowledged == log_server.logs.last_sequence(workflow_id, "job", 1) > 30


def test_a_quiet_line_goes_out_after_the_linger_not_at_close(log_server: LogServer) -> None:
    shipper, workflow_id = shipper_for(log_server, linger=0.05)
    shipper.add(STDERR, [b"alone"])
    deadline = time.monotonic() + 2
    while not log_server.lines(workflow_id, "job") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log_server.lines(workflow_id, "job") == [(STDERR, b"alone")]
    assert shipper.close(timeout=5)


def test_a_quiet_stream_keeps_its_connection(log_server: LogServer) -> None:
    shipper, workflow_id = shipper_for(log_server, ack_timeout=1.0)
    shipper.add(STDOUT, [b"one"])
    time.sleep(1.5)  # longer than the ack timeout, with nothing outstanding
    shipper.add(STDOUT, [b"two"])
    time.sleep(0.2)
    assert shipper.close(timeout=5)
    assert log_server.texts(workflow_id, "job") == [b"one", b"two"]
    assert shipper.reconnects == 0


def test_a_dagger_that_stops_acknowledging_is_left_for_a_new_connection(log_server: LogServer) -> None:
    shipper, workflow_id = shipper_for(log_server, ack_timeout=0.3)
    log_server.service.storing.clear()  # stuck: the batch is received, never stored or acknowledged
    shipper.add(STDOUT, [b"one"])
    time.sleep(1.0)
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


@pytest.fixture
def flowing(log_server: LogServer) -> Iterator[tuple[LogShipper, str, threading.Event, list[bytes]]]:
    """A shipper fed by a thread that adds lines steadily until told to stop."""
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
            time.sleep(0.002)

    thread = threading.Thread(target=feed)
    thread.start()
    yield shipper, workflow_id, stop, sent
    stop.set()
    thread.join()


def test_server_restarts_while_lines_flow_nothing_lost_or_doubled(
        log_server: LogServer, flowing: tuple[LogShipper, str, threading.Event, list[bytes]]) -> None:
    shipper, workflow_id, stop, sent = flowing
    time.sleep(0.3)
    log_server.service.storing.clear()  # dagger stops storing: batches pile up in flight...
    time.sleep(0.3)
    log_server.stop()                   # ...and are lost with the connection
    log_server.service.storing.set()
    time.sleep(0.3)
    log_server.start()                  # same port, same store (which remembers the last sequence)
    time.sleep(0.3)
    log_server.stop()                   # once more, without warning
    time.sleep(0.3)
    log_server.start()
    time.sleep(0.3)
    stop.set()
    time.sleep(0.05)

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
