"""The chaos loop: three replicas, a random one SIGKILLed every few seconds while 50
workflows of 20 jobs run. Nothing stalls, no job runs twice at once, nothing is lost."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from donut.dagger.v1 import dagger_pb2 as pb
from donut_common.etcd import Etcd
from tests.ha.cluster import LEASE_TTL, Cluster, claims, etcd_client, percentile
from tests.ha.workload import Marks, chains_and_fan_ins, check_run, expected_lines

pytestmark = pytest.mark.slow

WORKFLOWS = 50
KILL_EVERY = (3.0, 5.0)  # seconds between two SIGKILLs
JOB_SECONDS = 4.0        # each job's run: 7 in a row (root, a chain of 4, join, leaf), so ~30 s at least
MAX_LOST_ATTEMPTS = 10   # with a kill every 4 s, about one attempt in four is lost: 4 in a row happen (default 3)


@dataclass(frozen=True)
class Kill:
    at: float               # time.time() just before the SIGKILL
    replica: str
    pid: int
    owned: frozenset[str]   # the runs it owned then (by their claims in etcd)


class Killer(threading.Thread):
    """SIGKILLs a random registered replica every few seconds, noting what it owned."""

    def __init__(self, cluster: Cluster, etcd: Etcd) -> None:
        super().__init__(name="killer", daemon=True)
        self.cluster = cluster
        self.etcd = etcd
        self.kills: list[Kill] = []
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        rng = random.Random()
        try:
            while not self.stopping.wait(rng.uniform(*KILL_EVERY)):
                members = self.cluster.members()
                if not members:
                    continue
                victim = rng.choice(members)
                owned = frozenset(run for run, owner in claims(self.etcd, self.cluster.prefix).items()
                                  if owner == victim["id"])
                at = time.time()
                try:
                    os.kill(victim["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    continue  # killed already, still registered until its lease ends
                self.kills.append(Kill(at, victim["id"], victim["pid"], owned))
        except BaseException as e:  # noqa: BLE001 - raised by the test's thread
            self.error = e

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        if self.error is not None:
            raise self.error


def seconds(timestamp: Any) -> float:
    return float(timestamp.seconds + timestamp.nanos / 1e9)


def takeovers(kills: list[Kill], launches: dict[str, list[float]]) -> tuple[list[float], int]:
    """For each kill: from the SIGKILL to the first attempt launched (recorded) in a run the
    killed replica owned; kills after which another came before that launch are left out
    (the second may have hit the replica taking over). Also how many were left out."""
    measured, skipped = [], 0
    times = sorted(k.at for k in kills)
    for kill in kills:
        after = [t for run in kill.owned for t in launches.get(run, []) if t > kill.at]
        if not after:
            continue
        first = min(after)
        if any(kill.at < other < first for other in times):
            skipped += 1
            continue
        measured.append(first - kill.at)
    return measured, skipped


def test_random_replicas_killed_while_workflows_run(cluster_factory: Callable[..., Cluster]) -> None:
    """Every workflow ends done; no two attempts of a job ran at once (by their locks and
    by their marks' times); every job has exactly one succeeded attempt, which ran, and
    every line it printed is served; an attempt that ran to its end under a replica killed
    before it could record the end is recorded `dead` and run again (the guarantee is at
    most once per attempt, not per job); a killed replica's runs see their next launch
    within the lease TTL + 2 s."""
    cluster = cluster_factory(extra=("--max-lost-attempts", str(MAX_LOST_ATTEMPTS)))
    etcd = etcd_client(cluster.etcd)
    definition = chains_and_fan_ins(pause=JOB_SECONDS)
    workflow_ids = [cluster.submit(definition, parallelism=4) for _ in range(WORKFLOWS)]
    killer = Killer(cluster, etcd)
    started = time.monotonic()
    killer.start()
    try:
        ended = cluster.wait_ended(workflow_ids, timeout=240)
    finally:
        killer.stop()
        etcd.close()
    wall = time.monotonic() - started

    not_done = {w: (pb.WorkflowStatus.Name(e.status), e.message) for w, e in ended.items()
                if e.status != pb.WORKFLOW_STATUS_DONE}
    assert not not_done, cluster.describe(workflow_ids)
    problems: list[str] = []
    launches: dict[str, list[float]] = {}
    lost = 0
    for workflow_id in workflow_ids:
        jobs = cluster.jobs(workflow_id)
        lost += sum(a.status == pb.JOB_STATUS_DEAD for j in jobs.values() for a in j.attempts)
        problems += check_run(workflow_id, Marks.read(cluster.data_dir / "workflows" / workflow_id), jobs)
        launches[workflow_id] = [seconds(a.started_at) for j in jobs.values() for a in j.attempts
                                 if a.HasField("started_at")]
        for name, job in jobs.items():
            served = cluster.log_lines(workflow_id, name, job.attempt)
            if served != expected_lines(name, job.attempt):
                problems.append(f"{workflow_id}/{name}: attempt {job.attempt}'s log served {served}")
    assert not problems, "\n".join(problems[:40])

    measured, skipped = takeovers(killer.kills, launches)
    print(f"\n{len(killer.kills)} SIGKILLs in {wall:.0f} s, {lost} attempts lost with their replica and run again; "
          "takeover (kill -> first launch in a run it owned), "
          f"{len(measured)} measured, {skipped} left out (another kill came first): "
          + (f"p50 {percentile(measured, 50):.2f} s, p99 {percentile(measured, 99):.2f} s, "
             f"max {max(measured):.2f} s" if measured else "none"))
    print("takeovers:", " ".join(f"{t:.2f}" for t in sorted(measured)))
    assert len(killer.kills) >= 5, "the loop killed too few replicas to prove anything"
    assert measured, "no takeover was measured"
    assert max(measured) <= LEASE_TTL + 2, sorted(measured)
