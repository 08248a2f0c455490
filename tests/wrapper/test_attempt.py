"""One attempt's phases, driven directly (no dagger, no cellar server): how each way of
ending becomes an `Ended`, the same for every executor; and the shapes that cross the
wrapper's boundary (the spec, the termination message)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from streamed_job.attempt import STDOUT, SYSTEM, Attempt
from streamed_job.outcome import (
    EXIT_INPUT_FAILED,
    EXIT_OUTPUT_FAILED,
    EXIT_WRAPPER_ERROR,
    TERMINATION_MESSAGE_BYTES,
    Ended,
    read_termination_message,
    termination_message,
)
from streamed_job.pump import ProcessPump
from streamed_job.spec import FetchSettings, InputFile, OutputFile, RunSpec, SaveSettings, base_environment


class Run:
    """An attempt on a pump of its own, its lines and its end recorded."""

    def __init__(self, pump: ProcessPump, spec: RunSpec, cellar: Any = None,
                 fetch: FetchSettings | None = None, save: SaveSettings | None = None) -> None:
        self.lines: list[tuple[int, bytes]] = []
        self.ends: list[Ended] = []
        self.done = threading.Event()
        self.attempt = Attempt(spec, pump=pump, output=lambda stream, lines: self.lines.extend(
            (stream, line) for line in lines), cellar=cellar, on_end=self._on_end,
            base_env=base_environment({"PATH": "/usr/bin:/bin", "DONUT_TOKEN": "secret", "STREAMED_JOB_X": "1",
                                       "KEEP": "me"}),
            background=lambda work: threading.Thread(target=work).start(), fetch=fetch, save=save)

    def _on_end(self, ended: Ended) -> None:
        self.ends.append(ended)
        self.done.set()

    def ended(self) -> Ended:
        assert self.done.wait(20), "the attempt did not end"
        return self.ends[0]

    def texts(self, stream: int) -> list[str]:
        return [text.decode() for s, text in self.lines if s == stream]


@pytest.fixture
def pump() -> Iterator[ProcessPump]:
    running = ProcessPump(kill_grace=1.0)
    yield running
    running.close()


def spec(tmp_path: Path, script: str, **fields: Any) -> RunSpec:
    return RunSpec(workflow_id="w", job="j", attempt=3, cmd="/bin/sh", args=("-c", script),
                   workflow_dir=str(tmp_path), **fields)


def test_a_command_runs_in_its_work_dir_with_the_attempt_s_environment(pump: ProcessPump, tmp_path: Path) -> None:
    run = Run(pump, spec(tmp_path, 'pwd; echo "$DONUT_JOB_KEY $DONUT_JOB_ATTEMPT $KEEP ${DONUT_TOKEN:-none} '
                                   '${STREAMED_JOB_X:-none}"', workdir_prefix="sub"))
    run.attempt.run()
    ended = run.ended()
    assert (ended.exit_code, ended.signal, ended.message) == (0, "", "")
    assert ended.started_at is not None and ended.finished_at is not None and ended.started_at <= ended.finished_at
    assert run.texts(STDOUT) == [str(tmp_path / "sub"), "w/j/3 3 me none none"]


@pytest.mark.parametrize("inputs, message", [
    ((InputFile(local="missing.txt"),), "inputs[0] (missing.txt): missing (no such file in the workflow directory)"),
    ((InputFile(local="../../escape"),), "(../../escape): ../../escape: leads outside the workflow directory"),
    ((InputFile(local="a\x00b"),), "embedded null byte"),  # a ValueError: an input failure like any other
    ((InputFile(local="c.txt", cache="c.txt"),), "inputs[0] (c.txt): no cellar to fetch cache file 'c.txt' from"),
])
def test_an_input_that_cannot_be_had_ends_the_attempt_before_its_command(
        pump: ProcessPump, tmp_path: Path, inputs: tuple[InputFile, ...], message: str) -> None:
    run = Run(pump, spec(tmp_path, "touch ran", inputs=inputs))
    run.attempt.run()
    ended = run.ended()
    assert ended.exit_code == EXIT_INPUT_FAILED and message in ended.message
    assert run.texts(SYSTEM) == [ended.message]  # the reason is in the job's log too
    assert not (tmp_path / "ran").exists()


def test_a_cellar_that_fails_is_the_input_s_problem_named_by_its_place(pump: ProcessPump, tmp_path: Path) -> None:
    class Broken:
        def get(self, *args: Any) -> None:
            raise KeyError("a bug")

    run = Run(pump, spec(tmp_path, "true", inputs=(InputFile(local="c.txt", cache="c.txt"),)), cellar=Broken)
    run.attempt.run()
    ended = run.ended()
    # a failing cellar client is the input's problem, named by its place
    assert ended.exit_code == EXIT_INPUT_FAILED and "inputs[0] (c.txt): cannot fetch cache file" in ended.message


def test_a_kill_before_the_command_keeps_it_from_starting(pump: ProcessPump, tmp_path: Path) -> None:
    run = Run(pump, spec(tmp_path, "touch ran"))
    run.attempt.kill()
    run.attempt.run()
    ended = run.ended()
    assert (ended.exit_code, ended.signal, ended.message) == (None, "SIGTERM", "terminated before it started")
    assert not (tmp_path / "ran").exists()


def test_a_kill_stops_the_command(pump: ProcessPump, tmp_path: Path) -> None:
    run = Run(pump, spec(tmp_path, "echo up; exec sleep 30"))
    run.attempt.run()
    deadline = threading.Event()
    while run.texts(STDOUT) != ["up"]:
        assert not deadline.wait(0.01) and not run.done.is_set()
    run.attempt.kill()
    ended = run.ended()
    assert ended.signal == "SIGTERM" and ended.message == "terminated (SIGTERM)"


def test_outputs_are_checked_and_saved_after_the_command(pump: ProcessPump, tmp_path: Path) -> None:
    saved: list[tuple[str, str, str, str]] = []

    class Cellar:
        def put(self, kind: str, scope: str, path: str, source: BinaryIO, job: str = "") -> None:
            saved.append((kind, scope, path, source.read().decode()))

    run = Run(pump, spec(tmp_path, "echo data > out.txt", outputs=(OutputFile("out.txt", save=True),)),
              cellar=Cellar)
    run.attempt.run()
    assert run.ended().exit_code == 0
    assert saved == [("result", "w", "out.txt", "data\n")]
    assert run.texts(SYSTEM) == ["saved out.txt (5 bytes)"]


class Saving:
    """A cellar that keeps what is saved: (kind, scope, name, text)."""

    def __init__(self) -> None:
        self.saved: list[tuple[str, str, str, str]] = []

    def __call__(self) -> Saving:
        return self

    def put(self, kind: str, scope: str, path: str, source: BinaryIO, job: str = "") -> None:
        self.saved.append((kind, scope, path, source.read().decode()))


def test_a_directory_output_is_saved_file_by_file_and_no_link_is_followed(pump: ProcessPump, tmp_path: Path) -> None:
    cellar = Saving()
    script = ("mkdir -p out/sub/deeper && echo a > out/a.txt && echo b > out/sub/b.txt && echo c > out/sub/deeper/c.txt"
              " && ln -s /etc/hostname out/link && ln -s /etc out/sub/etc && mkfifo out/fifo")
    run = Run(pump, spec(tmp_path, script, outputs=(OutputFile("out", save=True), OutputFile("out/sub"))),
              cellar=cellar)
    run.attempt.run()
    assert run.ended().exit_code == 0, run.ended()
    assert cellar.saved == [("result", "w", "out/a.txt", "a\n"), ("result", "w", "out/sub/b.txt", "b\n"),
                            ("result", "w", "out/sub/deeper/c.txt", "c\n")]
    assert run.texts(SYSTEM) == [
        "outputs[0] (out): skipped fifo: not a regular file", "outputs[0] (out): skipped link: a symbolic link",
        "outputs[0] (out): skipped sub/etc: a symbolic link",
        "saved out/a.txt (2 bytes)", "saved out/sub/b.txt (2 bytes)", "saved out/sub/deeper/c.txt (2 bytes)"]


@pytest.mark.parametrize("script, message", [
    ("mkdir out && echo x > mine && ln mine out/linked",
     "outputs[0] (out): linked: a hard link (only a file of its own can be saved)"),
    ("mkfifo out", "outputs[0] (out): neither a regular file nor a directory"),
])
def test_an_output_that_is_not_a_file_of_its_own_fails_the_attempt(pump: ProcessPump, tmp_path: Path, script: str,
                                                                  message: str) -> None:
    cellar = Saving()
    run = Run(pump, spec(tmp_path, script, outputs=(OutputFile("out", save=True),)), cellar=cellar)
    run.attempt.run()
    ended = run.ended()
    assert (ended.exit_code, ended.message) == (EXIT_OUTPUT_FAILED, message)
    assert cellar.saved == []


def test_a_missing_output_fails_the_attempt_that_succeeded(pump: ProcessPump, tmp_path: Path) -> None:
    run = Run(pump, spec(tmp_path, "true", outputs=(OutputFile("never.txt"),)))
    run.attempt.run()
    ended = run.ended()
    assert ended.exit_code == EXIT_OUTPUT_FAILED
    assert ended.message == "outputs[0] (never.txt): missing after the command ended"


def test_a_bug_while_saving_ends_the_attempt_as_the_machinery_s_failure(pump: ProcessPump, tmp_path: Path) -> None:
    class Broken:
        def put(self, *args: Any, **kwargs: Any) -> None:
            raise KeyError("a bug")

    run = Run(pump, spec(tmp_path, "touch out.txt", outputs=(OutputFile("out.txt", save=True),)), cellar=Broken)
    run.attempt.run()
    ended = run.ended()
    assert ended.exit_code == EXIT_WRAPPER_ERROR and ended.message.startswith("the job machinery failed: KeyError")


def test_an_attempt_ends_once(pump: ProcessPump, tmp_path: Path) -> None:
    run = Run(pump, spec(tmp_path, "exit 3"))
    run.attempt.run()
    first = run.ended()
    run.attempt.end(Ended(0))
    assert run.ends == [first] and first.exit_code == 3


def test_the_spec_crosses_as_json_with_typed_files() -> None:
    original = RunSpec(workflow_id="w", job="j", attempt=1, cmd="c", args=("a", "b"),
                       inputs=(InputFile("x", origin="http://h/x"), InputFile("y", cache="y")),
                       outputs=(OutputFile("z", save=True),), timeout=2.5, token="t")
    assert RunSpec.from_json(original.to_json()) == original
    with pytest.raises(TypeError):
        RunSpec.from_json('{"workflow_id": "w", "job": "j", "attempt": 1, "cmd": "c", "inputs": [{"path": "x"}]}')


def test_an_end_crosses_as_a_termination_message_that_fits() -> None:
    ended = Ended(4, "", "exited with code 4", 1.5, 2.5)
    assert read_termination_message(termination_message(ended, reported=True)) == (ended, True)
    long = Ended(1, message="x" * 10_000)
    text = termination_message(long, reported=False)
    assert len(text.encode()) <= TERMINATION_MESSAGE_BYTES
    told = read_termination_message(text)
    assert told is not None and told[0].message.startswith("xxx") and told[1] is False
    assert read_termination_message("not json") is None
    assert read_termination_message('{"exit_code": "four"}') is None
