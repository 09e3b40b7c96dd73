"""Loading a run back: a shrunk model rebuilt from ``model.json`` + ``model.safetensors``.

Nothing the caller did not name runs: the manifest's model spec goes through the registered
model sources, the weights through safetensors (no pickle), and an unfinished run is refused.

Example:
    >>> model = load_model("runs/quickstart")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.errors import InputError
from compress.export.safetensors import MANIFEST_FORMAT
from compress.recipe.sources import ModelSpec

__all__ = ["load_model"]


def load_model(run_dir: str | os.PathLike[str], *, force: bool = False) -> nn.Module:
    """Rebuild a shrunk model from ``model.json`` + ``model.safetensors`` (no pickle).

    A run folder whose ``status.json`` does not say ``done`` (a crashed, killed or failed run)
    is refused unless ``force``.

    Example:
        >>> model = load_model("runs/quickstart")  # doctest: +SKIP
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from compress.models import build_model

    run_dir = Path(run_dir)
    status_path = run_dir / "status.json"
    if status_path.is_file() and not force:
        try:
            state = json.loads(status_path.read_text(encoding="utf-8")).get("state")
        except json.JSONDecodeError:
            state = "unreadable"
        if state != "done":
            raise InputError(f"{str(run_dir)!r} holds an unfinished run (status {state!r}); "
                             f"finish it with 'compress apply --resume' or load with force=True")
    manifest_path, weights_path = run_dir / "model.json", run_dir / "model.safetensors"
    for p in (manifest_path, weights_path):
        if not p.is_file():
            raise InputError(f"{str(p)!r} does not exist; pass a folder written by "
                             f"'compress apply' with export.safetensors enabled")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{str(manifest_path)!r} is not a compress manifest "
                         f"(format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r})")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise InputError(f"{str(weights_path)!r} is not a readable safetensors file "
                         f"({err})") from None
    model = build_model(ModelSpec.model_validate(manifest["model"]), pretrained=False)
    modules = dict(model.named_modules())
    for name, attrs in manifest["layers"].items():
        if name not in modules:
            raise InputError(f"manifest layer {name!r} does not exist in the rebuilt model")
        _reshape_(modules[name], name, {k: v for k, v in attrs.items() if k != "type"}, state)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _reshape_(module: nn.Module, name: str, attrs: dict[str, Any],
              state: dict[str, torch.Tensor]) -> None:
    """Give ``module`` the widths in ``attrs`` and empty tensors of the saved shapes."""
    if hasattr(module, "load_manifest_attrs_"):
        module.load_manifest_attrs_(attrs)
    else:
        for key, value in attrs.items():
            setattr(module, key, tuple(value) if isinstance(value, list) else value)
    prefix = f"{name}." if name else ""
    for pname, p in list(module.named_parameters(recurse=False)):
        saved = state.get(prefix + pname)
        if saved is not None and saved.shape != p.shape:
            setattr(module, pname, nn.Parameter(torch.empty(saved.shape, dtype=saved.dtype),
                                                requires_grad=p.requires_grad))
    for bname, b in list(module.named_buffers(recurse=False)):
        saved = state.get(prefix + bname)
        if b is not None and saved is not None and saved.shape != b.shape:
            module._buffers[bname] = torch.empty(saved.shape, dtype=saved.dtype)
