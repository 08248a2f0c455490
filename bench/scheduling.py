"""Scheduling overhead: donut against a bare thread pool running the same commands.

Starts `donut up` (its own etcd, fsync on, as in production) in a separate process, then
for each DAG shape of `true` jobs measures the wall time from the CreateWorkflow RPC to
the finished state, and the wall time of a minimal baseline in this process: the same
commands in the same dependency order on a thread pool of the same size, no persistence.
Also prints what a user waits for at the command line: `donut submit --wait --json` of
the chain shape from outside, beside the CLI's own start-up with one call (`donut status
--json` of an ended workflow), so what the CLI adds to the RPC figure shows; definition
validation time for 10,000 jobs; and the scheduler's CPU per job at 1,000 and 10,000 jobs
(CPU of the donut process itself, not of the jobs).

    python bench/scheduling.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from graphlib import TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

Dag = dict[str, list[str]]  # job -> jobs after it


def chain(n: int) -> Dag:
    return {f"c{i}": [f"c{i + 1}"] if i < n - 1 else [] for i in range(n)}


def wide(n: int) -> Dag:
    middle = [f"m{i}" for i in range(n)]
    return {"first": middle, **{m: ["last"] for m in middle}, "last": []}


def grid(layers: int, width: int) -> Dag:
    def name(layer: int, i: int) -> str:
        return f"g{layer}-{i}"

    return {name(layer, i): [name(layer + 1, k) for k in range(width)] if layer < layers - 1 else []
            for layer in range(layers) for i in range(width)}


def definition(dag: Dag) -> str:
    jobs = [{"name": n, "image": "busybox", "cmd": "true", "args": []} for n in dag]
    return json.dumps({"jobs": jobs, "neighbors": {n: kids for n, kids in dag.items() if kids}})


def baseline(dag: Dag, parallelism: int) -> float:
    """Runs `true` for every job in dependency order with a pool of `parallelism` threads."""
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for job, kids in dag.items():
        sorter.add(job)
        for kid in kids:
            sorter.add(kid, job)
    done: queue.SimpleQueue[str] = queue.SimpleQueue()
    start = time.perf_counter()
    sorter.prepare()
    with ThreadPoolExecutor(parallelism) as pool:
        def run(job: str) -> None:
            subprocess.run(["true"], check=True)
            done.put(job)

        while sorter.is_active():
            for job in sorter.get_ready():
                pool.submit(run, job)
            sorter.done(done.get())
    return time.perf_counter() - start


class Donut:
    """A `donut up` process and a client of it."""

    def __init__(self, work: Path) -> None:
        self.work = work
        home = work / "home"
        self.env = env = {**os.environ, "DONUT_HOME": str(home)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "donut_cli", "up", "--data-dir", str(work / "data"), "--port", "0",
             "--http-port", "-1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        config = home / "client.json"
        deadline = time.time() + 60
        while not config.exists():
            if time.time() > deadline or self.process.poll() is not None:
                raise RuntimeError("donut up did not start")
            time.sleep(0.05)
        from donut.dagger.v1 import dagger_pb2, dagger_pb2_grpc
        from donut_common.rpc import channel

        self.pb = dagger_pb2
        client = json.loads(config.read_text())
        self.stub = dagger_pb2_grpc.DaggerStub(channel(client["endpoint"], token=client["token"]))

    def run(self, dag: Dag, parallelism: int) -> float:
        pb = self.pb
        text = definition(dag)
        start = time.perf_counter()
        created = self.stub.CreateWorkflow(pb.CreateWorkflowRequest(definition=text.encode(), parallelism=parallelism))
        for w in self.stub.WatchWorkflow(pb.WatchWorkflowRequest(id=created.id), timeout=3600):
            if w.status not in (pb.WORKFLOW_STATUS_QUEUED, pb.WORKFLOW_STATUS_RUNNING):
                break
        elapsed = time.perf_counter() - start
        if w.status != pb.WORKFLOW_STATUS_DONE:
            raise RuntimeError(f"workflow ended {w.status}: {w.message}")
        return elapsed

    def cli(self, *args: str) -> tuple[float, str]:
        """(wall seconds, stdout) of one `donut` command, from outside."""
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "donut_cli", *args], env=self.env, capture_output=True,
                              text=True, check=True)
        return time.perf_counter() - start, done.stdout

    def cli_wait(self, dag: Dag, parallelism: int) -> tuple[float, float]:
        """(`donut submit --wait --json` seconds, `donut status --json` seconds of that workflow)."""
        path = self.work / "definition.json"
        path.write_text(definition(dag))
        waited, out = self.cli("submit", "--wait", "--json", "--parallelism", str(parallelism), str(path))
        status, _ = self.cli("status", "--json", json.loads(out)["id"])
        return waited, status

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


def validation_seconds(jobs: int, as_yaml: bool) -> float:
    from dagger_svc.core.definition import parse_definition

    text = definition(wide(jobs - 2))
    if as_yaml:
        import yaml

        text = yaml.safe_dump(json.loads(text))
    start = time.perf_counter()
    parse_definition(text)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each shape (the median is printed)")
    parser.add_argument("--skip-cpu", action="store_true", help="skip the 1k/10k CPU-per-job runs")
    args = parser.parse_args()
    shapes = [("chain 50 (P=1)", chain(50), 1), ("wide 1-200-1 (P=8)", wide(200), 8),
              ("grid 20x10 (P=8)", grid(20, 10), 8)]
    with tempfile.TemporaryDirectory(prefix="donut-bench-") as work:
        donut = Donut(Path(work))
        try:
            donut.run(chain(5), 1)  # warm up
            print(f"{'shape':<22} {'jobs':>5} {'donut s':>9} {'baseline s':>11} {'ratio':>7}")
            for label, dag, parallelism in shapes:
                ours = statistics.median(donut.run(dag, parallelism) for _ in range(args.repeat))
                base = statistics.median(baseline(dag, parallelism) for _ in range(args.repeat))
                print(f"{label:<22} {len(dag):>5} {ours:>9.3f} {base:>11.3f} {ours / base:>7.2f}")
            runs = [donut.cli_wait(chain(50), 1) for _ in range(args.repeat)]
            waited = statistics.median(w for w, _ in runs)
            start_up = statistics.median(s for _, s in runs)
            rpc = statistics.median(donut.run(chain(50), 1) for _ in range(args.repeat))
            print()
            print(f"CLI: submit --wait --json of chain 50: {waited:.3f} s; the CLI's start-up and one call "
                  f"(status --json): {start_up:.3f} s; beyond them: {waited - start_up:.3f} s "
                  f"(CreateWorkflow to the end over gRPC, the same run: {rpc:.3f} s)")
            if not args.skip_cpu:
                print()
                print(f"{'scheduler CPU per job':<22} {'jobs':>5} {'wall s':>9} {'CPU ms/job':>11}")
                for jobs in (1000, 10000):
                    before = donut.cpu_seconds()
                    wall = donut.run(wide(jobs - 2), 8)
                    cpu = donut.cpu_seconds() - before
                    print(f"{'wide (P=8)':<22} {jobs:>5} {wall:>9.2f} {cpu / jobs * 1000:>11.3f}")
        finally:
            donut.stop()
    print()
    for as_yaml in (False, True):
        fmt = "YAML" if as_yaml else "JSON"
        print(f"validate 10,000 jobs ({fmt}): {validation_seconds(10000, as_yaml):.3f} s")


if __name__ == "__main__":
    main()
