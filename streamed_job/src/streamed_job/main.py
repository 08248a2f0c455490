"""The `streamed-job` command: runs one job attempt where it is launched (a Kubernetes
pod, or a process of the wrapper executor) and tells dagger everything about it.

An attempt goes through three phases, inputs (fetch and check), command (one process, no
shell, its output streamed to dagger by the LogShipper) and outputs (save the `save: true`
ones in cellar), then ends with the report: a ReportJobStatus retried until dagger
acknowledges it. The wrapper's own notes (what it fetched and saved, why it failed) go to
the job's log as system lines. SIGTERM and SIGINT become `Shutdown`, which ordinary
`except Exception` clauses let through; during the command they are forwarded to its
process group. The outcome is also written to a termination file (Kubernetes' termination
message), so whoever launched the wrapper can tell an attempt it could not report.

Runs on any Python from 3.9: it is pip-installed into arbitrary job images.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

# The command is forked while the log shipper's gRPC threads are busy. A child that execs
# at once needs none of gRPC's fork handlers, and on some versions (with fork(), as Python
# 3.9 uses) they print errors into the job's stderr. Read when grpc initialises.
_FORK_SUPPORT_SET_HERE = "GRPC_ENABLE_FORK_SUPPORT" not in os.environ
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402

from donut.dagger.v1 import dagger_pb2 as pb  # noqa: E402
from donut.dagger.v1 import dagger_pb2_grpc  # noqa: E402
from streamed_job.cellar import CellarClient  # noqa: E402
from streamed_job.files import MAX_DOWNLOAD_BYTES, FileProblem, outputs_to_save, prepare_inputs  # noqa: E402
from streamed_job.outcome import EXIT_INPUT_FAILED, EXIT_OUTPUT_FAILED, EXIT_SIGNAL_BASE, Ended  # noqa: E402
from streamed_job.pump import STDERR, ProcessPump  # noqa: E402
from streamed_job.shipper import LogShipper, ShipperSettings, channel_to  # noqa: E402
from streamed_job.spec import SPEC_ENV, SPEC_FILE_ENV, RunSpec  # noqa: E402
from streamed_job.timestamps import timestamps  # noqa: E402

log = logging.getLogger("streamed_job")

JOB_KEY_ENV = "DONUT_JOB_KEY"   # <workflow>/<job>/<attempt>, in the command's environment
SETTINGS_PREFIX = "STREAMED_JOB_"
SIGNAL_POLL = 0.1               # seconds: how soon a held signal is forwarded to the command
EXIT_BAD_SPEC = 2               # no readable job spec: nothing ran (as argparse's usage errors)
EXIT_WRAPPER_ERROR = 70         # the wrapper itself failed (sysexits EX_SOFTWARE)
PHASES = {"": pb.PHASE_UNSPECIFIED, "inputs": pb.PHASE_INPUTS, "command": pb.PHASE_COMMAND,
          "outputs": pb.PHASE_OUTPUTS}
PERMANENT = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                       grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                       grpc.StatusCode.UNIMPLEMENTED})


@dataclass(frozen=True)
class Settings:
    """How the wrapper behaves, each field settable as STREAMED_JOB_<NAME> in its environment."""

    kill_grace: float = 10.0
    """Seconds between forwarding SIGTERM to the command's process group and SIGKILL."""
    report_deadline: float = 300.0
    """Seconds to keep trying, once the command is over, to deliver the last log lines and
    then the report while dagger is unreachable (the lines are never given up before the
    report is)."""
    max_download_bytes: int = MAX_DOWNLOAD_BYTES
    """Largest `origin` input accepted."""
    log_memory_bytes: int = ShipperSettings.memory_bytes
    """Unacknowledged log batches kept in memory before they spill to a temporary file."""
    termination_log: str = "/dev/termination-log" if os.path.exists("/dev/termination-log") else ""
    """File that receives the outcome as JSON when the wrapper ends ("": none)."""

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> "Settings":
        environ = os.environ if environ is None else environ
        values: Dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(SETTINGS_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = type(f.default)(raw)  # type: ignore[misc]  # every field has a default
        return cls(**values)


class Shutdown(BaseException):
    """SIGTERM or SIGINT arrived. A BaseException, so `except Exception` does not swallow it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"received {self.name}")


class SignalGuard:
    """Raises Shutdown in the main thread on SIGTERM/SIGINT; while `held`, only remembers it."""

    def __init__(self) -> None:
        self.received: Optional[Shutdown] = None
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


class Reporter:
    """Sends the attempt's end to dagger (ReportJobStatus), retrying until acknowledged."""

    def __init__(self, channel: grpc.Channel, spec: RunSpec, metadata: Sequence[tuple],
                 deadline: float) -> None:
        self.stub = dagger_pb2_grpc.DaggerStub(channel)
        self.spec = spec
        self.metadata = tuple(metadata)
        self.deadline = deadline

    def request(self, ended: Ended) -> pb.ReportJobStatusRequest:
        return pb.ReportJobStatusRequest(
            workflow_id=self.spec.workflow_id, job=self.spec.job, attempt=self.spec.attempt,
            exit_code=ended.exit_code, signal=ended.signal, failed_phase=PHASES[ended.phase], message=ended.message,
            **timestamps(started_at=ended.started_at, finished_at=ended.finished_at),
        )

    def report(self, ended: Ended) -> bool:
        """True once dagger has the report; False when it refused it or stayed unreachable."""
        request = self.request(ended)
        give_up = time.monotonic() + self.deadline
        delay = 0.1
        while True:
            remaining = give_up - time.monotonic()
            try:
                self.stub.ReportJobStatus(request, metadata=self.metadata, wait_for_ready=True,
                                          timeout=max(0.1, min(10.0, remaining)))
                return True
            except grpc.RpcError as e:
                code, details = e.code(), e.details()
                if code in PERMANENT:
                    log.error("dagger refused the report: %s: %s", code.name, details)
                    return False
                if remaining <= delay:
                    log.error("cannot report to dagger (%s: %s); giving up", code.name, details)
                    return False
                log.warning("cannot report to dagger (%s: %s); retrying in %.1fs", code.name, details, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class JobAttempt:
    """One attempt, phase by phase; `run` returns how it ended."""

    def __init__(self, spec: RunSpec, settings: Settings, guard: SignalGuard, shipper: LogShipper,
                 cellar: CellarClient) -> None:
        self.spec = spec
        self.settings = settings
        self.guard = guard
        self.shipper = shipper
        self.cellar = cellar

    def note(self, text: str) -> None:
        self.shipper.add(pb.LOG_STREAM_SYSTEM, [text.encode("utf-8", "replace")])

    def run(self) -> Ended:
        started = time.time()
        try:
            prepare_inputs(self.spec, self._fetch_cache, self.note, self.settings.max_download_bytes)
        except Shutdown as s:
            ended = Ended(EXIT_SIGNAL_BASE + s.signum, s.name, "inputs", f"terminated by {s.name} while fetching inputs")
        except (FileProblem, OSError, ValueError) as e:
            ended = Ended(EXIT_INPUT_FAILED, phase="inputs", message=_problem(e))
        else:
            ended = self._command()
            if ended.succeeded and self.spec.outputs:
                ended = self._save_outputs(ended)
        return dataclasses.replace(ended, started_at=started, finished_at=time.time())

    def _fetch_cache(self, path: str, destination: Path) -> None:
        try:
            self.cellar.get("cache", self.spec.upload_id, path, destination)
        except grpc.RpcError as e:
            raise RuntimeError(_problem(e, "cellar")) from None

    def _command(self) -> Ended:
        """Runs the command to its end. Signals are held meanwhile: the first one is
        forwarded to the command's process group (SIGTERM, then SIGKILL after the grace)."""
        spec = self.spec
        done = threading.Event()
        result: List[Ended] = []

        def on_output(key: str, stream: int, lines: List[bytes]) -> None:
            self.shipper.add(pb.LOG_STREAM_STDERR if stream == STDERR else pb.LOG_STREAM_STDOUT, lines)

        def on_exit(key: str, ended: Ended) -> None:
            result.append(ended)
            done.set()

        with self.guard.held():
            pump = ProcessPump(kill_grace=self.settings.kill_grace)
            try:
                pump.start(spec.key, [spec.cmd, *spec.args], spec.workdir, self._command_env(),
                           on_output=on_output, on_exit=on_exit, timeout=spec.timeout)
                forwarded = False
                while not done.wait(SIGNAL_POLL):
                    if self.guard.received is not None and not forwarded:
                        forwarded = True
                        self.note(f"{self.guard.received.name} received: stopping the command")
                        pump.kill(spec.key)
            finally:
                pump.close()
        return result[0]

    def _command_env(self) -> Dict[str, str]:
        spec = self.spec
        own = {SPEC_ENV, SPEC_FILE_ENV} | ({"GRPC_ENABLE_FORK_SUPPORT"} if _FORK_SUPPORT_SET_HERE else set())
        env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIX) and k not in own}
        env.update({str(k): str(v) for k, v in spec.env.items()})
        env.update({
            JOB_KEY_ENV: spec.key,
            "DONUT_WORKFLOW_ID": spec.workflow_id,
            "DONUT_JOB_NAME": spec.job,
            "DONUT_JOB_ATTEMPT": str(spec.attempt),
            "DONUT_WORKFLOW_DIR": spec.workflow_dir,
        })
        return env

    def _save_outputs(self, ended: Ended) -> Ended:
        try:
            for name, path in outputs_to_save(self.spec):
                self.cellar.put("result", self.spec.workflow_id, name, path, job=self.spec.job)
                self.note(f"saved {name} ({path.stat().st_size} bytes)")
        except Shutdown as s:
            return Ended(EXIT_SIGNAL_BASE + s.signum, s.name, "outputs", f"terminated by {s.name} while saving outputs")
        except FileProblem as e:
            return Ended(EXIT_OUTPUT_FAILED, phase="outputs", message=str(e))
        except (OSError, grpc.RpcError) as e:
            return Ended(EXIT_OUTPUT_FAILED, phase="outputs", message=_problem(e, "cannot save outputs"))
        return ended


