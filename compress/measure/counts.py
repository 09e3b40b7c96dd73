"""What a model and its files count: MACs, parameters, weight sparsity, compressed bytes.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 3))
    >>> count_macs_params(net, torch.randn(1, 4)), count_params(net)
    ((15, 15), 15)
    >>> with torch.no_grad():
    ...     _ = net[0].weight[0].zero_()
    >>> weight_sparsity(net)["overall"]
    0.3333333333333333
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.errors import InputError

__all__ = ["count_macs_params", "count_params", "weight_sparsity", "compressed_size",
           "onnx_widths"]

_DENSE = (nn.modules.conv._ConvNd, nn.Linear)


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """MACs for ``example_inputs`` (use batch 1) and the parameter count.

    A model with its own ``count_macs`` (transformers: attention matmuls included) counts
    itself; the rest goes through torch-pruning's counter.
    """
    if hasattr(model, "count_macs"):
        return int(model.count_macs(example_inputs)), sum(p.numel() for p in model.parameters())
    import torch_pruning as tp  # its op counter; loaded only when a model cannot count itself

    was_training = model.training
    model.eval()
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    model.train(was_training)
    return int(macs), int(params)


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once).

    Example:
        >>> count_params(torch.nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in model.parameters())


def weight_sparsity(model: nn.Module) -> dict[str, Any]:
    """Fraction of exact zeros in each Conv/Linear weight (masks applied) and over all of them.

    Example:
        >>> weight_sparsity(nn.Sequential(nn.Linear(2, 2)))["layers"].keys()
        dict_keys(['0'])
    """
    from compress.pruning.masks import MaskedTensor  # the one reading of a masked weight

    counts = {name: (int((w == 0).sum()), w.numel()) for name, m in model.named_modules()
              if isinstance(m, _DENSE) for w in [MaskedTensor(name, m, "weight").effective()]}
    zeros, total = sum(z for z, _ in counts.values()), sum(n for _, n in counts.values())
    return {"layers": {k: z / max(n, 1) for k, (z, n) in counts.items()},
            "overall": zeros / max(total, 1), "zeros": zeros, "total": total}


def compressed_size(path: str | os.PathLike[str]) -> dict[str, int]:
    """Bytes of ``path``, gzipped (level 6) and, when ``zstandard`` is installed, zstd'd.

    Example:
        >>> compressed_size("runs/x/model.safetensors")  # doctest: +SKIP
        {'bytes': 1083392, 'gzip_bytes': 512345}
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{str(path)!r} is not a file; pass the path of a written model file")
    try:
        import zstandard
    except ImportError:  # optional: the report just omits zstd
        zstandard = None
    coders = {"gzip_bytes": zlib.compressobj(6, zlib.DEFLATED, 31)}  # wbits 31: gzip framing
    if zstandard is not None:
        coders["zstd_bytes"] = zstandard.ZstdCompressor().compressobj()
    sizes = {"bytes": path.stat().st_size, **dict.fromkeys(coders, 0)}
    with path.open("rb") as f:  # streamed: model files can be large
        while chunk := f.read(1 << 20):
            for key, coder in coders.items():
                sizes[key] += len(coder.compress(chunk))
    for key, coder in coders.items():
        sizes[key] += len(coder.flush())
    return sizes


def onnx_widths(onnx_path: Path, layers: dict[str, Any]) -> dict[str, int]:
    """Output widths of ``layers``, read from an ONNX file's weight shapes (the baseline's).

    The exporter keeps parameter names (``<layer>.weight``, output channels first); layers
    it renamed or folded are simply left out. Only the graph is read, not the weight data.
    """
    import onnx

    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception:  # a best-effort annotation: an unreadable file just means no widths
        return {}
    dims = {init.name: list(init.dims) for init in graph.initializer}
    return {name: int(dims[f"{name}.weight"][0]) for name in layers
            if dims.get(f"{name}.weight")}
