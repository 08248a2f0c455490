"""Active-active replicas: what a second and third replica change, how soon a killed one's
runs are taken over, and what a job costs etcd.

Starts an etcd (fsync and TLS on, as in production), then `donut up --replicas N` on it
(tests/ha/cluster.py drives it as the fault-injection tests do) for N = 1, 2, 3 in turn,
each on a key prefix of its own. Each gets the same work: W workflows of 10 `true` jobs
(1 -> 8 -> 1, parallelism 4) submitted back to back by C client threads, each with
channels of its own to every replica, used in turn; every workflow must end done.

- jobs launched per second: jobs / (the last attempt's launch - the first submission),
  the launch times as the attempts' records have them; and the ratio to 1 replica. Two
  cores run every replica here, so expect little gain from more, but no loss.
- etcd transactions per finished job: etcd's revision grows by one per write transaction
  (and per lease expiry that deletes keys), so (revision after - before) / jobs, the
  submissions' writes included.
- takeover: 3 replicas run workflows that are chains of short sleeps; every lease TTL + 3 s
  a replica that owns runs is SIGKILLed (the supervisor starts it again); per kill, the
  time from the SIGKILL to the first attempt launched in a run it owned (p50, p99, max).

Prints, asserts nothing.

    python bench/ha.py [--workflows N] [--clients N] [--kills N] [--lease-ttl S]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from donut_common.etcd_server import EtcdServer
    from tests.ha.cluster import Cluster

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIDDLE = [f"m{i}" for i in range(8)]
JOBS = 10


def small_workflow() -> bytes:
    """10 `true` jobs: first -> m0..m7 -> last."""
    jobs = [{"name": n, "image": "busybox", "cmd": "true", "args": []} for n in ["first", *MIDDLE, "last"]]
    return json.dumps({"jobs": jobs, "neighbors": {"first": MIDDLE, **{m: ["last"] for m in MIDDLE}}}).encode()


def long_chain(length: int, pause: float) -> dict[str, Any]:
    names = [f"j{i}" for i in range(length)]
    jobs = [{"name": n, "image": "busybox", "cmd": "sleep", "args": [str(pause)]} for n in names]
    return {"jobs": jobs, "neighbors": {a: [b] for a, b in zip(names, names[1:], strict=False)}}


def seconds(timestamp: Any) -> float:
    return float(timestamp.seconds + timestamp.nanos / 1e9)


def submit_all(cluster: Cluster, workflows: int, clients: int) -> tuple[list[str], float]:
    """The workflows, submitted by `clients` threads back to back; their ids and the time
    of the first submission."""
    from donut.dagger.v1 import dagger_pb2 as pb
    from donut.dagger.v1 import dagger_pb2_grpc
    from donut_common.rpc import channel

    request = pb.CreateWorkflowRequest(definition=small_workflow(), parallelism=4)
    share, extra = divmod(workflows, clients)
    ids: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)
    first = [float("inf")]

    def client(count: int) -> None:
        channels = [channel(e, token=cluster.token) for e in cluster.endpoints]
        try:
            stubs = [dagger_pb2_grpc.DaggerStub(c) for c in channels]
            start.wait()
            with lock:
                first[0] = min(first[0], time.time())
            for i in range(count):
                created = stubs[i % len(stubs)].CreateWorkflow(request, timeout=60).id
                with lock:
                    ids.append(created)
        except BaseException as e:  # noqa: BLE001 - raised by the main thread
            errors.append(e)
        finally:
            for c in channels:
                c.close()

    threads = [threading.Thread(target=client, args=(share + (i < extra),)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]}") from errors[0]
    return ids, first[0]


def launch_rate(work: Path, etcd: EtcdServer, replicas: int, args: argparse.Namespace) -> tuple[float, float]:
    """Jobs launched per second, and etcd write transactions per finished job."""
    from donut.dagger.v1 import dagger_pb2 as pb
    from tests.ha.cluster import Cluster, etcd_client, wait_for

    cluster = Cluster(work / f"replicas-{replicas}", etcd, f"/bench-{replicas}/", replicas=replicas,
                      lease_ttl=args.lease_ttl).start()
    client = etcd_client(etcd)
    try:
        warm = cluster.submit(json.loads(small_workflow()))
        cluster.wait_ended([warm], timeout=60)
        before = client.revision()
        ids, first_submit = submit_all(cluster, args.workflows, args.clients)
        unfinished = pb.ListWorkflowsRequest(statuses=[pb.WORKFLOW_STATUS_QUEUED, pb.WORKFLOW_STATUS_RUNNING],
                                             page_size=1)
        wait_for(lambda: not cluster.call("ListWorkflows", unfinished).workflows, 3600, "every workflow to end",
                 every=0.5)
        after = client.revision()
        not_done = [w.id for w in cluster.all_workflows() if w.id in ids and w.status != pb.WORKFLOW_STATUS_DONE]
        if not_done:
            raise RuntimeError(f"{len(not_done)} workflows did not end done, e.g. {not_done[0]}")
        last_launch = max(seconds(a.started_at) for w in ids for j in cluster.jobs(w).values() for a in j.attempts)
    finally:
        client.close()
        cluster.stop()
    jobs = len(ids) * JOBS
    return jobs / (last_launch - first_submit), (after - before) / jobs


def takeover_times(work: Path, etcd: EtcdServer, args: argparse.Namespace) -> list[float]:
    """Per SIGKILL of a replica owning runs: seconds to the first launch in one of its runs."""
    from donut.dagger.v1 import dagger_pb2 as pb
    from tests.ha.cluster import Cluster, claims, etcd_client

    cluster = Cluster(work / "takeover", etcd, "/bench-takeover/", replicas=3, lease_ttl=args.lease_ttl).start()
    client = etcd_client(etcd)
    interval = args.lease_ttl + 3
    kills: list[tuple[float, set[str]]] = []
    try:
        length = int(args.kills * interval / 0.3) + 20  # outlasts the kills
        ids = [cluster.submit(long_chain(length, 0.3), parallelism=1) for _ in range(12)]
        while len(kills) < args.kills:
            time.sleep(interval)
            owners = claims(client, cluster.prefix)
            candidates = [m for m in cluster.members() or () if m["id"] in owners.values()]
            if not candidates:
                continue
            victim = max(candidates, key=lambda m: list(owners.values()).count(m["id"]))
            at = time.time()
            try:
                os.kill(victim["pid"], signal.SIGKILL)
            except ProcessLookupError:
                continue
            kills.append((at, {run for run, owner in owners.items() if owner == victim["id"]}))
        time.sleep(interval)
        launches = {w: [seconds(a.started_at) for j in cluster.jobs(w).values() for a in j.attempts
                        if a.HasField("started_at")] for w in ids}
        for w in ids:
            cluster.call("CancelWorkflow", pb.CancelWorkflowRequest(id=w))
    finally:
        client.close()
        cluster.stop()
    found = []
    for at, owned in kills:
        after = [t for run in owned for t in launches.get(run, []) if t > at]
        if after:
            found.append(min(after) - at)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflows", type=int, default=200, help="workflows per replica count (default 200)")
    parser.add_argument("--clients", type=int, default=10, help="concurrent gRPC clients (default 10)")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs for the takeover times (default 10)")
    parser.add_argument("--lease-ttl", type=int, default=3, help="the replicas' lease TTL, seconds (default 3)")
    args = parser.parse_args()
    if min(args.workflows, args.clients, args.kills, args.lease_ttl) < 1:
        parser.error("--workflows, --clients, --kills and --lease-ttl must be at least 1")
    args.clients = min(args.clients, args.workflows)
    from donut_common.etcd_server import EtcdServer
    from tests.ha.cluster import percentile

    print(f"{args.workflows} workflows of {JOBS} `true` jobs (1 -> 8 -> 1, parallelism 4) from {args.clients} "
          f"clients; lease TTL {args.lease_ttl} s; etcd fsync on; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="donut-bench-ha-") as work:
        etcd = EtcdServer(Path(work) / "etcd", fsync=True).start()
        try:
            rates: dict[int, float] = {}
            for replicas in (1, 2, 3):
                rates[replicas], txns = launch_rate(Path(work), etcd, replicas, args)
                print(f"{replicas} replica(s): {rates[replicas]:,.0f} jobs launched/s "
                      f"(ratio to 1 replica {rates[replicas] / rates[1]:.2f}), {txns:.2f} etcd write txns per job")
            times = takeover_times(Path(work), etcd, args)
        finally:
            etcd.stop()
    if times:
        print(f"takeover (SIGKILL -> first launch in a run it owned), {len(times)} kills: "
              f"p50 {percentile(times, 50):.2f} s, p99 {percentile(times, 99):.2f} s, max {max(times):.2f} s")
    else:
        print("takeover: no kill hit a replica owning runs")


if __name__ == "__main__":
    main()
