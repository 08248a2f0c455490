"""Live logs through the job wrapper: throughput, latency and the wrapper's memory.

Starts a stack (its own etcd) whose jobs run through `streamed-job` processes, then:

- throughput: a job prints 1,000,000 short lines as fast as it can; a `TailLogs --follow`
  follower in another process counts them; prints lines/s and MB/s from the first line
  seen to the last (and from the submission), and checks the follower saw every line;
- latency: a job prints a timestamped line every 5 ms for a few seconds; the follower
  measures printed -> seen (p50, p99);
- memory: the wrapper's peak RSS (VmHWM) during the throughput run.

Prints, asserts nothing. Targets: >= 200,000 lines/s; p50 < 50 ms, p99 < 200 ms; < 100 MB.

    python bench/logs.py [--lines N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

THROUGHPUT_JOB = "import sys; sys.stdout.write(''.join('line %%d\\n' %% i for i in range(%d)))"
LATENCY_JOB = ("import sys, time\n"
               "for i in range(%d):\n"
               "    sys.stdout.write('t=%%.6f\\n' %% time.time()); sys.stdout.flush(); time.sleep(0.005)\n")


def follow(endpoint: str, token: str, workflow_id: str) -> None:
    """The follower (run in its own process): prints what it saw as JSON."""
    from donut.dagger.v1 import dagger_pb2 as pb
    from donut.dagger.v1 import dagger_pb2_grpc
    from donut_common.rpc import channel

    stub = dagger_pb2_grpc.DaggerStub(channel(endpoint, token=token))
    count = size = 0
    first = last = 0.0
    latencies = []
    in_order = True
    request = pb.TailLogsRequest(workflow_id=workflow_id, job="job", follow=True)
    for chunk in stub.TailLogs(request):
        now = time.time()
        first = first or now
        last = now
        for line in chunk.lines:
            if line.stream != pb.LOG_STREAM_STDOUT:
                continue
            text = line.text
            if text.startswith(b"t="):
                latencies.append(now - float(text[2:]))
            elif in_order and text != b"line %d" % count:
                in_order = False
            count += 1
            size += len(text) + 1
    print(json.dumps({"count": count, "bytes": size, "first": first, "last": last, "in_order": in_order,
                      "latencies": latencies}))


def start_stack(data_dir: Path) -> Any:
    from donut_cli.stack import Stack, StackConfig

    return Stack(StackConfig(data_dir=data_dir, port=0, http_port=-1, etcd_fsync=False, executor="wrapper")).start()


def wrapper_peak_rss(workflow_id: str, done: threading.Event, result: dict[str, int]) -> None:
    """Polls the wrapper process of the workflow's job for its peak RSS (VmHWM, kB)."""
    needle = f"DONUT_JOB_KEY={workflow_id}/job/1".encode()
    pid = None
    while not done.is_set():
        if pid is None:
            for entry in os.scandir("/proc"):
                try:
                    proc = Path(f"/proc/{entry.name}")
                    if entry.name.isdigit() and b"streamed_job.main" in (proc / "cmdline").read_bytes() \
                            and needle in (proc / "environ").read_bytes().split(b"\0"):
                        pid = int(entry.name)
                except OSError:
                    pass
        else:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        result["peak_kb"] = int(line.split()[1])
            except OSError:
                pid = None if done.is_set() else pid
        time.sleep(0.01)


def run_job(stack: Any, token: str, code: str, watch_memory: bool = False) -> tuple[dict[str, Any], float, int]:
    """Submits a one-job workflow running `code`; returns (what the follower saw, when it
    was submitted, the wrapper's peak RSS in kB)."""
    from donut.dagger.v1 import dagger_pb2 as pb
    from donut.dagger.v1 import dagger_pb2_grpc
    from donut_common.rpc import channel

    stub = dagger_pb2_grpc.DaggerStub(channel(stack.endpoint, token=token))
    job = {"name": "job", "image": "python", "cmd": sys.executable, "args": ["-c", code]}
    submitted = time.time()
    workflow_id = stub.CreateWorkflow(pb.CreateWorkflowRequest(definition=json.dumps({"jobs": [job]}).encode())).id
    follower = subprocess.Popen([sys.executable, __file__, "--follow", stack.endpoint, token, workflow_id],
                                stdout=subprocess.PIPE, text=True)
    done, memory = threading.Event(), {"peak_kb": 0}
    watcher = threading.Thread(target=wrapper_peak_rss, args=(workflow_id, done, memory), daemon=True)
    if watch_memory:
        watcher.start()
    out, _ = follower.communicate(timeout=600)
    done.set()
    workflow = stub.GetWorkflow(pb.GetWorkflowRequest(id=workflow_id))
    if workflow.status != pb.WORKFLOW_STATUS_DONE:
        print(f"  (the job did not succeed: {pb.WorkflowStatus.Name(workflow.status)} {workflow.message})")
    return json.loads(out), submitted, memory["peak_kb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--latency-lines", type=int, default=1000)
    parser.add_argument("--follow", nargs=3, metavar=("ENDPOINT", "TOKEN", "WORKFLOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.follow:
        follow(*args.follow)
        return

    with tempfile.TemporaryDirectory(prefix="donut-bench-logs-") as data_dir:
        stack = start_stack(Path(data_dir))
        try:
            token = stack.client_token()[0]
            seen, submitted, peak_kb = run_job(stack, token, THROUGHPUT_JOB % args.lines, watch_memory=True)
            streaming = max(seen["last"] - seen["first"], 1e-9)
            print(f"throughput: {args.lines:,} lines printed, {seen['count']:,} seen by the follower"
                  f" ({'in order' if seen['in_order'] else 'OUT OF ORDER'})")
            print(f"  {seen['count'] / streaming:,.0f} lines/s, {seen['bytes'] / streaming / 1e6:.1f} MB/s"
                  f" (first to last line seen: {streaming:.2f}s)")
            print(f"  {seen['count'] / (seen['last'] - submitted):,.0f} lines/s from the submission"
                  f" ({seen['last'] - submitted:.2f}s, wrapper start included)")
            print(f"memory: the wrapper's peak RSS {peak_kb / 1024:.1f} MB")

            seen, _, _ = run_job(stack, token, LATENCY_JOB % args.latency_lines)
            latencies = sorted(seen["latencies"])
            if latencies:
                p50 = statistics.median(latencies)
                p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
                print(f"latency: {len(latencies)} lines, printed -> seen p50 {p50 * 1000:.1f} ms,"
                      f" p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
