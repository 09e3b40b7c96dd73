"""``compress push RUN REPO_ID``: upload a run's stock transformers folder (``hf/``, with its
model card) and optionally its ONNX file to a Hub repository, in one commit.

Only a finished run whose gates passed is pushed (``force`` overrides both), and only files
compress wrote are listed: ``hf/``'s files (no links, nothing outside it) and, with ``onnx``,
``model.onnx`` as ``onnx/model.onnx``. :func:`plan_push` says what would be uploaded without
any network access (``--dry-run``).

Example:
    >>> plan_push("runs/minilm-sst2")  # doctest: +SKIP
    [('runs/minilm-sst2/hf/README.md', 'README.md'), ...]
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from compress.errors import InputError
from compress.export.hf import HF_FOLDER
from compress.jsonio import read_json_object

__all__ = ["plan_push", "push_run", "check_repo_id"]

# The Hub's rule for names: letters, digits, '-', '_', '.'; at most 96 characters each.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"(?:{_NAME}/)?{_NAME}")


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` when it is a Hub id (``name`` or ``owner/name``), else an InputError.

    Example:
        >>> check_repo_id("me/minilm-sst2-pruned")
        'me/minilm-sst2-pruned'
        >>> check_repo_id("me/bad name")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        compress.errors.InputError: 'me/bad name' is not a repository id; write OWNER/NAME ...
    """
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id:
        raise InputError(f"{repo_id!r} is not a repository id; write OWNER/NAME with letters, "
                         f"digits, '-', '_' and '.'")
    return repo_id


def _check_run(run: Path, force: bool) -> None:
    from compress.report.build import load_report

    if not run.is_dir():
        raise InputError(f"{str(run)!r} is not a run folder")
    status = run / "status.json"
    state = (read_json_object(status, label="the run file ").get("state")
             if status.is_file() else "no status.json")
    if state != "done" and not force:
        raise InputError(f"{str(run)!r} is not a finished run (state: {state}); finish it "
                         f"with `compress apply --resume` or pass --force to push it anyway")
    if (run / "report.json").is_file():
        report, _ = load_report(run)
        failed = [g.get("name", "?") for g in report.get("gates") or [] if not g.get("passed")]
        if failed and not force:
            raise InputError(f"{str(run)!r} failed its gates ({', '.join(failed)}); pass "
                             f"--force to push it anyway")


def plan_push(run_dir: str | os.PathLike[str], *, onnx: bool = False,
              force: bool = False) -> list[tuple[Path, str]]:
    """``(local file, path in the repository)`` of every file a push would upload.

    Raises :class:`InputError` for a run that is not ``done``, whose gates failed (both
    allowed with ``force``), that has no ``hf/`` folder, or (with ``onnx``) no ONNX file.
    """
    run = Path(run_dir)
    _check_run(run, force)
    hf = run / HF_FOLDER
    if not hf.is_dir() or hf.is_symlink():
        raise InputError(f"{str(run)!r} has no {HF_FOLDER}/ folder (its config could not "
                         f"describe the pruned model: the report's notes say why); there is "
                         f"nothing stock to push")
    files = []
    for path in sorted(hf.rglob("*")):
        if path.is_symlink():
            raise InputError(f"{str(path)!r} is a link; {HF_FOLDER}/ must hold only the files "
                             f"compress wrote")
        if path.is_file():
            files.append((path, path.relative_to(hf).as_posix()))
    if onnx:
        model = run / "model.onnx"
        if not model.is_file() or model.is_symlink():
            raise InputError(f"{str(run)!r} has no model.onnx (export.onnx was off); push "
                             f"without --onnx")
        files.append((model, "onnx/model.onnx"))
    return files


def push_run(run_dir: str | os.PathLike[str], repo_id: str, *, onnx: bool = False,
             force: bool = False, private: bool = False, revision: str | None = None,
             dry_run: bool = False) -> dict[str, Any]:
    """Upload what :func:`plan_push` lists to ``repo_id`` (created when missing) in one commit.

    Returns ``{"repo_id", "files": [path in repo, ...], "bytes", "url"?}``; with ``dry_run``
    nothing is imported or sent. The token is huggingface_hub's (``HF_TOKEN`` or
    ``hf auth login``).
    """
    check_repo_id(repo_id)
    files = plan_push(run_dir, onnx=onnx, force=force)
    out: dict[str, Any] = {"repo_id": repo_id, "files": [name for _, name in files],
                           "bytes": sum(path.stat().st_size for path, _ in files),
                           "dry_run": dry_run}
    if dry_run:
        return out
    try:
        from huggingface_hub import CommitOperationAdd, HfApi
    except ImportError:
        raise InputError("compress push needs the huggingface_hub package (pip install "
                         "huggingface_hub)") from None
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(
            repo_id, [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
                      for path, name in files],
            commit_message=f"Upload {Path(run_dir).name} (pruned with compress)",
            revision=revision)
    except Exception as err:  # network, authentication, permissions: one sentence
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise InputError(f"push to {repo_id!r} failed: {type(err).__name__}: {first}") from None
    out["url"] = str(getattr(info, "commit_url", "") or "")
    return out
