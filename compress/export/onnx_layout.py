"""Export-time rewrites that keep onnxruntime's blocked CPU layout unbroken.

onnxruntime's CPU provider (at ``ORT_ENABLE_ALL``) runs convolutions in a blocked channel
layout (NCHWc) and fuses each block's residual addition and ReLU into the convolution, as long
as every op between convolutions understands that layout. A parameter-free channel-map shortcut
(the CIFAR ResNets' option A: subsample by 2, then pad or gather channels) exports as
Slice/Pad/Gather, which do not: onnxruntime then converts back to plain NCHW before each such
op and before every residual addition downstream of it (on ResNet-56, 20 conversion pairs and
40 unfused Add/ReLU ops, about 5 % of the latency), the same fixed cost for the pruned and the
unpruned model, so it eats into the measured speedup. Exported as a 1x1 convolution with
stride 2 and a 0/1 weight matrix, the shortcut is an ordinary NCHWc convolution and the whole
network stays blocked; the extra work is tiny (0.2 % of ResNet-56's MACs).

A channel-map module is any module whose ``manifest_attrs()`` returns ``in_channels``,
``stride`` and ``index_map`` (output channel k copies input channel ``index_map[k]``, or is zero
where it is -1), such as :class:`compress.models.cifar_resnet.ChannelMapShortcut`. The export's
parity check compares the rewritten ONNX model with the original torch model, so the rewrite is
proven on every export.

Example:
    >>> from compress.models.cifar_resnet import cifar_resnet
    >>> net = cifar_resnet("resnet20").eval()
    >>> dense = channel_maps_as_convs(net)
    >>> type(dense.layer2[0].shortcut).__name__, dense is not net
    ('Conv2d', True)
    >>> x = torch.randn(2, 3, 32, 32)
    >>> bool(torch.allclose(dense(x), net(x), atol=1e-5))
    True
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["channel_maps_as_convs"]


def _channel_map(module: nn.Module) -> tuple[int, int, list[int]] | None:
    """``(in_channels, stride, index_map)`` of a channel-map module, else None."""
    attrs_fn = getattr(module, "manifest_attrs", None)
    if attrs_fn is None:
        return None
    attrs: dict[str, Any] = attrs_fn()
    if not {"in_channels", "stride", "index_map"} <= attrs.keys():
        return None
    return int(attrs["in_channels"]), int(attrs["stride"]), [int(i) for i in attrs["index_map"]]


def channel_maps_as_convs(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose channel-map modules are 1x1 strided convolutions.

    Returns ``model`` itself when it has none (no copy). The copy is for export only: its
    convolutions are frozen 0/1 selections.
    """
    names = [name for name, m in model.named_modules() if name and _channel_map(m) is not None]
    if not names:
        return model
    clone = copy.deepcopy(model)
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = clone.get_submodule(parent) if parent else clone
        in_channels, stride, index_map = _channel_map(getattr(owner, child))  # type: ignore[misc]
        ref = next(clone.parameters(), None)
        weight = torch.zeros(len(index_map), in_channels, 1, 1,
                             dtype=ref.dtype if ref is not None else torch.float32,
                             device=ref.device if ref is not None else None)
        for k, i in enumerate(index_map):
            if i >= 0:
                weight[k, i] = 1.0
        conv = nn.Conv2d(in_channels, len(index_map), 1, stride=stride, bias=False)
        conv.weight = nn.Parameter(weight, requires_grad=False)
        setattr(owner, child, conv)
    return clone.eval()
