"""How an attempt ended, and the exit codes the wrapper uses to say so."""

from __future__ import annotations

import signal as _signal
from dataclasses import dataclass

EXIT_OK = 0
EXIT_NOT_EXECUTABLE = 126
EXIT_COMMAND_NOT_FOUND = 127
EXIT_SIGNAL_BASE = 128        # killed by signal N: 128 + N, as shells report it
EXIT_INPUT_FAILED = 90        # an input could not be fetched or is missing; the command never ran
EXIT_OUTPUT_FAILED = 91       # the command succeeded but a declared output is missing or unsaved
EXIT_TIMED_OUT = 124          # as coreutils `timeout`


@dataclass(frozen=True)
class Ended:
    """What the wrapper knows when an attempt is over."""

    exit_code: int | None
    signal: str = ""
    phase: str = ""     # "", "inputs", "command" or "outputs": the phase that failed
    message: str = ""
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.signal and not self.phase


def from_wait_status(returncode: int) -> tuple[int, str]:
    """(exit code, signal name) from a Popen returncode (negative: killed by a signal)."""
    if returncode < 0:
        number = -returncode
        try:
            name = _signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return EXIT_SIGNAL_BASE + number, name
    return returncode, ""
