"""Which storage cellar keeps its files in, chosen in one place for `donut up` and the
standalone cellar server: their `--storage local|s3 --s3-*` options become settings here,
settings become a `Storage`, and a daemon thread sweeps what unfinished uploads left behind.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cellar_svc.storage import LocalStorage, Storage

if TYPE_CHECKING:  # imported when used: the CLI imports this module, and the SDK takes a while to load
    from cellar_svc.s3 import S3Settings

log = logging.getLogger(__name__)

BACKENDS = ("local", "s3")


@dataclass(frozen=True)
class SweepSettings:
    """How often the leftovers of unfinished uploads are removed."""

    interval: float = 3600.0
    """Seconds between sweeps (the first runs at start)."""
    older_than: float = 86400.0
    """Age in seconds beyond which a temporary file or upload is surely abandoned."""


def s3_settings(storage: str, endpoint: str = "", bucket: str = "", region: str = "", prefix: str = "",
                environ: Mapping[str, str] = os.environ) -> S3Settings | None:
    """The S3 settings the options ask for (None: local files); ValueError, in one line naming
    the option, when they don't go together or the credentials are not in the environment."""
    if storage not in BACKENDS:
        raise ValueError(f"--storage: must be one of {', '.join(BACKENDS)} (got {storage!r})")
    given = [option for option, value in (("--s3-endpoint", endpoint), ("--s3-bucket", bucket),
                                          ("--s3-region", region), ("--s3-prefix", prefix)) if value]
    if storage == "local":
        if given:
            raise ValueError(f"{', '.join(given)}: only with --storage s3")
        return None
    missing = [option for option, value in (("--s3-endpoint", endpoint), ("--s3-bucket", bucket)) if not value]
    if missing:
        raise ValueError(f"--storage s3 needs {' and '.join(missing)}")
    from cellar_svc.s3 import S3Settings

    return S3Settings.from_environment(endpoint, bucket, region, prefix, environ)


def open_storage(s3: S3Settings | None, local_root: str | os.PathLike[str]) -> Storage:
    """The storage: the S3 bucket (made if missing; Unavailable, in one line, when it can't be
    reached or refuses the credentials), or local files under local_root."""
    if s3 is not None:
        from cellar_svc.s3 import S3Storage

        return S3Storage.connect(s3)
    return LocalStorage(local_root)


def start_sweeper(storage: Storage, settings: SweepSettings, stop: threading.Event) -> threading.Thread:
    """Sweeps at once, then every `settings.interval` seconds until `stop` is set."""

    def run() -> None:
        while True:
            try:
                removed = storage.sweep(settings.older_than)
                if removed:
                    log.info("cellar sweep: removed %d leftovers of unfinished uploads", removed)
            except Exception as e:  # noqa: BLE001 - storage away for now: the next sweep tries again
                log.warning("cellar sweep failed: %s", e)
            if stop.wait(settings.interval):
                return

    thread = threading.Thread(target=run, name="cellar-sweeper", daemon=True)
    thread.start()
    return thread
