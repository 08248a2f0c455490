"""How an attempt ended, the exit codes that say so, and the termination log that carries
it to whoever launched the wrapper (a file here, a pod's termination message in a cluster)."""

from __future__ import annotations

import json
import signal as _signal
from dataclasses import asdict, dataclass
from typing import Any

EXIT_NOT_EXECUTABLE = 126
EXIT_COMMAND_NOT_FOUND = 127
EXIT_SIGNAL_BASE = 128        # killed by signal N: 128 + N, as shells report it
EXIT_INPUT_FAILED = 90        # an input could not be fetched or is missing; the command never ran
EXIT_OUTPUT_FAILED = 91       # the command succeeded but a declared output is missing or unsaved
EXIT_TIMED_OUT = 124          # as coreutils `timeout`
EXIT_BAD_SPEC = 2             # no readable job spec: nothing ran (as argparse's usage errors)
EXIT_WRAPPER_ERROR = 70       # the job machinery itself failed (sysexits EX_SOFTWARE)

TERMINATION_MESSAGE_BYTES = 4096  # what Kubernetes keeps of a container's termination message


@dataclass(frozen=True)
class Ended:
    """How an attempt ended: the command's exit code (None when there is none to tell),
    the signal that ended it, and why, for people."""

    exit_code: int | None
    signal: str = ""
    message: str = ""
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.signal

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Ended:
        """Raises ValueError for a document that is not an Ended."""
        exit_code, signal, message = doc.get("exit_code"), doc.get("signal") or "", doc.get("message") or ""
        times = [doc.get("started_at"), doc.get("finished_at")]
        if not (exit_code is None or type(exit_code) is int) or not isinstance(signal, str) \
                or not isinstance(message, str) or not all(t is None or isinstance(t, (int, float)) for t in times):
            raise ValueError(f"not an attempt's end: {doc!r:.200}")
        return cls(exit_code, signal, message, *(None if t is None else float(t) for t in times))


def termination_message(ended: Ended, reported: bool) -> str:
    """The end as JSON, with whether dagger acknowledged the report; it fits in what
    Kubernetes keeps of a termination message (the message is cut short if need be)."""
    doc = {**ended.to_dict(), "reported": reported}
    text = json.dumps(doc)
    while len(text.encode()) > TERMINATION_MESSAGE_BYTES:
        doc["message"] = doc["message"][: len(doc["message"]) // 2] + "…"
        text = json.dumps(doc)
    return text


def read_termination_message(text: str) -> tuple[Ended, bool] | None:
    """(the end, whether it was reported) from a termination message; None if it is not one."""
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            return None
        return Ended.from_dict(doc), doc.get("reported") is True
    except ValueError:
        return None


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
