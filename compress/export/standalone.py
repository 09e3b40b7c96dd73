"""Save a model pruned outside a recipe (``compress.prune``) into a folder the caller names.

The folder holds what a run folder holds for its model, each artifact proven the same way:
``model.safetensors`` + ``model.json`` (reloaded and compared), ``model.onnx`` (onnxruntime
parity at two batch sizes) and, for a transformers model whose config can describe it, ``hf/``
(stock ``from_pretrained``, compared). Everything is written into a temp folder beside it and
renamed into place once every check passed, so a failed export leaves nothing behind.

A model defined in Python is rebuilt by its constructor: ``build`` (called with ``kwargs``) is
recorded in the manifest by name and must be passed again to ``compress.load`` (nothing the
folder names is imported); a transformers model loaded by compress records its folder.

Example:
    >>> info = export_pruned(net, "out/net", x, build=Net, onnx=True)  # doctest: +SKIP
    >>> compress.load("out/net", build=Net)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.errors import InputError
from compress.export.hf import save_hf_
from compress.export.model import export_model
from compress.fsutil import temp_path_for
from compress.recipe.sources import ModelSpec
from compress.recipe.stages import ExportSpec

__all__ = ["export_pruned", "manifest_spec"]

_CLASSIFIERS = ("sequence-classification", "image-classification")


def manifest_spec(model: nn.Module, build: Callable[..., nn.Module] | None,
                  kwargs: Mapping[str, Any]) -> ModelSpec:
    """The ``model`` section of the manifest: the transformers folder, or ``build``'s name.

    Example:
        >>> manifest_spec(nn.Linear(2, 2), nn.Linear, {"in_features": 2}).factory
        'torch.nn.modules.linear:Linear'
    """
    source_path = getattr(model, "source_path", None)
    if build is None and getattr(model, "hf", None) is not None and source_path:
        task = model.task
        labels = model.hf.config.num_labels if task in _CLASSIFIERS else None
        return ModelSpec(source="huggingface", name=str(source_path), task=task,
                         num_classes=labels)
    if build is None:
        raise InputError(f"export of a {type(model).__name__} defined in Python needs build=...: "
                         f"its constructor (called with kwargs), which compress.load(folder, "
                         f"build=...) calls to rebuild it; the export proves that reload")
    if not callable(build):
        raise InputError(f"build must be a callable returning the model, not "
                         f"{type(build).__name__}")
    name = getattr(build, "__qualname__", type(build).__name__)
    return ModelSpec(source="python", factory=f"{build.__module__}:{name}", kwargs=dict(kwargs))


def export_pruned(model: nn.Module, out_dir: str | os.PathLike[str],
                  example_inputs: torch.Tensor, *, build: Callable[..., nn.Module] | None = None,
                  kwargs: Mapping[str, Any] | None = None, onnx: bool = True,
                  overwrite: bool = False) -> dict[str, Any]:
    """Write ``model`` to ``out_dir`` and prove every artifact on ``example_inputs``.

    Returns the paths, sizes and parity differences measured (``hf``: whether ``hf/`` was
    written, or why not). An existing ``out_dir`` is replaced only with ``overwrite``.
    """
    target = Path(out_dir)
    if target.exists() and not overwrite:
        raise InputError(f"{str(target)!r} already exists; choose another folder or pass "
                         f"overwrite=True to replace it")
    if target.exists() and not target.is_dir():
        raise InputError(f"{str(target)!r} is a file, not a folder; choose another folder")
    spec = manifest_spec(model, build, kwargs or {})
    probe = example_inputs.detach().cpu()
    stage = temp_path_for(target)
    stage.mkdir()
    try:
        info = export_model(model, stage, ExportSpec(onnx=onnx, parity_batch=len(probe)), spec,
                            probe, build=build)
        if getattr(model, "hf", None) is not None and getattr(model, "layout", None):
            info["hf"] = save_hf_(model, stage, probe)
        if target.exists():
            shutil.rmtree(target)
        stage.rename(target)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
    return _moved(info, stage, target)


def _moved(value: Any, old: Path, new: Path) -> Any:
    """``value`` with every path under ``old`` (the temp folder) pointing under ``new``."""
    if isinstance(value, dict):
        return {k: _moved(v, old, new) for k, v in value.items()}
    if isinstance(value, str) and value.startswith(str(old)):
        return str(new) + value[len(str(old)):]
    return value
