"""Load on three replicas: 1,000 workflows of 10 trivial jobs submitted by 20 concurrent
clients all finish, none is lost; the throughput is printed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from donut.dagger.v1 import dagger_pb2 as pb
from donut.dagger.v1 import dagger_pb2_grpc
from donut_common.rpc import channel
from tests.ha.cluster import Cluster, wait_for

pytestmark = pytest.mark.slow

WORKFLOWS = 1000
CLIENTS = 20
MIDDLE = [f"m{i}" for i in range(8)]


def definition() -> bytes:
    """10 `true` jobs shaped 1 -> 8 -> 1."""
    jobs = [{"name": n, "image": "busybox", "cmd": "true", "args": []} for n in ["first", *MIDDLE, "last"]]
    return json.dumps({"jobs": jobs, "neighbors": {"first": MIDDLE, **{m: ["last"] for m in MIDDLE}}}).encode()


class Client(threading.Thread):
    """One client: channels of its own to every replica, used in turn; submits its share back to back."""

    def __init__(self, cluster: Cluster, count: int, start: threading.Barrier) -> None:
        super().__init__(daemon=True)
        self.channels = [channel(e, token=cluster.token) for e in cluster.endpoints]
        self.stubs = [dagger_pb2_grpc.DaggerStub(c) for c in self.channels]
        self.count = count
        self.start_together = start
        self.ids: list[str] = []
        self.first_submit = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            request = pb.CreateWorkflowRequest(definition=definition(), parallelism=4)
            self.start_together.wait()
            self.first_submit = time.time()
            for i in range(self.count):
                self.ids.append(self.stubs[i % len(self.stubs)].CreateWorkflow(request, timeout=60).id)
        except BaseException as e:  # noqa: BLE001 - raised by the test's thread
            self.error = e


def test_a_thousand_workflows_from_twenty_clients(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory()
    start = threading.Barrier(CLIENTS)
    clients = [Client(cluster, WORKFLOWS // CLIENTS, start) for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
        for made in client.channels:
            made.close()
    errors = [c.error for c in clients if c.error is not None]
    assert not errors, errors[:3]
    submitted = {w for c in clients for w in c.ids}
    assert len(submitted) == WORKFLOWS

    def unfinished() -> int:
        request = pb.ListWorkflowsRequest(statuses=[pb.WORKFLOW_STATUS_QUEUED, pb.WORKFLOW_STATUS_RUNNING],
                                          page_size=1000)
        return len(cluster.call("ListWorkflows", request).workflows)

    wait_for(lambda: unfinished() == 0, 300, "every workflow to end", every=1.0)
    listed: dict[str, Any] = {w.id: w for w in cluster.all_workflows()}
    assert set(listed) == submitted, f"{len(submitted - set(listed))} lost, {len(set(listed) - submitted)} unknown"
    statuses = {pb.WorkflowStatus.Name(w.status) for w in listed.values()}
    assert statuses == {"WORKFLOW_STATUS_DONE"}, statuses
    jobs = sum(w.job_counts.get("succeeded", 0) for w in listed.values())
    assert jobs == WORKFLOWS * 10

    first = min(c.first_submit for c in clients)
    last = max(w.finished_at.seconds + w.finished_at.nanos / 1e9 for w in listed.values())
    wall = last - first
    print(f"\n{WORKFLOWS} workflows of 10 jobs from {CLIENTS} clients on 3 replicas: {wall:.1f} s, "
          f"{WORKFLOWS / wall:.1f} workflows/s, {jobs / wall:.0f} jobs/s")