def run(spec: RunSpec, settings: Settings, guard: SignalGuard) -> int:
    """Runs the attempt and reports it; returns the wrapper's exit code."""
    metadata = (("authorization", f"Bearer {spec.token}"),) if spec.token else ()
    channel = channel_to(spec.dagger_endpoint, spec.tls_ca)
    cellar_endpoint = spec.cellar_endpoint or spec.dagger_endpoint
    cellar_channel = channel if cellar_endpoint == spec.dagger_endpoint else channel_to(cellar_endpoint, spec.tls_ca)
    shipper = LogShipper(channel, spec.workflow_id, spec.job, spec.attempt, spec.token,
                         ShipperSettings(memory_bytes=settings.log_memory_bytes))
    attempt = JobAttempt(spec, settings, guard, shipper, CellarClient(cellar_channel, metadata))
    try:
        ended = attempt.run()
    except Shutdown as s:  # between two phases
        ended = Ended(EXIT_SIGNAL_BASE + s.signum, s.name, "command", f"terminated by {s.name}")
    except Exception as e:  # noqa: BLE001 - a bug here must still end in a report
        log.exception("the job wrapper failed")
        ended = Ended(EXIT_WRAPPER_ERROR, phase="command", message=f"the job wrapper failed: {e!r}")
    with guard.held():  # from here on the report must go out
        if ended.message and not ended.succeeded:
            attempt.note(ended.message)
        deadline = time.monotonic() + settings.report_deadline
        if not shipper.close(settings.report_deadline):
            log.error("some log lines could not be delivered to dagger")
        reported = Reporter(channel, spec, metadata, max(1.0, deadline - time.monotonic())).report(ended)
        write_termination_log(settings.termination_log, ended, reported)
        channel.close()
        if cellar_channel is not channel:
            cellar_channel.close()
    return ended.exit_code if ended.exit_code is not None else EXIT_WRAPPER_ERROR


