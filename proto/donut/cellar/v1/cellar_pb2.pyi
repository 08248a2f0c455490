import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    KIND_CACHE: _ClassVar[Kind]
    KIND_RESULT: _ClassVar[Kind]
    KIND_ARCHIVE: _ClassVar[Kind]
KIND_UNSPECIFIED: Kind
KIND_CACHE: Kind
KIND_RESULT: Kind
KIND_ARCHIVE: Kind

class FileRef(_message.Message):
    __slots__ = ("kind", "scope", "job", "path")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    kind: Kind
    scope: str
    job: str
    path: str
    def __init__(self, kind: _Optional[_Union[Kind, str]] = ..., scope: _Optional[str] = ..., job: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class FileInfo(_message.Message):
    __slots__ = ("ref", "size", "sha256", "created_at", "owner")
    REF_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    ref: FileRef
    size: int
    sha256: str
    created_at: _timestamp_pb2.Timestamp
    owner: str
    def __init__(self, ref: _Optional[_Union[FileRef, _Mapping]] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., owner: _Optional[str] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("header", "data", "size")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    header: FileRef
    data: bytes
    size: int
    def __init__(self, header: _Optional[_Union[FileRef, _Mapping]] = ..., data: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("ref", "offset", "length")
    REF_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    ref: FileRef
    offset: int
    length: int
    def __init__(self, ref: _Optional[_Union[FileRef, _Mapping]] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("info", "data")
    INFO_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    info: FileInfo
    data: bytes
    def __init__(self, info: _Optional[_Union[FileInfo, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("kind", "scope", "job")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    kind: Kind
    scope: str
    job: str
    def __init__(self, kind: _Optional[_Union[Kind, str]] = ..., scope: _Optional[str] = ..., job: _Optional[str] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[FileInfo]
    def __init__(self, files: _Optional[_Iterable[_Union[FileInfo, _Mapping]]] = ...) -> None: ...
