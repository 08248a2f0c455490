"""Finding and ending an attempt's processes on this host through /proc: every process an
executor starts carries its attempt's key in its environment (`DONUT_JOB_KEY`), so a
restarted executor can find what an earlier incarnation left running."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator

from streamed_job.spec import JOB_KEY_ENV, SPEC_ENV

REPLICA_ENV = "DONUT_REPLICA"  # the replica that started a job process (with several replicas on one host)


def _environments() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, environment entries) of every live process that can be read."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                yield int(entry.name), f.read().split(b"\0")
        except OSError:
            continue


def job_processes(keys: set[str]) -> list[int]:
    """PIDs of live processes whose environment carries one of the attempt keys."""
    needles = {f"{JOB_KEY_ENV}={key}".encode() for key in keys}
    return [pid for pid, environ in _environments() if needles.intersection(environ)]


def processes_under(workflows_root: str) -> list[int]:
    """PIDs of live processes of jobs whose workflow directory is under `workflows_root`."""
    needle = f"DONUT_WORKFLOW_DIR={workflows_root.rstrip('/')}/".encode()
    return [pid for pid, environ in _environments() if any(item.startswith(needle) for item in environ)]


def processes_of_replica(replica: str) -> list[int]:
    """PIDs of live job processes that the replica started."""
    needle = f"{REPLICA_ENV}={replica}".encode()
    return [pid for pid, environ in _environments() if needle in environ]


def kill_leftovers(keys: set[str]) -> int:
    """SIGKILLs the process groups of processes whose environment carries one of the
    attempt keys; how many it signalled."""
    return kill_processes(job_processes(keys))


def kill_processes(pids: list[int]) -> int:
    """SIGKILLs the process groups of the processes; how many it signalled."""
    killed = 0
    for pid in pids:
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
            killed += 1
        except (ProcessLookupError, PermissionError):
            pass
    return killed


def runs_module(pid: int, module: str) -> bool:
    """Whether the process runs `python -m <module>`."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return module.encode() in f.read().split(b"\0")
    except OSError:
        return False


def spec_token(pid: int) -> str:
    """The job token in the spec a running wrapper was given ("" if it cannot be read)."""
    prefix = SPEC_ENV.encode() + b"="
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            spec = next((item[len(prefix):] for item in f.read().split(b"\0") if item.startswith(prefix)), b"")
        token = json.loads(spec).get("token", "") if spec else ""
        return token if isinstance(token, str) else ""
    except (OSError, ValueError, AttributeError):
        return ""


def signal_process(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
