"""Workflow ids as users type them: a unique start of one, or @latest."""

from __future__ import annotations

import json
from typing import Any

from dagger_svc.core.records import WorkflowId, WorkflowRecord
from tests.cli.conftest import FRUIT


def _store_workflow(stack: Any, workflow_id: str, owner: str) -> None:
    """A bare workflow record under an id the test chooses (submitted ones are random)."""
    record = WorkflowRecord(id=WorkflowId(workflow_id), name="planted", owner=owner, created_at=1.0)
    stack.store._etcd.put(stack.store.keys.workflow(workflow_id), json.dumps(record.to_dict()))


def test_a_unique_prefix_and_latest_stand_for_the_id(cli: Any) -> None:
    submitted = cli("submit", str(FRUIT), "--json")
    assert submitted.returncode == 0, submitted.stderr
    workflow_id = json.loads(submitted.stdout)["id"]
    for given in (workflow_id[:8], workflow_id[:4].upper(), "@latest", workflow_id):
        status = cli("status", given, "--json")
        assert status.returncode == 0, (given, status.stderr)
        assert json.loads(status.stdout)["id"] == workflow_id
    short = cli("status", workflow_id[:3])
    assert short.returncode == 2 and short.stderr.count("\n") == 1
    assert short.stderr.startswith("error: WORKFLOW_ID: give at least 4 characters")


def test_an_ambiguous_prefix_names_the_candidates_and_an_unknown_one_is_not_found(cli: Any, stack: Any) -> None:
    me = json.loads(cli("whoami", "--json").stdout)["id"]
    first, second = "abcd1234-0000-4000-8000-000000000000", "abcd9876-0000-4000-8000-000000000000"
    for workflow_id in (first, second):
        _store_workflow(stack, workflow_id, me)
    ambiguous = cli("status", "abcd")
    assert ambiguous.returncode == 2
    assert ambiguous.stderr == f"error: ambiguous id prefix 'abcd': {first}, {second}\n"
    assert json.loads(cli("status", "abcd98", "--json").stdout)["id"] == second
    unknown = cli("status", "ffff0")
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1
    assert unknown.stderr.startswith("error: no workflow ffff0") and "not_found" in unknown.stderr


def test_latest_is_an_admins_own_newest_not_anybodys(cli: Any) -> None:
    mine = json.loads(cli("submit", str(FRUIT), "--json").stdout)["id"]
    assert cli("user", "create", "carol").returncode == 0
    carol = {"DONUT_TOKEN": json.loads(cli("token", "create", "--user", "carol", "--json").stdout)["token"]}
    hers = json.loads(cli("submit", str(FRUIT), "--json", env=carol).stdout)["id"]  # newer than mine
    assert json.loads(cli("status", "@latest", "--json").stdout)["id"] == mine
    assert json.loads(cli("status", "@latest", "--json", env=carol).stdout)["id"] == hers


def test_others_workflows_are_never_candidates(cli: Any, stack: Any) -> None:
    assert cli("user", "create", "bob").returncode == 0
    created = cli("token", "create", "--user", "bob", "--json")
    bob = {"DONUT_TOKEN": json.loads(created.stdout)["token"]}
    _store_workflow(stack, "abcd1234-0000-4000-8000-000000000000", "someone-else")
    hidden = cli("status", "abcd", env=bob)
    assert hidden.returncode == 1 and "no workflow abcd" in hidden.stderr
    latest = cli("status", "@latest", env=bob)
    assert latest.returncode == 1 and "no workflows yet" in latest.stderr
    mine = json.loads(cli("submit", str(FRUIT), "--json", env=bob).stdout)["id"]
    _store_workflow(stack, mine[:4] + "0" * 4 + mine[8:], "someone-else")
    assert json.loads(cli("status", mine[:4], "--json", env=bob).stdout)["id"] == mine
    assert json.loads(cli("status", "@latest", "--json", env=bob).stdout)["id"] == mine
