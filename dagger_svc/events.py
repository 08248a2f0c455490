"""What wakes the scheduler: one typed event per thing that happened, fed to its loop.

Watches on etcd, executors and timers put these on one queue; the loop takes them in
batches and dispatches on their type.
"""

from __future__ import annotations

from dataclasses import dataclass

from dagger_svc.core.records import Outcome, WorkflowId


@dataclass(frozen=True)
class Queued:
    """The run may need an owner: it was queued (created, retried) or its owner let go."""

    workflow_id: WorkflowId


@dataclass(frozen=True)
class CancelAsked:
    """Someone asked to cancel the run."""

    workflow_id: WorkflowId


@dataclass(frozen=True)
class JobEnded:
    """An attempt of a job ended, as its executor (or its wrapper) tells."""

    workflow_id: WorkflowId
    job: str
    attempt: int
    outcome: Outcome


@dataclass(frozen=True)
class Timer:
    """Something is due (a retry backoff, a held-back commit, a reload): look at the clocks."""


@dataclass(frozen=True)
class Stop:
    """The scheduler is stopping."""


Event = Queued | CancelAsked | JobEnded | Timer | Stop
