"""The shapes of the names every service checks: ids of workflows and uploads, job names.

Patterns without anchors, so they compose (a token scope such as `job:<workflow>/<job>`
is built from them); use them with `re.fullmatch`.
"""

from __future__ import annotations

import re
from typing import Final

WORKFLOW_ID: Final = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
"""A workflow id: a lowercase UUID."""

JOB_NAME: Final = r"[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?"
"""A job name: 1 to 63 lowercase letters, digits, '-' or '_', starting and ending with a
letter or digit (so it can label a Kubernetes object)."""

UPLOAD_ID: Final = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
"""An upload id, and any other cellar scope: 1 to 128 letters, digits, '.', '_' or '-',
starting with a letter or digit."""


def matches(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern, text) is not None
