"""The `streamed-job` command: runs one job attempt where it is launched (a Kubernetes
pod, or a process of the wrapper executor) and tells dagger everything about it.

The attempt's phases are `attempt.Attempt`'s, the same as in dagger's own process. This
command adds what a process of its own needs: the output goes to dagger through the
LogShipper, cellar is reached over gRPC with the attempt's job token, SIGTERM and SIGINT
become `Shutdown` (which interrupts fetching inputs; during the command they are forwarded
to its process group), and the end is reported with a ReportJobStatus retried until dagger
acknowledges it, then written to the termination log (Kubernetes' termination message),
so whoever launched the wrapper can tell an attempt it could not report.

Runs on any Python from 3.9: it is pip-installed into arbitrary job images.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

# The command is forked while the log shipper's gRPC threads are busy. A child that execs
# at once needs none of gRPC's fork handlers, and on some versions (with fork(), as Python
# 3.9 uses) they print errors into the job's stderr. Read when grpc initialises.
_FORK_SUPPORT_SET_HERE = "GRPC_ENABLE_FORK_SUPPORT" not in os.environ
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from streamed_job.attempt import Attempt, Shutdown  # noqa: E402
from streamed_job.cellar import CellarClient  # noqa: E402
from streamed_job.outcome import (  # noqa: E402
    EXIT_BAD_SPEC,
    EXIT_SIGNAL_BASE,
    EXIT_WRAPPER_ERROR,
    Ended,
    termination_message,
)
from streamed_job.pump import ProcessPump  # noqa: E402
from streamed_job.reporter import Reporter  # noqa: E402
from streamed_job.shipper import LogShipper, ShipperSettings, channel_to  # noqa: E402
from streamed_job.spec import (  # noqa: E402
    SPEC_ENV,
    SPEC_FILE_ENV,
    FetchSettings,
    RunSpec,
    SaveSettings,
    base_environment,
)

log = logging.getLogger("streamed_job")

SETTINGS_PREFIX = "STREAMED_JOB_"
SIGNAL_POLL = 0.1               # seconds: how soon a held signal is forwarded to the command


@dataclass(frozen=True)
class Settings:
    """How the wrapper behaves, each field settable as STREAMED_JOB_<NAME> in its environment."""

    kill_grace: float = 10.0
    """Seconds between forwarding SIGTERM to the command's process group and SIGKILL."""
    report_deadline: float = 300.0
    """Seconds to keep trying, once the command is over, to deliver the last log lines and
    then the report while dagger is unreachable (the lines are never given up before the
    report is)."""
    input_deadline: float = FetchSettings.deadline
    """Seconds all `origin` and `cache` inputs may take to fetch, together (a shorter job
    timeout bounds them instead)."""
    max_download_bytes: int = FetchSettings.max_bytes
    """Largest `origin` input accepted."""
    deny_private_origins: bool = FetchSettings.deny_private
    """Refuse `origin` inputs (and redirects) at addresses that are not public: loopback,
    private, link-local (the cloud metadata service)... (1/true/yes or 0/false/no)."""
    save_deadline: float = SaveSettings.deadline
    """Seconds saving the outputs keeps retrying while cellar (or its storage) is unavailable."""
    log_memory_bytes: int = ShipperSettings.memory_bytes
    """Unacknowledged log batches kept in memory before they spill to a temporary file."""
    termination_log: str = "/dev/termination-log" if os.path.exists("/dev/termination-log") else ""
    """File that receives the outcome as JSON when the wrapper ends ("": none)."""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(SETTINGS_PREFIX + f.name.upper())
            if raw is None:
                continue
            if isinstance(f.default, bool):
                if raw.lower() not in _BOOLEANS:
                    raise ValueError(f"{SETTINGS_PREFIX}{f.name.upper()}: expected 1/true/yes or 0/false/no, "
                                     f"not {raw!r}")
                values[f.name] = _BOOLEANS[raw.lower()]
            else:
                values[f.name] = type(f.default)(raw)  # type: ignore[misc]  # every field has a default
        return cls(**values)

    @property
    def fetch(self) -> FetchSettings:
        return FetchSettings(deadline=self.input_deadline, max_bytes=self.max_download_bytes,
                             deny_private=self.deny_private_origins)

    @property
    def save(self) -> SaveSettings:
        return SaveSettings(deadline=self.save_deadline)


_BOOLEANS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


class SignalGuard:
    """Raises Shutdown in the main thread on SIGTERM/SIGINT; while `held`, only remembers it."""

    def __init__(self) -> None:
        self.received: Shutdown | None = None
        self._held = 0

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        shutdown = Shutdown(signum)
        if self.received is None:
            self.received = shutdown
        if not self._held:
            raise shutdown

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1


