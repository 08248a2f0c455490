"""Log followers woken when lines arrive at another replica.

Replicas share their log files (one data dir, or a shared volume in a cluster), but a
follower sleeps on its own process's signal, which another replica's append never gives.
So each replica that stores lines says so through etcd, as cheaply as it can: one small
key of its own (`<prefix>log-pulses/<replica>`), overwritten from a background thread at
most every PULSE_INTERVAL while lines keep arriving (however many attempts they are of),
never on the append path, and not at all while no line arrives. Every replica watches
those keys and wakes its local followers on any other replica's pulse: each looks at its
file again (a follower whose file did not grow goes back to sleep).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dagger_svc.logs import LogStore
from dagger_svc.store import Store
from donut_common.errors import Unavailable

log = logging.getLogger(__name__)

PULSE_INTERVAL = 0.1  # seconds: the most a follower elsewhere waits beyond etcd's own delay, and the pulses' rate


class LogPulses:
    def __init__(self, logs: LogStore, store: Store, replica: str, interval: float = PULSE_INTERVAL) -> None:
        self.logs = logs
        self.store = store
        self.replica = replica
        self.interval = interval
        self._due = threading.Event()  # lines were stored since the last pulse
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._cancel_watch: Callable[[], None] | None = None
        self._count = 0

    def start(self) -> LogPulses:
        """Wakes local followers on other replicas' pulses, and pulses on local appends."""
        self._cancel_watch = self.store.watch_log_pulses(self._pulsed, self.store.current_revision())
        self.logs.on_stored(self._due.set)
        self._thread = threading.Thread(target=self._run, name="log-pulses", daemon=True)
        self._thread.start()
        return self

    def _pulsed(self, replica: str) -> None:
        if replica != self.replica:
            self.logs.wake()

    def _run(self) -> None:
        while True:
            self._due.wait()
            if self._stopping.is_set():
                return
            self._due.clear()
            self._count += 1
            try:
                self.store.pulse_logs(self.replica, self._count)
            except Unavailable as e:  # followers elsewhere still look again every FOLLOW_POLL_SECONDS
                log.warning("could not tell the other replicas of new log lines: %s", e)
            if self._stopping.wait(self.interval):
                return

    def stop(self) -> None:
        self._stopping.set()
        self._due.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._cancel_watch is not None:
            self._cancel_watch()
            self._cancel_watch = None
            try:
                self.store.end_log_pulses(self.replica)
            except Unavailable as e:
                log.warning("could not remove this replica's log pulse key: %s", e)
