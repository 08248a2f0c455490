"""One job attempt, phase by phase: inputs, the command, outputs, then its end.

The same code runs every attempt wherever it runs: in dagger's process (the local
executor, many attempts on one pump) and in a `streamed-job` process (the wrapper
executor here, a pod in a cluster). What differs is given: where the output lines go,
how cellar is reached, which pump runs the command and which thread saves the outputs.

`run` fetches the inputs on the caller's thread, starts the command and returns; the
attempt ends once, through `on_end`, from whichever thread finished it. How each failure
ends an attempt is decided here alone: an input that can't be had is exit 90 (124 when
the job's timeout ran out while fetching it), a missing or unsaved output 91 (storage
that stays unavailable longer than the save deadline too), a bug in this machinery 70,
a kill before the command ran is a SIGTERM without an exit code (a kill interrupts a
download at once).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import grpc

from donut.dagger.v1 import dagger_pb2 as pb
from streamed_job.cellar import CellarClient, why_unavailable
from streamed_job.files import FileProblem, Saved, outputs_to_save, prepare_inputs
from streamed_job.origin import Fetching
from streamed_job.outcome import (
    EXIT_INPUT_FAILED,
    EXIT_OUTPUT_FAILED,
    EXIT_SIGNAL_BASE,
    EXIT_TIMED_OUT,
    EXIT_WRAPPER_ERROR,
    Ended,
)
from streamed_job.pump import STDERR as STDERR_PIPE
from streamed_job.pump import ProcessPump
from streamed_job.spec import FetchSettings, RunSpec, SaveSettings

log = logging.getLogger(__name__)

STDOUT: int = pb.LOG_STREAM_STDOUT
STDERR: int = pb.LOG_STREAM_STDERR
SYSTEM: int = pb.LOG_STREAM_SYSTEM  # the attempt's own notes (what was fetched and saved, why it failed)

Output = Callable[[int, list[bytes]], None]
"""(stream, lines): where the attempt's lines go, STDOUT, STDERR or SYSTEM."""


