"""Where the CLI finds the stack: the client config file, overridden by flags and env."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from donut_common.files import write_private

DEFAULT_ENDPOINT = "127.0.0.1:7000"


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
