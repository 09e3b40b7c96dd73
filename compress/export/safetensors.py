"""``model.safetensors`` and its ``model.json`` manifest: the weights, the architecture's source
spec and every resized layer's widths, from which :mod:`compress.export.load` rebuilds the
shrunk model with no pickle.

Example:
    >>> from torch import nn
    >>> plain_state_dict(nn.Linear(2, 1)).keys()
    dict_keys(['weight', 'bias'])
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.fsutil import save_tensors_atomic, write_text_atomic
from compress.recipe.sources import ModelSpec

__all__ = ["MANIFEST_FORMAT", "layer_attrs", "plain_state_dict", "save_safetensors"]


MANIFEST_FORMAT = "compress.model/1"


# Constructor attributes that change when a layer is pruned (the weights carry the shapes).
_WIDTH_ATTRS: list[tuple[type, tuple[str, ...]]] = [
    (nn.modules.conv._ConvNd, ("in_channels", "out_channels", "groups")),
    (nn.Linear, ("in_features", "out_features")),
    (nn.modules.batchnorm._BatchNorm, ("num_features",)),
    (nn.LayerNorm, ("normalized_shape",)),
    (nn.GroupNorm, ("num_groups", "num_channels")),
    (nn.Embedding, ("num_embeddings", "embedding_dim")),
    (nn.PReLU, ("num_parameters",)),
    (nn.MultiheadAttention, ("embed_dim", "kdim", "vdim", "head_dim")),
]
# Models that keep a width of their own beside their layers, by qualified class name (no
# import of their library here); compress.pruning.attention.sync_widths_ keeps it current.
_MODEL_WIDTH_ATTRS: dict[str, tuple[str, ...]] = {
    "torchvision.models.vision_transformer.VisionTransformer": ("hidden_dim",),
}


def layer_attrs(module: nn.Module) -> dict[str, Any] | None:
    """The widths the manifest stores for ``module`` (None: a layer without any).

    Example:
        >>> layer_attrs(nn.Linear(4, 2)), layer_attrs(nn.ReLU())
        ({'in_features': 4, 'out_features': 2}, None)
    """
    if hasattr(module, "manifest_attrs"):
        return dict(module.manifest_attrs())
    cls = type(module)
    names = _MODEL_WIDTH_ATTRS.get(f"{cls.__module__}.{cls.__qualname__}")
    if names is not None:
        return {n: getattr(module, n) for n in names}
    for cls, names in _WIDTH_ATTRS:
        if isinstance(module, cls):
            return {n: (list(v) if isinstance(v, tuple) else v)
                    for n in names for v in [getattr(module, n)]}
    # Parameters a module holds itself (ViT's class token and position embedding, layer
    # scales) are cut with the channels they belong to: listed, their saved shapes are
    # restored on load.
    if any(True for _ in module.parameters(recurse=False)):
        return {}
    return None


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as plain CPU tensors, one storage each (pruning masks are zeros in the
    weights already: :mod:`compress.pruning.mask_store`)."""
    out = model.state_dict()
    # Tied weights (e.g. embeddings shared with the LM head) share storage, which
    # safetensors refuses: later names get their own copy.
    seen: set[int] = set()
    plain: dict[str, torch.Tensor] = {}
    for key, value in out.items():
        tensor = value.detach().cpu().contiguous()
        if tensor.numel() and tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        plain[key] = tensor
    return plain


def save_safetensors(model: nn.Module, out_dir: Path, model_spec: ModelSpec,
                     sample_shape: tuple[int, ...],
                     serving: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``model.safetensors`` and the ``model.json`` manifest atomically.

    ``serving`` adds top-level manifest keys a service needs and the weights do not say (the
    pipeline's: ``classes``, the class names in output order, and ``preprocess``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    state = plain_state_dict(model)
    weights = out_dir / "model.safetensors"
    save_tensors_atomic(state, weights, metadata={"format": MANIFEST_FORMAT})
    spec = model_spec.model_dump(exclude={"checkpoint", "weights"})
    layers = {name: {"type": type(m).__name__, **attrs} for name, m in model.named_modules()
              for attrs in [layer_attrs(m)] if attrs is not None}
    manifest = {"format": MANIFEST_FORMAT, "model": spec, "layers": layers,
                "input": {"shape": list(sample_shape), "dtype": "float32"}, **(serving or {})}
    path = out_dir / "model.json"
    write_text_atomic(path, json.dumps(manifest, indent=2))
    return weights, path