class Shutdown(BaseException):
    """SIGTERM or SIGINT arrived. A BaseException, so `except Exception` does not swallow it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"received {self.name}")


class Attempt:
    """One attempt of a job; `run` starts it, `kill` stops it, `on_end` hears how it ended."""

    def __init__(self, spec: RunSpec, *, pump: ProcessPump, output: Output,
                 cellar: Callable[[], CellarClient] | None, on_end: Callable[[Ended], None],
                 base_env: Mapping[str, str], background: Callable[[Callable[[], None]], object],
                 fetch: FetchSettings | None = None, save: SaveSettings | None = None) -> None:
        self.spec = spec
        self.pump = pump
        self.output = output
        self.cellar = cellar
        self.on_end = on_end
        self.base_env = base_env  # what every command gets besides its own DONUT_* (spec.base_environment)
        self.background = background  # runs slow work (saving outputs) off the pump's thread
        self.fetch = fetch or FetchSettings()
        self.save = save or SaveSettings()
        self._save_deadline: float | None = None  # monotonic; set when storage is first found away
        self._fetching = Fetching()
        self._lock = threading.Lock()
        self._started_at: float | None = None
        self._command_started = False
        self._killed = threading.Event()  # set by kill (it also cuts a wait between saving tries short)
        self._ended = False

    def note(self, text: str) -> None:
        self.output(SYSTEM, [text.encode("utf-8", "replace")])

    def kill(self) -> None:
        """Stops the attempt: the command (SIGTERM, then SIGKILL after the pump's grace)
        or, before it started, its inputs' downloads at once; saving stops after the
        current file."""
        with self._lock:
            self._killed.set()
            command_started = self._command_started
        if command_started:
            self.pump.kill(self.spec.key)
        else:
            self._fetching.stop("cancelled")

    # ---- the phases ------------------------------------------------------------------

    def run(self) -> None:
        """Fetches the inputs (on this thread), then starts the command and returns. The
        job's timeout covers both: the inputs may take what is left of the fetch deadline
        or of the timeout, whichever ends first, and the command what is left of the timeout."""
        self._started_at = time.time()
        timeout = self.spec.timeout
        job_timeout = timeout is not None and timeout <= self.fetch.deadline
        if timeout is not None and job_timeout:
            self._fetching.begin(timeout, f"timed out after {timeout:g}s (the job's timeout covers its inputs)")
        else:
            self._fetching.begin(self.fetch.deadline,
                                 f"not fetched within {self.fetch.deadline:g}s (the time all inputs may take)")
        try:
            prepare_inputs(self.spec, self._fetch_cache if self.cellar else None, self.note, self.fetch,
                           self._fetching)
        except Shutdown as s:
            self.end(Ended(EXIT_SIGNAL_BASE + s.signum, s.name, f"terminated by {s.name} while fetching inputs"))
            return
        except (FileProblem, OSError, ValueError) as e:
            if self._killed.is_set():
                self.end(Ended(None, "SIGTERM", "terminated while fetching inputs"))
            else:
                timed_out = job_timeout and bool(self._fetching.why)
                self.end(Ended(EXIT_TIMED_OUT if timed_out else EXIT_INPUT_FAILED, message=problem(e)))
            return
        except Exception as e:  # a bug must still end the attempt, not leave it running for ever
            log.exception("preparing the inputs of %s failed", self.spec.key)
            self.end(Ended(EXIT_WRAPPER_ERROR, message=f"the job machinery failed: {e!r}"))
            return
        finally:
            self._fetching.end()
        with self._lock:
            killed = self._killed.is_set()
            self._command_started = not killed
        if killed:
            self.end(Ended(None, "SIGTERM", "terminated before it started"))
            return
        spec = self.spec
        self.pump.start(spec.key, [spec.cmd, *spec.args], spec.workdir, spec.environment(self.base_env),
                        on_output=self._on_output, on_exit=self._on_exit, timeout=spec.timeout,
                        since=self._started_at)

    def _fetch_cache(self, path: str, destination: Path) -> None:
        assert self.cellar is not None
        try:
            self.cellar().get("cache", self.spec.upload_id, path, destination,
                              timeout=max(0.1, self._fetching.remaining()))
        except grpc.RpcError as e:
            raise RuntimeError(problem(e, "cellar")) from None  # files.py names the input

    def _on_output(self, key: str, stream: int, lines: list[bytes]) -> None:
        self.output(STDERR if stream == STDERR_PIPE else STDOUT, lines)

    def _on_exit(self, key: str, ended: Ended) -> None:
        if ended.succeeded and self.spec.outputs:
            self.background(lambda: self.end(self._save_outputs(ended)))
        else:
            self.end(ended)

    def _save_outputs(self, ended: Ended) -> Ended:
        try:
            for saved in outputs_to_save(self.spec, self.note):
                if self._killed.is_set():
                    return Ended(None, "SIGTERM", "terminated while saving outputs")
                if self.cellar is None:
                    raise FileProblem(f"{saved.name}: no cellar to save it in")
                size = self._save(saved)
                if size is None:
                    return Ended(None, "SIGTERM", "terminated while saving outputs")
                self.note(f"saved {saved.name} ({size} bytes)")
        except FileProblem as e:
            return Ended(EXIT_OUTPUT_FAILED, message=str(e))
        except StorageAway as e:
            return Ended(EXIT_OUTPUT_FAILED, message=f"storage unavailable: {e}")
        except (OSError, grpc.RpcError) as e:
            return Ended(EXIT_OUTPUT_FAILED, message=problem(e, "cannot save outputs"))
        except Exception as e:
            log.exception("saving the outputs of %s failed", self.spec.key)
            return Ended(EXIT_WRAPPER_ERROR, message=f"the job machinery failed: {e!r}")
        return ended

    def _save(self, saved: Saved) -> int | None:
        """Puts one output into cellar and returns its size (None: killed meanwhile). While
        cellar answers UNAVAILABLE, tries again with a growing pause, until the save deadline
        (counted from the first time storage was found away) has passed: then StorageAway."""
        assert self.cellar is not None
        pause = self.save.first_retry
        while True:
            try:
                with saved.open() as f:
                    size = os.fstat(f.fileno()).st_size
                    self.cellar().put("result", self.spec.workflow_id, saved.name, f, job=self.spec.job)
                return size
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                why = why_unavailable(e)
            if self._save_deadline is None:
                self._save_deadline = time.monotonic() + self.save.deadline
            left = self._save_deadline - time.monotonic()
            if left <= 0:
                raise StorageAway(why)
            pause = min(pause, left)
            self.note(f"storage unavailable ({why}): saving {saved.name} again in {pause:g}s")
            if self._killed.wait(pause):
                return None
            pause = min(pause * 2, self.save.max_retry)

    def end(self, ended: Ended) -> None:
        """Ends the attempt (the first end counts; later ones are ignored): a note of why
        it failed, then `on_end`."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
        ended = dataclasses.replace(ended, started_at=self._started_at or ended.started_at, finished_at=time.time())
        if ended.message and not ended.succeeded:
            self.note(ended.message)
        self.on_end(ended)


class StorageAway(Exception):
    """Cellar stayed unavailable for longer than the save deadline; the message says why."""


def problem(error: BaseException, context: str = "") -> str:
    """A one-line account of an error, for the job's log."""
    if isinstance(error, grpc.RpcError):
        text = f"{error.code().name}: {error.details()}"
    elif isinstance(error, OSError) and error.strerror:
        text = f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    else:
        text = str(error)
    return f"{context}: {text}" if context else text
