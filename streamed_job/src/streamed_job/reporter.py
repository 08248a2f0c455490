"""The attempt's final word to dagger: its end as a ReportJobStatus, retried until dagger
acknowledges it, and read back the same way on dagger's side."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import grpc

from donut.dagger.v1 import dagger_pb2 as pb
from donut.dagger.v1 import dagger_pb2_grpc
from streamed_job.outcome import Ended
from streamed_job.spec import RunSpec
from streamed_job.timestamps import seconds, timestamp

log = logging.getLogger(__name__)

PERMANENT = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                       grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                       grpc.StatusCode.UNIMPLEMENTED})


def report_request(spec: RunSpec, ended: Ended) -> pb.ReportJobStatusRequest:
    return pb.ReportJobStatusRequest(
        workflow_id=spec.workflow_id, job=spec.job, attempt=spec.attempt, exit_code=ended.exit_code,
        signal=ended.signal, message=ended.message,
        started_at=timestamp(ended.started_at), finished_at=timestamp(ended.finished_at),
    )


def ended_from_report(request: pb.ReportJobStatusRequest) -> Ended:
    return Ended(exit_code=request.exit_code if request.HasField("exit_code") else None, signal=request.signal,
                 message=request.message, started_at=seconds(request.started_at),
                 finished_at=seconds(request.finished_at))


class Reporter:
    """Sends the attempt's end to dagger, retrying until acknowledged or `deadline` seconds pass."""

    def __init__(self, channel: grpc.Channel, spec: RunSpec, metadata: Sequence[tuple[str, str]],
                 deadline: float) -> None:
        self.stub = dagger_pb2_grpc.DaggerStub(channel)
        self.spec = spec
        self.metadata = tuple(metadata)
        self.deadline = deadline

    def report(self, ended: Ended) -> bool:
        """True once dagger has the report; False when it refused it or stayed unreachable."""
        request = report_request(self.spec, ended)
        give_up = time.monotonic() + self.deadline
        delay = 0.1
        while True:
            remaining = give_up - time.monotonic()
            try:
                self.stub.ReportJobStatus(request, metadata=self.metadata, wait_for_ready=True,
                                          timeout=max(0.1, min(10.0, remaining)))
                return True
            except grpc.RpcError as e:
                code, details = e.code(), e.details()
                if code in PERMANENT:
                    log.error("dagger refused the report: %s: %s", code.name, details)
                    return False
                if remaining <= delay:
                    log.error("cannot report to dagger (%s: %s); giving up", code.name, details)
                    return False
                log.warning("cannot report to dagger (%s: %s); retrying in %.1fs", code.name, details, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
