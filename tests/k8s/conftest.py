"""Fixtures of the Kubernetes tests: a fresh test API server and kubelet per test
(tests/k8s/fakecluster), whose workflows claim is a temporary host directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.fakecluster import FakeCluster

WORKFLOWS_CLAIM = "donut-workflows"


@pytest.fixture
def workflows_dir(tmp_path: Path) -> Path:
    """The host directory standing for the shared workflows volume (the claim)."""
    path = tmp_path / "workflows"
    path.mkdir()
    return path


@pytest.fixture
def fake_cluster(tmp_path: Path, workflows_dir: Path) -> Iterator[FakeCluster]:
    """A running FakeCluster, namespace `donut`, with the `donut-workflows` claim mapped
    to `workflows_dir`; its kubeconfig is `fake_cluster.kubeconfig`."""
    with FakeCluster(tmp_path / "cluster", volumes={WORKFLOWS_CLAIM: workflows_dir}) as cluster:
        yield cluster
