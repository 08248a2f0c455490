"""Saving outputs while cellar is away: a real cellar gRPC server, stopped and started again
on the same port under an attempt that is saving. The save is retried with a growing pause,
each retry noted in the job's log, until the save deadline; then the attempt fails with
"storage unavailable", never succeeding without its result."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from cellar_svc.server import create_server
from cellar_svc.storage import LocalStorage
from donut_common.auth import Principal
from streamed_job.attempt import SYSTEM
from streamed_job.cellar import CellarClient
from streamed_job.main import Settings
from streamed_job.outcome import EXIT_OUTPUT_FAILED
from streamed_job.pump import ProcessPump
from streamed_job.shipper import channel_to
from streamed_job.spec import OutputFile, SaveSettings
from tests.wrapper.conftest import closed_port
from tests.wrapper.test_attempt import Run, spec

JOB = Principal(user_id="owner-id", login="owner", scopes=("job:w/j/3",))  # the attempt's own job token
QUICK = SaveSettings(deadline=60, first_retry=0.05, max_retry=0.2)


class Cellar:
    """A cellar server on a port of its own, which can be stopped and started again there."""

    def __init__(self, root: Path) -> None:
        self.storage = LocalStorage(root)
        self.port = closed_port()
        self.server: grpc.Server | None = None

    def start(self) -> None:
        self.server, port = create_server(f"127.0.0.1:{self.port}", self.storage, principal=lambda: JOB)
        assert port == self.port
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(None).wait()
            self.server = None


@pytest.fixture
def cellar(tmp_path: Path) -> Iterator[Cellar]:
    server = Cellar(tmp_path / "cellar")
    yield server
    server.stop()


@pytest.fixture
def client(cellar: Cellar) -> Iterator[CellarClient]:
    with channel_to(f"127.0.0.1:{cellar.port}") as ch:  # the wrapper's channel: it reconnects quickly
        yield CellarClient(ch)


@pytest.fixture
def pump() -> Iterator[ProcessPump]:
    running = ProcessPump(kill_grace=1.0)
    yield running
    running.close()


def saving(pump: ProcessPump, tmp_path: Path, client: CellarClient, save: SaveSettings) -> Run:
    work = tmp_path / "wf"
    work.mkdir()
    run = Run(pump, spec(work, "echo fruit > out.txt", outputs=(OutputFile("out.txt", save=True),)),
              cellar=lambda: client, save=save)
    run.attempt.run()
    return run


def retries(run: Run) -> list[str]:
    return [t for t in run.texts(SYSTEM) if t.startswith("storage unavailable (")]


def wait_for(condition: Callable[[], object], run: Run) -> None:
    pause = threading.Event()
    while not condition():
        assert not run.done.is_set(), run.texts(SYSTEM)
        pause.wait(0.01)


def test_a_save_waits_for_cellar_to_come_back_and_then_succeeds(pump: ProcessPump, tmp_path: Path,
                                                                 cellar: Cellar, client: CellarClient) -> None:
    run = saving(pump, tmp_path, client, QUICK)
    wait_for(lambda: len(retries(run)) >= 2, run)  # down: retried, and retried again
    cellar.start()
    ended = run.ended()
    assert (ended.exit_code, ended.message) == (0, ""), run.texts(SYSTEM)
    assert (tmp_path / "cellar" / "result" / "w" / "j" / "out.txt").read_text() == "fruit\n"
    notes = run.texts(SYSTEM)
    assert notes[-1] == "saved out.txt (6 bytes)"
    first, second = retries(run)[:2]
    assert "saving out.txt again in 0.05s" in first and "saving out.txt again in 0.1s" in second  # it backs off


def test_a_save_gives_up_when_cellar_stays_away_past_the_deadline(pump: ProcessPump, tmp_path: Path,
                                                                  cellar: Cellar, client: CellarClient) -> None:
    run = saving(pump, tmp_path, client, SaveSettings(deadline=0.5, first_retry=0.05, max_retry=0.1))
    ended = run.ended()
    assert ended.exit_code == EXIT_OUTPUT_FAILED and not ended.succeeded
    assert ended.message.startswith("storage unavailable: ") and "storage unavailable: storage" not in ended.message
    assert retries(run) and run.texts(SYSTEM)[-1] == ended.message  # each retry, then why it failed
    assert not (tmp_path / "cellar" / "result").exists()


def test_a_save_refused_for_another_reason_fails_at_once(pump: ProcessPump, tmp_path: Path, cellar: Cellar,
                                                         client: CellarClient) -> None:
    cellar.start()
    work = tmp_path / "wf"
    work.mkdir()
    other_job = spec(work, "echo x > out.txt", outputs=(OutputFile("out.txt", save=True),))  # its token is j's
    run = Run(pump, dataclasses.replace(other_job, job="k"), cellar=lambda: client, save=QUICK)
    run.attempt.run()
    ended = run.ended()
    assert ended.exit_code == EXIT_OUTPUT_FAILED
    assert ended.message.startswith("cannot save outputs: PERMISSION_DENIED")
    assert retries(run) == []


def test_a_kill_ends_the_wait_between_tries(pump: ProcessPump, tmp_path: Path, client: CellarClient) -> None:
    run = saving(pump, tmp_path, client, SaveSettings(deadline=600, first_retry=300, max_retry=300))
    wait_for(lambda: retries(run), run)
    run.attempt.kill()
    ended = run.ended()
    assert (ended.exit_code, ended.signal, ended.message) == (None, "SIGTERM", "terminated while saving outputs")


def test_the_wrapper_takes_its_save_deadline_from_its_environment() -> None:
    assert Settings.from_environment({}).save.deadline == 300.0
    assert Settings.from_environment({"STREAMED_JOB_SAVE_DEADLINE": "12.5"}).save == SaveSettings(deadline=12.5)