def write_termination_log(path: str, ended: Ended, reported: bool) -> None:
    """The outcome as JSON, for whoever launched the wrapper (kept under Kubernetes' 4 KiB)."""
    if not path:
        return
    record = {"exit_code": ended.exit_code, "signal": ended.signal, "phase": ended.phase,
              "message": ended.message[:2000], "started_at": ended.started_at,
              "finished_at": ended.finished_at, "reported": reported}
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(record, f)
    except OSError as e:
        log.warning("cannot write the termination log %s: %s", path, e)


def _problem(error: BaseException, context: str = "") -> str:
    if isinstance(error, grpc.RpcError):
        text = f"{error.code().name}: {error.details()}"
    elif isinstance(error, OSError) and error.strerror:
        text = f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    else:
        text = str(error)
    return f"{context}: {text}" if context else text


def load_spec(spec_file: Optional[str]) -> RunSpec:
    if spec_file:
        with open(spec_file, encoding="utf-8") as f:
            spec = RunSpec.from_json(f.read())
    else:
        spec = RunSpec.from_environment()
    if not spec.dagger_endpoint:
        raise ValueError("the job spec names no dagger_endpoint")
    return spec


def main(argv: Optional[Sequence[str]] = None) -> int:
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
        write_termination_log(settings.termination_log, Ended(EXIT_BAD_SPEC, phase="inputs", message=message),
                              reported=False)
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
