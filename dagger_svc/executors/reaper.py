"""The local executor's guard against orphans: a small process that outlives `donut up`
only to kill, the moment `donut up` dies (SIGKILL included), every job process that
stack started, so none goes on unwatched. A job process is known by its environment
(`DONUT_WORKFLOW_DIR` under the stack's workflows root; with several replicas on one
host, `DONUT_REPLICA`), which its own children inherit.

    python -m dagger_svc.executors.reaper --parent PID --root DIR [--replica ID]
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
from collections.abc import Sequence

from dagger_svc.executors.procs import kill_processes, processes_of_replica, processes_under


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dagger_svc.executors.reaper")
    parser.add_argument("--parent", type=int, required=True, help="the pid of donut up")
    parser.add_argument("--root", required=True, help="the workflows root of its jobs")
    parser.add_argument("--replica", default="", help="only the jobs of this replica (replicas share the root)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a clean stop: its jobs are stopped already
    try:
        parent = os.pidfd_open(args.parent)
    except ProcessLookupError:
        parent = -1
    if parent >= 0:
        select.select([parent], [], [])
    for _ in range(3):  # what a dying job forks meanwhile is caught by the next round
        if not kill_processes(processes_of_replica(args.replica) if args.replica else processes_under(args.root)):
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
