"""Atomic file writes: a temp file beside the target, then one rename.

A crash leaves either the old file or the new one, never half of one. Temp names start with a
dot and end in ``.tmp``, so nothing that lists a run folder mistakes them for outputs. A published
file gets the mode the umask gives any new file (``0o666 & ~umask``): some writers (safetensors)
create theirs 0600, which would hide a shared run's outputs from its readers.

A write that fails (disk full, read-only file system, no permission) raises
:class:`~compress.errors.InputError` naming the file it was writing, and leaves no temp file.

Example:
    >>> write_text_atomic(Path("runs/x/report.md"), "# report")  # doctest: +SKIP
    >>> write_failure(Path("runs/x/model.onnx"), OSError(28, "No space left on device"))
    "cannot write 'runs/x/model.onnx': no space left on device; free space or choose another --out"
"""

from __future__ import annotations

import errno
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from compress.errors import InputError

__all__ = ["FS_FAULTS", "fs_fault", "write_failure", "writing", "temp_path_for", "honour_umask_",
           "publish", "write_text_atomic", "write_bytes_atomic", "save_tensors_atomic"]


# Errors that say the file system cannot take a write (not that the program is wrong).
FS_FAULTS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                       errno.EFBIG})

_HINTS = {errno.ENOSPC: "free space or choose another --out",
          errno.EDQUOT: "free space within your quota or choose another --out",
          errno.EROFS: "the file system is read-only: choose another --out",
          errno.EACCES: "choose an --out you may write to",
          errno.EPERM: "choose an --out you may write to"}


def _errno_of(err: BaseException) -> int | None:
    """The OS error number of ``err``: an OSError's, or the one in a SafetensorError's text
    (``IoError(Os { code: 28, ... })``)."""
    if isinstance(err, OSError):
        return err.errno
    found = re.search(r"\bcode: (\d+)", str(err))
    return int(found.group(1)) if found else None


def write_failure(path: Path, err: BaseException) -> str:
    """One sentence: which file could not be written, why, and what to do."""
    code = _errno_of(err)
    why = os.strerror(code) if code is not None else (str(err).splitlines() or ["failed"])[0]
    hint = _HINTS.get(code, "check the disk and --out") if code is not None else \
        "check the disk and --out"
    return f"cannot write {str(path)!r}: {why[:1].lower()}{why[1:]}; {hint}"


def fs_fault(err: BaseException) -> BaseException | None:
    """The disk-full / read-only / permission error behind ``err`` (itself, or one it was
    raised from, as exporters wrap them), or None."""
    seen: BaseException | None = err
    for _ in range(8):
        if seen is None:
            return None
        if (isinstance(seen, OSError) or type(seen).__name__ == "SafetensorError") and \
                _errno_of(seen) in FS_FAULTS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """An OS error (or safetensors' I/O error) inside the block becomes an InputError naming
    ``path``, the artifact being written."""
    try:
        yield
    except Exception as err:
        fault = fs_fault(err)
        if fault is None and not isinstance(err, OSError):
            raise
        raise InputError(write_failure(path, fault or err)) from None


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
    with writing(path):
        _write_bytes_atomic(path, data)


def _write_bytes_atomic(path: Path, data: bytes) -> None:
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

    with writing(path):
        tmp = temp_path_for(path)
        try:
            save_file(tensors, str(tmp), metadata=metadata)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            publish(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
