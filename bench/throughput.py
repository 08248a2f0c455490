"""Throughput under concurrent clients, and how long a job's end takes to reach etcd.

Starts an etcd (fsync and TLS on, as in production) and `donut up` on it in a separate process,
then N client threads, each with its own gRPC channel, submit their share of the
workflows back to back (each CreateWorkflow awaited) and then wait for every one of them
to end (WatchWorkflow); every workflow must end done. With --closed-loop each client
waits for a workflow to end before it submits the next (at most N runs at a time).
Each workflow is 10 `/bin/sh -c` jobs shaped 1 -> 8 -> 1 whose last act is to write the
wall-clock time they end to `$DONUT_WORKFLOW_DIR/end.$DONUT_JOB_NAME`. A watch on the
jobs' etcd keys, opened in this process before the first submission, notes when each
job's `succeeded` state arrives.

The floor, in the same run once donut has stopped: the same `/bin/sh -c` processes of all
N workflows (same command, same DONUT_* variables they read) run in dependency order
on a pool of clients x parallelism threads, no persistence, no gRPC. That is as many
jobs at once as donut runs when each client has one workflow at a time under way, and
more than two cores can use (spawning a process is what costs), so the pool's size
never holds the floor back; donut may run more at once (every workflow under way at
its parallelism), which gains it nothing on these cores.

Prints, asserts nothing: the parameters; workflows/min and jobs/s from the first submission
to the last workflow ending; the floor's wall time and donut's wall time / floor; the
CreateWorkflow round trip (p50, p99); and the recording lag of every job, its process
ending -> its `succeeded` seen in etcd (p50, p90, p99, max). A warm-up workflow runs
first and is not counted.

    python bench/throughput.py [--workflows N] [--clients N] [--parallelism N] [--closed-loop]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from donut_common.etcd_server import EtcdServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PREFIX = "/bench/"
MIDDLE = 8  # jobs between the first and the last
JOBS = ["first", *(f"m{i}" for i in range(MIDDLE)), "last"]  # 10 per workflow
END = 'date +%s.%N > "$DONUT_WORKFLOW_DIR/end.$DONUT_JOB_NAME"'  # the job's last act; it exits right after


def definition() -> str:
    """10 jobs: first -> m0..m7 -> last, each recording the time it ends."""
    middle = JOBS[1:-1]
    jobs = [{"name": n, "image": "busybox", "cmd": "/bin/sh", "args": ["-c", END]} for n in JOBS]
    return json.dumps({"jobs": jobs, "neighbors": {"first": middle, **{m: ["last"] for m in middle}}})


def floor(work: Path, workflows: int, threads: int) -> float:
    """Wall time of the same processes of `workflows` workflows run in dependency order on
    a pool of `threads` threads, with nothing recorded anywhere."""
    middle = JOBS[1:-1]
    sorter: TopologicalSorter[tuple[int, str]] = TopologicalSorter()
    for w in range(workflows):
        for m in middle:
            sorter.add((w, m), (w, "first"))
            sorter.add((w, "last"), (w, m))
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    done: queue.SimpleQueue[tuple[int, str] | BaseException] = queue.SimpleQueue()

    def run(node: tuple[int, str]) -> None:
        w, job = node
        directory = work / f"floor-{w}"
        try:
            directory.mkdir(exist_ok=True)
            subprocess.run(["/bin/sh", "-c", END], cwd=directory, check=True, stdin=subprocess.DEVNULL,
                           env={**base, "DONUT_WORKFLOW_DIR": str(directory), "DONUT_JOB_NAME": job})
            done.put(node)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
            done.put(e)

    start = time.perf_counter()
    sorter.prepare()
    with ThreadPoolExecutor(threads) as pool:
        while sorter.is_active():
            for node in sorter.get_ready():
                pool.submit(run, node)
            finished = done.get()
            if isinstance(finished, BaseException):
                raise RuntimeError(f"a floor job failed: {finished}") from finished
            sorter.done(finished)
    return time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank q-th percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class SucceededWatch:
    """An etcd watch on every job key: the wall-clock time each job's `succeeded` was first seen."""

    def __init__(self, etcd: EtcdServer) -> None:
        from donut_common.etcd import Etcd

        self.seen: dict[str, float] = {}  # "<workflow id>/<job>" -> time.time()
        self._lock = threading.Lock()
        self._etcd = Etcd.connect(etcd.endpoint, access=etcd.access)
        jobs = PREFIX + "jobs/"
        self._strip = len(jobs)
        self._cancel: Callable[[], None] = self._etcd.watch_prefix(
            jobs, self._on_event, start_revision=self._etcd.revision() + 1)

    def _on_event(self, key: str, value: bytes | None) -> None:
        now = time.time()
        if value is None or b"succeeded" not in value or json.loads(value).get("status") != "succeeded":
            return
        with self._lock:
            self.seen.setdefault(key[self._strip:], now)

    def count(self, keys: list[str]) -> int:
        with self._lock:
            return sum(k in self.seen for k in keys)

    def close(self) -> None:
        self._cancel()
        self._etcd.close()


