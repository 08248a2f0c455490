"""`donut up --replicas N`: N replicas of the stack on this machine, over one etcd and one
data dir, kept running.

The supervisor holds the data dir, runs the embedded etcd (unless an external one is
named), and starts each replica as a `donut up --replica-id ...` process of its own: every
replica serves every service on its own gRPC port, schedules the runs it claims, and
announces itself in etcd. A replica that exits is started again under the same id (its
leftover job processes ended first), so it takes its runs back at once; meanwhile the
others take over whatever its lease lets go. The first replica starts alone (it upgrades
what earlier versions stored, and makes the keys kept in the data dir); the rest follow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from dagger_svc.executors.procs import kill_processes, processes_of_replica
from dagger_svc.keys import Keys
from dagger_svc.store import Store
from donut_cli.stack import StackConfig, _lock, _scheduler_id, admin_token
from donut_common.errors import Unavailable
from donut_common.etcd import Etcd
from donut_common.etcd_server import EtcdServer, free_port
from users_svc.service import UsersService
from users_svc.store import UserStore

log = logging.getLogger(__name__)

START_TIMEOUT = 90.0  # seconds a replica may take to announce itself
RESTART_BACKOFF = 0.5  # seconds before starting again a replica that died soon after its start (doubling)
RESTART_BACKOFF_MAX = 30.0
SETTLED = 10.0  # seconds after which a replica that dies is started again at once
STOP_TIMEOUT = 60.0  # seconds replicas get to stop before they are killed
SUPERVISED = "DONUT_SUPERVISED_REPLICA"
"""Set in the environment of the replicas a supervisor starts, to the supervisor's pid: it
writes the client config for them all, and they stop when it is gone."""


class StopFlag:
    """Raised by a signal (SIGINT, SIGTERM, SIGHUP) and waited for by the main thread. A
    plain flag, not a threading.Event: a signal handler runs on the main thread between
    two of its steps, and setting an Event takes a lock that the main thread may hold right
    then, waiting on that Event: the process would hang for good."""

    def __init__(self) -> None:
        self.raised = False

    def raise_(self, *_: object) -> None:
        self.raised = True

    def raise_when_gone(self, pid: int) -> None:
        """Raises it once the process `pid` has ended (watched from a thread of its own)."""
        def watch() -> None:
            with contextlib.suppress(ProcessLookupError):  # (gone already)
                select.select([os.pidfd_open(pid)], [], [])
            self.raised = True

        threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()

    def wait(self, timeout: float | None = None) -> bool:
        """Until it is raised, or `timeout` seconds; whether it is raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.raised and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic())))
        return self.raised


@dataclass
class _Replica:
    index: int
    id: str
    ports: list[str]  # the --port/--http-port/--metrics-port values given to it
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0  # time.monotonic() of its last start
    backoff: float = RESTART_BACKOFF
    restart_at: float | None = None  # time.monotonic() when it is started again, after it died


