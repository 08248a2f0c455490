"""Running the `donut` command as a user does: a real process, its own DONUT_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

FRUIT = Path(__file__).resolve().parents[2] / "examples" / "fruit_gather.yaml"


def donut(*args: str, home: Path, endpoint: str | None = None, timeout: float = 60,
          env: dict[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**{k: v for k, v in os.environ.items() if k != "DONUT_TOKEN"}, "DONUT_HOME": str(home),
                   **(env or {})}
    if endpoint:
        environment["DONUT_ENDPOINT"] = endpoint
    return subprocess.run([sys.executable, "-m", "donut_cli", *args], env=environment, capture_output=True,
                          text=True, timeout=timeout, input=input)


@pytest.fixture
def cli(stack: Any, donut_home: Path) -> Any:
    def run(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        env = {"DONUT_TOKEN": stack.admin_token, **kwargs.pop("env", {})}
        return donut(*args, home=donut_home, endpoint=stack.endpoint, env=env, **kwargs)

    return run
