"""The log store: sequenced batches stored once, even across a restart."""

from __future__ import annotations

import resource
import signal
from pathlib import Path
from typing import Any

import pytest

from dagger_svc.logs import STDERR, STDOUT, SYSTEM, LogStore


def lines(store: LogStore) -> list[tuple[int, bytes]]:
    return [line for _, chunk in store.read("w", "j", 1) for line in chunk]


def test_resent_batches_are_stored_once(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    assert store.append("w", "j", 1, [(STDOUT, b"one")], sequence=1) == 1
    assert store.append("w", "j", 1, [(STDOUT, b"one")], sequence=1) == 1
    assert store.append("w", "j", 1, [(STDERR, b"two"), (STDOUT, b"\xff\xfe")], sequence=2) == 2
    assert lines(store) == [(STDOUT, b"one"), (STDERR, b"two"), (STDOUT, b"\xff\xfe")]


def test_the_last_sequence_survives_a_restart_and_a_torn_batch_is_dropped(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.append("w", "j", 1, [(STDOUT, b"a")], sequence=1)
    store.append("w", "j", 1, [(STDOUT, b"b")], sequence=2)
    store.close()
    with open(store.path("w", "j", 1), "ab") as f:
        f.write(b"oc\noppartial")  # batch 3 cut short by a crash: lines but no sequence line
    again = LogStore(tmp_path)
    assert again.append("w", "j", 1, [(STDOUT, b"b")], sequence=2) == 2  # a resend: dropped
    assert again.append("w", "j", 1, [(STDOUT, b"c"), (STDOUT, b"d")], sequence=3) == 3
    assert lines(again) == [(STDOUT, b"a"), (STDOUT, b"b"), (STDOUT, b"c"), (STDOUT, b"d")]


def test_offsets_and_unsequenced_appends(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.append("w", "j", 1, [(STDOUT, b"x%d" % i) for i in range(10)])
    read = [line for _, chunk in store.read("w", "j", 1, offset=7) for line in chunk]
    assert read == [(STDOUT, b"x7"), (STDOUT, b"x8"), (STDOUT, b"x9")]
    store.close()
    assert LogStore(tmp_path).append("w", "j", 1, [(STDOUT, b"y")]) == 0


def test_each_batch_is_stored_with_when_it_was_received(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    store = LogStore(tmp_path, clock=lambda: now[0])
    store.append("w", "j", 1, [(STDOUT, b"a"), (STDERR, b"b")], sequence=1)
    now[0] += 1.5
    store.append("w", "j", 1, [(STDOUT, b"c")], sequence=2)
    assert [line for _, chunk in store.read_timed("w", "j", 1) for line in chunk] == [
        (STDOUT, b"a", 1_800_000_000_000), (STDERR, b"b", 1_800_000_000_000), (STDOUT, b"c", 1_800_000_001_500)]
    assert [line for _, chunk in store.read_timed("w", "j", 1, offset=2) for line in chunk] == [
        (STDOUT, b"c", 1_800_000_001_500)]  # the times are not lines
    store.close()
    older = store.path("w", "j", 2)
    older.write_bytes(b"q0\noold\nq1\n")  # written before logs had times
    assert list(LogStore(tmp_path).read_timed("w", "j", 2)) == [(0, [(STDOUT, b"old", 0)])]


def test_a_torn_first_batch_is_dropped(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.append("w", "j", 1, [(STDOUT, b"hello")], sequence=1)
    store.close()
    path = store.path("w", "j", 1)
    path.write_bytes(path.read_bytes()[:5])  # cut inside batch 1: "q0\noh"
    again = LogStore(tmp_path)
    assert again.append("w", "j", 1, [(STDOUT, b"hello"), (STDOUT, b"world")], sequence=1) == 1
    assert lines(again) == [(STDOUT, b"hello"), (STDOUT, b"world")]


def test_a_marker_cut_short_is_dropped_with_its_batch(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.append("w", "j", 1, [(STDOUT, b"a")], sequence=1)
    store.append("w", "j", 1, [(STDOUT, b"b")], sequence=12)
    store.close()
    path = store.path("w", "j", 1)
    path.write_bytes(path.read_bytes()[:-2])  # "...ob\nq1": the marker of batch 12 cut short
    again = LogStore(tmp_path)
    assert again.append("w", "j", 1, [(STDOUT, b"b")], sequence=12) == 12
    assert lines(again) == [(STDOUT, b"a"), (STDOUT, b"b")]


def test_recovery_finds_a_marker_far_back_and_across_read_boundaries(tmp_path: Path) -> None:
    for filler in (65536 - 9, 65536 - 3, 65536, 200_000):
        store = LogStore(tmp_path / str(filler))
        store.append("w", "j", 1, [(STDOUT, b"a")], sequence=7)
        store.close()
        path = store.path("w", "j", 1)
        with open(path, "ab") as f:
            f.write(b"o" + b"x" * filler)  # a long batch cut short before its marker
        again = LogStore(tmp_path / str(filler))
        assert again.append("w", "j", 1, [(STDOUT, b"b")], sequence=8) == 8
        assert lines(again) == [(STDOUT, b"a"), (STDOUT, b"b")]


def test_a_failed_write_is_not_acknowledged(tmp_path: Path) -> None:
    """The file can't grow (as on a full disk: here a file size limit) while a batch is
    written: the batch is not acknowledged, and its resend is stored once there is room."""
    store = LogStore(tmp_path)
    store.append("w", "j", 1, [(STDOUT, b"one")], sequence=1)
    size = store.path("w", "j", 1).stat().st_size
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    no_signal = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, limits[1]))
        with pytest.raises(OSError):
            store.append("w", "j", 1, [(STDOUT, b"two")], sequence=2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, no_signal)
    assert store.append("w", "j", 1, [(STDOUT, b"two")], sequence=2) == 2  # the resend is stored
    assert lines(store) == [(STDOUT, b"one"), (STDOUT, b"two")]


def test_reading_back_goes_in_batches_bounded_by_bytes(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    piece = b"x" * (1024 * 1024)  # the longest a stored line gets (longer output is cut into pieces)
    store.append("w", "j", 1, [(STDOUT, piece)] * 20)
    store.append("w", "j", 1, [(STDOUT, b"end")])
    batches = list(store.read("w", "j", 1))
    assert sum(len(lines) for _, lines in batches) == 21
    assert max(sum(len(text) for _, text in lines) for _, lines in batches) <= 5 * 1024 * 1024
    assert [index for index, _ in batches] == [sum(len(b[1]) for b in batches[:i]) for i in range(len(batches))]


def test_open_log_files_are_bounded_and_a_reopened_one_still_drops_resends(tmp_path: Path) -> None:
    import os

    store = LogStore(tmp_path, max_open=3)
    for attempt in range(1, 41):  # forty attempts pushing and never ending
        assert store.append("w", "j", attempt, [(STDOUT, b"line %d" % attempt)], sequence=1) == 1
    fd_dir = Path("/proc/self/fd")
    open_logs = [fd for fd in os.listdir(fd_dir) if str(tmp_path) in os.path.realpath(fd_dir / fd)]
    assert len(open_logs) <= 3
    assert store.append("w", "j", 1, [(STDOUT, b"line 1")], sequence=1) == 1  # reopened: still a resend
    assert [lines for _, lines in store.read("w", "j", 1)] == [[(STDOUT, b"line 1")]]
    store.close()


def test_an_attempt_log_is_cut_at_its_limit_with_a_note_and_resends_still_drop(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_bytes=130, clock=lambda: 1.8e9)
    for sequence in range(1, 6):  # 5 batches of two 20-byte lines and 18 of markers: over the limit from the third
        store.append("w", "j", 1, [(STDOUT, b"%019d" % (2 * sequence - 1)), (STDOUT, b"%019d" % (2 * sequence))],
                     sequence=sequence)
    assert store.append("w", "j", 1, [(STDOUT, b"x")], sequence=5) == 5  # a resend, still dropped
    lines = [line for _, batch in store.read("w", "j", 1) for line in batch]
    assert [text for stream, text in lines if stream == STDOUT] == [b"%019d" % i for i in range(1, 5)]
    assert lines[-1][0] == SYSTEM and b"130 bytes" in lines[-1][1]
    assert sum(1 for stream, _ in lines if stream == SYSTEM) == 1
    store.close()
    again = LogStore(tmp_path, max_bytes=130)  # after a restart: still cut, no second note
    assert again.append("w", "j", 1, [(STDOUT, b"more")], sequence=6) == 6
    assert [line for _, batch in again.read("w", "j", 1) for line in batch] == lines


@pytest.mark.parametrize("executor", ["local", "wrapper"])
def test_a_job_printing_past_the_limit_keeps_running_and_its_log_is_cut(stack_config: Any, executor: str) -> None:
    import dataclasses

    from donut.dagger.v1 import dagger_pb2 as pb
    from donut_cli.stack import Stack
    from tests.dagger.conftest import Driver, sh

    config = dataclasses.replace(stack_config, executor=executor, max_log_bytes=4096)
    with Stack(config) as stack:
        stack.admin_token = stack.client_token()[0]
        driver = Driver(stack)
        workflow_id = driver.submit([sh('seq 1 5000; echo done > finished', "chatty")])
        assert driver.wait(workflow_id).status == pb.WORKFLOW_STATUS_DONE
        assert (driver.workdir(workflow_id) / "finished").exists()
        lines = [line for m in driver.stub.TailLogs(pb.TailLogsRequest(workflow_id=workflow_id, job="chatty"))
                 for line in m.lines]
        printed = [line.text for line in lines if line.stream == pb.LOG_STREAM_STDOUT]
        assert printed == [b"%d" % i for i in range(1, len(printed) + 1)] and 500 < len(printed) < 2000
        notes = [line.text for line in lines if line.stream == pb.LOG_STREAM_SYSTEM]
        assert any(b"limit of 4096 bytes" in note for note in notes), notes
        driver.close()


@pytest.mark.parametrize("count", [1, 3, 250, 999, 1000, 5000])
def test_a_tail_starts_at_the_last_lines_with_their_index_and_time(tmp_path: Path, count: int) -> None:
    now = [1000.0]
    store = LogStore(tmp_path, clock=lambda: now[0])
    for batch in range(100):  # sequenced batches of 10 lines, received a second apart
        now[0] += 1
        store.append("w", "j", 1, [(STDERR if i % 2 else STDOUT, b"%d" % (batch * 10 + i)) for i in range(10)],
                     sequence=batch + 1)
    with open(store.path("w", "j", 1), "ab") as f:
        f.write(b"ounfinished")  # a line still being written is no line yet

    read = [(index, chunk) for index, chunk in store.read_timed("w", "j", 1, tail=count, batch=7)]

    got = [line for _, chunk in read for line in chunk]
    whole = [line for _, chunk in store.read_timed("w", "j", 1) for line in chunk]
    assert got == whole[-count:]
    assert read[0][0] == max(1000 - count, 0)  # the index of its first line
    assert got[0][2] == (1001 + (1000 - min(count, 1000)) // 10) * 1000  # when its batch was received
    assert [line for _, chunk in store.read_timed("w", "j", 1, offset=995, tail=count) for line in chunk] == \
        whole[max(995, 1000 - count):]  # an offset past the tail's start wins


def test_a_tail_of_an_old_log_without_markers_and_of_none(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.append("w", "j", 1, [(STDOUT, b"%d" % i) for i in range(100_000)])
    assert [line[:2] for _, chunk in store.read_timed("w", "j", 1, tail=2) for line in chunk] == [
        (STDOUT, b"99998"), (STDOUT, b"99999")]
    assert list(store.read_timed("w", "j", 2, tail=5)) == []
