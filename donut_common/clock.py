"""Where the services read the time, so that tests can move it instead of sleeping."""

from __future__ import annotations

import time as _time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Clock:
    time: Callable[[], float] = _time.time
    """Seconds since the epoch: when tokens were made, used and expire."""
    monotonic: Callable[[], float] = _time.monotonic
    """Seconds that only go forward: how long a cached answer stays good."""


REAL_CLOCK = Clock()
