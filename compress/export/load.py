"""Loading a run back: a shrunk model rebuilt from ``model.json`` + ``model.safetensors``.

Nothing the caller did not name runs: a manifest whose model would import or call code (the
``python`` source's factory, a ``module:function`` name, ``trust_remote_code``) is refused unless
the caller passes ``build`` (its own constructor) or ``trust_code=True``; the weights go through
safetensors (no pickle), and an unfinished run is refused.

Example:
    >>> model = load_model("runs/quickstart")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.errors import InputError
from compress.export.manifest import (
    check_layer_attrs,
    check_weight_shapes,
    read_manifest,
    weight_shapes,
)
from compress.hf_names import hf_name_function
from compress.jsonio import read_json_object
from compress.models.checkpoint import load_state_strict_
from compress.recipe.sources import ModelSpec

__all__ = ["load_model", "code_asked"]


def load_model(run_dir: str | os.PathLike[str], *, force: bool = False,
               build: Callable[..., nn.Module] | None = None,
               trust_code: bool = False) -> nn.Module:
    """Rebuild a shrunk model from ``model.json`` + ``model.safetensors`` (no pickle).

    A run folder whose ``status.json`` does not say ``done`` (a crashed, killed or failed run)
    is refused unless ``force``. ``build`` replaces the manifest's model source (called with the
    manifest's ``kwargs``, and ``num_classes`` when set); a manifest that names code to run is
    refused unless ``build`` is given or ``trust_code``.

    Example:
        >>> model = load_model("runs/quickstart")  # doctest: +SKIP
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    status_path = run_dir / "status.json"
    if status_path.is_file() and not force:
        try:
            state = read_json_object(status_path).get("state")
        except InputError:
            state = "unreadable"
        if state != "done":
            raise InputError(f"{str(run_dir)!r} holds an unfinished run (status {state!r}); "
                             f"finish it with 'compress apply --resume' or load with force=True")
    manifest_path, weights_path = run_dir / "model.json", run_dir / "model.safetensors"
    for p in (manifest_path, weights_path):
        if not p.is_file():
            raise InputError(f"{str(p)!r} does not exist; pass a folder written by "
                             f"'compress apply' with export.safetensors enabled")
    spec, layers = read_manifest(manifest_path)
    # Before anything is built: the widths the manifest states are the weights' shapes.
    check_weight_shapes(layers, weight_shapes(weights_path), repr(str(manifest_path)))
    model = _build(spec, manifest_path, build, trust_code)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise InputError(f"{str(weights_path)!r} is not a readable safetensors file "
                         f"({err})") from None
    modules = dict(model.named_modules())
    for name, attrs in layers.items():
        if name not in modules:
            raise InputError(f"manifest layer {name!r} does not exist in the rebuilt model")
        check_layer_attrs(modules[name], name, attrs, repr(str(manifest_path)))
        _reshape_(modules[name], name, {k: v for k, v in attrs.items() if k != "type"}, state)
    _check_state(model, state, weights_path)
    load_state_strict_(model, state)
    return model.eval()


def _check_state(model: nn.Module, state: dict[str, torch.Tensor], weights_path: Path) -> None:
    """The rebuilt model has exactly the weights' tensors, of the same shapes (else
    ``load_state_dict`` would raise a multi-line RuntimeError)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    where = repr(str(weights_path))
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        what = (f"lacks {missing[0]!r}" if missing else f"holds {extra[0]!r}, which")
        raise InputError(f"{where} {what} the model rebuilt from the manifest "
                         f"{'needs' if missing else 'does not have'}; the manifest and the "
                         f"weights do not belong together")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise InputError(f"{where} holds {key!r} of shape {list(state[key].shape)} where "
                             f"the model rebuilt from the manifest has {list(shape)}; the "
                             f"manifest and the weights do not belong together")


def code_asked(spec: ModelSpec) -> str | None:
    """What building ``spec`` would import or call, in words; ``None`` when it runs no code.

    Example:
        >>> code_asked(ModelSpec(source="python", factory="os:system"))
        "the factory 'os:system'"
        >>> code_asked(ModelSpec(source="cifar_resnet", name="resnet20")) is None
        True
    """
    if spec.source == "python" or spec.factory is not None:
        return f"the factory {spec.factory!r}"
    if spec.name is not None and hf_name_function(spec.name) is not None:
        return f"the function {spec.name!r}"
    if spec.trust_remote_code:
        return "the model repository's own code (trust_remote_code: true)"
    return None


def _build(spec: ModelSpec, manifest_path: Path, build: Callable[..., nn.Module] | None,
           trust_code: bool) -> nn.Module:
    """The caller's ``build`` with the manifest's kwargs, or the manifest's source if safe."""
    from compress.models import build_model

    if build is None:
        asked = code_asked(spec)
        if asked is not None and not trust_code:
            raise InputError(f"{str(manifest_path)!r} asks to run {asked}, which the caller "
                             f"did not name; pass build=... or trust_code=True to load it")
        return build_model(spec, pretrained=False)
    kwargs = dict(spec.kwargs)
    if spec.num_classes is not None:
        kwargs["num_classes"] = spec.num_classes
    try:
        model = build(**kwargs)
    except TypeError as err:  # the manifest's kwargs do not fit the caller's constructor
        raise InputError(f"build rejected the manifest's arguments {sorted(kwargs)}: "
                         f"{str(err).splitlines()[0] if str(err) else 'TypeError'}") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"build returned {type(model).__name__}, not a torch.nn.Module")
    return model


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
