"""How live and how fast the web GUI is in Chromium (Debian's, driven by Playwright).

- Latency: a chain of jobs that each sleep a moment; the workflow's page is open, and a
  MutationObserver notes the wall-clock time at which each job's row takes a new state
  (`data-status`). Against the times the scheduler stored for those changes (started_at for
  `running`, finished_at for `succeeded`): p50/p99 over the changes (target p99 < 500 ms).
- Load: the page of a workflow of 1,000 and of 10,000 jobs (a layered DAG, each job
  depending on two of the layer above; held waiting behind a first job that sleeps), from
  navigation to the DAG drawn, and to the first live event applied (targets < 1 s, < 3 s).

Starts its own etcd and `donut up` stack (in this process); prints, asserts nothing.

    python bench/gui.py [--chain 50] [--sizes 1000,10000]
"""

from __future__ import annotations

import argparse
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
from donut.users.v1 import users_pb2 as upb  # noqa: E402
from donut.users.v1 import users_pb2_grpc  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
OBSERVE = """() => {
  window.changes = [];
  new MutationObserver((records) => {
    const now = performance.timeOrigin + performance.now();
    for (const r of records) window.changes.push([r.target.dataset.job, r.target.dataset.status, now]);
  }).observe(document.querySelector('#jobs tbody'),
             {attributes: true, attributeFilter: ['data-status'], subtree: true});
}"""


def chain(n: int, seconds: float) -> bytes:
    jobs = [{"name": f"j{i:03d}", "image": "none", "cmd": "/bin/sh", "args": ["-c", f"sleep {seconds}"]}
            for i in range(n)]
    return yaml.safe_dump({"jobs": jobs, "neighbors": {f"j{i:03d}": [f"j{i + 1:03d}"] for i in range(n - 1)}}).encode()


def layered(n: int, width: int = 100) -> bytes:
    """n jobs in layers of `width`, each depending on two jobs of the layer above, all held
    behind a first job that sleeps."""
    names = [f"n{i:05d}" for i in range(n)]
    jobs = [{"name": names[0], "image": "none", "cmd": "/bin/sh", "args": ["-c", "sleep 600"]}]
    jobs += [{"name": name, "image": "none", "cmd": "true", "args": []} for name in names[1:]]
    neighbors: dict[str, list[str]] = {names[0]: names[1:width + 1]}
    for i in range(width + 1, n):
        layer_start = ((i - 1) // width) * width + 1
        above = layer_start - width
        for parent in {above + (i - layer_start) % width, above + (i - layer_start + 1) % width}:
            neighbors.setdefault(names[parent], []).append(names[i])
    return yaml.safe_dump({"jobs": jobs, "neighbors": neighbors}).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chain", type=int, default=50, help="jobs in the latency chain (two changes each)")
    parser.add_argument("--sizes", default="1000,10000", help="job counts of the load test")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from donut_cli.stack import Stack, StackConfig
    from donut_common.etcd_server import EtcdServer
    from donut_common.rpc import channel

    with tempfile.TemporaryDirectory() as tmp, EtcdServer(Path(tmp) / "etcd", fsync=True, tls=False) as etcd, \
            Stack(StackConfig(data_dir=Path(tmp) / "stack", port=0, http_port=0, etcd_endpoints=etcd.endpoint,
                              etcd_prefix="/bench/")) as stack, sync_playwright() as playwright:
        connection = channel(stack.endpoint, token=stack.client_token()[0])
        dagger = dagger_pb2_grpc.DaggerStub(connection)
        users = users_pb2_grpc.UsersStub(connection)
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(users.CreateSignInCode(upb.CreateSignInCodeRequest()).url)

        workflow = dagger.CreateWorkflow(pb.CreateWorkflowRequest(definition=chain(args.chain, 0.3), name="chain",
                                                                  parallelism=1))
        page.goto(f"{stack.http_endpoint}/workflows/{workflow.id}")
        page.evaluate(OBSERVE)
        page.wait_for_selector("#workflow-status[data-status=done]", timeout=args.chain * 10_000)
        seen = {(job, status): at / 1000 for job, status, at in page.evaluate("window.changes")}
        delays = []
        for job in dagger.GetWorkflow(pb.GetWorkflowRequest(id=workflow.id, include_jobs=True)).jobs:
            for status, changed in (("running", job.started_at), ("succeeded", job.finished_at)):
                if (job.name, status) in seen:
                    delays.append(seen[job.name, status] - changed.ToMicroseconds() / 1e6)
        delays.sort()
        p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
        print(f"state change -> row recoloured in Chromium, {len(delays)} changes: "
              f"p50 {statistics.median(delays) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms (target p99 < 500 ms)")

        for n in (int(size) for size in args.sizes.split(",")):
            held = dagger.CreateWorkflow(pb.CreateWorkflowRequest(definition=layered(n), name=f"layered-{n}",
                                                                  parallelism=1))
            url = f"{stack.http_endpoint}/workflows/{held.id}"
            page.goto(url)  # once to warm up
            drawn_in, live_in = [], []
            for _ in range(3):
                started = time.perf_counter()
                page.goto(url, wait_until="commit")
                page.wait_for_selector("#dag .node[data-status]", state="attached")  # the DAG is drawn
                drawn_in.append(time.perf_counter() - started)
                page.wait_for_selector("#facts[data-live]", state="attached")  # the first live event is applied
                live_in.append(time.perf_counter() - started)
            boxes = page.evaluate("document.querySelectorAll('#dag .node').length")
            target = "< 1 s" if n <= 1000 else "< 3 s"
            print(f"workflow page of {n:,} jobs: DAG drawn ({boxes} boxes in view) in {min(drawn_in):.2f} s, live in "
                  f"{min(live_in):.2f} s (best of 3; medians {statistics.median(drawn_in):.2f} s, "
                  f"{statistics.median(live_in):.2f} s; target {target})")
            dagger.CancelWorkflow(pb.CancelWorkflowRequest(id=held.id))
        browser.close()
        connection.close()


if __name__ == "__main__":
    main()
