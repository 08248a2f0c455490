"""`donut_workflows{status}`: how many workflows etcd holds in each status, for Prometheus.

Counted when scraped, from the workflow records (one paged read), at most once per
`every` seconds however often Prometheus comes. When the read fails (etcd away) the
scrape still answers, with the last figures: a monitoring page must not go down with
what it watches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dagger_svc.core.records import WorkflowStatus
from dagger_svc.store import Store

log = logging.getLogger(__name__)

NAME = "donut_workflows"
REFRESH_SECONDS = 5.0


class WorkflowCounts(Collector):
    """A collector of the workflows by status (every status, 0 included, once read)."""

    def __init__(self, store: Store, every: float = REFRESH_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.every = every
        self.clock = clock
        self._lock = threading.Lock()  # one read at a time; concurrent scrapes share it
        self._counts: Counter[str] | None = None  # None: never read
        self._read_at = float("-inf")

    def counts(self) -> Counter[str] | None:
        """Workflows by status value, read again when the last read is `every` seconds old
        (also when that read failed: an absent etcd is not asked at every scrape)."""
        with self._lock:
            now = self.clock()
            if now - self._read_at >= self.every:
                self._read_at = now
                try:
                    self._counts = Counter(w.status.value for w in self.store.workflows())
                except Exception as e:  # noqa: BLE001 - etcd away, most likely: the last figures stand
                    log.warning("cannot count the workflows (%s); the metrics keep the last count", e)
            return self._counts

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        counts = self.counts()
        if counts is not None:
            for status in WorkflowStatus:
                family.add_metric([status.value], counts[status.value])
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(NAME, "Workflows stored, by status.", labels=["status"])
