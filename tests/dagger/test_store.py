"""The etcd store against a real etcd: chunked creation, guarded writes."""

from __future__ import annotations

from typing import Any

import pytest

from dagger_svc.core.definition import parse_definition
from dagger_svc.core.records import JobRecord, JobStatus, WorkflowRecord
from dagger_svc.store import MAX_OPS_PER_TXN, Store
from donut_common.errors import Conflict, NotFound

WORKFLOW_ID = "11111111-2222-4333-8444-555555555555"


def big_definition(jobs: int) -> Any:
    import json

    return parse_definition(json.dumps({"jobs": [{"name": f"j{i}", "image": "x", "cmd": "true", "args": []}
                                                 for i in range(jobs)]}))


def create(store: Store, jobs: int) -> Any:
    definition = big_definition(jobs)
    records = {name: JobRecord(name) for name in definition.jobs}
    workflow = WorkflowRecord(id=WORKFLOW_ID, name="big", job_total=jobs)
    store.create_workflow(workflow, definition, records)
    return definition


def test_a_workflow_larger_than_one_transaction_is_stored_whole(store: Store) -> None:
    jobs = MAX_OPS_PER_TXN * 3 + 7
    create(store, jobs)
    assert store.workflow(WORKFLOW_ID)[0].job_total == jobs
    assert len(store.jobs(WORKFLOW_ID)) == jobs
    assert list(store.definition(WORKFLOW_ID).jobs) == [f"j{i}" for i in range(jobs)]  # definition order
    assert store.queued_ids() == [WORKFLOW_ID]


def test_a_creation_that_fails_half_way_leaves_nothing(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = store._txn

    def failing(compare: Any, success: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("etcd went away")
        return real(compare, success)

    monkeypatch.setattr(store, "_txn", failing)
    with pytest.raises(RuntimeError):
        create(store, MAX_OPS_PER_TXN * 3)
    monkeypatch.undo()
    with pytest.raises(NotFound):
        store.workflow(WORKFLOW_ID)
    assert list(store.client.get_prefix(store.keys.prefix)) == []


def test_a_stale_write_is_refused_and_changes_nothing(store: Store) -> None:
    create(store, 3)
    mine: dict[str, int] = {}
    theirs: dict[str, int] = {}
    workflow = store.workflow(WORKFLOW_ID)[0]
    store.jobs(WORKFLOW_ID, mine)
    store.jobs(WORKFLOW_ID, theirs)
    store.save_run(WORKFLOW_ID, None, [JobRecord("j0", status=JobStatus.RUNNING, attempt=1)], theirs)
    with pytest.raises(Conflict):
        store.save_run(WORKFLOW_ID, workflow, [JobRecord("j1", status=JobStatus.RUNNING, attempt=1),
                                               JobRecord("j0", status=JobStatus.FAILED, attempt=1)], mine)
    assert store.job(WORKFLOW_ID, "j0").status is JobStatus.RUNNING
    assert store.job(WORKFLOW_ID, "j1").status is JobStatus.WAITING
