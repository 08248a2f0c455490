"""How the wrapper finds its attempt's spec and token in its environment."""

from __future__ import annotations

import dataclasses

import pytest

from streamed_job.spec import SPEC_ENV, TOKEN_ENV, RunSpec


def test_the_token_comes_from_donut_job_token_when_the_spec_holds_none(monkeypatch: pytest.MonkeyPatch) -> None:
    bare = RunSpec(workflow_id="w", job="j", attempt=1, cmd="true", args=(), workflow_dir="/tmp")
    monkeypatch.setenv(SPEC_ENV, bare.to_json())
    monkeypatch.setenv(TOKEN_ENV, "from-the-secret")
    assert RunSpec.from_environment().token == "from-the-secret"
    monkeypatch.setenv(SPEC_ENV, dataclasses.replace(bare, token="in-the-spec").to_json())
    assert RunSpec.from_environment().token == "in-the-spec"
