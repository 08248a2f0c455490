"""`donut up --replicas`: what `donut cluster` shows, a replica that dies started again under
its id, and no replica outliving a supervisor killed outright."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable

import pytest

from tests.ha.cluster import Cluster, wait_for

pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_dead_replica_is_started_again_under_its_id(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory(replicas=2)
    shown = cluster.donut("cluster", "--json")
    assert shown.returncode == 0, shown.stderr
    replicas = json.loads(shown.stdout)["replicas"]
    assert sorted(r["endpoint"] for r in replicas) == sorted(cluster.endpoints)
    assert set(replicas[0]) == {"id", "endpoint", "pid", "workflows", "started_at", "lease_expires_at",
                                "metrics_url"}
    assert all(r["metrics_url"].startswith("http://127.0.0.1:") and r["lease_expires_at"] for r in replicas)
    victim = replicas[0]
    os.kill(victim["pid"], signal.SIGKILL)

    def again() -> dict[str, object] | None:
        members = cluster.members() or []
        return next((m for m in members if m["id"] == victim["id"] and m["pid"] != victim["pid"]), None)

    back = wait_for(again, 60, "the replica started again")
    assert back["endpoint"] == victim["endpoint"]  # where client.json says it is
    table = cluster.donut("cluster")
    assert table.returncode == 0 and victim["id"] in table.stdout


def test_no_replica_outlives_a_supervisor_killed_outright(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory(replicas=2)
    pids = [m["pid"] for m in cluster.members() or []]
    assert len(pids) == 2
    assert cluster.process is not None
    os.kill(cluster.process.pid, signal.SIGKILL)
    cluster.process.wait()
    wait_for(lambda: not any(alive(pid) for pid in pids), 60, "the replicas to stop with their supervisor")
