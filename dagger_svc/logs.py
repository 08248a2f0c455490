"""Job logs, kept outside etcd: one append-only file per job attempt, followed live.

Each stored line is a one-byte stream tag (o: stdout, e: stderr, s: the wrapper's own
notes) followed by the line's bytes and a newline; an `x` line marks the attempt's end,
so followers know when to stop even across restarts. Sequence numbers of pushed batches
are kept per attempt so a resent batch is stored once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

STDOUT, STDERR, SYSTEM = 1, 2, 3
_TAGS = {STDOUT: b"o", STDERR: b"e", SYSTEM: b"s"}
_STREAMS = {ord("o"): STDOUT, ord("e"): STDERR, ord("s"): SYSTEM}
_END = b"x\n"

LogLine = tuple[int, bytes]  # (stream, text without newline)


@dataclass
class _Open:
    file: BinaryIO
    lines: int
    sequence: int = 0
    ended: bool = False


class LogStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._open: dict[tuple[str, str, int], _Open] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._generation = 0  # bumped on every change, so followers never miss a wake-up

    def path(self, workflow_id: str, job: str, attempt: int) -> Path:
        return self.root / workflow_id / job / f"{attempt}.log"

    def _writer(self, key: tuple[str, str, int]) -> _Open:
        entry = self._open.get(key)
        if entry is None:
            path = self.path(*key)
            path.parent.mkdir(parents=True, exist_ok=True)
            existing = sum(1 for _ in open(path, "rb")) if path.exists() else 0
            entry = self._open[key] = _Open(open(path, "ab"), existing)
        return entry

    def append(self, workflow_id: str, job: str, attempt: int, lines: list[LogLine],
               sequence: int | None = None) -> int:
        """Stores lines; with a sequence number, a batch at or below the last one stored
        is a resend and is dropped. Returns the last sequence stored."""
        with self._lock:
            entry = self._writer((workflow_id, job, attempt))
            if sequence is not None:
                if sequence <= entry.sequence:
                    return entry.sequence
                entry.sequence = sequence
            if lines and not entry.ended:
                entry.file.write(b"".join(_TAGS[s] + text.replace(b"\n", b" ") + b"\n" for s, text in lines))
                entry.file.flush()
                entry.lines += len(lines)
                self._generation += 1
                self._changed.notify_all()
            return entry.sequence

    def end(self, workflow_id: str, job: str, attempt: int) -> None:
        """Marks the attempt's log complete; followers stop after its last line."""
        with self._lock:
            key = (workflow_id, job, attempt)
            entry = self._writer(key)
            if not entry.ended:
                entry.file.write(_END)
                entry.file.close()
                entry.ended = True
            del self._open[key]
            self._generation += 1
            self._changed.notify_all()

    def last_sequence(self, workflow_id: str, job: str, attempt: int) -> int:
        with self._lock:
            entry = self._open.get((workflow_id, job, attempt))
            return entry.sequence if entry else 0

    def read(self, workflow_id: str, job: str, attempt: int, offset: int = 0, follow: bool = False,
             stop: threading.Event | None = None, batch: int = 1000) -> Iterator[tuple[int, list[LogLine]]]:
        """Yields (offset of the first line, lines) from `offset`; with follow, waits for
        new lines until the attempt's end marker (or `stop`)."""
        path = self.path(workflow_id, job, attempt)
        position, index = 0, 0
        while True:
            with self._lock:
                generation = self._generation
            lines: list[LogLine] = []
            ended = False
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(position)
                    for raw in f:
                        if not raw.endswith(b"\n"):
                            break  # a line still being written
                        position += len(raw)
                        if raw == _END:
                            ended = True
                            break
                        if index >= offset:
                            lines.append((_STREAMS.get(raw[0], STDOUT), raw[1:-1]))
                        index += 1
                        if len(lines) >= batch:
                            yield index - len(lines), lines
                            lines = []
            if lines:
                yield index - len(lines), lines
            if ended or not follow or (stop is not None and stop.is_set()):
                return
            with self._lock:
                if generation == self._generation:
                    self._changed.wait(timeout=1.0)

    def close(self) -> None:
        with self._lock:
            for entry in self._open.values():
                entry.file.close()
            self._open.clear()