@dataclass
class Supervisor:
    config: StackConfig
    replicas: int
    argv: Sequence[str]
    """The `donut up` arguments given (each replica gets them, with its own on top)."""
    etcd: EtcdServer | None = None
    store: Store | None = None
    users: UsersService | None = None
    _children: list[_Replica] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: TextIO | None = None

    def start(self) -> Supervisor:
        c = self.config
        c.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        c.data_dir.chmod(0o700)
        self._lock = _lock(c.data_dir)
        try:
            endpoints, access = c.etcd_endpoints, c.etcd_access
            etcd_flags: list[str] = []
            if not endpoints:
                self.etcd = EtcdServer(c.data_dir, host="127.0.0.1", fsync=c.etcd_fsync).start()
                endpoints, access = self.etcd.endpoint, self.etcd.access
                threading.Thread(target=self.etcd.supervise, args=(self._stopping,), name="etcd-supervisor",
                                 daemon=True).start()
                etcd_flags = ["--etcd-endpoints", endpoints]
                for flag, path in (("--etcd-ca", access.ca), ("--etcd-cert", access.cert),
                                   ("--etcd-key", access.key)):
                    if path is not None:
                        etcd_flags += [flag, str(path)]
            client = Etcd.connect(endpoints, access=access)
            self.store = Store(client, Keys(c.etcd_prefix))
            self.users = UsersService(UserStore(client, c.etcd_prefix))
            base = _scheduler_id(c.data_dir)
            for index in range(self.replicas):
                ports = ["--port", _nth(c.port, index), "--http-port", _nth(c.http_port, index),
                         "--metrics-port", _nth(c.metrics_port, index)]
                self._children.append(_Replica(index, f"{base}-{index}", ports + etcd_flags))
            self._launch(self._children[0])  # alone first: it upgrades, and makes the data dir's keys
            self._wait_announced(self._children[:1])
            for child in self._children[1:]:
                self._launch(child)
            self._wait_announced(self._children[1:])
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, child: _Replica) -> None:
        command = [sys.executable, "-m", "donut_cli", *self.argv, "--replicas", "1", "--replica-id", child.id,
                   *child.ports]
        child.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True,
                                         env={**os.environ, SUPERVISED: str(os.getpid())})
        child.started = time.monotonic()
        child.restart_at = None

    def _wait_announced(self, children: Sequence[_Replica]) -> None:
        """Until each of the replicas has announced itself; RuntimeError if one exits first."""
        assert self.store is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            for child in children:
                assert child.process is not None
                if child.process.poll() is not None:
                    raise RuntimeError(f"replica {child.id} exited with {child.process.returncode} as it started "
                                       "(its error is above)")
            try:
                announced = {r.id: r.pid for r in self.store.replicas()}
            except Unavailable:
                announced = {}
            if all(child.process is not None and announced.get(child.id) == child.process.pid
                   for child in children):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replicas did not start within {START_TIMEOUT:.0f}s")
            time.sleep(0.1)

    def endpoints(self) -> list[str]:
        """Every replica's gRPC address, in replica order."""
        assert self.store is not None
        found = {r.id: r for r in self.store.replicas()}
        return [found[child.id].endpoint for child in self._children if child.id in found]

    def client_token(self, existing: str) -> tuple[str, bool]:
        assert self.users is not None
        return admin_token(self.users, existing)

    def supervise(self, stopped: StopFlag) -> None:
        """Starts a replica again whenever it exits, until `stopped` is set."""
        while not stopped.wait(0.2):
            now = time.monotonic()
            for child in self._children:
                assert child.process is not None
                if child.restart_at is None and child.process.poll() is not None:
                    code = child.process.returncode
                    died = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                    kill_processes(processes_of_replica(child.id))  # its jobs: they run again elsewhere
                    quick = now - child.started < SETTLED
                    child.backoff = min(child.backoff * 2, RESTART_BACKOFF_MAX) if quick else RESTART_BACKOFF
                    delay = child.backoff if quick else 0.0
                    child.restart_at = now + delay
                    log.warning("replica %s (pid %d) ended with %s; starting it again%s", child.id, child.process.pid,
                                died, f" in {delay:.0f}s" if delay else "")
                if child.restart_at is not None and now >= child.restart_at and not stopped.raised:
                    self._launch(child)

    def stop(self) -> None:
        """Stops every replica (each stops its jobs, to run again at the next start), then etcd."""
        self._stopping.set()
        running = [c.process for c in self._children if c.process is not None and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for child in self._children:
            kill_processes(processes_of_replica(child.id))
        if self.store is not None:
            self.store.close()
            self.store = self.users = None
        if self.etcd is not None:
            self.etcd.stop()
            self.etcd = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _nth(port: int, index: int) -> str:
    """The port of the index-th replica: consecutive from a given one; a free one for 0 (any),
    picked once, so that a replica started again listens where it did; -1 (none) as it is."""
    return str(port + index if port > 0 else free_port() if port == 0 else port)
