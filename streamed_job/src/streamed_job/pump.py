"""Runs commands and pumps their stdout/stderr as lines, many processes on one thread.

One selector watches every process's pipes and its pidfd, so a host running hundreds of
jobs needs one thread, not three per job. Each command runs in its own process group (a
cancel or timeout signals the whole group) and ends with its group: processes it left
behind are killed once it exits, so nothing is orphaned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from streamed_job.outcome import EXIT_COMMAND_NOT_FOUND, EXIT_NOT_EXECUTABLE, EXIT_TIMED_OUT, Ended, from_wait_status

log = logging.getLogger(__name__)

STDOUT, STDERR = 1, 2
MAX_LINE_BYTES = 1024 * 1024   # longer lines are passed on in pieces of this size
READ_BYTES = 256 * 1024
LEFTOVER_GRACE = 1.0           # seconds to drain pipes held open by leftover processes
DRAIN_BYTES = 16 * 1024 * 1024  # at most this much is taken from a pipe once its command has ended

OutputCallback = Callable[[str, int, list[bytes]], None]   # (key, stream, lines)
ExitCallback = Callable[[str, Ended], None]


@dataclass
class _Proc:
    key: str
    popen: subprocess.Popen[bytes]
    pidfd: int | None
    on_output: OutputCallback
    on_exit: ExitCallback
    started_at: float
    deadline: float | None
    timeout: float | None
    partial: dict[int, bytes] = field(default_factory=lambda: {STDOUT: b"", STDERR: b""})
    open_streams: set[int] = field(default_factory=lambda: {STDOUT, STDERR})
    returncode: int | None = None
    exited_at: float | None = None
    kill_at: float | None = None     # when to escalate SIGTERM to SIGKILL
    timed_out: bool = False
    terminated: bool = False


class ProcessPump:
    """Starts commands and reports their output lines and their end through callbacks.

    Callbacks run on the pump thread: keep them quick (hand slow work to another thread).
    """

    def __init__(self, kill_grace: float = 10.0) -> None:
        self.kill_grace = kill_grace
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._requests: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self._procs: dict[str, _Proc] = {}
        self._early_kills: set[str] = set()  # kill requests that overtook their start
        self._closing = False
        # Held while the pump handles events, so other threads may register a new process
        # directly (epoll takes new fds while another thread waits in it): no thread hop
        # between spawning a command and watching it.
        self._lock = threading.RLock()
        self._thread = threading.Thread(target=self._loop, name="process-pump", daemon=True)
        self._thread.start()

    # ---- API (any thread) ----------------------------------------------------------

    def start(
        self,
        key: str,
        argv: Sequence[str],
        cwd: str,
        env: Mapping[str, str],
        on_output: OutputCallback,
        on_exit: ExitCallback,
        timeout: float | None = None,
        since: float | None = None,
    ) -> bool:
        """Spawns argv; False (with on_exit already called) when it could not start. The
        timeout counts from `since` (a time.time(); default: now)."""
        started = time.time()
        try:
            popen = subprocess.Popen(
                list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            )
        except FileNotFoundError:
            on_exit(key, Ended(EXIT_COMMAND_NOT_FOUND, message=f"command not found: {argv[0]}",
                               started_at=started, finished_at=time.time()))
            return False
        except PermissionError:
            on_exit(key, Ended(EXIT_NOT_EXECUTABLE, message=f"command not executable: {argv[0]}",
                               started_at=started, finished_at=time.time()))
            return False
        except OSError as e:
            on_exit(key, Ended(EXIT_NOT_EXECUTABLE, message=f"cannot run {argv[0]}: {e.strerror}",
                               started_at=started, finished_at=time.time()))
            return False
        try:
            pidfd = os.pidfd_open(popen.pid)
        except OSError as e:  # e.g. out of file descriptors: a process nobody watches must not run
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
            for pipe in (popen.stdout, popen.stderr):
                if pipe is not None:
                    pipe.close()
            on_exit(key, Ended(EXIT_NOT_EXECUTABLE, message=f"cannot watch {argv[0]}: {e.strerror}",
                               started_at=started, finished_at=time.time()))
            return False
        proc = _Proc(
            key=key, popen=popen, pidfd=pidfd, on_output=on_output, on_exit=on_exit,
            started_at=started, deadline=(since or started) + timeout if timeout else None, timeout=timeout,
        )
        with self._lock:
            self._add(proc)
        if proc.deadline is not None:
            self._request("timer", None)  # the pump's wait may need to end sooner now
        return True

    def kill(self, key: str) -> None:
        """SIGTERM to the command's process group, SIGKILL after the grace period."""
        self._request("kill", key)

    def stop_all(self, wait: float | None = None) -> None:
        """SIGTERM to every command's process group, SIGKILL after the grace period; their
        ends are reported as usual. Returns once none is left (or after the grace and
        `wait` more seconds)."""
        self._request("stop_all", None)
        deadline = time.monotonic() + self.kill_grace + (2.0 if wait is None else wait)
        while time.monotonic() < deadline:
            with self._lock:
                if not self._procs:
                    return
            time.sleep(0.05)

    def close(self) -> None:
        """Kills every command (SIGKILL) and stops the pump thread."""
        self._request("close", None)
        self._thread.join(timeout=10)

    def _request(self, what: str, arg: object) -> None:
        self._requests.put((what, arg))
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    # ---- the pump thread -----------------------------------------------------------

    def _loop(self) -> None:
        while not (self._closing and not self._procs):
            with self._lock:
                timeout = self._next_timer()
            events = self._selector.select(timeout)
            with self._lock:
                for selkey, _ in events:
                    if selkey.data is None:
                        self._handle_requests()
                    else:
                        proc, what = selkey.data
                        self._handle_event(proc, what, selkey.fileobj)
                self._run_timers()
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _handle_event(self, proc: _Proc, what: int | str, fileobj: object) -> None:
        if proc.key not in self._procs:
            return  # finished earlier in this round
        if what == "exit":
            if proc.pidfd is not None:
                self._guarded(proc, self._reap, proc)
        elif what in proc.open_streams:  # not read to its end earlier in this round
            self._guarded(proc, self._read, proc, what, fileobj)

    def _guarded(self, proc: _Proc, action: Callable[..., object], *args: object) -> None:
        """Runs an action on one process; if it fails, the process is given up rather than
        the pump stopped, which every other process needs."""
        try:
            action(*args)
        except Exception as e:
            log.exception("process pump: %s of %s failed", action.__name__, proc.key)
            self._give_up(proc, e)

    def _give_up(self, proc: _Proc, error: Exception) -> None:
        """Kills a process the pump can no longer follow, forgets it and reports its end."""
        self._procs.pop(proc.key, None)
        self._signal(proc, signal.SIGKILL)
        for fileobj in (proc.popen.stdout, proc.popen.stderr, proc.pidfd):
            if fileobj is None:
                continue
            with contextlib.suppress(KeyError, ValueError):  # not (or no longer) registered
                self._selector.unregister(fileobj)
        for pipe in (proc.popen.stdout, proc.popen.stderr):
            if pipe is not None:
                pipe.close()
        if proc.pidfd is not None:
            os.close(proc.pidfd)
            proc.pidfd = None
        try:
            returncode = proc.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            returncode = -signal.SIGKILL
        exit_code, signal_name = from_wait_status(returncode)
        self._report_exit(proc, Ended(exit_code, signal_name, message=f"output lost: {error}",
                                      started_at=proc.started_at, finished_at=proc.exited_at or time.time()))

    def _report_exit(self, proc: _Proc, ended: Ended) -> None:
        try:
            proc.on_exit(proc.key, ended)
        except Exception:
            log.exception("exit callback for %s failed", proc.key)

    def _handle_requests(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                what, arg = self._requests.get_nowait()
            except queue.Empty:
                return
            if what == "kill":
                key = str(arg)
                proc = self._procs.get(key)
                if proc is None:
                    self._early_kills.add(key)
                else:
                    self._terminate(proc)
            elif what == "stop_all":
                for proc in list(self._procs.values()):
                    self._terminate(proc)
            elif what == "close":
                self._closing = True
                for proc in list(self._procs.values()):
                    proc.terminated = True
                    self._signal(proc, signal.SIGKILL)

    def _terminate(self, proc: _Proc) -> None:
        if proc.returncode is None:
            proc.terminated = True
            self._signal(proc, signal.SIGTERM)
            proc.kill_at = time.monotonic() + self.kill_grace

    def _add(self, proc: _Proc) -> None:
        self._procs[proc.key] = proc
        assert proc.popen.stdout is not None and proc.popen.stderr is not None
        for stream, pipe in ((STDOUT, proc.popen.stdout), (STDERR, proc.popen.stderr)):
            os.set_blocking(pipe.fileno(), False)
            self._selector.register(pipe, selectors.EVENT_READ, (proc, stream))
        assert proc.pidfd is not None
        self._selector.register(proc.pidfd, selectors.EVENT_READ, (proc, "exit"))
        if self._closing:
            self._signal(proc, signal.SIGKILL)
        elif proc.key in self._early_kills:
            self._early_kills.discard(proc.key)
            self._terminate(proc)

    def _read(self, proc: _Proc, stream: int, pipe: BinaryIO) -> bool:
        """Reads what the pipe has; False when it had nothing (yet) or has ended."""
        fd = pipe.fileno()
        try:
            chunk = os.read(fd, READ_BYTES)
        except BlockingIOError:
            return False
        if not chunk:
            self._end_stream(proc, stream, pipe)
            return False
        data = proc.partial[stream] + chunk
        lines = data.split(b"\n")
        rest = lines.pop()
        while len(rest) > MAX_LINE_BYTES:
            lines.append(rest[:MAX_LINE_BYTES])
            rest = rest[MAX_LINE_BYTES:]
        proc.partial[stream] = rest
        if any(len(line) > MAX_LINE_BYTES for line in lines):
            lines = [piece for line in lines for piece in _pieces(line)]
        if lines:
            self._emit(proc, stream, lines)
        return True

    def _end_stream(self, proc: _Proc, stream: int, pipe: BinaryIO) -> None:
        self._selector.unregister(pipe)
        pipe.close()
        proc.open_streams.discard(stream)
        if proc.partial[stream]:
            self._emit(proc, stream, [proc.partial[stream]])
            proc.partial[stream] = b""
        self._maybe_finish(proc)

    def _emit(self, proc: _Proc, stream: int, lines: list[bytes]) -> None:
        try:
            proc.on_output(proc.key, stream, lines)
        except Exception:
            log.exception("output callback for %s failed", proc.key)

    def _reap(self, proc: _Proc) -> None:
        if proc.pidfd is not None:
            self._selector.unregister(proc.pidfd)
            os.close(proc.pidfd)
            proc.pidfd = None
        proc.returncode = proc.popen.wait()
        proc.exited_at = time.time()
        # Usually the pipes are at their end already: read them now rather than a round later.
        for stream, pipe in ((STDOUT, proc.popen.stdout), (STDERR, proc.popen.stderr)):
            for _ in range(16):
                if stream not in proc.open_streams or pipe is None or not self._read(proc, stream, pipe):  # type: ignore[arg-type]
                    break
        self._maybe_finish(proc)

    def _maybe_finish(self, proc: _Proc) -> None:
        if proc.key not in self._procs:
            return
        if proc.returncode is None:
            return
        if proc.open_streams and time.time() - (proc.exited_at or 0) < LEFTOVER_GRACE and not self._closing:
            return  # output still coming; leftovers get LEFTOVER_GRACE to finish writing
        self._signal(proc, signal.SIGKILL)  # whatever the command left behind
        for stream, pipe in ((STDOUT, proc.popen.stdout), (STDERR, proc.popen.stderr)):
            if stream in proc.open_streams and pipe is not None:
                self._drain(proc, stream, pipe)  # type: ignore[arg-type]  # Popen's pipes are binary
        del self._procs[proc.key]
        exit_code, signal_name = from_wait_status(proc.returncode)
        if proc.terminated and not signal_name:
            signal_name = "SIGTERM"  # it ended because it was told to, even if it did so cleanly
        if proc.timed_out:
            ended = Ended(EXIT_TIMED_OUT, signal_name,
                          message=f"timed out after {proc.timeout:g}s",
                          started_at=proc.started_at, finished_at=proc.exited_at)
        else:
            ended = Ended(exit_code, signal_name, message=_describe(exit_code, signal_name, proc.terminated),
                          started_at=proc.started_at, finished_at=proc.exited_at)
        self._report_exit(proc, ended)

    def _drain(self, proc: _Proc, stream: int, pipe: BinaryIO) -> None:
        drained = 0
        while drained < DRAIN_BYTES:  # a process that escaped its group may write on and on
            try:
                chunk = os.read(pipe.fileno(), READ_BYTES)
            except (BlockingIOError, ValueError, OSError):
                chunk = b""
            if not chunk:
                break
            drained += len(chunk)
            proc.partial[stream] += chunk
        lines = proc.partial[stream].split(b"\n") if proc.partial[stream] else []
        if lines and lines[-1] == b"":
            lines.pop()
        if lines:
            self._emit(proc, stream, [piece for line in lines for piece in _pieces(line)])
        proc.partial[stream] = b""
        self._selector.unregister(pipe)
        pipe.close()
        proc.open_streams.discard(stream)

    def _signal(self, proc: _Proc, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, sig)

    def _next_timer(self) -> float | None:
        now_mono, now = time.monotonic(), time.time()
        waits = []
        for proc in self._procs.values():
            if proc.kill_at is not None:
                waits.append(proc.kill_at - now_mono)
            if proc.deadline is not None and proc.returncode is None:
                waits.append(proc.deadline - now)
            if proc.returncode is not None and proc.open_streams:
                waits.append((proc.exited_at or now) + LEFTOVER_GRACE - now)
        return max(0.0, min(waits)) if waits else None

    def _run_timers(self) -> None:
        now_mono, now = time.monotonic(), time.time()
        for proc in list(self._procs.values()):
            if proc.kill_at is not None and now_mono >= proc.kill_at:
                proc.kill_at = None
                self._signal(proc, signal.SIGKILL)
            if proc.deadline is not None and proc.returncode is None and now >= proc.deadline:
                proc.deadline = None
                proc.timed_out = True
                self._signal(proc, signal.SIGTERM)
                proc.kill_at = now_mono + self.kill_grace
            if proc.returncode is not None and proc.open_streams:
                self._guarded(proc, self._maybe_finish, proc)


def _pieces(line: bytes) -> list[bytes]:
    if len(line) <= MAX_LINE_BYTES:
        return [line]
    return [line[i:i + MAX_LINE_BYTES] for i in range(0, len(line), MAX_LINE_BYTES)]


def _describe(exit_code: int, signal_name: str, terminated: bool) -> str:
    if terminated:
        return f"terminated ({signal_name or f'exit code {exit_code}'})"
    if signal_name:
        return f"killed by {signal_name}"
    return "" if exit_code == 0 else f"exited with code {exit_code}"
