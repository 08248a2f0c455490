"""One attempt's log written by several log stores at once (replicas over one data dir):
each batch stored once, in sequence order, within the size limit of what is in the file."""

from __future__ import annotations

import threading
from pathlib import Path

from dagger_svc.logs import STDOUT, SYSTEM, LogStore


def batch(sequence: int) -> list[tuple[int, bytes]]:
    return [(STDOUT, b"batch %d line 1" % sequence), (STDOUT, b"batch %d line 2" % sequence)]


def stored(store: LogStore) -> list[tuple[int, bytes]]:
    return [line for _, chunk in store.read("w", "j", 1) for line in chunk]


def test_batches_interleaved_and_resent_across_two_stores_are_stored_once_in_order(tmp_path: Path) -> None:
    a, b = LogStore(tmp_path), LogStore(tmp_path)
    assert a.append("w", "j", 1, batch(1), sequence=1) == 1
    assert b.append("w", "j", 1, batch(2), sequence=2) == 2
    assert a.append("w", "j", 1, batch(2), sequence=2) == 2  # a resend, stored by the other store
    assert a.append("w", "j", 1, batch(3), sequence=3) == 3
    assert b.append("w", "j", 1, batch(3), sequence=3) == 3
    assert b.append("w", "j", 1, batch(1), sequence=1) == 3  # a late resend of the first batch
    assert b.append("w", "j", 1, batch(4), sequence=4) == 4
    assert a.append("w", "j", 1, batch(5), sequence=5) == 5
    assert stored(a) == [line for sequence in range(1, 6) for line in batch(sequence)]
    assert stored(LogStore(tmp_path)) == stored(a)
    a.close()
    b.close()


def test_stores_racing_on_one_log_store_every_line_once(tmp_path: Path) -> None:
    """Two stores (threads) each receive every batch, in order, at once: as replicas do when
    a wrapper's stream moves to another one while the first still stores what it had."""
    stores = [LogStore(tmp_path), LogStore(tmp_path)]
    count = 300

    def push(store: LogStore) -> None:
        for sequence in range(1, count + 1):
            store.append("w", "j", 1, batch(sequence), sequence=sequence)

    threads = [threading.Thread(target=push, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stored(stores[0]) == [line for sequence in range(1, count + 1) for line in batch(sequence)]
    for store in stores:
        store.close()


def test_the_size_limit_counts_what_other_stores_wrote(tmp_path: Path) -> None:
    a, b = LogStore(tmp_path, max_bytes=200), LogStore(tmp_path, max_bytes=200)
    b.append("w", "j", 1, [(STDOUT, b"small")], sequence=1)
    a.append("w", "j", 1, [(STDOUT, b"x" * 150)], sequence=2)
    b.append("w", "j", 1, [(STDOUT, b"y" * 60)], sequence=3)  # crosses the limit: b must know a's line
    b.append("w", "j", 1, [(STDOUT, b"z")], sequence=4)
    lines = stored(a)
    assert [text for stream, text in lines if stream == STDOUT] == [b"small", b"x" * 150]
    assert lines[-1][0] == SYSTEM and b"200 bytes" in lines[-1][1]
    a.close()
    b.close()


def test_a_note_after_the_batches_is_kept_when_another_store_gets_a_late_resend(tmp_path: Path) -> None:
    """An unsequenced line (the server's own note on how the attempt ended) written after
    sequenced batches is not taken for a batch cut short by another store."""
    a, b = LogStore(tmp_path), LogStore(tmp_path)
    b.append("w", "j", 1, batch(1), sequence=1)
    a.append("w", "j", 1, batch(2), sequence=2)
    a.append("w", "j", 1, [(SYSTEM, b"the attempt's pod was deleted")])
    a.end("w", "j", 1)
    assert b.append("w", "j", 1, batch(2), sequence=2) == 2
    assert stored(b) == batch(1) + batch(2) + [(SYSTEM, b"the attempt's pod was deleted")]
    a.close()
    b.close()


def test_a_batch_torn_by_another_store_is_dropped_and_its_resend_stored(tmp_path: Path) -> None:
    a, b = LogStore(tmp_path), LogStore(tmp_path)
    a.append("w", "j", 1, batch(1), sequence=1)
    b.append("w", "j", 1, batch(2), sequence=2)
    with open(a.path("w", "j", 1), "ab") as f:
        f.write(b"t1\nobatch 3 li")  # another replica died while writing batch 3
    assert a.append("w", "j", 1, batch(3), sequence=3) == 3
    assert stored(b) == batch(1) + batch(2) + batch(3)
    a.close()
    b.close()


def test_a_resent_batch_counts_its_lines_once(tmp_path: Path) -> None:
    from donut_common.metrics import REGISTRY

    def counted() -> float:
        return REGISTRY.get_sample_value("donut_log_lines_total") or 0.0

    a, b = LogStore(tmp_path), LogStore(tmp_path)
    before = counted()
    a.append("w", "j", 1, batch(1), sequence=1)
    b.append("w", "j", 1, batch(1), sequence=1)  # the same batch, sent again to another replica
    assert counted() - before == len(batch(1))
    a.close()
    b.close()
