import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkflowStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKFLOW_STATUS_UNSPECIFIED: _ClassVar[WorkflowStatus]
    WORKFLOW_STATUS_QUEUED: _ClassVar[WorkflowStatus]
    WORKFLOW_STATUS_RUNNING: _ClassVar[WorkflowStatus]
    WORKFLOW_STATUS_DONE: _ClassVar[WorkflowStatus]
    WORKFLOW_STATUS_FAILED: _ClassVar[WorkflowStatus]
    WORKFLOW_STATUS_TERMINATED: _ClassVar[WorkflowStatus]
    WORKFLOW_STATUS_DEAD: _ClassVar[WorkflowStatus]

class JobStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATUS_UNSPECIFIED: _ClassVar[JobStatus]
    JOB_STATUS_WAITING: _ClassVar[JobStatus]
    JOB_STATUS_QUEUED: _ClassVar[JobStatus]
    JOB_STATUS_RUNNING: _ClassVar[JobStatus]
    JOB_STATUS_SUCCEEDED: _ClassVar[JobStatus]
    JOB_STATUS_FAILED: _ClassVar[JobStatus]
    JOB_STATUS_SKIPPED: _ClassVar[JobStatus]
    JOB_STATUS_TERMINATED: _ClassVar[JobStatus]
    JOB_STATUS_DEAD: _ClassVar[JobStatus]

class LogStream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_STREAM_UNSPECIFIED: _ClassVar[LogStream]
    LOG_STREAM_STDOUT: _ClassVar[LogStream]
    LOG_STREAM_STDERR: _ClassVar[LogStream]
    LOG_STREAM_SYSTEM: _ClassVar[LogStream]
WORKFLOW_STATUS_UNSPECIFIED: WorkflowStatus
WORKFLOW_STATUS_QUEUED: WorkflowStatus
WORKFLOW_STATUS_RUNNING: WorkflowStatus
WORKFLOW_STATUS_DONE: WorkflowStatus
WORKFLOW_STATUS_FAILED: WorkflowStatus
WORKFLOW_STATUS_TERMINATED: WorkflowStatus
WORKFLOW_STATUS_DEAD: WorkflowStatus
JOB_STATUS_UNSPECIFIED: JobStatus
JOB_STATUS_WAITING: JobStatus
JOB_STATUS_QUEUED: JobStatus
JOB_STATUS_RUNNING: JobStatus
JOB_STATUS_SUCCEEDED: JobStatus
JOB_STATUS_FAILED: JobStatus
JOB_STATUS_SKIPPED: JobStatus
JOB_STATUS_TERMINATED: JobStatus
JOB_STATUS_DEAD: JobStatus
LOG_STREAM_UNSPECIFIED: LogStream
LOG_STREAM_STDOUT: LogStream
LOG_STREAM_STDERR: LogStream
LOG_STREAM_SYSTEM: LogStream

class Input(_message.Message):
    __slots__ = ("origin", "cache", "local")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    origin: str
    cache: str
    local: str
    def __init__(self, origin: _Optional[str] = ..., cache: _Optional[str] = ..., local: _Optional[str] = ...) -> None: ...

class Output(_message.Message):
    __slots__ = ("local", "save")
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    SAVE_FIELD_NUMBER: _ClassVar[int]
    local: str
    save: bool
    def __init__(self, local: _Optional[str] = ..., save: bool = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("name", "image", "cmd", "args", "workdir_prefix", "inputs", "outputs", "retries", "timeout_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CMD_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_PREFIX_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    image: str
    cmd: str
    args: _containers.RepeatedScalarFieldContainer[str]
    workdir_prefix: str
    inputs: _containers.RepeatedCompositeFieldContainer[Input]
    outputs: _containers.RepeatedCompositeFieldContainer[Output]
    retries: int
    timeout_seconds: float
    def __init__(self, name: _Optional[str] = ..., image: _Optional[str] = ..., cmd: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., workdir_prefix: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Input, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[Output, _Mapping]]] = ..., retries: _Optional[int] = ..., timeout_seconds: _Optional[float] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("number", "status", "exit_code", "signal", "message", "started_at", "finished_at")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    number: int
    status: JobStatus
    exit_code: int
    signal: str
    message: str
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    def __init__(self, number: _Optional[int] = ..., status: _Optional[_Union[JobStatus, str]] = ..., exit_code: _Optional[int] = ..., signal: _Optional[str] = ..., message: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("workflow_id", "name", "status", "attempt", "exit_code", "message", "started_at", "finished_at", "retry_at", "attempts", "spec", "depends_on", "neighbors")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    RETRY_AT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    NEIGHBORS_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    name: str
    status: JobStatus
    attempt: int
    exit_code: int
    message: str
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    retry_at: _timestamp_pb2.Timestamp
    attempts: _containers.RepeatedCompositeFieldContainer[Attempt]
    spec: JobSpec
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    neighbors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, workflow_id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[_Union[JobStatus, str]] = ..., attempt: _Optional[int] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., retry_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempts: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., depends_on: _Optional[_Iterable[str]] = ..., neighbors: _Optional[_Iterable[str]] = ...) -> None: ...

class Workflow(_message.Message):
    __slots__ = ("id", "name", "owner", "status", "parallelism", "fail_fast", "message", "created_at", "started_at", "finished_at", "job_counts", "job_total", "jobs", "upload_id", "workdir")
    class JobCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PARALLELISM_FIELD_NUMBER: _ClassVar[int]
    FAIL_FAST_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    JOB_COUNTS_FIELD_NUMBER: _ClassVar[int]
    JOB_TOTAL_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    owner: str
    status: WorkflowStatus
    parallelism: int
    fail_fast: bool
    message: str
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    job_counts: _containers.ScalarMap[str, int]
    job_total: int
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    upload_id: str
    workdir: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., owner: _Optional[str] = ..., status: _Optional[_Union[WorkflowStatus, str]] = ..., parallelism: _Optional[int] = ..., fail_fast: bool = ..., message: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., job_counts: _Optional[_Mapping[str, int]] = ..., job_total: _Optional[int] = ..., jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., upload_id: _Optional[str] = ..., workdir: _Optional[str] = ...) -> None: ...

