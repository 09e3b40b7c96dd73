"""A full disk or a read-only file system, under some paths only, for in-process tests.

Tests run as root, so ``chmod`` cannot make a folder read-only; instead :func:`fail_writes`
patches the calls every writer ends in (``open`` for writing, ``os.open`` that creates,
``os.mkdir``, ``os.replace``/``os.rename``, ``safetensors.torch.save_file``) to fail the way
the kernel does, for paths (relative to ``root``) that match a pattern:

* ``ENOSPC``: the file is created and then the write fails (a partial file is left for the
  writer to clean up); making folders and renames still work, as on a full disk;
* ``EROFS``: nothing is created, folders and renames included.

Example:
    >>> fail_writes(monkeypatch, out, r"^model\\.safetensors", errno.ENOSPC)  # doctest: +SKIP
"""

from __future__ import annotations

import builtins
import errno
import os
import re
from pathlib import Path
from typing import Any

import pytest

__all__ = ["fail_writes", "WHY", "leftovers"]

WHY = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system"}


def _matches(root: Path, pattern: str, path: Any) -> bool:
    try:
        rel = Path(os.fspath(path)).resolve().relative_to(root.resolve())
    except (TypeError, ValueError):
        return False
    return re.search(pattern, rel.as_posix()) is not None


def fail_writes(monkeypatch: pytest.MonkeyPatch, root: Path, pattern: str, code: int,
                when: Any = None) -> list[str]:
    """Fail writes under ``root`` whose relative path matches ``pattern`` with ``code``
    (``when()``, if given, must also be true). Returns the paths failed, in order."""
    import safetensors.torch

    failed: list[str] = []
    real_open, real_os_open = builtins.open, os.open
    real_mkdir, real_replace, real_rename = os.mkdir, os.replace, os.rename
    real_save = safetensors.torch.save_file

    def hit(path: Any) -> bool:
        if _matches(root, pattern, path) and (when is None or when()):
            failed.append(str(path))
            return True
        return False

    def error(path: Any) -> OSError:
        return OSError(code, os.strerror(code), str(path))

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, int) or not set(mode) & set("wax+") or not hit(file):
            return real_open(file, mode, *args, **kwargs)
        if code == errno.ENOSPC:
            with real_open(file, mode, *args, **kwargs) as f:
                f.write(b"\0" if "b" in mode else "x")  # the part that fitted
        raise error(file)

    def fake_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and code == errno.EROFS and hit(path):
            raise error(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if code == errno.EROFS and not os.path.isdir(path) and hit(path):
            raise error(path)
        real_mkdir(path, *args, **kwargs)

    def moving(real: Any) -> Any:
        def fake(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            if code == errno.EROFS and hit(dst):
                raise error(dst)
            real(src, dst, *args, **kwargs)
        return fake

    def fake_save(tensors: Any, filename: Any, *args: Any, **kwargs: Any) -> None:
        if not hit(filename):
            return real_save(tensors, filename, *args, **kwargs)
        from safetensors import SafetensorError

        if code == errno.ENOSPC:
            with real_open(filename, "wb") as f:
                f.write(b"\0" * 8)
        kind = "StorageFull" if code == errno.ENOSPC else "ReadOnlyFilesystem"
        raise SafetensorError(f'Error while serializing: IoError(Os {{ code: {code}, kind: '
                              f'{kind}, message: "{os.strerror(code)}" }})')

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "replace", moving(real_replace))
    monkeypatch.setattr(os, "rename", moving(real_rename))
    monkeypatch.setattr(safetensors.torch, "save_file", fake_save)
    return failed


def leftovers(root: Path) -> list[str]:
    """Temp files and folders (``.*.tmp``) anywhere under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*.tmp"))
