"""The process pump on its own: many commands on one thread, whatever order their events come in."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from streamed_job.outcome import Ended
from streamed_job.pump import ProcessPump


def test_an_exit_and_a_pipe_end_seen_in_one_round_are_both_handled(tmp_path: Path) -> None:
    """A busy pump sees `slow`'s exit and then the end of its stdout in one select round;
    the exit reads stdout to its end, so the stale event must be skipped, not read from a
    closed pipe (which used to kill the pump thread and hang every job on it)."""
    pump = ProcessPump(kill_grace=1.0)
    ended: dict[str, Ended] = {}
    all_ended = threading.Event()

    def on_output(key: str, stream: int, lines: list[bytes]) -> None:
        if key == "busy":
            time.sleep(1.0)  # hold the pump while `slow` exits and its stdout ends

    def on_exit(key: str, outcome: Ended) -> None:
        ended[key] = outcome
        if len(ended) == 2:
            all_ended.set()

    try:
        pump.start("busy", ["/bin/sh", "-c", "sleep 0.1; echo x"], str(tmp_path), {}, on_output, on_exit)
        # sh exits at 0.2 s, its stdout ends at 0.5 s, a leftover holds stderr until killed.
        leftovers = "sleep 0.2; (sleep 0.3) & (sleep 30 >/dev/null) & exit 0"
        pump.start("slow", ["/bin/sh", "-c", leftovers], str(tmp_path), {}, on_output, on_exit)
        assert all_ended.wait(timeout=15), f"only {sorted(ended)} ended"
        assert ended["slow"].exit_code == 0 and ended["busy"].exit_code == 0

        done = threading.Event()
        pump.start("after", ["/bin/true"], str(tmp_path), {}, on_output, lambda key, outcome: done.set())
        assert done.wait(timeout=10)  # the pump still runs
    finally:
        pump.close()


def test_a_process_the_pump_cannot_follow_is_killed_and_reported_not_left_hanging(tmp_path: Path) -> None:
    pump = ProcessPump(kill_grace=1.0)
    ended: dict[str, Ended] = {}
    done = threading.Event()
    real_read = pump._read

    def broken_read(proc: object, stream: int, pipe: object) -> bool:
        if proc.key == "broken":
            raise OSError("injected read failure")
        return real_read(proc, stream, pipe)  # type: ignore[arg-type]

    def on_exit(key: str, outcome: Ended) -> None:
        ended[key] = outcome
        if len(ended) == 2:
            done.set()

    pump._read = broken_read  # type: ignore[method-assign]
    try:
        pump.start("broken", ["/bin/sh", "-c", "echo hello; sleep 30"], str(tmp_path), {},
                   lambda *_: None, on_exit)
        pump.start("fine", ["/bin/sh", "-c", "sleep 0.3; echo ok"], str(tmp_path), {},
                   lambda *_: None, on_exit)
        assert done.wait(timeout=15), f"only {sorted(ended)} ended"
        assert ended["broken"].signal == "SIGKILL"
        assert ended["broken"].message == "output lost: injected read failure"
        assert ended["fine"].exit_code == 0
    finally:
        started = time.monotonic()
        pump.close()
        assert time.monotonic() - started < 5  # nothing left tracked
