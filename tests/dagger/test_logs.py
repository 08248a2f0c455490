"""The log store: sequenced batches stored once, even across a restart."""

from __future__ import annotations

from pathlib import Path

from dagger_svc.logs import STDERR, STDOUT, LogStore


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
