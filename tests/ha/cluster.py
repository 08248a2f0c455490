"""`donut up --replicas N` as a user runs it, for fault injection and the HA benchmark: a
real supervisor process over a real etcd, its replicas found (and killed, stopped,
resumed) by the pids `donut cluster --json` gives, and workflows driven over gRPC with
failover between the replicas' endpoints."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from dagger_svc.executors.procs import kill_processes, processes_under
from donut.dagger.v1 import dagger_pb2 as pb
from donut.dagger.v1 import dagger_pb2_grpc
from donut_common.etcd import Etcd
from donut_common.etcd_server import EtcdServer
from donut_common.rpc import channel

T = TypeVar("T")

LEASE_TTL = 3
"""Seconds of a replica's lease in these tests: a stalled or dead replica's runs are taken
over this long after its last renewal."""

ENDED = (pb.WORKFLOW_STATUS_DONE, pb.WORKFLOW_STATUS_FAILED, pb.WORKFLOW_STATUS_TERMINATED,
         pb.WORKFLOW_STATUS_DEAD)


def wait_for(condition: Callable[[], T], timeout: float, what: str, every: float = 0.1) -> T:
    """Polls until `condition()` is truthy and returns it; fails naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(every)


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """A port p such that p .. p+count-1 are free now (replica i listens on p+i, and takes the
    same port again when it is restarted)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind((host, 0))
            base = int(s.getsockname()[1])
        if base + count > 65535:
            continue
        try:
            with contextlib.ExitStack() as probes:
                for port in range(base, base + count):
                    probe = probes.enter_context(socket.socket())
                    probe.bind((host, port))
            return base
        except OSError:
            continue
    raise RuntimeError(f"found no {count} free ports in a row")


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank q-th percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class Cluster:
    """One `donut up --replicas N` process (the supervisor) and what it writes."""

    root: Path
    etcd: EtcdServer
    prefix: str
    replicas: int = 3
    lease_ttl: int = LEASE_TTL
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    endpoints: list[str] = field(default_factory=list)
    token: str = ""
    _stubs: list[Any] = field(default_factory=list, repr=False)
    _next: int = 0

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        """The supervisor's (and its replicas') stderr."""
        return self.root / "up.log"

    def env(self) -> dict[str, str]:
        return {**{k: v for k, v in os.environ.items() if not k.startswith("DONUT_")}, "DONUT_HOME": str(self.home)}

    def etcd_flags(self) -> list[str]:
        access = self.etcd.access
        flags = ["--etcd-endpoints", self.etcd.endpoint, "--etcd-prefix", self.prefix]
        if access.ca is not None:
            flags += ["--etcd-ca", str(access.ca)]
        if access.cert is not None and access.key is not None:
            flags += ["--etcd-cert", str(access.cert), "--etcd-key", str(access.key)]
        return flags

    def start(self, timeout: float = 90) -> Cluster:
        """Starts the supervisor and waits until every replica is registered."""
        (self.home / "client.json").unlink(missing_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "donut_cli", "up", "--replicas", str(self.replicas),
                   "--data-dir", str(self.data_dir), "--port", str(free_ports(self.replicas)),
                   "--http-port", "-1", "--lease-ttl", str(self.lease_ttl),
                   "--kill-grace", "1", *self.etcd_flags(), *self.extra]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, env=self.env(), stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        config = self.home / "client.json"
        wait_for(lambda: config.exists() or self._exited(), timeout, "client.json")
        self._assert_running()
        client = json.loads(config.read_text())
        self.endpoints = client["endpoint"].split(",")
        self.token = client["token"]
        assert len(self.endpoints) == self.replicas, client["endpoint"]
        self._stubs = [dagger_pb2_grpc.DaggerStub(channel(e, token=self.token)) for e in self.endpoints]
        wait_for(lambda: self._exited() or len(self.members() or ()) == self.replicas, timeout,
                 "every replica registered")
        self._assert_running()
        wait_for(lambda: b"donut is up" in self.log.read_bytes(), timeout, "donut is up")
        return self

    def _exited(self) -> bool:
        assert self.process is not None
        return self.process.poll() is not None

    def _assert_running(self) -> None:
        assert not self._exited(), f"donut up exited; its output:\n{self.tail()}"

    def tail(self, size: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""

    # ---- the CLI ---------------------------------------------------------------------

    def donut(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Runs the `donut` CLI against this cluster, as a user does (client.json only)."""
        return subprocess.run([sys.executable, "-m", "donut_cli", *args], env=self.env(), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def members(self) -> list[dict[str, Any]] | None:
        """`donut cluster --json`'s replicas; None when it failed (a replica may be going)."""
        try:
            done = self.donut("cluster", "--json", timeout=30)
        except subprocess.TimeoutExpired:
            return None
        if done.returncode != 0:
            return None
        replicas: list[dict[str, Any]] = json.loads(done.stdout)["replicas"]
        return replicas

    def listed(self, replica_id: str) -> bool | None:
        """Whether `donut cluster` lists the replica; None when it could not tell."""
        members = self.members()
        return None if members is None else any(r["id"] == replica_id for r in members)

    # ---- gRPC, with failover ---------------------------------------------------------

    def call(self, method: str, request: Any, timeout: float = 60, per_call: float = 5) -> Any:
        """A unary Dagger call on the replicas in turn: one that is unreachable (killed,
        stopped, restarting) or whose etcd is away is skipped until one answers."""
        deadline = time.monotonic() + timeout
        while True:
            stub = self._stubs[self._next % len(self._stubs)]
            self._next += 1
            try:
                return getattr(stub, method)(request, timeout=per_call)
            except grpc.RpcError as e:
                code = e.code()  # type: ignore[attr-defined]
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stream(self, method: str, request: Any, timeout: float = 60) -> list[Any]:
        """A server-streaming call read to its end, from the first replica that serves it whole."""
        deadline = time.monotonic() + timeout
        while True:
            stub = self._stubs[self._next % len(self._stubs)]
            self._next += 1
            try:
                return list(getattr(stub, method)(request, timeout=30))
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:  # type: ignore[attr-defined]
                    raise
                time.sleep(0.05)

    def submit(self, definition: dict[str, Any], parallelism: int = 4) -> str:
        """Creates a workflow. Only while no replica is being killed: a retried create whose
        first try landed would make two."""
        request = pb.CreateWorkflowRequest(definition=json.dumps(definition).encode(), parallelism=parallelism)
        return str(self.call("CreateWorkflow", request).id)

    def workflow(self, workflow_id: str) -> pb.Workflow:
        return self.call("GetWorkflow", pb.GetWorkflowRequest(id=workflow_id))

    def jobs(self, workflow_id: str) -> dict[str, pb.Job]:
        return {j.name: j for j in self.call("ListJobs", pb.ListJobsRequest(workflow_id=workflow_id)).jobs}

    def all_workflows(self) -> list[pb.Workflow]:
        """Every workflow, by listing page after page."""
        found: list[pb.Workflow] = []
        token = ""
        while True:
            page = self.call("ListWorkflows", pb.ListWorkflowsRequest(page_size=1000, page_token=token))
            found.extend(page.workflows)
            token = page.next_page_token
            if not token:
                return found

    def wait_ended(self, workflow_ids: list[str], timeout: float) -> dict[str, pb.Workflow]:
        """Polls until every workflow has ended; their last states."""
        ended: dict[str, pb.Workflow] = {}

        def all_ended() -> bool:
            for workflow_id in workflow_ids:
                if workflow_id not in ended:
                    w = self.workflow(workflow_id)
                    if w.status in ENDED:
                        ended[workflow_id] = w
            return len(ended) == len(workflow_ids)

        wait_for(all_ended, timeout, f"{len(workflow_ids) - len(ended)} workflows to end", every=0.5)
        return ended

    def describe(self, workflow_ids: list[str]) -> str:
        """The jobs of the workflows that did not end done, attempt by attempt (for failures)."""
        lines = []
        for workflow_id in workflow_ids:
            w = self.workflow(workflow_id)
            if w.status == pb.WORKFLOW_STATUS_DONE:
                continue
            lines.append(f"{workflow_id}: {pb.WorkflowStatus.Name(w.status)} {w.message}")
            for job in self.jobs(workflow_id).values():
                attempts = ", ".join(f"{a.number} {pb.JobStatus.Name(a.status)} {a.message!r}" for a in job.attempts)
                lines.append(f"  {job.name}: {pb.JobStatus.Name(job.status)} attempt {job.attempt}: {attempts}")
        return "\n".join(lines)

    def log_lines(self, workflow_id: str, job: str, attempt: int) -> list[bytes]:
        """The attempt's stdout lines as dagger serves them."""
        messages = self.stream("TailLogs", pb.TailLogsRequest(workflow_id=workflow_id, job=job, attempt=attempt))
        return [line.text for m in messages for line in m.lines if line.stream == pb.LOG_STREAM_STDOUT]

    # ---- faults ----------------------------------------------------------------------

    def signal(self, pid: int, sig: signal.Signals) -> None:
        os.kill(pid, sig)

    def stop(self) -> None:
        """Stops the supervisor (SIGTERM, as Ctrl-C does), then ends anything it left: its
        process group, and job processes under its data dir."""
        if self.process is None:
            return
        for stub in self._stubs:
            with contextlib.suppress(Exception):
                stub._channel.close()
        try:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGCONT)  # a stopped replica must see its SIGTERM
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            kill_processes(processes_under(str(self.data_dir / "workflows")))

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def etcd_client(server: EtcdServer) -> Etcd:
    return Etcd.connect(server.endpoint, access=server.access)


def claims(client: Etcd, prefix: str) -> dict[str, str]:
    """Run id -> the id of the replica that owns it, from etcd."""
    keys = prefix + "claims/"
    return {kv.key[len(keys):]: kv.value.decode() for kv in client.get_prefix(keys)}