class CreateWorkflowRequest(_message.Message):
    __slots__ = ("definition", "name", "parallelism", "fail_fast", "upload_id")
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARALLELISM_FIELD_NUMBER: _ClassVar[int]
    FAIL_FAST_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    definition: bytes
    name: str
    parallelism: int
    fail_fast: bool
    upload_id: str
    def __init__(self, definition: _Optional[bytes] = ..., name: _Optional[str] = ..., parallelism: _Optional[int] = ..., fail_fast: bool = ..., upload_id: _Optional[str] = ...) -> None: ...

class Problem(_message.Message):
    __slots__ = ("place", "message")
    PLACE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    place: str
    message: str
    def __init__(self, place: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ValidateDefinitionRequest(_message.Message):
    __slots__ = ("definition",)
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    definition: bytes
    def __init__(self, definition: _Optional[bytes] = ...) -> None: ...

class ValidateDefinitionResponse(_message.Message):
    __slots__ = ("problems", "job_count")
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    JOB_COUNT_FIELD_NUMBER: _ClassVar[int]
    problems: _containers.RepeatedCompositeFieldContainer[Problem]
    job_count: int
    def __init__(self, problems: _Optional[_Iterable[_Union[Problem, _Mapping]]] = ..., job_count: _Optional[int] = ...) -> None: ...

class GetWorkflowRequest(_message.Message):
    __slots__ = ("id", "include_jobs")
    ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_JOBS_FIELD_NUMBER: _ClassVar[int]
    id: str
    include_jobs: bool
    def __init__(self, id: _Optional[str] = ..., include_jobs: bool = ...) -> None: ...

class ListWorkflowsRequest(_message.Message):
    __slots__ = ("statuses", "limit")
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedScalarFieldContainer[WorkflowStatus]
    limit: int
    def __init__(self, statuses: _Optional[_Iterable[_Union[WorkflowStatus, str]]] = ..., limit: _Optional[int] = ...) -> None: ...

class ListWorkflowsResponse(_message.Message):
    __slots__ = ("workflows",)
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    workflows: _containers.RepeatedCompositeFieldContainer[Workflow]
    def __init__(self, workflows: _Optional[_Iterable[_Union[Workflow, _Mapping]]] = ...) -> None: ...

class CancelWorkflowRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RetryWorkflowRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CloneWorkflowRequest(_message.Message):
    __slots__ = ("id", "name", "parallelism")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARALLELISM_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    parallelism: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., parallelism: _Optional[int] = ...) -> None: ...

class WatchWorkflowRequest(_message.Message):
    __slots__ = ("id", "include_jobs")
    ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_JOBS_FIELD_NUMBER: _ClassVar[int]
    id: str
    include_jobs: bool
    def __init__(self, id: _Optional[str] = ..., include_jobs: bool = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("workflow_id", "name")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    name: str
    def __init__(self, workflow_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("workflow_id",)
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    def __init__(self, workflow_id: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("stream", "text")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    stream: LogStream
    text: bytes
    def __init__(self, stream: _Optional[_Union[LogStream, str]] = ..., text: _Optional[bytes] = ...) -> None: ...

class LogBatch(_message.Message):
    __slots__ = ("workflow_id", "job", "attempt", "sequence", "lines")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    job: str
    attempt: int
    sequence: int
    lines: _containers.RepeatedCompositeFieldContainer[LogLine]
    def __init__(self, workflow_id: _Optional[str] = ..., job: _Optional[str] = ..., attempt: _Optional[int] = ..., sequence: _Optional[int] = ..., lines: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ...) -> None: ...

class LogAck(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class TailLogsRequest(_message.Message):
    __slots__ = ("workflow_id", "job", "attempt", "offset", "follow")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    job: str
    attempt: int
    offset: int
    follow: bool
    def __init__(self, workflow_id: _Optional[str] = ..., job: _Optional[str] = ..., attempt: _Optional[int] = ..., offset: _Optional[int] = ..., follow: bool = ...) -> None: ...

class LogLines(_message.Message):
    __slots__ = ("offset", "lines", "attempt")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    offset: int
    lines: _containers.RepeatedCompositeFieldContainer[LogLine]
    attempt: int
    def __init__(self, offset: _Optional[int] = ..., lines: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ..., attempt: _Optional[int] = ...) -> None: ...

class ReportJobStatusRequest(_message.Message):
    __slots__ = ("workflow_id", "job", "attempt", "exit_code", "signal", "message", "started_at", "finished_at")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    job: str
    attempt: int
    exit_code: int
    signal: str
    message: str
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    def __init__(self, workflow_id: _Optional[str] = ..., job: _Optional[str] = ..., attempt: _Optional[int] = ..., exit_code: _Optional[int] = ..., signal: _Optional[str] = ..., message: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReportJobStatusResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
