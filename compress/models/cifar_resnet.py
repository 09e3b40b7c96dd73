"""CIFAR ResNets (He et al. 2016, the 6n+2 variant) with the parameter-free "option A" shortcut.

A clean-room definition whose parameter names match the widely shared CIFAR-10 checkpoints
(``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}``, ``linear``), so they load
strictly. The option-A shortcut subsamples by 2 and zero-pads channels. It is written as
:class:`ChannelMapShortcut`, an explicit map from output to input channels, so structured pruning
can remove residual-stream channels on either side of it and stay exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import InputError
from compress.models import MODEL_SOURCES
from compress.models.base import ChannelPrunedSource

if TYPE_CHECKING:
    from compress.authoring.writer import StarterRequest, StarterWriter

__all__ = ["ChannelMapShortcut", "CifarResNet", "cifar_resnet"]

DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}


class ChannelMapShortcut(nn.Module):
    """``y[:, k] = x[:, ::s, ::s][:, index_map[k]]``, or zeros where ``index_map[k] == -1``.

    Unpruned it is exactly option A: subsample by ``stride`` and pad ``pad`` zero channels on
    each side. It has no parameters, so checkpoints stay compatible.
    """

    def __init__(self, in_channels: int, pad: int, stride: int = 2) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.stride = stride
        self.index_map: list[int] = [-1] * pad + list(range(in_channels)) + [-1] * pad

    @property
    def out_channels(self) -> int:
        return len(self.index_map)

    def _pads(self) -> tuple[int, int] | None:
        """(left, right) when the map is a plain zero-pad around all inputs, else None."""
        n_left = self.index_map.index(0) if 0 in self.index_map else -1
        if n_left < 0:
            return None
        middle = self.index_map[n_left:n_left + self.in_channels]
        rest = self.index_map[:n_left] + self.index_map[n_left + self.in_channels:]
        if middle == list(range(self.in_channels)) and all(i == -1 for i in rest):
            return n_left, self.out_channels - n_left - self.in_channels
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        pads = self._pads()
        if pads is not None:
            return F.pad(x, (0, 0, 0, 0, pads[0], pads[1]))
        # Slot in_channels is an all-zero channel; -1 entries gather from it.
        padded = torch.cat([x, x.new_zeros(x.shape[0], 1, x.shape[2], x.shape[3])], dim=1)
        index = torch.tensor([i if i >= 0 else self.in_channels for i in self.index_map],
                             device=x.device)
        return padded.index_select(1, index)

    # The channel protocol of compress.pruning.structured (duck-typed: no torch_pruning import).
    def prune_out_channels_(self, idxs: Sequence[int]) -> None:
        drop = set(idxs)
        self.index_map = [v for k, v in enumerate(self.index_map) if k not in drop]

    def prune_in_channels_(self, idxs: Sequence[int]) -> None:
        drop = sorted(set(idxs))
        remap, shift = {}, 0
        for i in range(self.in_channels):
            if shift < len(drop) and drop[shift] == i:
                shift += 1
                remap[i] = -1
            else:
                remap[i] = i - shift
        self.index_map = [remap[v] if v >= 0 else -1 for v in self.index_map]
        self.in_channels -= len(drop)

    def zero_out_channels_(self, idxs: Sequence[int]) -> None:
        for k in idxs:
            self.index_map[k] = -1

    def manifest_attrs(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "stride": self.stride,
                "index_map": list(self.index_map)}

    def load_manifest_attrs_(self, attrs: dict[str, Any]) -> None:
        self.in_channels = int(attrs["in_channels"])
        self.stride = int(attrs["stride"])
        self.index_map = [int(v) for v in attrs["index_map"]]

    def extra_repr(self) -> str:
        return f"in={self.in_channels}, out={self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = ChannelMapShortcut(in_planes, pad=planes // 4, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for stage, (planes, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
            layers = []
            for i in range(blocks_per_stage):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def cifar_resnet(name: str = "resnet56", num_classes: int = 10) -> CifarResNet:
    """Build ``resnet20/32/44/56/110`` for 32x32 inputs.

    Example:
        >>> cifar_resnet("resnet20")(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    if name not in DEPTHS:
        raise InputError(f"unknown cifar_resnet name {name!r}; available: {', '.join(DEPTHS)}")
    return CifarResNet(DEPTHS[name], num_classes)


@MODEL_SOURCES.register("cifar_resnet")
class CifarResNetSource(ChannelPrunedSource):
    accepts = frozenset({"name", "num_classes"})
    required = frozenset({"name"})

    def starter_keys(self, w: StarterWriter, arg: str, request: StarterRequest) -> dict[str, Any]:
        """The architecture, and the data's classes when they are known.

        Example:
            >>> from compress.authoring.writer import StarterRequest, StarterWriter
            >>> CifarResNetSource().starter_keys(StarterWriter(), "resnet56", StarterRequest())
            {'name': 'resnet56'}
        """
        w.key("name", arg)
        if request.classes is None:
            return {"name": arg}
        w.key("num_classes", request.classes)
        return {"name": arg, "num_classes": request.classes}

    def check(self, spec: Any) -> None:
        if spec.name not in DEPTHS:
            raise InputError(f"unknown cifar_resnet name {spec.name!r}; available: "
                             f"{', '.join(DEPTHS)}")
        if spec.kwargs:
            raise InputError("model.kwargs is not used by model source 'cifar_resnet'")

    def build(self, spec: Any, resolve: Callable[[str], Path], pretrained: bool) -> nn.Module:
        return cifar_resnet(spec.name, spec.num_classes or 10)
