"""How fast the Kubernetes executor turns ready jobs into Jobs, against the test API server
(tests/k8s/fakecluster), whose kubelet runs each pod's `streamed-job` as a stand-in that
exits at once (so what is measured is dagger, the executor and the API, not 500 wrappers
starting on two cores; the executor then reports each attempt from its pod's exit).

A 1-N-1 workflow (default N = 500) at parallelism 100, with `--kube-qps` 20 and 100:
Jobs created per second while the fan-out runs, API requests per second against the limit
(target: the rate limit, not the scheduler, is the bound), and the delay from an attempt's
launch being recorded (its start) to its Job's create request reaching the API server,
p50/p99. Prints, asserts nothing.

    python bench/kubernetes_jobs.py [--width 500] [--qps 20,100]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from donut.dagger.v1 import dagger_pb2 as pb  # noqa: E402
from donut.dagger.v1 import dagger_pb2_grpc  # noqa: E402


def fan(width: int) -> bytes:
    def job(name: str) -> dict[str, object]:
        return {"name": name, "image": "busybox:1.36", "cmd": "true", "args": []}

    middle = [f"m{i:04d}" for i in range(width)]
    return yaml.safe_dump({"jobs": [job("first"), *map(job, middle), job("last")],
                           "neighbors": {"first": middle, **{m: ["last"] for m in middle}}}).encode()


def run(width: int, qps: float, work: Path) -> None:
    from donut_cli.stack import KubeConfig, Stack, StackConfig
    from donut_common.etcd_server import EtcdServer
    from donut_common.rpc import channel
    from tests.k8s.fakecluster import FakeCluster

    stand_in = work / "bin"
    stand_in.mkdir()
    (stand_in / "streamed-job").write_text("#!/bin/sh\nexit 0\n")
    (stand_in / "streamed-job").chmod(0o755)
    workflows = work / "stack" / "workflows"
    workflows.mkdir(parents=True)
    with EtcdServer(work / "etcd", fsync=True, tls=False) as etcd, \
            FakeCluster(work / "cluster", volumes={"donut-workflows": workflows},
                        env={"PATH": f"{stand_in}:/usr/bin:/bin"}) as cluster:
        config = StackConfig(data_dir=work / "stack", port=0, http_port=-1, etcd_endpoints=etcd.endpoint,
                             etcd_prefix="/bench/", executor="kubernetes", kubernetes=KubeConfig(
                                 kubeconfig=str(cluster.kubeconfig), qps=qps, workflows_mount=str(workflows)))
        with Stack(config) as stack:
            connection = channel(stack.endpoint, token=stack.client_token()[0])
            dagger = dagger_pb2_grpc.DaggerStub(connection)
            wall_minus_monotonic = time.time() - time.monotonic()
            started = time.monotonic()
            workflow = dagger.CreateWorkflow(pb.CreateWorkflowRequest(definition=fan(width), parallelism=100))
            for w in dagger.WatchWorkflow(pb.WatchWorkflowRequest(id=workflow.id), timeout=3600):
                if w.status not in (pb.WORKFLOW_STATUS_QUEUED, pb.WORKFLOW_STATUS_RUNNING):
                    break
            elapsed = time.monotonic() - started
            jobs = dagger.GetWorkflow(pb.GetWorkflowRequest(id=workflow.id, include_jobs=True)).jobs
            connection.close()
            made = sorted(r.started + wall_minus_monotonic for r in cluster.requests("create", "jobs"))
            middle = made[1:-1]
            span = middle[-1] - middle[0] if len(middle) > 1 else float("nan")
            requests = [r for r in cluster.requests() if middle[0] <= r.started + wall_minus_monotonic <= middle[-1]]
            # launches and creates paired in order (the n-th launch recorded, the n-th create)
            launched = sorted(job.attempts[0].started_at.ToMicroseconds() / 1e6 for job in jobs if job.attempts)
            delays = sorted(created - at for at, created in zip(launched, made, strict=False))
            done = sum(job.status == pb.JOB_STATUS_SUCCEEDED for job in jobs)
            print(f"--kube-qps {qps:g}: 1-{width}-1 at parallelism 100 done in {elapsed:.1f} s ({done} jobs "
                  f"succeeded); {(len(middle) - 1) / span:.1f} Jobs created/s during the fan-out, "
                  f"{len(requests) / span:.1f} API requests/s (limit {qps:g}/s, bursts of {int(qps * 1.5)})")
            if delays:
                print(f"  launch recorded -> Job create request: p50 {statistics.median(delays) * 1000:.0f} ms, "
                      f"p99 {delays[int(len(delays) * 0.99)] * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--qps", default="20,100")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for qps in (float(q) for q in args.qps.split(",")):
        with tempfile.TemporaryDirectory() as work:
            run(args.width, qps, Path(work))


if __name__ == "__main__":
    main()
