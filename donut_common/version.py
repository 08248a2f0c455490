"""The version of donut-dagger this process runs, which the CLI and the servers both report."""

from __future__ import annotations

from importlib import metadata


def donut_version() -> str:
    try:
        return metadata.version("donut-dagger")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
