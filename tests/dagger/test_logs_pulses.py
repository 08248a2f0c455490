"""Followers woken through etcd when lines arrive at another replica (log pulses), with
the followers' own look-again interval raised far past the test's patience: only a pulse
can wake them."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dagger_svc import logs as logs_module
from dagger_svc.keys import Keys
from dagger_svc.log_pulses import LogPulses
from dagger_svc.logs import STDOUT, LogStore
from dagger_svc.store import Store
from donut_common.etcd import Etcd

PATIENCE = 60.0  # seconds a test waits for a line: far below the raised poll interval, far above any pulse


@pytest.fixture
def replicas(tmp_path: Path, etcd_server: Any, etcd_prefix: str,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, tuple[LogStore, Store]]]:
    """Two replicas' log stores over one logs dir, each with its own etcd client."""
    monkeypatch.setattr(logs_module, "FOLLOW_POLL_SECONDS", 3600.0)
    made = {name: (LogStore(tmp_path), Store(Etcd.connect(etcd_server.endpoint), Keys(etcd_prefix)))
            for name in ("a", "b")}
    yield made
    for logs, store in made.values():
        logs.close()
        store.close()


def follow(logs: LogStore, over: threading.Event) -> tuple[queue.Queue[bytes], threading.Thread]:
    """Follows attempt w/j/1 in a thread; each line read goes into the queue."""
    read: queue.Queue[bytes] = queue.Queue()

    def run() -> None:
        for _, lines in logs.read("w", "j", 1, follow_until=over.is_set):
            for _, text in lines:
                read.put(text)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return read, thread


def test_a_follower_gets_lines_stored_by_another_replica(replicas: dict[str, tuple[LogStore, Store]]) -> None:
    (logs_a, store_a), (logs_b, store_b) = replicas["a"], replicas["b"]
    pulses = [LogPulses(logs_a, store_a, "a").start(), LogPulses(logs_b, store_b, "b").start()]
    over = threading.Event()
    read, follower = follow(logs_b, over)
    try:
        for sequence in range(1, 4):
            logs_a.append("w", "j", 1, [(STDOUT, b"line %d" % sequence)], sequence=sequence)
            assert read.get(timeout=PATIENCE) == b"line %d" % sequence
        assert store_a._etcd.get(store_a.keys.log_pulse("a")) is not None
        assert store_a._etcd.get(store_a.keys.log_pulse("b")) is None  # b stored nothing: no pulse (no echo)
    finally:
        over.set()
        logs_b.wake()
        follower.join(PATIENCE)
        for pulse in pulses:
            pulse.stop()
    assert not follower.is_alive()
    assert store_a._etcd.get(store_a.keys.log_pulse("a")) is None  # a stopped replica leaves no key behind


def test_without_pulses_the_follower_elsewhere_is_not_woken(replicas: dict[str, tuple[LogStore, Store]]) -> None:
    """The control: the same follow with no pulses gets nothing until its look-again
    interval (an hour here), so the previous test's lines came through the pulses."""
    (logs_a, _), (logs_b, _) = replicas["a"], replicas["b"]
    over = threading.Event()
    logs_a.append("w", "j", 1, [(STDOUT, b"before")], sequence=1)
    read, follower = follow(logs_b, over)
    assert read.get(timeout=PATIENCE) == b"before"  # what is there is read at once
    logs_a.append("w", "j", 1, [(STDOUT, b"after")], sequence=2)
    with pytest.raises(queue.Empty):
        read.get(timeout=1.0)
    over.set()
    logs_b.wake()
    follower.join(PATIENCE)
    assert not follower.is_alive()


def test_pulses_are_coalesced_and_none_is_written_while_idle(replicas: dict[str, tuple[LogStore, Store]]) -> None:
    """With an interval longer than the test, a burst of appends is told in one pulse."""
    logs, store = replicas["a"]
    pulses = LogPulses(logs, store, "a", interval=3600.0).start()
    key = store.keys.log_pulse("a")
    try:
        assert store._etcd.get(key) is None  # nothing stored yet: nothing said
        for sequence in range(1, 201):
            logs.append("w", "j", 1, [(STDOUT, b"line %d" % sequence)], sequence=sequence)
        deadline = time.monotonic() + PATIENCE
        while store._etcd.get(key) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        for sequence in range(201, 401):
            logs.append("w", "j", 1, [(STDOUT, b"line %d" % sequence)], sequence=sequence)
        found = store._etcd.get(key)
        assert found is not None and found.value == b"1"  # one pulse for the 400 appends so far
    finally:
        pulses.stop()
