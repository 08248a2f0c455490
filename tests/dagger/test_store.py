"""The etcd store against a real etcd: chunked creation, guarded writes."""

from __future__ import annotations

from typing import Any

import pytest

from dagger_svc.core.definition import parse_definition
from dagger_svc.core.records import JobRecord, JobStatus, WorkflowId, WorkflowRecord, WorkflowStatus
from dagger_svc.keys import Keys
from dagger_svc.store import MAX_OPS_PER_TXN, RunChanges, Store, UploadMark
from donut_common.errors import Conflict, NotFound, Unavailable
from donut_common.etcd import Etcd

WORKFLOW_ID = "11111111-2222-4333-8444-555555555555"


def big_definition(jobs: int) -> Any:
    import json

    return parse_definition(json.dumps({"jobs": [{"name": f"j{i}", "image": "x", "cmd": "true", "args": []}
                                                 for i in range(jobs)]}))


def create(store: Store, jobs: int, workflow_id: str = WORKFLOW_ID) -> Any:
    definition = big_definition(jobs)
    records = {name: JobRecord(name) for name in definition.jobs}
    workflow = WorkflowRecord(id=WorkflowId(workflow_id), name="big", job_total=jobs)
    store.create_workflow(workflow, definition, records)
    return definition


def test_a_workflow_larger_than_one_transaction_is_stored_whole(store: Store) -> None:
    jobs = MAX_OPS_PER_TXN * 3 + 7
    create(store, jobs)
    assert store.workflow(WORKFLOW_ID)[0].job_total == jobs
    assert len(store.jobs(WORKFLOW_ID)) == jobs
    assert list(store.definition(WORKFLOW_ID).jobs) == [f"j{i}" for i in range(jobs)]  # definition order
    assert store.queued_ids() == [WORKFLOW_ID]


class ThirdTransactionFails:
    """An etcd client whose third transaction finds etcd gone."""

    def __init__(self, etcd: Etcd) -> None:
        self.etcd = etcd
        self.transactions = 0

    def txn(self, compare: Any, success: Any) -> Any:
        self.transactions += 1
        if self.transactions == 3:
            raise Unavailable("etcd unavailable (a transaction: UNAVAILABLE)")
        return self.etcd.txn(compare, success)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.etcd, name)


def test_a_creation_that_fails_half_way_leaves_nothing(etcd_client: Etcd, etcd_prefix: str) -> None:
    store = Store(ThirdTransactionFails(etcd_client), Keys(etcd_prefix))  # type: ignore[arg-type]
    with pytest.raises(Unavailable):
        create(store, MAX_OPS_PER_TXN * 3)
    with pytest.raises(NotFound):
        store.workflow(WORKFLOW_ID)
    assert etcd_client.get_prefix(etcd_prefix) == []


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


def test_an_ended_run_is_let_go_with_its_last_records(store: Store) -> None:
    """Off the queue and its claim released, in the transaction recording its end: for
    runs sharing one, and for a run whose changes need several (the last one does it)."""
    ids = {"big": WORKFLOW_ID, "small": "21111111-2222-4333-8444-555555555555",
           "running": "31111111-2222-4333-8444-555555555555"}
    sizes = {"big": MAX_OPS_PER_TXN + 5, "small": 2, "running": 2}
    lease = store.grant_lease(10)
    changes = []
    for name, workflow_id in ids.items():
        create(store, sizes[name], workflow_id)
        snapshot = store.claim_run(WorkflowId(workflow_id), "me", lease)
        assert snapshot is not None and snapshot.workflow is not None
        status = WorkflowStatus.RUNNING if name == "running" else WorkflowStatus.DONE
        jobs = [JobRecord(job, status=JobStatus.SUCCEEDED, attempt=1) for job in snapshot.jobs]
        changes.append(RunChanges(WorkflowId(workflow_id), WorkflowRecord(id=WorkflowId(workflow_id), name=name,
                                                                            status=status), jobs,
                                  snapshot.revisions, let_go=True))
    assert store.save_runs(changes) == {WorkflowId(w): None for w in ids.values()}
    assert store.queued_ids() == [ids["running"]]
    assert store.job(WorkflowId(ids["big"]), f"j{sizes['big'] - 1}").status is JobStatus.SUCCEEDED
    other = store.grant_lease(10)
    for name, workflow_id in ids.items():  # free for another scheduler, unless it still runs
        assert (store.claim_run(WorkflowId(workflow_id), "another", other) is None) == (name == "running")
    lease.revoke()
    other.revoke()


