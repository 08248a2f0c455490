"""Pod settings over gRPC: a job's spec carries them (merged), the local executor runs the job anyway."""

from __future__ import annotations

import json

import grpc
import pytest

from donut.dagger.v1 import dagger_pb2 as pb
from tests.dagger.conftest import Driver, sh


def test_job_specs_carry_their_merged_pod_settings(driver: Driver) -> None:
    definition = {
        "kubernetes": {"nodeSelector": {"pool": "cpu"}, "env": {"MODE": "fast"}},
        "jobs": [sh("true", "plain"),
                 sh("true", "gpu", kubernetes={"resources": {"limits": {"nvidia.com/gpu": 1}},
                                               "env": {"MODE": "slow"}})],
        "neighbors": {"plain": ["gpu"]},
    }
    created = driver.stub.CreateWorkflow(pb.CreateWorkflowRequest(definition=json.dumps(definition).encode()))
    finished = driver.wait(created.id)
    assert finished.status == pb.WORKFLOW_STATUS_DONE  # the local executor ignores the settings
    specs = {j.name: j.spec for j in finished.jobs}
    assert json.loads(specs["plain"].kubernetes_json) == {
        "nodeSelector": {"pool": "cpu"}, "env": [{"name": "MODE", "value": "fast"}]}
    assert json.loads(specs["gpu"].kubernetes_json) == {
        "resources": {"limits": {"nvidia.com/gpu": "1"}}, "nodeSelector": {"pool": "cpu"},
        "env": [{"name": "MODE", "value": "slow"}]}
    listed = {j.name: j.spec.kubernetes_json for j in driver.stub.ListJobs(
        pb.ListJobsRequest(workflow_id=created.id)).jobs}
    assert listed == {name: spec.kubernetes_json for name, spec in specs.items()}


def test_a_job_without_settings_has_an_empty_field(driver: Driver) -> None:
    workflow_id = driver.submit([sh("true", "a")])
    assert driver.wait(workflow_id).jobs[0].spec.kubernetes_json == ""


def test_settings_not_allowed_are_invalid_argument_and_store_nothing(driver: Driver) -> None:
    definition = {"kubernetes": {"hostNetwork": True}, "jobs": [sh("true", "a", kubernetes={"env": {"DONUT_X": "1"}})]}
    with pytest.raises(grpc.RpcError) as caught:
        driver.stub.CreateWorkflow(pb.CreateWorkflowRequest(definition=json.dumps(definition).encode()))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kubernetes.hostNetwork: not allowed" in caught.value.details()
    assert "jobs[0].kubernetes.env[DONUT_X]" in caught.value.details()
    assert list(driver.stub.ListWorkflows(pb.ListWorkflowsRequest()).workflows) == []