class Donut:
    """A `donut up` process on an external etcd."""

    def __init__(self, work: Path, etcd: EtcdServer) -> None:
        home = work / "home"
        self.data = work / "data"
        self.log = work / "donut-up.log"
        env = {**os.environ, "DONUT_HOME": str(home)}
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "donut_cli", "up", "--data-dir", str(self.data), "--port", "0",
                 "--http-port", "-1", "--etcd-endpoints", etcd.endpoint, "--etcd-prefix", PREFIX,
                 "--etcd-ca", str(etcd.access.ca), "--etcd-cert", str(etcd.access.cert),
                 "--etcd-key", str(etcd.access.key)],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        config = home / "client.json"
        deadline = time.time() + 60
        while not config.exists():
            if time.time() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"donut up did not start; its output:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.05)
        client = json.loads(config.read_text())
        self.endpoint: str = client["endpoint"]
        self.token: str = client["token"]

    def stub(self) -> Any:
        """A Dagger stub on a channel of its own."""
        from donut.dagger.v1 import dagger_pb2_grpc
        from donut_common.rpc import channel

        return dagger_pb2_grpc.DaggerStub(channel(self.endpoint, token=self.token))

    def end_time(self, workflow_id: str, job: str) -> float:
        return float((self.data / "workflows" / workflow_id / f"end.{job}").read_text())

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Client:
    """One client thread's share of the run."""

    workflows: int
    parallelism: int
    closed_loop: bool
    ids: list[str] = field(default_factory=list)
    submit_seconds: list[float] = field(default_factory=list)
    first_submit: float = math.inf  # perf_counter
    last_end: float = 0.0           # perf_counter
    error: BaseException | None = None

    def run(self, stub: Any, text: bytes, start: threading.Barrier) -> None:
        try:
            start.wait()
            self._run(stub, text)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
            self.error = e

    def _run(self, stub: Any, text: bytes) -> None:
        from donut.dagger.v1 import dagger_pb2 as pb

        for _ in range(self.workflows):
            before = time.perf_counter()
            created = stub.CreateWorkflow(pb.CreateWorkflowRequest(definition=text, parallelism=self.parallelism))
            self.submit_seconds.append(time.perf_counter() - before)
            self.first_submit = min(self.first_submit, before)
            self.ids.append(created.id)
            if self.closed_loop:
                self._wait(stub, [created.id])
        if not self.closed_loop:
            self._wait(stub, self.ids)

    def _wait(self, stub: Any, ids: list[str]) -> None:
        for workflow_id in ids:
            wait_ended(stub, workflow_id)
            self.last_end = time.perf_counter()


def wait_ended(stub: Any, workflow_id: str) -> None:
    """Waits for the workflow to end; raises unless it ended done."""
    from donut.dagger.v1 import dagger_pb2 as pb

    ended = None
    for w in stub.WatchWorkflow(pb.WatchWorkflowRequest(id=workflow_id), timeout=3600):
        if w.status not in (pb.WORKFLOW_STATUS_QUEUED, pb.WORKFLOW_STATUS_RUNNING):
            ended = w
            break
    if ended is None:
        raise RuntimeError(f"workflow {workflow_id}: the watch ended before the workflow did")
    if ended.status != pb.WORKFLOW_STATUS_DONE:
        raise RuntimeError(f"workflow {workflow_id} ended {pb.WorkflowStatus.Name(ended.status)}: {ended.message}")


