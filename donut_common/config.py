"""Settings read at the entry points: where the CLI finds the stack (the client config
file, overridden by flags and env), and the limits every gRPC server keeps."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from donut_common.files import write_private

DEFAULT_ENDPOINT = "127.0.0.1:7000"


@dataclass(frozen=True)
class ServerLimits:
    """What callers may hold of one gRPC server at once. Every open stream holds one of the
    server's threads for its whole life, so streams get fewer threads than there are: the
    rest always serve unary calls, health checks and token checks."""

    threads: int = 1024
    """Threads serving calls (started as needed: an idle one costs little)."""
    queued: int = 128
    """Calls that may wait for a thread; beyond threads + queued, a call is refused at once
    with RESOURCE_EXHAUSTED instead of waiting."""
    streams: int = 896
    """Streams (watches, followed logs, uploads, downloads, log pushes) open at once,
    everyone's together; fewer than `threads`. Every running job of the wrapper (and
    Kubernetes) executor holds one while it prints."""
    streams_per_caller: int = 16
    """Streams one caller (a user, or one job attempt) may hold open at once."""
    first_message_timeout: float = 30.0
    """Seconds a client stream (an upload, a job's log push) has to send its first message."""
    idle_timeout: float = 300.0
    """Seconds a client stream may stay silent between two messages."""

    def __post_init__(self) -> None:
        if not 0 < self.streams < self.threads:
            raise ValueError(f"streams must be from 1 to threads - 1 ({self.threads - 1}), got {self.streams}")
        if self.streams_per_caller < 1 or self.queued < 0:
            raise ValueError("streams_per_caller must be at least 1 and queued at least 0")
        if self.first_message_timeout <= 0 or self.idle_timeout <= 0:
            raise ValueError("first_message_timeout and idle_timeout must be more than 0 seconds")


def donut_home() -> Path:
    return Path(os.environ.get("DONUT_HOME") or Path.home() / ".donut")


def client_config_path() -> Path:
    return donut_home() / "client.json"


@dataclass(frozen=True)
class ClientConfig:
    endpoint: str = DEFAULT_ENDPOINT
    """host:port of the donut gRPC server."""
    token: str = ""
    """API token sent as `authorization: Bearer <token>`."""
    tls_ca: str = ""
    """PEM file of the CA that signed the server's certificate; empty: plain gRPC."""

    @classmethod
    def load(cls, endpoint: str | None = None, token: str | None = None, tls_ca: str | None = None) -> ClientConfig:
        """Flags (already merged with DONUT_ENDPOINT/DONUT_TOKEN by the CLI) over the file;
        ValueError when the file exists but cannot be used."""
        stored: dict[str, str] = {}
        path = client_config_path()
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"cannot read the client config {path}: {e}") from None
            fields = ("endpoint", "token", "tls_ca")
            if not isinstance(stored, dict) or not all(isinstance(stored.get(f, ""), str) for f in fields):
                raise ValueError(f"the client config {path} must be a JSON object with string fields "
                                 f"{', '.join(fields)} (`donut up` writes it)")
        return cls(
            endpoint=endpoint or stored.get("endpoint") or DEFAULT_ENDPOINT,
            token=token or stored.get("token") or "",
            tls_ca=tls_ca or stored.get("tls_ca") or "",
        )

    def save(self) -> Path:
        path = client_config_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, json.dumps({"endpoint": self.endpoint, "token": self.token, "tls_ca": self.tls_ca},
                                       indent=2))
        return path
