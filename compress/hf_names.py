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

__all__ = ["resolve_hf_name"]


def resolve_hf_name(name: str, resolve: Callable[[str], Path]) -> str:
    """A local folder path, or the hub id unchanged; ``module:function`` is called for a path.

    ``resolve`` turns a relative path into a real one (``Recipe.resolve_path``).

    Example:
        >>> resolve_hf_name("./no-such-folder", Path)
        Traceback (most recent call last):
        compress.errors.InputError: model.name 'no-such-folder' does not exist (and is not a hub id)
    """
    if ":" in name and not Path(name).exists():
        module, _, attr = name.partition(":")
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
