"""Which splits a local data folder holds: the file of each split a recipe names,
the splits ``compress init`` finds, and the check ``compress validate`` makes that every named
split exists, without reading any of them.

Example:
    >>> choose_eval_split(["train", "dev"]), choose_eval_split(["train", "test", "dev"])
    ('dev', 'test')
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from compress.errors import InputError

__all__ = ["EVAL_SPLITS", "choose_eval_split", "split_names", "split_file"]

# Names an evaluation split goes by, in the order ``compress init`` prefers them.
EVAL_SPLITS = ("test", "dev", "validation", "valid", "val")


def choose_eval_split(names: Iterable[str], default: str = "test") -> str:
    """The evaluation split among ``names`` (``default`` when none looks like one)."""
    present = set(names)
    return next((n for n in EVAL_SPLITS if n in present), default)


def split_names(folder: Path, suffixes: tuple[str, ...] | None) -> list[str]:
    """The splits in ``folder``: files ``<split><suffix>`` (``suffixes`` given) or sub-folders
    (``None``); empty when the folder cannot be listed (the run says why).

    Example:
        >>> split_names(Path("no/such/folder"), (".tsv",))
        []
    """
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    if suffixes is None:
        return [e.name for e in entries if e.is_dir()]
    return [e.name[: -len(s)] for e in entries for s in suffixes
            if e.name.endswith(s) and e.is_file()]


def split_file(folder: Path, split: str, suffixes: tuple[str, ...], key: str) -> Path:
    """The file of ``split`` (``<split><suffix>``) in ``folder``; a missing one is an
    :class:`InputError` naming the recipe key and the splits there are.

    Example:
        >>> split_file(Path("no/such"), "dev", (".tsv",), "eval_split")
        Traceback (most recent call last):
        compress.errors.InputError: data.path 'no/such' is not a folder
    """
    if not folder.is_dir():
        raise InputError(f"data.path {str(folder)!r} is not a folder")
    for suffix in suffixes:
        candidate = folder / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    found = split_names(folder, suffixes)
    raise InputError(f"data.{key} {split!r}: data.path {str(folder)!r} has no "
                     f"{split}{{{','.join(suffixes)}}} file "
                     f"({'its splits: ' + ', '.join(found) if found else 'and no other split'}"
                     f"); set data.{key} to the split's file name without its extension")

