"""A replica paused past its lease (SIGSTOP: a GC pause, a partition) while it owns running
workflows: the others take them over; resumed (SIGCONT), it writes nothing stale and
launches nothing in the runs it lost, and it rejoins."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from donut.dagger.v1 import dagger_pb2 as pb
from tests.ha.cluster import Cluster, claims, etcd_client, wait_for
from tests.ha.workload import Marks, check_run, marked_job

pytestmark = pytest.mark.slow

ENDED = {"succeeded", "failed", "terminated", "dead", "skipped"}
RANK = {"waiting": 0, "queued": 1, "running": 2}  # any ended status: 3


def progress(record: dict[str, Any]) -> tuple[int, int, int]:
    """Where a job record stands; the versions of one job never go down in this order (a
    lost attempt puts the job back to queued, but with one more ended attempt)."""
    return (record.get("attempt", 0), len(record.get("attempts", ())),
            RANK.get(record.get("status", "waiting"), 3))


class RecordWatch:
    """Every version of every job record, in etcd's order: finds one that went backwards
    (a stale write) or rewrote an ended attempt."""

    def __init__(self, cluster: Cluster) -> None:
        self.etcd = etcd_client(cluster.etcd)
        self.prefix = cluster.prefix + "jobs/"
        self.last: dict[str, dict[str, Any]] = {}
        self.backwards: list[str] = []
        self.lock = threading.Lock()
        self.cancel = self.etcd.watch_prefix(self.prefix, self.seen, start_revision=self.etcd.revision() + 1)

    def seen(self, key: str, value: bytes | None) -> None:
        if value is None:
            return
        record = json.loads(value)
        with self.lock:
            before = self.last.get(key)
            self.last[key] = record
        if before is None:
            return
        ended_before = before.get("attempts", [])
        if progress(record) < progress(before) or record.get("attempts", [])[:len(ended_before)] != ended_before:
            self.backwards.append(f"{key[len(self.prefix):]}: {before} -> {record}")

    def close(self) -> None:
        self.cancel()
        self.etcd.close()


def chain(length: int, pause: float) -> dict[str, Any]:
    names = [f"j{i}" for i in range(length)]
    return {"jobs": [marked_job(n, pause) for n in names],
            "neighbors": {a: [b] for a, b in zip(names, names[1:], strict=False)}}


def test_a_replica_stopped_past_its_lease_writes_nothing_stale_and_rejoins(
        cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory(extra=("-v",))
    watch = RecordWatch(cluster)
    etcd = etcd_client(cluster.etcd)
    try:
        workflow_ids = [cluster.submit(chain(8, pause=1.0), parallelism=1) for _ in range(6)]

        def busiest() -> tuple[dict[str, Any], set[str]] | None:
            owners = claims(etcd, cluster.prefix)
            for member in sorted(cluster.members() or (), key=lambda m: -list(owners.values()).count(m["id"])):
                owned = {run for run, owner in owners.items() if owner == member["id"]}
                running = [run for run in owned if (cluster.data_dir / "workflows" / run / "marks").exists()]
                if running:
                    return member, owned
            return None

        victim, owned = wait_for(busiest, 60, "a replica owning running workflows")
        cluster.signal(victim["pid"], signal.SIGSTOP)
        stopped_at = time.time()
        try:
            wait_for(lambda: all(claims(etcd, cluster.prefix).get(run) not in (victim["id"],) for run in owned),
                     30, "its runs taken over")
            wait_for(lambda: cluster.listed(victim["id"]) is False, 30, "the stopped replica unlisted")

            def relaunched() -> bool:  # every run it owned has a job launched by another replica since
                for run in owned:
                    marks = Marks.read(cluster.data_dir / "workflows" / run).attempts.values()
                    if not any(m.replica_pid != victim["pid"] and (m.start or 0) > stopped_at * 1e9 for m in marks):
                        return False
                return True

            wait_for(relaunched, 30, "a job launched in each of its runs by another replica")
        finally:
            resumed_at = time.time()
            cluster.signal(victim["pid"], signal.SIGCONT)

        wait_for(lambda: cluster.listed(victim["id"]), 30, "the resumed replica listed again")
        rejoined = next(m for m in cluster.members() or () if m["id"] == victim["id"])
        ended = cluster.wait_ended(workflow_ids, timeout=120)
    finally:
        watch.close()
        etcd.close()

    stalled = (f"replica {victim['id']} pid {victim['pid']} owned {sorted(owned)}; stopped at "
               f"{stopped_at * 1e9:.0f} ns, resumed at {resumed_at * 1e9:.0f} ns\n")
    assert all(w.status == pb.WORKFLOW_STATUS_DONE for w in ended.values()), stalled + cluster.describe(workflow_ids)
    assert not watch.backwards, stalled + "\n".join(watch.backwards)
    problems = []
    for workflow_id in workflow_ids:
        marks = Marks.read(cluster.data_dir / "workflows" / workflow_id)
        problems += check_run(workflow_id, marks, cluster.jobs(workflow_id))
        if workflow_id in owned:
            problems += [f"{workflow_id}/{job} attempt {n} launched by the resumed replica"
                         for (job, n), m in marks.attempts.items()
                         if m.replica_pid == victim["pid"] and (m.start or 0) > resumed_at * 1e9]
    assert not problems, stalled + "\n".join(problems)
    print(f"\nreplica {victim['id']} (pid {victim['pid']}) stopped {resumed_at - stopped_at:.1f} s with "
          f"{len(owned)} runs; listed again with pid {rejoined['pid']}")