def bench(work: Path, etcd: EtcdServer, args: argparse.Namespace) -> None:
    text = definition().encode()
    donut = Donut(work, etcd)
    watch: SucceededWatch | None = None
    try:
        watch = SucceededWatch(etcd)
        from donut.dagger.v1 import dagger_pb2 as pb

        warm = donut.stub()  # a warm-up workflow, not counted
        request = pb.CreateWorkflowRequest(definition=text, parallelism=args.parallelism)
        wait_ended(warm, warm.CreateWorkflow(request).id)

        share, extra = divmod(args.workflows, args.clients)
        clients = [Client(share + (i < extra), args.parallelism, args.closed_loop) for i in range(args.clients)]
        start = threading.Barrier(len(clients))
        threads = [threading.Thread(target=c.run, args=(donut.stub(), text, start), name=f"client-{i}")
                   for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for c in clients:
            if c.error is not None:
                raise RuntimeError(f"a client failed: {c.error}") from c.error
        wall = max(c.last_end for c in clients) - min(c.first_submit for c in clients)

        keys = [f"{wid}/{job}" for c in clients for wid in c.ids for job in JOBS]
        deadline = time.time() + 30
        while watch.count(keys) < len(keys) and time.time() < deadline:
            time.sleep(0.05)
        lags = [watch.seen[k] - donut.end_time(*k.split("/", 1)) for k in keys if k in watch.seen]
        submits = [s for c in clients for s in c.submit_seconds]
    finally:
        if watch is not None:
            watch.close()
        donut.stop()
    threads = args.clients * args.parallelism
    floor_wall = floor(work, args.workflows, threads)

    workflows = sum(len(c.ids) for c in clients)
    print(f"workflows {workflows}, {len(JOBS)} jobs each (1 -> {MIDDLE} -> 1), clients {args.clients}, "
          f"parallelism {args.parallelism}, {'closed loop' if args.closed_loop else 'all submitted at once'}, "
          f"etcd fsync on, {os.cpu_count()} CPUs")
    print(f"wall {wall:.2f} s: {workflows / wall * 60:,.0f} workflows/min, {len(keys) / wall:,.0f} jobs/s")
    print(f"floor (same processes, dependency order, {threads} threads, no persistence) {floor_wall:.2f} s: "
          f"{workflows / floor_wall * 60:,.0f} workflows/min; donut / floor {wall / floor_wall:.2f}")
    print(f"submit (CreateWorkflow round trip): p50 {percentile(submits, 50) * 1000:.1f} ms, "
          f"p99 {percentile(submits, 99) * 1000:.1f} ms")
    if len(lags) < len(keys):
        print(f"recording lag: {len(keys) - len(lags)} of {len(keys)} jobs never seen succeeded in etcd")
    if lags:
        print(f"recording lag (process end -> succeeded in etcd, {len(lags)} jobs): "
              f"p50 {percentile(lags, 50):.3f} s, p90 {percentile(lags, 90):.3f} s, "
              f"p99 {percentile(lags, 99):.3f} s, max {max(lags):.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflows", type=int, default=200, help="workflows in the run (default 200)")
    parser.add_argument("--clients", type=int, default=10, help="concurrent gRPC clients (default 10)")
    parser.add_argument("--parallelism", type=int, default=4, help="parallelism of each workflow (default 4)")
    parser.add_argument("--closed-loop", action="store_true",
                        help="each client waits for a workflow to end before submitting the next")
    args = parser.parse_args()
    if args.workflows < 1 or args.clients < 1 or args.parallelism < 1:
        parser.error("--workflows, --clients and --parallelism must be at least 1")
    args.clients = min(args.clients, args.workflows)
    from donut_common.etcd_server import EtcdServer

    with tempfile.TemporaryDirectory(prefix="donut-bench-") as work:
        etcd = EtcdServer(Path(work) / "etcd", fsync=True).start()
        try:
            bench(Path(work), etcd, args)
        finally:
            etcd.stop()


if __name__ == "__main__":
    main()
