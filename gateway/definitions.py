"""A workflow's definition written back as YAML from its jobs, to prefill the form that
creates a workflow from an existing one (the services keep the parsed jobs, not the text)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import yaml

from donut.dagger.v1 import dagger_pb2 as pb


def definition_yaml(jobs: Iterable[pb.Job]) -> str:
    jobs = list(jobs)
    document: dict[str, Any] = {"jobs": [_job(job.spec) for job in jobs]}
    neighbors = {job.name: list(job.neighbors) for job in jobs if job.neighbors}
    if neighbors:
        document["neighbors"] = neighbors
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=120)


def _job(spec: pb.JobSpec) -> dict[str, Any]:
    job: dict[str, Any] = {"name": spec.name, "image": spec.image, "cmd": spec.cmd, "args": list(spec.args)}
    if spec.workdir_prefix:
        job["workdir_prefix"] = spec.workdir_prefix
    if spec.inputs:
        job["inputs"] = [{key: value for key, value in (("origin", i.origin), ("cache", i.cache), ("local", i.local))
                          if value} for i in spec.inputs]
    if spec.outputs:
        job["outputs"] = [{"local": o.local, "save": o.save} for o in spec.outputs]
    if spec.retries:
        job["retries"] = spec.retries
    if spec.timeout_seconds:
        job["timeout"] = int(spec.timeout_seconds) if spec.timeout_seconds.is_integer() else spec.timeout_seconds
    if spec.kubernetes_json:  # already merged with the workflow's: written on the job
        settings = json.loads(spec.kubernetes_json)
        if "env" in settings:
            settings["env"] = {item["name"]: item["value"] for item in settings["env"]}
        job["kubernetes"] = settings
    return job
