"""Seconds since the epoch (float, None for "not yet") to protobuf Timestamps and back, the
one way every service, the CLI and the wrapper convert them (to the nearest nanosecond)."""

from __future__ import annotations

from typing import overload

from google.protobuf.timestamp_pb2 import Timestamp


@overload
def timestamp(seconds: float) -> Timestamp: ...
@overload
def timestamp(seconds: None) -> None: ...
def timestamp(seconds: float | None) -> Timestamp | None:
    """The Timestamp of `seconds`; None (an unset field) for None."""
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def seconds(stamp: Timestamp) -> float | None:
    """The seconds a Timestamp holds; None for an unset (zero) one."""
    return stamp.ToNanoseconds() / 1e9 if stamp.seconds or stamp.nanos else None
