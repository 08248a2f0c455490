"""Job logs, kept outside etcd: one append-only file per job attempt, followed live.

Each stored line is a one-byte stream tag (o: stdout, e: stderr, s: the wrapper's own
notes) followed by the line's bytes and a newline. A follower stops once the attempt is
over (its end is recorded in etcd only after every line was stored) and it has read to
the end of the file.

A batch pushed by a job wrapper is written together with a `q<sequence>` line in one
write, so a resent batch is stored once, even after a restart: reopening the file finds
the last sequence stored and drops a batch that was cut short (the wrapper resends it).
A sequenced log starts with `q0`, so even its first batch can be found cut short.

Each batch's lines follow a `t<unix ms>` line: when the server received them. Like the
sequence markers it is not a line of the log (offsets count only the lines); a log
written before these markers existed has lines of unknown time (0).

An attempt's log is cut at a size limit: the line that would cross it is replaced by a
note saying so, and later lines are dropped (their sequence markers are still stored).

Once an attempt has ended, its file may be copied elsewhere as it is (`on_end` says when);
`read_stored` reads such a copy with the same parser as the file.

Several processes (dagger replicas over one data dir or shared volume) may append to one
log: each append holds an exclusive `flock` on the file, and a file that grew or shrank
since this process last wrote it is read again for its last sequence (and cut after it)
before the batch is weighed, so a batch another process stored is not stored twice and
the size limit counts every process's lines. An unsequenced line appended to a sequenced
log restates the last sequence after it, so that it is not taken for a batch cut short.
Followers here are woken by this process's appends; `wake` is how others' are told (see
`dagger_svc.log_pulses`), and they look again at least every FOLLOW_POLL_SECONDS anyway.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from io import FileIO
from pathlib import Path
from typing import BinaryIO

from dagger_svc.core.limits import MAX_LOG_BYTES
from donut_common.metrics import LOG_LINES
from streamed_job.attempt import STDERR, STDOUT, SYSTEM

_TAGS = {STDOUT: b"o", STDERR: b"e", SYSTEM: b"s"}
_STREAMS = {ord("o"): STDOUT, ord("e"): STDERR, ord("s"): SYSTEM}
_SEQUENCE = ord("q")
_TIME = ord("t")
_MARKER = re.compile(rb"(?m)^q(\d{1,20})\n")
_MARKER_ROOM = 32  # bytes a marker line can take (looked at again across a read boundary)

LogLine = tuple[int, bytes]  # (stream, text without newline)
TimedLine = tuple[int, bytes, int]  # (stream, text, when it was received in unix ms; 0: unknown)
READ_BATCH_BYTES = 4 * 1024 * 1024  # lines are at most 1 MiB: a batch stays well under a message's 16 MiB
_TIME_SEARCH_BYTES = 64 * 1024 * 1024  # how far back a tail looks for the time of its first line
MAX_OPEN_LOGS = 256  # files kept open for appending; the least recently used is closed (and reopened when needed)
FOLLOW_POLL_SECONDS = 0.5  # how long a follower waits for a wake-up before it looks at its file again


Ended = Callable[[str, str, int], None]  # told (workflow id, job, attempt) once an attempt's log is complete
Stored = Callable[[], None]  # told that this process stored lines


@dataclass
class _Cursor:
    """How far a reader has got in a stored log."""

    position: int = 0  # bytes of whole lines read
    index: int = 0  # lines read (markers are not lines)
    at: int = 0  # when the batch being read was received, in unix ms (0: unknown)


@dataclass
class _Open:
    file: FileIO  # unbuffered: what a failed write leaves behind is on disk or nowhere, never in a buffer
    sequence: int = 0
    size: int = -1  # the file's size after this process's last write (-1: not known yet)


class LogStore:
    def __init__(self, root: Path, max_bytes: int = MAX_LOG_BYTES, max_open: int = MAX_OPEN_LOGS,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.clock = clock
        self.max_bytes = max_bytes
        self.max_open = max_open
        self._open: OrderedDict[tuple[str, str, int], _Open] = OrderedDict()
        self._dirs: set[Path] = set()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._generation = 0  # bumped on every change, so followers never miss a wake-up
        self._on_end: list[Ended] = []
        self._on_stored: list[Stored] = []

    def on_end(self, listener: Ended) -> None:
        """Calls listener (outside the store's lock) after each `end`."""
        self._on_end.append(listener)

    def on_stored(self, listener: Stored) -> None:
        """Calls listener (outside the store's lock, so it must be quick) after each append
        that wrote to a file."""
        self._on_stored.append(listener)

    def wake(self) -> None:
        """Wakes every follower to look at its file again (another process wrote to it)."""
        with self._lock:
            self._generation += 1
            self._changed.notify_all()

    def path(self, workflow_id: str, job: str, attempt: int) -> Path:
        return self.root / workflow_id / f"{job}.{attempt}.log"

    def _writer(self, key: tuple[str, str, int]) -> _Open:
        entry = self._open.get(key)
        if entry is not None:
            self._open.move_to_end(key)
        else:
            while len(self._open) >= self.max_open:
                self._open.popitem(last=False)[1].file.close()
            path = self.path(*key)
            if path.parent not in self._dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._dirs.add(path.parent)
            entry = self._open[key] = _Open(FileIO(path, "ab"))  # its sequence is found at the first append
        return entry

    def _catch_up(self, entry: _Open, path: Path) -> None:
        """Under the file's lock: when another process (or an earlier run) changed the file
        since this one last wrote it, its last sequence is read again (and a batch cut
        short after it is cut off)."""
        if os.fstat(entry.file.fileno()).st_size != entry.size:
            entry.sequence = _recover(path)
            entry.size = os.fstat(entry.file.fileno()).st_size

    def _lines_within_limit(self, entry: _Open, lines: list[LogLine]) -> bytes:
        """The stored form of the lines that fit under the limit, and the note saying where
        the log was cut when this batch reaches it (once: a log over it takes no more)."""
        if entry.size > self.max_bytes or not lines:  # cut already (the note takes it over), or nothing
            return b""
        received = b"t%d\n" % round(self.clock() * 1000)
        stored = [_TAGS[s] + text.replace(b"\n", b" ") + b"\n" for s, text in lines]
        room = self.max_bytes - entry.size - len(received)
        for i, line in enumerate(stored):
            room -= len(line)
            if room < 0:
                note = (f"log cut: this attempt's log reached its limit of {self.max_bytes} bytes; "
                        "later lines are dropped").encode()
                stored[i:] = [_TAGS[SYSTEM] + note + b"\n"]
                break
        return received + b"".join(stored)

    def append(self, workflow_id: str, job: str, attempt: int, lines: list[LogLine],
               sequence: int | None = None) -> int:
        """Stores lines; with a sequence number, a batch at or below the last one stored
        is a resend and is dropped. Returns the last sequence stored."""
        key = (workflow_id, job, attempt)
        with self._lock:
            entry = self._writer(key)
            fcntl.flock(entry.file.fileno(), fcntl.LOCK_EX)
            try:
                self._catch_up(entry, self.path(*key))
                if sequence is not None and sequence <= entry.sequence:
                    return entry.sequence
                if not lines and sequence is None:
                    return entry.sequence
                data = self._lines_within_limit(entry, lines)
                if sequence is not None:
                    if entry.size == 0:
                        data = b"q0\n" + data
                    data += b"q%d\n" % sequence
                elif entry.sequence and data:
                    data += b"q%d\n" % entry.sequence  # still the last batch stored: keeps these lines at recovery
                try:
                    _write_all(entry.file, data)  # before the sequence counts as stored (and is acknowledged)
                except OSError:
                    # A torn batch may be on disk: the file is reopened for the next append,
                    # which cuts it off after the last whole batch (and the resend is stored once).
                    del self._open[key]
                    entry.file.close()
                    raise
                entry.size += len(data)
                LOG_LINES.inc(len(lines))
                if sequence is not None:
                    entry.sequence = sequence
                self._generation += 1
                self._changed.notify_all()
            finally:
                if not entry.file.closed:
                    fcntl.flock(entry.file.fileno(), fcntl.LOCK_UN)
            stored = entry.sequence
        for listener in self._on_stored:
            listener()
        return stored

    def end(self, workflow_id: str, job: str, attempt: int) -> None:
        """The attempt wrote its last line: close its file and wake its followers."""
        with self._lock:
            entry = self._open.pop((workflow_id, job, attempt), None)
            if entry is not None:
                entry.file.close()
            self._generation += 1
            self._changed.notify_all()
        for listener in self._on_end:
            listener(workflow_id, job, attempt)

    def read(self, workflow_id: str, job: str, attempt: int, offset: int = 0,
             follow_until: Callable[[], bool] | None = None,
             batch: int = 1000, batch_bytes: int = READ_BATCH_BYTES) -> Iterator[tuple[int, list[LogLine]]]:
        """Yields (index of the first line, lines) as read_timed does, without the times."""
        for index, lines in self.read_timed(workflow_id, job, attempt, offset, follow_until, batch, batch_bytes):
            yield index, [(stream, text) for stream, text, _ in lines]

    def read_timed(self, workflow_id: str, job: str, attempt: int, offset: int = 0,
                   follow_until: Callable[[], bool] | None = None,
                   batch: int = 1000, batch_bytes: int = READ_BATCH_BYTES,
                   tail: int = 0) -> Iterator[tuple[int, list[TimedLine]]]:
        """Yields (index of the first line, lines) from line `offset`, at most `batch`
        lines and about `batch_bytes` at a time (read from disk as they go: memory does not
        grow with the log). With follow_until, keeps waiting for new lines until it returns
        True (the attempt is over) and the file has been read to its end. With `tail`, starts
        no earlier than the last `tail` lines there are when the file is first read (found
        from its end, not by reading it all)."""
        path = self.path(workflow_id, job, attempt)
        cursor = _Cursor()
        while True:
            with self._lock:
                generation = self._generation
            over = follow_until is None or follow_until()
            if path.exists():
                with open(path, "rb") as f:
                    if tail:
                        cursor, tail = _tail_cursor(f, tail), 0
                    f.seek(cursor.position)
                    yield from _timed_lines(f, cursor, offset, batch, batch_bytes)
            if over:
                return
            with self._lock:
                if generation == self._generation:
                    self._changed.wait(timeout=FOLLOW_POLL_SECONDS)

    def remove(self, workflow_id: str) -> None:
        """Removes every log file of the workflow (closing those still open)."""
        with self._lock:
            for key in [key for key in self._open if key[0] == workflow_id]:
                self._open.pop(key).file.close()
            self._dirs.discard(self.root / workflow_id)
            if (self.root / workflow_id).exists():
                shutil.rmtree(self.root / workflow_id)

    def close(self) -> None:
        with self._lock:
            for entry in self._open.values():
                entry.file.close()
            self._open.clear()


def read_stored(chunks: Iterable[bytes], offset: int = 0, batch: int = 1000,
                batch_bytes: int = READ_BATCH_BYTES) -> Iterator[tuple[int, list[TimedLine]]]:
    """LogStore.read_timed (without follow) of a log's stored bytes, as they arrive."""
    yield from _timed_lines(_split_lines(chunks), _Cursor(), offset, batch, batch_bytes)


def _split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines (each with its newline) of a stream of bytes; an unfinished last one without."""
    pending = b""
    for chunk in chunks:
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            yield line + b"\n"
    if pending:
        yield pending


def _timed_lines(stored: Iterable[bytes], cursor: _Cursor, offset: int, batch: int,
                 batch_bytes: int) -> Iterator[tuple[int, list[TimedLine]]]:
    """Yields (index of the first line, lines) of the stored lines from line `offset`, at
    most `batch` lines and about `batch_bytes` at a time, moving the cursor past each whole
    line (an unfinished one, still being written, ends the reading)."""
    lines: list[TimedLine] = []
    size = 0
    for raw in stored:
        if not raw.endswith(b"\n"):
            break
        cursor.position += len(raw)
        if raw[0] == _SEQUENCE:
            continue
        if raw[0] == _TIME:
            cursor.at = int(raw[1:-1])
            continue
        if cursor.index >= offset:
            lines.append((_STREAMS.get(raw[0], STDOUT), raw[1:-1], cursor.at))
            size += len(raw)
        cursor.index += 1
        if len(lines) >= batch or size >= batch_bytes:
            yield cursor.index - len(lines), lines
            lines, size = [], 0
    if lines:
        yield cursor.index - len(lines), lines


def _tail_cursor(f: BinaryIO, count: int) -> _Cursor:
    """Where the last `count` whole lines of a stored log begin (with the index of the
    first and the time of its batch): looked for from the end in a window that doubles
    until it holds them and the time marker before them."""
    end = f.seek(0, 2)
    window = 64 * 1024
    while True:
        start = max(0, end - window)
        f.seek(start)
        data = f.read(end - start)
        data = data[:data.rfind(b"\n") + 1]  # an unfinished last line is no line yet
        records = data.split(b"\n")[:-1]
        whole_from = 0 if start == 0 else 1  # the window's first record may be the end of a longer one
        position, found, first = start + len(data), 0, None
        for record in reversed(records[whole_from:]):
            position -= len(record) + 1
            tag = record[:1]
            if first is None and tag not in (b"q", b"t"):
                found += 1
                if found == count:
                    first = position
            elif first is not None and tag in (b"t", b"q"):  # a batch's time, or the end of one that had none
                return _Cursor(first, _lines_before(f, first), int(record[1:]) if tag == b"t" else 0)
        if first is not None and (start == 0 or window >= _TIME_SEARCH_BYTES):
            return _Cursor(first, _lines_before(f, first), 0)  # a log older than the times
        if start == 0:
            return _Cursor()
        window *= 2


def _lines_before(f: BinaryIO, position: int) -> int:
    """The lines (not markers) stored before `position`, the start of one, counted at the
    speed of bytes.count."""
    f.seek(0)
    lines, previous, left = 0, b"\n", position
    while left:
        chunk = f.read(min(left, READ_BATCH_BYTES))
        left -= len(chunk)
        joined = previous + chunk
        lines += joined.count(b"\n") - (previous == b"\n") - joined.count(b"\nq") - joined.count(b"\nt")
        previous = chunk[-1:]
    return lines


def _write_all(file: FileIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = file.write(view)
        view = view[written or 0:]


def _recover(path: Path) -> int:
    """The last sequence stored in an existing log, cutting off whatever follows its
    marker: a batch that was only partly written (the wrapper sends it again). A log with
    no marker was never sequenced and is left as it is."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    with open(path, "r+b") as f:
        tail, start = b"", size  # tail holds the bytes from start to the end of the file
        while start > 0:
            new_start = max(0, start - 65536)
            f.seek(new_start)
            tail = f.read(start - new_start) + tail
            unsearched = start - new_start + _MARKER_ROOM
            start = new_start
            found = next(iter(deque(_MARKER.finditer(tail, 0, unsearched), maxlen=1)), None)  # the last one
            # a match at the very start of tail begins a line only if the byte before does
            # not belong to the line: sure at the start of the file, else read further back
            if found is not None and (found.start() > 0 or start == 0):
                f.truncate(start + found.end())
                return int(found.group(1))
    return 0