def run(spec: RunSpec, settings: Settings, guard: SignalGuard) -> int:
    """Runs the attempt and reports it; returns the wrapper's exit code."""
    metadata = (("authorization", f"Bearer {spec.token}"),) if spec.token else ()
    channel = channel_to(spec.dagger_endpoint, spec.tls_ca)
    shipper = LogShipper(channel, spec.workflow_id, spec.job, spec.attempt, spec.token,
                         ShipperSettings(memory_bytes=settings.log_memory_bytes))
    cellar = CellarClient(channel, metadata)
    ends: list[Ended] = []
    done = threading.Event()

    def on_end(ended: Ended) -> None:
        ends.append(ended)
        done.set()

    pump = ProcessPump(kill_grace=settings.kill_grace)
    background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outputs")
    own = {"GRPC_ENABLE_FORK_SUPPORT"} if _FORK_SUPPORT_SET_HERE else set()
    attempt = Attempt(spec, pump=pump, output=shipper.add, cellar=lambda: cellar, on_end=on_end,
                      base_env={k: v for k, v in base_environment(os.environ).items() if k not in own},
                      background=background.submit, fetch=settings.fetch, save=settings.save)
    try:
        attempt.run()  # a signal while fetching inputs ends the attempt there
        with guard.held():
            forwarded = False
            while not done.wait(SIGNAL_POLL):
                if guard.received is not None and not forwarded:
                    forwarded = True
                    attempt.note(f"{guard.received.name} received: stopping the command")
                    attempt.kill()
    except Shutdown as s:  # between the inputs and the command
        attempt.kill()
        attempt.end(Ended(EXIT_SIGNAL_BASE + s.signum, s.name, f"terminated by {s.name}"))
    except Exception as e:
        log.exception("the job wrapper failed")
        attempt.end(Ended(EXIT_WRAPPER_ERROR, message=f"the job wrapper failed: {e!r}"))
    with guard.held():  # from here on the report must go out
        pump.close()
        background.shutdown(wait=True)
        ended = ends[0]
        deadline = time.monotonic() + settings.report_deadline
        if not shipper.close(settings.report_deadline):
            log.error("some log lines could not be delivered to dagger")
        reported = Reporter(channel, spec, metadata, max(1.0, deadline - time.monotonic())).report(ended)
        write_termination_log(settings.termination_log, ended, reported)
        channel.close()
    return ended.exit_code if ended.exit_code is not None else EXIT_WRAPPER_ERROR


def write_termination_log(path: str, ended: Ended, reported: bool) -> None:
    """The end as JSON, for whoever launched the wrapper."""
    if not path:
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(termination_message(ended, reported))
    except OSError as e:
        log.warning("cannot write the termination log %s: %s", path, e)


def load_spec(spec_file: str | None) -> RunSpec:
    if spec_file:
        with open(spec_file, encoding="utf-8") as f:
            spec = RunSpec.from_json(f.read())
    else:
        spec = RunSpec.from_environment()
    if not spec.dagger_endpoint:
        raise ValueError("the job spec names no dagger_endpoint")
    return spec


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="streamed-job",
        description="Run one donut-dagger job attempt: fetch its inputs, run its command, stream its "
                    "output to dagger, save its outputs and report how it ended.",
        epilog=f"The job spec (JSON) comes from ${SPEC_ENV}, or from the file named by ${SPEC_FILE_ENV} "
               "or --spec-file. Settings: " + ", ".join(
                   f"${SETTINGS_PREFIX}{f.name.upper()}" for f in dataclasses.fields(Settings)) + ".",
    )
    parser.add_argument("--spec-file", help="read the job spec from this JSON file")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="streamed-job: %(message)s")
    guard = SignalGuard()
    guard.install()
    try:
        settings = Settings.from_environment()
    except (TypeError, ValueError) as e:
        print(f"streamed-job: bad setting: {e}", file=sys.stderr)
        return EXIT_BAD_SPEC
    try:
        spec = load_spec(args.spec_file)
    except (KeyError, OSError, TypeError, ValueError) as e:
        message = f"cannot read the job spec: {e.args[0] if isinstance(e, KeyError) else e}"
        print(f"streamed-job: {message}", file=sys.stderr)
        write_termination_log(settings.termination_log, Ended(EXIT_BAD_SPEC, message=message), reported=False)
        return EXIT_BAD_SPEC
    try:
        return run(spec, settings, guard)
    except Shutdown as s:  # only before the attempt got going
        return EXIT_SIGNAL_BASE + s.signum


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("streamed-job")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
