"""Fixtures of the fault-injection tests: clusters of replicas (tests/ha/cluster.py) that are
always stopped, whatever the test did to them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from donut_common.etcd_server import EtcdServer
from tests.ha.cluster import Cluster


@pytest.fixture
def cluster_factory(tmp_path: Path, etcd_server: EtcdServer, etcd_prefix: str) -> Iterator[Callable[..., Cluster]]:
    """Starts clusters (on the session's etcd unless told another) and stops them all at the end."""
    made: list[Cluster] = []

    def make(replicas: int = 3, etcd: EtcdServer | None = None, extra: tuple[str, ...] = (),
             name: str = "cluster") -> Cluster:
        cluster = Cluster(tmp_path / name, etcd or etcd_server, etcd_prefix, replicas=replicas, extra=extra)
        made.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop()
