"""dagger's state in etcd: workflows, job specs and job records, guarded writes, watches.

Every write of a record is a transaction that checks the record's last known revision
(`mod_revision`), so two writers can never both move a job on; a lost race raises
`Conflict` and the caller re-reads. Large writes go in chunks under etcd's per-transaction
limits, with the workflow record (the visible part) last.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyetcd

from dagger_svc.core.definition import Definition
from dagger_svc.core.records import JobRecord, WorkflowRecord
from dagger_svc.keys import Keys
from donut_common import etcd_ops
from donut_common.errors import Conflict, NotFound, Unavailable

log = logging.getLogger(__name__)

MAX_OPS_PER_TXN = 120          # etcd refuses more than 128 (--max-txn-ops)
MAX_BYTES_PER_TXN = 1_000_000  # etcd refuses requests over 1.5 MiB
Revisions = dict[str, int]     # key -> mod_revision last seen


@dataclass(frozen=True)
class RunSnapshot:
    """A run as its new owner found it, read in the transaction that claimed it."""

    workflow: WorkflowRecord | None
    definition: Definition
    jobs: dict[str, JobRecord]
    revisions: Revisions
    cancel_requested: bool


def _dump(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _definition(values: Iterable[bytes]) -> Definition:
    return Definition.from_stored(json.loads(value) for value in values)


class Lease:
    """A lease this store granted: `refresh` keeps it, `revoke` ends it and what it binds."""

    def __init__(self, lease: Any) -> None:
        self._lease = lease
        self.id: int = lease.id

    def refresh(self) -> None:
        self._lease.refresh()

    def revoke(self) -> None:
        self._lease.revoke()


def connect(endpoints: str, timeout: float = 10.0) -> pyetcd.Etcd3Client:
    """A client for the first of comma-separated `host:port` endpoints that answers."""
    last: Exception | None = None
    for endpoint in endpoints.split(","):
        host, _, port = endpoint.strip().removeprefix("http://").rpartition(":")
        client = pyetcd.client(host=host or "127.0.0.1", port=int(port), timeout=timeout)
        try:
            client.status()
            return client
        except Exception as e:  # noqa: BLE001 - any failure means: try the next endpoint
            last = e
            client.close()
    raise Unavailable(f"cannot reach etcd at {endpoints}: {last}")


class Store:
    def __init__(self, client: pyetcd.Etcd3Client, keys: Keys | None = None) -> None:
        self.client = client
        self.keys = keys or Keys()
        self._closed = False

    def close(self) -> None:
        """Closes the etcd client; broken watches are not taken up again after this."""
        self._closed = True
        self.client.close()

    # ---- low level -----------------------------------------------------------------

    def _txn(self, compare: list[Any], success: list[Any]) -> tuple[bool, int]:
        response = etcd_ops.txn(self.client, compare, success)
        return response.succeeded, response.header.revision

    def put_guarded(self, writes: Iterable[tuple[str, bytes]], revisions: Revisions,
                    unguarded: frozenset[str] = frozenset()) -> None:
        """Writes values whose keys still have the revisions in `revisions` (0: absent),
        in chunks that fit etcd's limits, updating `revisions`; the last write lands in
        the last chunk. Keys in `unguarded` are written whatever their revision. Raises
        Conflict when another writer got there first."""
        chunk: list[tuple[str, bytes]] = []
        size = 0
        pending = list(writes)
        for i, (key, value) in enumerate(pending):
            chunk.append((key, value))
            size += len(key) + len(value)
            if i == len(pending) - 1 or len(chunk) >= MAX_OPS_PER_TXN or size >= MAX_BYTES_PER_TXN:
                ok, revision = self._txn(
                    [etcd_ops.mod_equals(k, revisions.get(k, 0)) for k, _ in chunk if k not in unguarded],
                    [etcd_ops.put(k, v) for k, v in chunk],
                )
                if not ok:
                    raise Conflict(f"someone else changed {chunk[0][0]} (or another key of its batch)")
                for k, _ in chunk:
                    revisions[k] = revision
                chunk, size = [], 0

    def _get(self, key: str) -> tuple[bytes, int] | None:
        value, meta = self.client.get(key)
        return None if value is None else (value, meta.mod_revision)

    def _prefix(self, prefix: str) -> list[tuple[str, bytes, int]]:
        return [
            (meta.key.decode(), value, meta.mod_revision)
            for value, meta in self.client.get_prefix(prefix)
        ]

    # ---- workflows -----------------------------------------------------------------

    def create_workflow(self, workflow: WorkflowRecord, definition: Definition,
                        jobs: Mapping[str, JobRecord]) -> None:
        """Stores specs and job records, then the workflow record that makes it visible.
        A failure part-way leaves only invisible keys, which are removed."""
        writes: list[tuple[str, bytes]] = []
        for stored in definition.stored():
            name = stored["spec"]["name"]
            writes.append((self.keys.spec(workflow.id, name), _dump(stored)))
            writes.append((self.keys.job(workflow.id, name), _dump(jobs[name].to_dict())))
        writes.append((self.keys.workflow(workflow.id), _dump(workflow.to_dict())))
        writes.append((self.keys.queued(workflow.id), b"1"))
        try:
            self.put_guarded(writes, {}, unguarded=frozenset({self.keys.queued(workflow.id)}))
        except Exception:
            self.delete_workflow_keys(workflow.id)
            raise

    def delete_workflow_keys(self, workflow_id: str) -> None:
        for prefix in (self.keys.specs(workflow_id), self.keys.jobs(workflow_id)):
            self.client.delete_prefix(prefix)
        for key in (self.keys.workflow(workflow_id), self.keys.queued(workflow_id), self.keys.cancel(workflow_id)):
            self.client.delete(key)

    def workflow(self, workflow_id: str) -> tuple[WorkflowRecord, int]:
        found = self._get(self.keys.workflow(workflow_id))
        if found is None:
            raise NotFound(f"no workflow {workflow_id}")
        return WorkflowRecord.from_dict(json.loads(found[0])), found[1]

    def workflows(self) -> list[WorkflowRecord]:
        return [WorkflowRecord.from_dict(json.loads(v)) for _, v, _ in self._prefix(self.keys.workflows)]

    def definition(self, workflow_id: str) -> Definition:
        return _definition(value for _, value, _ in self._prefix(self.keys.specs(workflow_id)))

    def jobs(self, workflow_id: str, revisions: Revisions | None = None) -> dict[str, JobRecord]:
        jobs = {}
        for key, value, revision in self._prefix(self.keys.jobs(workflow_id)):
            job = JobRecord.from_dict(json.loads(value))
            jobs[job.name] = job
            if revisions is not None:
                revisions[key] = revision
        return jobs

    def job(self, workflow_id: str, name: str) -> JobRecord:
        found = self._get(self.keys.job(workflow_id, name))
        if found is None:
            raise NotFound(f"workflow {workflow_id} has no job '{name}'")
        return JobRecord.from_dict(json.loads(found[0]))

    def save_run(self, workflow_id: str, workflow: WorkflowRecord | None, jobs: Iterable[JobRecord],
                 revisions: Revisions, enqueue: bool = False) -> None:
        """One guarded write of a run's changed records; the workflow record goes last
        (with enqueue, followed by the queue key that wakes a scheduler)."""
        writes = [(self.keys.job(workflow_id, j.name), _dump(j.to_dict())) for j in jobs]
        if workflow is not None:
            writes.append((self.keys.workflow(workflow_id), _dump(workflow.to_dict())))
        queue_key = self.keys.queued(workflow_id)
        if enqueue:
            writes.append((queue_key, b"1"))
        self.put_guarded(writes, revisions, unguarded=frozenset({queue_key}))

    def grant_lease(self, ttl: int) -> Lease:
        """A lease that ends `ttl` seconds after its last refresh; what it binds goes with it."""
        return Lease(self.client.lease(ttl))

    def claim_run(self, workflow_id: str, owner: str, lease: Lease) -> RunSnapshot | None:
        """Claims the run for `owner` (free, or already `owner`'s: a restarted scheduler)
        with a key bound to `lease`, reading the whole run in the same transaction; None
        when another scheduler holds it."""
        key = self.keys.claim(workflow_id)
        claim = etcd_ops.put(key, owner, lease=lease.id)
        reads = [etcd_ops.get(self.keys.workflow(workflow_id)), etcd_ops.get_prefix(self.keys.specs(workflow_id)),
                 etcd_ops.get_prefix(self.keys.jobs(workflow_id)), etcd_ops.get(self.keys.cancel(workflow_id))]
        for compare in (etcd_ops.absent(key), etcd_ops.value_equals(key, owner.encode())):
            response = etcd_ops.txn(self.client, [compare], [claim, *reads])
            if response.succeeded:
                break
        else:
            return None
        workflow_kvs, spec_kvs, job_kvs, cancel_kvs = (r.response_range.kvs for r in response.responses[1:])
        revisions: Revisions = {}
        workflow = None
        for kv in workflow_kvs:
            workflow = WorkflowRecord.from_dict(json.loads(kv.value))
            revisions[kv.key.decode()] = kv.mod_revision
        jobs = {}
        for kv in job_kvs:
            job = JobRecord.from_dict(json.loads(kv.value))
            jobs[job.name] = job
            revisions[kv.key.decode()] = kv.mod_revision
        return RunSnapshot(workflow, _definition(kv.value for kv in spec_kvs), jobs, revisions,
                           bool(list(cancel_kvs)))

    def release_claim(self, workflow_id: str) -> None:
        self.client.delete(self.keys.claim(workflow_id))

    def queued_ids(self) -> list[str]:
        return [self.keys.last_part(key) for key, _, _ in self._prefix(self.keys.queue)]

    def dequeue(self, workflow_id: str, revisions: Revisions | None = None) -> bool:
        """Removes the run from the queue; with revisions, only if its workflow record is
        still the one we wrote (not queued again by a retry meanwhile)."""
        compare = []
        if revisions is not None:
            workflow_key = self.keys.workflow(workflow_id)
            compare.append(etcd_ops.mod_equals(workflow_key, revisions.get(workflow_key, 0)))
        return self._txn(compare, [etcd_ops.delete(self.keys.queued(workflow_id))])[0]

    # ---- cancel requests -----------------------------------------------------------

    def request_cancel(self, workflow_id: str) -> None:
        self.client.put(self.keys.cancel(workflow_id), str(time.time()))

    def cancel_requested(self, workflow_id: str) -> bool:
        return self._get(self.keys.cancel(workflow_id)) is not None

    def clear_cancel(self, workflow_id: str) -> None:
        self.client.delete(self.keys.cancel(workflow_id))

    # ---- watching ------------------------------------------------------------------

    def watch(self, prefix: str, on_event: Callable[[str, bytes | None], None],
              start_revision: int | None = None) -> Callable[[], None]:
        """Calls on_event(key, value or None when deleted) for every change under prefix,
        re-subscribing after a broken stream from the last revision seen. Returns cancel."""
        state = {"revision": start_revision, "watch_id": None, "stopped": False}
        lock = threading.Lock()

        def callback(response: Any) -> None:
            if isinstance(response, Exception):
                if not (state["stopped"] or self._closed):
                    threading.Thread(target=resubscribe, daemon=True, name="etcd-rewatch").start()
                return
            for event in response.events:
                state["revision"] = event.mod_revision + 1
                deleted = isinstance(event, pyetcd.events.DeleteEvent)
                on_event(event.key.decode(), None if deleted else event.value)

        def subscribe() -> None:
            kwargs = {} if state["revision"] is None else {"start_revision": state["revision"]}
            state["watch_id"] = self.client.add_watch_prefix_callback(prefix, callback, **kwargs)

        def resubscribe() -> None:
            delay = 0.1
            while not (state["stopped"] or self._closed):
                try:
                    with lock:
                        subscribe()
                    if state["stopped"]:  # cancelled while it was being taken up again
                        cancel()
                    return
                except Exception as e:  # noqa: BLE001 - etcd down: keep trying
                    log.warning("etcd watch on %s lost (%s); retrying", prefix, e)
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)

        def cancel() -> None:
            state["stopped"] = True
            watch_id = state["watch_id"]
            if watch_id is not None:
                try:
                    self.client.cancel_watch(watch_id)
                except Exception:  # noqa: BLE001 - closing anyway
                    pass

        with lock:
            subscribe()
        return cancel

    def current_revision(self) -> int:
        return int(self.client.get_response(self.keys.prefix).header.revision)
