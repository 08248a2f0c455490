"""The gateway that `donut up` serves until the GUI lands: a page and a health check."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import replace
from typing import Any


def test_the_gateway_points_at_the_grpc_endpoint(stack_config: Any) -> None:
    from donut_cli.stack import Stack

    with Stack(replace(stack_config, http_port=0)) as stack:
        with urllib.request.urlopen(stack.http_endpoint + "/", timeout=10) as page:
            assert stack.endpoint in page.read().decode()
        with urllib.request.urlopen(stack.http_endpoint + "/healthz", timeout=10) as health:
            assert json.loads(health.read()) == {"status": "ok"}
