"""How the pages write times, durations, sizes and states (Jinja filters, and the same
values in the JSON the scripts get)."""

from __future__ import annotations

import time

from flask import Flask
from google.protobuf.timestamp_pb2 import Timestamp

from donut.dagger.v1 import dagger_pb2 as pb


def seconds(t: Timestamp | None) -> float | None:
    """Unix seconds of a set timestamp, None for an unset one."""
    if t is None or (t.seconds == 0 and t.nanos == 0):
        return None
    return t.seconds + t.nanos / 1e9


def iso(t: Timestamp | None) -> str:
    s = seconds(t)
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(s)) if s is not None else ""


def span(total: float | None) -> str:
    """A duration the way people say it: 45s, 3m 05s, 2h 10m, 3d 4h."""
    if total is None:
        return ""
    total = int(max(total, 0))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def age(t: Timestamp | None) -> str:
    s = seconds(t)
    return "" if s is None else span(time.time() - s) + " ago"


def duration(started: Timestamp | None, finished: Timestamp | None) -> str:
    start = seconds(started)
    if start is None:
        return ""
    end = seconds(finished)
    return span((end if end is not None else time.time()) - start)


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def workflow_status(value: pb.WorkflowStatus.ValueType) -> str:
    return pb.WorkflowStatus.Name(value).removeprefix("WORKFLOW_STATUS_").lower()


def job_status(value: pb.JobStatus.ValueType) -> str:
    return pb.JobStatus.Name(value).removeprefix("JOB_STATUS_").lower()


def register(app: Flask) -> None:
    app.jinja_env.filters.update(iso=iso, age=age, size=size, workflow_status=workflow_status,
                                 job_status=job_status)
    app.jinja_env.globals.update(duration=duration)
