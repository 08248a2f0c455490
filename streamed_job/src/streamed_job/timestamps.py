"""Seconds since the epoch (float, None for "not yet") to protobuf Timestamps and back, the
one way every service, the CLI and the wrapper convert them (to the nearest nanosecond)."""

from __future__ import annotations

from typing import Optional

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def timestamps(**values: Optional[float]) -> dict[str, Timestamp]:
    """The values that are set, as Timestamps: keyword arguments for a message's constructor."""
    return {name: timestamp(seconds) for name, seconds in values.items() if seconds is not None}


def seconds(stamp: Timestamp) -> Optional[float]:
    """The seconds a Timestamp holds; None for an unset (zero) one."""
    return stamp.ToNanoseconds() / 1e9 if stamp.seconds or stamp.nanos else None
