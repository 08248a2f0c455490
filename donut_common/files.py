"""Files only the stack's own user may read: secrets and the client config."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, text: str | bytes) -> None:
    """Writes `text` (or bytes) to `path` with mode 0600, atomically: a reader sees the old file or
    the new one, never a part, and a file left over from before never keeps a wider mode."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a temporary file left over from before keeps its mode otherwise
    with os.fdopen(fd, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
    os.replace(temporary, path)
