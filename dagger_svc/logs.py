"""Job logs, kept outside etcd: one append-only file per job attempt, followed live.

Each stored line is a one-byte stream tag (o: stdout, e: stderr, s: the wrapper's own
notes) followed by the line's bytes and a newline. A follower stops once the attempt is
over (its end is recorded in etcd only after every line was stored) and it has read to
the end of the file.

A batch pushed by a job wrapper is written together with a `q<sequence>` line in one
write, so a resent batch is stored once, even after a restart: reopening the file finds
the last sequence stored and drops a batch that was cut short (the wrapper resends it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

STDOUT, STDERR, SYSTEM = 1, 2, 3
_TAGS = {STDOUT: b"o", STDERR: b"e", SYSTEM: b"s"}
_STREAMS = {ord("o"): STDOUT, ord("e"): STDERR, ord("s"): SYSTEM}
_SEQUENCE = ord("q")

LogLine = tuple[int, bytes]  # (stream, text without newline)


@dataclass
class _Open:
    file: BinaryIO
    sequence: int = 0


class LogStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._open: dict[tuple[str, str, int], _Open] = {}
        self._dirs: set[Path] = set()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._generation = 0  # bumped on every change, so followers never miss a wake-up

    def path(self, workflow_id: str, job: str, attempt: int) -> Path:
        return self.root / workflow_id / f"{job}.{attempt}.log"

    def _writer(self, key: tuple[str, str, int]) -> _Open:
        entry = self._open.get(key)
        if entry is None:
            path = self.path(*key)
            if path.parent not in self._dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._dirs.add(path.parent)
            sequence = _recover(path)
            entry = self._open[key] = _Open(open(path, "ab"), sequence)
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
            if lines or sequence is not None:
                data = b"".join(_TAGS[s] + text.replace(b"\n", b" ") + b"\n" for s, text in lines)
                if sequence is not None:
                    data += b"q%d\n" % sequence
                entry.file.write(data)
                entry.file.flush()
                self._generation += 1
                self._changed.notify_all()
            return entry.sequence

    def end(self, workflow_id: str, job: str, attempt: int) -> None:
        """The attempt wrote its last line: close its file and wake its followers."""
        with self._lock:
            entry = self._open.pop((workflow_id, job, attempt), None)
            if entry is not None:
                entry.file.close()
            self._generation += 1
            self._changed.notify_all()

    def last_sequence(self, workflow_id: str, job: str, attempt: int) -> int:
        with self._lock:
            entry = self._open.get((workflow_id, job, attempt))
            return entry.sequence if entry else 0

    def read(self, workflow_id: str, job: str, attempt: int, offset: int = 0,
             follow_until: Callable[[], bool] | None = None,
             batch: int = 1000) -> Iterator[tuple[int, list[LogLine]]]:
        """Yields (index of the first line, lines) from line `offset`. With follow_until,
        keeps waiting for new lines until it returns True (the attempt is over) and the
        file has been read to its end."""
        path = self.path(workflow_id, job, attempt)
        position, index = 0, 0
        while True:
            with self._lock:
                generation = self._generation
            over = follow_until is None or follow_until()
            lines: list[LogLine] = []
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(position)
                    for raw in f:
                        if not raw.endswith(b"\n"):
                            break  # a line still being written
                        position += len(raw)
                        if raw[0] == _SEQUENCE:
                            continue
                        if index >= offset:
                            lines.append((_STREAMS.get(raw[0], STDOUT), raw[1:-1]))
                        index += 1
                        if len(lines) >= batch:
                            yield index - len(lines), lines
                            lines = []
            if lines:
                yield index - len(lines), lines
            if over:
                return
            with self._lock:
                if generation == self._generation:
                    self._changed.wait(timeout=0.5)

    def close(self) -> None:
        with self._lock:
            for entry in self._open.values():
                entry.file.close()
            self._open.clear()


def _recover(path: Path) -> int:
    """The last sequence stored in an existing log, cutting off a batch that was only
    partly written (it has no sequence line yet, and will be sent again)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    with open(path, "r+b") as f:
        end, tail = size, b""
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            tail = f.read(end - start) + tail
            at = tail.rfind(b"\nq")
            if at >= 0 or (start == 0 and tail.startswith(b"q")):
                line_start = at + 1 if at >= 0 else 0
                line_end = tail.find(b"\n", line_start)
                if line_end < 0:
                    end = start + line_start  # the marker itself was cut short
                    tail = tail[:line_start]
                    continue
                sequence = int(tail[line_start + 1:line_end])
                f.truncate(size - len(tail) + line_end + 1)
                return sequence
            end = start
    return 0
