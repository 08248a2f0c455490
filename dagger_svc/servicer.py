"""The Dagger gRPC servicer: protobuf in, domain calls, protobuf out. Nothing else."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import grpc

from dagger_svc.core.definition import Definition, JobSpec
from dagger_svc.core.records import JobRecord, JobStatus, WorkflowRecord, WorkflowStatus
from dagger_svc.executors.base import outcome_of
from dagger_svc.service import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, DaggerService
from dagger_svc.store import RunView
from donut.dagger.v1 import dagger_pb2 as pb
from donut.dagger.v1 import dagger_pb2_grpc
from donut_common.auth import Principal, check_still_valid, current_principal
from donut_common.errors import InvalidArgument, Problem
from donut_common.rpc import translate_errors
from streamed_job.reporter import ended_from_report
from streamed_job.timestamps import timestamp

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Dagger"].full_name


def workflow_pb(w: WorkflowRecord, workdir: str = "") -> pb.Workflow:
    return pb.Workflow(
        id=w.id, name=w.name, owner=w.owner, status=pb.WorkflowStatus.Value(f"WORKFLOW_STATUS_{w.status.name}"),
        parallelism=w.parallelism, fail_fast=w.fail_fast, message=w.message, job_counts=dict(w.counts),
        job_total=w.job_total, upload_id=w.upload_id, workdir=workdir, labels=dict(w.labels),
        created_at=timestamp(w.created_at), started_at=timestamp(w.started_at),
        finished_at=timestamp(w.finished_at), archived_at=timestamp(w.archived_at), archive_sha256=w.archive_sha256,
    )


def job_status_pb(status: JobStatus) -> Any:
    return pb.JobStatus.Value(f"JOB_STATUS_{status.name}")


def spec_pb(spec: JobSpec) -> pb.JobSpec:
    return pb.JobSpec(
        name=spec.name, image=spec.image, cmd=spec.cmd, args=list(spec.args), workdir_prefix=spec.workdir_prefix,
        inputs=[pb.Input(origin=i.origin, cache=i.cache, local=i.local) for i in spec.inputs],
        outputs=[pb.Output(local=o.local, save=o.save) for o in spec.outputs],
        retries=spec.retries, timeout_seconds=spec.timeout or 0.0, kubernetes_json=spec.kubernetes_json,
    )


def job_pb(workflow_id: str, definition: Definition, record: JobRecord) -> pb.Job:
    attempts = [
        pb.Attempt(number=a.number, status=job_status_pb(a.status), exit_code=a.exit_code, signal=a.signal,
                   message=a.message, started_at=timestamp(a.started_at), finished_at=timestamp(a.finished_at))
        for a in record.attempts
    ]
    return pb.Job(
        workflow_id=workflow_id, name=record.name, status=job_status_pb(record.status), attempt=record.attempt,
        exit_code=record.exit_code, message=record.message, attempts=attempts,
        spec=spec_pb(definition.jobs[record.name]), depends_on=list(definition.parents[record.name]),
        neighbors=list(definition.children[record.name]),
        started_at=timestamp(record.started_at), finished_at=timestamp(record.finished_at),
        retry_at=timestamp(record.retry_at),
    )


@translate_errors
class DaggerServicer(dagger_pb2_grpc.DaggerServicer):
    def __init__(self, service: DaggerService, principal: Callable[[], Principal] = current_principal) -> None:
        self.service = service
        self.principal = principal

    def _workflow(self, w: WorkflowRecord) -> pb.Workflow:
        return workflow_pb(w, str(self.service.workdir(w.id)))

    def _run(self, view: RunView) -> pb.Workflow:
        """The workflow with its jobs (those of the view: all, or those that changed), in
        the definition's order."""
        message = self._workflow(view.workflow)
        message.jobs.extend(job_pb(view.workflow.id, view.definition, view.jobs[name]) for name in view.definition.jobs
                            if name in view.jobs)
        return message

    def CreateWorkflow(self, request: pb.CreateWorkflowRequest, context: grpc.ServicerContext) -> pb.Workflow:
        workflow = self.service.create(
            self.principal(), request.definition, name=request.name, parallelism=request.parallelism,
            fail_fast=request.fail_fast, upload_id=request.upload_id, labels=request.labels,
        )
        return self._workflow(workflow)

    def ValidateDefinition(self, request: pb.ValidateDefinitionRequest,
                           context: grpc.ServicerContext) -> pb.ValidateDefinitionResponse:
        try:
            definition = self.service.validate(self.principal(), request.definition,
                                               request.uploads if request.check_uploads else None)
        except InvalidArgument as e:
            return pb.ValidateDefinitionResponse(problems=[pb.Problem(place=p.place, message=p.message)
                                                           for p in e.problems])
        return pb.ValidateDefinitionResponse(job_count=len(definition.jobs))

    def GetWorkflow(self, request: pb.GetWorkflowRequest, context: grpc.ServicerContext) -> pb.Workflow:
        if request.include_jobs:
            return self._run(self.service.run(self.principal(), request.id))
        return self._workflow(self.service.get(self.principal(), request.id))

    def ListWorkflows(self, request: pb.ListWorkflowsRequest,
                      context: grpc.ServicerContext) -> pb.ListWorkflowsResponse:
        statuses = set()
        for value in request.statuses:
            if value == pb.WORKFLOW_STATUS_UNSPECIFIED or value not in pb.WorkflowStatus.values():
                raise InvalidArgument([Problem("statuses", f"unknown workflow status {value}")])
            statuses.add(WorkflowStatus[pb.WorkflowStatus.Name(value).removeprefix("WORKFLOW_STATUS_")])
        if request.limit < 0:
            raise InvalidArgument([Problem("limit", "must be 0 (the default page size) or more")])
        if request.id_prefix:
            if statuses or request.page_token:
                raise InvalidArgument([Problem("id_prefix", "goes with neither statuses nor page_token")])
            size = min(request.page_size or request.limit or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            found = self.service.find_workflows(self.principal(), request.id_prefix, size)
            return pb.ListWorkflowsResponse(workflows=[self._workflow(w) for w in found])
        listed, next_page = self.service.list_workflows(self.principal(), statuses,
                                                        request.page_size or request.limit, request.page_token,
                                                        request.labels, request.mine)
        return pb.ListWorkflowsResponse(workflows=[self._workflow(w) for w in listed], next_page_token=next_page)

    def CancelWorkflow(self, request: pb.CancelWorkflowRequest, context: grpc.ServicerContext) -> pb.Workflow:
        return self._workflow(self.service.cancel(self.principal(), request.id))

    def RetryWorkflow(self, request: pb.RetryWorkflowRequest, context: grpc.ServicerContext) -> pb.Workflow:
        return self._workflow(self.service.retry(self.principal(), request.id, request.jobs,
                                                 request.restart_successful))

    def CloneWorkflow(self, request: pb.CloneWorkflowRequest, context: grpc.ServicerContext) -> pb.Workflow:
        return self._workflow(self.service.clone(self.principal(), request.id, request.name, request.parallelism))

    def DeleteWorkflow(self, request: pb.DeleteWorkflowRequest,
                       context: grpc.ServicerContext) -> pb.DeleteWorkflowResponse:
        self.service.delete(self.principal(), request.id, request.force)
        return pb.DeleteWorkflowResponse()

    def WatchWorkflow(self, request: pb.WatchWorkflowRequest, context: grpc.ServicerContext) -> Iterator[pb.Workflow]:
        if request.include_jobs and request.changed_jobs_only:
            for view in self.service.watch_run(self.principal(), request.id, is_active=lambda: _active(context)):
                yield self._run(view)
            return
        for workflow in self.service.watch(self.principal(), request.id, is_active=lambda: _active(context)):
            yield self._run(self.service.run(self.principal(), workflow.id)) if request.include_jobs \
                else self._workflow(workflow)

    def ArchiveWorkflow(self, request: pb.ArchiveWorkflowRequest,
                        context: grpc.ServicerContext) -> pb.ArchiveWorkflowResponse:
        info = self.service.archive(self.principal(), request.id)
        return pb.ArchiveWorkflowResponse(path=info.path, size=info.size, sha256=info.sha256,
                                          created_at=timestamp(info.created_at))

    def ListReplicas(self, request: pb.ListReplicasRequest, context: grpc.ServicerContext) -> pb.ListReplicasResponse:
        return pb.ListReplicasResponse(replicas=[
            pb.Replica(id=r.replica.id, endpoint=r.replica.endpoint, pid=r.replica.pid, workflows=r.workflows,
                       started_at=timestamp(r.replica.started_at), lease_expires_at=timestamp(r.lease_expires_at),
                       metrics_url=r.replica.metrics_url)
            for r in self.service.replicas(self.principal())])

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return job_pb(request.workflow_id, *self.service.job(self.principal(), request.workflow_id, request.name))

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.ListJobsResponse:
        return pb.ListJobsResponse(jobs=self._run(self.service.run(self.principal(), request.workflow_id)).jobs)

    def PushLogs(self, request_iterator: Iterator[pb.LogBatch], context: grpc.ServicerContext) -> Iterator[pb.LogAck]:
        caller = self.principal()
        for batch in request_iterator:
            stored = self.service.push_logs(
                caller, batch.workflow_id, batch.job, batch.attempt, batch.sequence,
                [(line.stream or pb.LOG_STREAM_STDOUT, line.text) for line in batch.lines],
            )
            yield pb.LogAck(sequence=stored)

    def TailLogs(self, request: pb.TailLogsRequest, context: grpc.ServicerContext) -> Iterator[pb.LogLines]:
        for attempt, offset, lines in self.service.tail_logs(
            self.principal(), request.workflow_id, request.job, request.attempt, request.offset, request.follow,
            is_active=lambda: _active(context), tail=request.tail,
        ):
            yield pb.LogLines(offset=offset, attempt=attempt,
                              lines=[pb.LogLine(stream=cast(Any, s), text=t, time=at) for s, t, at in lines])

    def ReportJobStatus(self, request: pb.ReportJobStatusRequest,
                        context: grpc.ServicerContext) -> pb.ReportJobStatusResponse:
        self.service.report(self.principal(), request.workflow_id, request.job, request.attempt,
                            outcome_of(ended_from_report(request)))
        return pb.ReportJobStatusResponse()


def _active(context: grpc.ServicerContext) -> bool:
    """The stream's client is still there, and its token still good (Unauthenticated if not)."""
    return bool(context.is_active()) and check_still_valid()


def registration(service: DaggerService,
                 principal: Callable[[], Principal] = current_principal) -> tuple[Any, Any, str]:
    return dagger_pb2_grpc.add_DaggerServicer_to_server, DaggerServicer(service, principal), SERVICE_NAME
