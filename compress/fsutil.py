"""Atomic file writes: a temp file beside the target, then one rename.

A crash leaves either the old file or the new one, never half of one. Temp names start with a
dot and end in ``.tmp``, so nothing that lists a run folder mistakes them for outputs.

Example:
    >>> write_text_atomic(Path("runs/x/report.md"), "# report")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

__all__ = ["temp_path_for", "write_text_atomic", "write_bytes_atomic", "chmod_as_umask_"]


def temp_path_for(path: Path) -> Path:
    """A fresh temp path in ``path``'s folder (created if needed); the file is not created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def chmod_as_umask_(path: Path) -> None:
    """Give ``path`` the mode a plain ``open`` would (0o666 less the umask).

    Writers that create their own file (safetensors: 0o600) would otherwise leave outputs
    unreadable to the group the umask grants.
    """
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
