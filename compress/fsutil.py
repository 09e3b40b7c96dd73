"""Atomic file writes: a temp file beside the target, then one rename.

A crash leaves either the old file or the new one, never half of one. Temp names start with a
dot and end in ``.tmp``, so nothing that lists a run folder mistakes them for outputs. A published
file gets the mode the umask gives any new file (``0o666 & ~umask``): some writers (safetensors)
create theirs 0600, which would hide a shared run's outputs from its readers.

Example:
    >>> write_text_atomic(Path("runs/x/report.md"), "# report")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

__all__ = ["temp_path_for", "honour_umask_", "publish", "write_text_atomic", "write_bytes_atomic",
           "save_tensors_atomic"]


def temp_path_for(path: Path) -> Path:
    """A fresh temp path in ``path``'s folder (created if needed); the file is not created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def honour_umask_(path: Path) -> None:
    """Give the file ``path`` the mode ``open()`` would: ``0o666`` less the process umask."""
    mask = os.umask(0)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def publish(tmp: Path, path: Path) -> None:
    """Move the finished temp file ``tmp`` onto ``path`` in one rename, with the umask's mode."""
    honour_umask_(tmp)
    tmp.replace(path)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_tensors_atomic(tensors: dict[str, Any], path: Path,
                        metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` to ``path`` atomically, with the umask's mode."""
    from safetensors.torch import save_file

    tmp = temp_path_for(path)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