def test_with_etcd_gone_every_call_is_unavailable(tmp_path: Any) -> None:
    """Whatever the store or the users store asks of an etcd that has gone, the caller gets
    Unavailable naming etcd, never the client library's own exception."""
    from donut_common.etcd_server import EtcdServer
    from users_svc.store import UserStore

    server = EtcdServer(tmp_path / "etcd", fsync=False).start()
    client = Etcd.connect(server.endpoint, timeout=2, access=server.access)
    store, users = Store(client, Keys("/gone/")), UserStore(client, "/gone/")
    lease = store.grant_lease(5)
    create(store, 2)
    server.stop()
    calls = {
        "workflow": lambda: store.workflow(WORKFLOW_ID), "workflows": store.workflows,
        "definition": lambda: store.definition(WORKFLOW_ID), "jobs": lambda: store.jobs(WORKFLOW_ID),
        "run": lambda: store.run(WORKFLOW_ID), "job": lambda: store.job(WORKFLOW_ID, "j0"),
        "save_run": lambda: store.save_run(WORKFLOW_ID, None, [JobRecord("j0")], {}),
        "claim_run": lambda: store.claim_run(WORKFLOW_ID, "me", lease), "queued_ids": store.queued_ids,
        "release_claim": lambda: store.release_claim(WORKFLOW_ID, "me"), "dequeue": lambda: store.dequeue(WORKFLOW_ID),
        "request_cancel": lambda: store.request_cancel(WORKFLOW_ID), "grant_lease": lambda: store.grant_lease(5),
        "refresh": lease.refresh, "current_revision": store.current_revision,
        "watch_queue": lambda: store.watch_queue(lambda w: None, after=0),
        "users": users.users, "token": lambda: users.token("0123456789abcdef"),
        "user_id_by_login": lambda: users.user_id_by_login("admin"),
    }
    try:
        for name, call in calls.items():
            with pytest.raises(Unavailable, match="etcd unavailable"):
                call()
                raise AssertionError(f"{name} did not fail")
    finally:
        client.close()


def test_a_run_larger_than_one_answer_of_etcd_is_claimed_and_read_in_pages(store: Store) -> None:
    """10,000 jobs with 300-byte args: a definition inside the limits (3.8 MB), whose
    records (about 6 MB with their keys) are more than one etcd answer may carry (4 MiB by
    default): claiming and reading the run still work."""
    import json

    from dagger_svc.core.definition import parse_definition

    jobs = [{"name": f"j{i}", "image": "x", "cmd": "true", "args": ["a" * 300]} for i in range(10_000)]
    definition = parse_definition(json.dumps({"jobs": jobs}))
    records = {name: JobRecord(name) for name in definition.jobs}
    store.create_workflow(WorkflowRecord(id=WORKFLOW_ID, name="large", job_total=10_000), definition, records)
    snapshot = store.claim_run(WORKFLOW_ID, "me", store.grant_lease(5))
    assert snapshot is not None and len(snapshot.jobs) == 10_000 and len(snapshot.definition.jobs) == 10_000
    assert list(snapshot.definition.jobs)[:3] == ["j0", "j1", "j2"]  # document order
    assert len(snapshot.revisions) == 10_001  # every job record, and the workflow's
    view = store.run(WORKFLOW_ID)
    assert len(view.jobs) == 10_000 and view.definition.jobs["j7"].args == ("a" * 300,)


def test_an_upload_keeps_its_first_mark_and_old_workflows_mark_theirs(store: Store) -> None:
    assert store.mark_upload("u1", UploadMark.USED) is UploadMark.USED
    assert store.mark_upload("u1", UploadMark.REMOVED) is UploadMark.USED  # in use: never removed
    assert store.mark_upload("u2", UploadMark.REMOVED) is UploadMark.REMOVED
    assert store.mark_upload("u2", UploadMark.USED) is UploadMark.REMOVED  # gone: never used
    definition = big_definition(1)
    old = WorkflowRecord(id=WORKFLOW_ID, name="old", job_total=1, upload_id="u3")  # stored before the marks
    store.create_workflow(old, definition, {name: JobRecord(name) for name in definition.jobs})
    store.upgrade()
    assert store.mark_upload("u3", UploadMark.REMOVED) is UploadMark.USED


def test_workflows_stored_before_the_listing_keys_are_listed_after_the_upgrade(store: Store, etcd_client: Etcd,
                                                                              etcd_prefix: str) -> None:
    definition = big_definition(1)
    for i, owner in enumerate(("alice", "bob", "alice")):
        workflow = WorkflowRecord(id=f"{i}1111111-2222-4333-8444-555555555555", name="old", job_total=1,
                                  owner=owner, created_at=1000.0 + i)
        store.create_workflow(workflow, definition, {name: JobRecord(name) for name in definition.jobs})
    for listing in ("by-time/", "by-owner/"):
        etcd_client.delete_prefix(etcd_prefix + listing)  # as an earlier version left them
    assert store.workflow_page(None, "", 10) == ([], "")
    store.upgrade()
    assert [w.id[0] for w in store.workflow_page(None, "", 10)[0]] == ["2", "1", "0"]
    first, position = store.workflow_page("alice", "", 1)
    assert [w.id[0] for w in first] == ["2"] and position
    assert [w.id[0] for w in store.workflow_page("alice", position, 1)[0]] == ["0"]
