"""The replicas' etcd goes away mid-run: restarted at once, or stopped for 30 s. The
replicas ride it out (no process dies), the CLI says plainly that etcd is unavailable
meanwhile, and the workflows finish once it is back."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from donut.dagger.v1 import dagger_pb2 as pb
from donut_common.etcd_server import EtcdServer
from tests.ha.cluster import Cluster, wait_for
from tests.ha.workload import Marks, check_run, marked_job

pytestmark = pytest.mark.slow

OUTAGE = 30.0  # seconds etcd stays stopped


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of this test's own (TLS and client certificates, as in production), which it
    stops and starts again on the same ports and data; set up before the cluster, so that it
    is stopped after it."""
    with EtcdServer(tmp_path / "etcd", fsync=False) as server:
        yield server


def chain(length: int, pause: float) -> dict[str, Any]:
    names = [f"j{i}" for i in range(length)]
    return {"jobs": [marked_job(n, pause) for n in names],
            "neighbors": {a: [b] for a, b in zip(names, names[1:], strict=False)}}


def under_way(cluster: Cluster, workflow_ids: list[str]) -> bool:
    return all((cluster.data_dir / "workflows" / w / "marks").exists() for w in workflow_ids)


def assert_all_done(cluster: Cluster, workflow_ids: list[str], timeout: float) -> None:
    ended = cluster.wait_ended(workflow_ids, timeout=timeout)
    assert all(w.status == pb.WORKFLOW_STATUS_DONE for w in ended.values()), cluster.describe(workflow_ids)
    problems = [p for w in workflow_ids
                for p in check_run(w, Marks.read(cluster.data_dir / "workflows" / w), cluster.jobs(w))]
    assert not problems, "\n".join(problems)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().split(b") ")[-1][:1] != b"Z"
    except OSError:
        return False


def test_workflows_finish_across_an_etcd_restart(own_etcd: EtcdServer,
                                                 cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory(etcd=own_etcd)
    workflow_ids = [cluster.submit(chain(5, pause=0.5), parallelism=1) for _ in range(6)]
    wait_for(lambda: under_way(cluster, workflow_ids), 60, "every workflow under way")
    own_etcd.stop()
    own_etcd.start()
    assert_all_done(cluster, workflow_ids, timeout=120)


def test_etcd_stopped_for_a_while(own_etcd: EtcdServer, cluster_factory: Callable[..., Cluster]) -> None:
    """While etcd is stopped, `donut status` and `donut list` fail with one line saying etcd
    is unavailable, and every replica (and the supervisor) lives on; once it is back, the
    same processes finish the workflows."""
    cluster = cluster_factory(etcd=own_etcd)
    workflow_ids = [cluster.submit(chain(4, pause=0.5), parallelism=1) for _ in range(4)]
    wait_for(lambda: under_way(cluster, workflow_ids), 60, "every workflow under way")
    before = {m["id"]: m["pid"] for m in cluster.members() or ()}
    assert len(before) == 3
    processes = [*before.values(), cluster.process.pid]  # type: ignore[union-attr]

    own_etcd.stop()
    stopped = time.monotonic()
    try:
        for args in (("status", workflow_ids[0]), ("list",)):
            done = cluster.donut(*args)
            assert done.returncode != 0, done.stdout
            assert "etcd unavailable" in done.stderr and "Traceback" not in done.stderr, done.stderr
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
            print(f"\ndonut {' '.join(args)} while etcd is stopped: {done.stderr.strip()}")
        while time.monotonic() - stopped < OUTAGE:
            assert all(alive(pid) for pid in processes), (before, cluster.tail())
            time.sleep(0.5)
    finally:
        own_etcd.start()
    back = time.monotonic()

    assert_all_done(cluster, workflow_ids, timeout=120)
    print(f"every workflow done {time.monotonic() - back:.1f} s after etcd was back")
    wait_for(lambda: {m["id"]: m["pid"] for m in cluster.members() or ()} == before, 60,
             "the same replicas, with the same pids, listed again")
    assert all(alive(pid) for pid in processes)
