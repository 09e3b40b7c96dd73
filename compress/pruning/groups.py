"""torch-pruning's groups as compress uses them: its own pruners, zeroing, removal, names.

A group is what torch-pruning removes together: a root layer's channels and every coupled
slice (norm entries, consumer columns, free per-channel parameters). The structured pruner
zeroes each group (:func:`zero_dep_`) so that the zeroed model computes what the pruned one
will, then removes the groups (:func:`removal`) and proves that nothing changed. Layer types
torch-pruning lacks get compress's pruners (:func:`custom_pruners`).

Example:
    >>> sorted(t.__name__ for t in custom_pruners(nn.Sequential(nn.Linear(2, 2))))
    ['RMSNorm']
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from compress.errors import CheckFailed
from compress.pruning.attention import attention_pruners, zero_attention_
from compress.pruning.norms import CHANNEL_NORMS, RMSNormPruner, is_channel_norm

__all__ = ["GroupRoundingPruner", "offsets_cached", "ChannelProtocolPruner", "custom_pruners",
           "zero_dep_", "group_name", "group_members", "norm_channels", "removal"]

log = logging.getLogger(__name__)


@contextmanager
def offsets_cached() -> Iterator[None]:
    """Inside, torch-pruning recomputes concat/split/reshape offsets only after a shape changed.

    It recomputes them for every group it creates: when ranking, when choosing and (here) when
    removing, about two thirds of a DenseNet-121 step. They follow from the layers' widths, and
    every removal changes the shape of its root's weight, so they are reused while every
    parameter keeps its shape.
    """
    mapping = tp.dependency.graph.index_mapping
    original = mapping.update_index_mapping
    seen: dict[int, tuple[Any, tuple[torch.Size, ...]]] = {}

    def update(dg: Any) -> None:
        shapes = tuple(p.shape for p in dg.model.parameters())
        if seen.get(id(dg), (None, None)) != (dg, shapes):
            original(dg)
            seen[id(dg)] = (dg, shapes)

    mapping.update_index_mapping = update
    try:
        yield
    finally:
        mapping.update_index_mapping = original


class GroupRoundingPruner(tp.pruner.BasePruner):
    """torch-pruning's pruner, with ``round_to`` applied per channel group.

    With channel groups (GroupNorm, grouped convolutions) torch-pruning ranks one group's worth
    of channels and removes the same ones from every group, but rounds that per-group count
    against the layer's whole width: with ``round_to: 8`` a ``GroupNorm(4, 16)`` layer lost all
    its channels or none, so it was never pruned. Here the per-group count is rounded so that
    the whole width stays a multiple of ``round_to``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # torch-pruning warns about every free parameter (ConvNeXt's layer_scale) on each graph
        # it builds; the proof checks how it prunes them, the log names them once per build.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            super().__init__(*args, **kwargs)
        free = [self.DG._param_to_name.get(u.parameters, "?") for u in
                self.DG.unwrapped_parameters]
        if free:
            log.info("free parameters pruned along their last non-singleton dim: %s",
                     ", ".join(free[:8]) + (f" and {len(free) - 8} more" if len(free) > 8 else ""))

    def _is_atten_group(self, group: Any) -> Any:
        # Called for each group right before its count is rounded: remember its grouping.
        self._rounding_groups = self._get_channel_groups(group)
        return super()._is_atten_group(group)

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        groups = getattr(self, "_rounding_groups", 1)
        if groups > 1 and current_channels % groups == 0:
            return super()._round_to(n_pruned, current_channels // groups,
                                     round_to // math.gcd(round_to, groups))
        return super()._round_to(n_pruned, current_channels, round_to)


class ChannelProtocolPruner(tp.pruner.function.BasePruningFunc):
    """Lets torch-pruning prune any module that implements compress's channel protocol.

    The protocol (see ``compress.models.cifar_resnet.ChannelMapShortcut``): ``in_channels``,
    ``out_channels``, ``prune_in_channels_``, ``prune_out_channels_``, ``zero_out_channels_``.
    In and out channels are independent (no intra-layer dependency).
    """

    TARGET_MODULES = None

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        layer.prune_out_channels_(idxs)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        layer.prune_in_channels_(idxs)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.in_channels


def custom_pruners(model: nn.Module) -> dict[type, tp.pruner.function.BasePruningFunc]:
    """compress's pruners for layer types torch-pruning lacks: the channel protocol, RMSNorm."""
    needed = ("prune_in_channels_", "prune_out_channels_", "zero_out_channels_")
    types = {type(m) for m in model.modules() if all(hasattr(m, a) for a in needed)}
    return ({nn.RMSNorm: RMSNormPruner()} | {t: ChannelProtocolPruner() for t in types}
            | attention_pruners(model))


def zero_dep_(dep: Any, idxs: list[int], is_out: bool) -> None:
    """Zero what ``dep`` will remove, so the zeroed model computes what the pruned one will."""
    m = dep.target.module
    if isinstance(m, nn.Parameter):
        with torch.no_grad():
            m.index_fill_(dep.target.pruning_dim, torch.as_tensor(idxs, device=m.device), 0.0)
        return
    if not isinstance(m, nn.Module):
        return  # a functional op node: no weights of its own
    idx = torch.as_tensor(idxs, dtype=torch.long)
    with torch.no_grad():
        if hasattr(m, "zero_out_channels_"):
            if is_out:
                m.zero_out_channels_(idxs)
        elif isinstance(m, nn.MultiheadAttention):
            zero_attention_(m, idxs)
        elif isinstance(m, nn.modules.conv._ConvNd):
            out_dim, in_dim = (1, 0) if m.transposed else (0, 1)
            if is_out:
                if m.groups > 1 and m.transposed:
                    return _unprovable(dep)
                m.weight.index_fill_(out_dim, idx.to(m.weight.device), 0.0)
                if m.bias is not None:
                    m.bias.index_fill_(0, idx.to(m.bias.device), 0.0)
            elif m.groups == 1:
                m.weight.index_fill_(in_dim, idx.to(m.weight.device), 0.0)
            # grouped/depthwise inputs: the producer channel is already zero
        elif isinstance(m, nn.Linear):
            dim = 0 if is_out else 1
            m.weight.index_fill_(dim, idx.to(m.weight.device), 0.0)
            if is_out and m.bias is not None:
                m.bias.index_fill_(0, idx.to(m.bias.device), 0.0)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, *CHANNEL_NORMS,
                            nn.modules.instancenorm._InstanceNorm)):
            for p in (m.weight, getattr(m, "bias", None)):
                if p is not None:
                    p.index_fill_(-1 if isinstance(m, (nn.LayerNorm, nn.RMSNorm)) else 0,
                                  idx.to(p.device), 0.0)
        elif isinstance(m, nn.Embedding):
            m.weight.index_fill_(1, idx.to(m.weight.device), 0.0)
        elif isinstance(m, nn.PReLU) or not any(True for _ in m.parameters(recurse=False)):
            return  # prelu(0) == 0; parameter-free modules pass zeros through
        else:
            _unprovable(dep)


def _unprovable(dep: Any) -> None:
    # The node's own name; its ``name`` appends the module's multi-line repr.
    name = getattr(dep.target, "_name", None) or type(dep.target.module).__name__
    raise CheckFailed(f"cannot prove the pruning of {type(dep.target.module).__name__} "
                      f"{name!r}: compress does not know how to zero its channels; "
                      f"add the layer to pruning.ignored")


def group_name(group: Any, dg: Any) -> str:
    dep = group[0].dep
    return dg._module2name.get(dep.target.module, str(dep.target.name))


def group_members(group: Any, dg: Any) -> list[tuple[Any, str, Any]]:
    """``(module, name, autograd node)`` of every member of ``group``, for a diagnosis; a free
    parameter (ConvNeXt's layer_scale, a home-made norm's scale) stands for its module."""
    out = []
    for dep, _ in group:
        node = dep.target
        module, name = node.module, dg._module2name.get(node.module, str(node.name))
        if isinstance(module, nn.Parameter) and module in dg._param_to_name:
            name = dg._param_to_name[module].rpartition(".")[0]
            module = dg.model.get_submodule(name)
        out.append((module, name, node.grad_fn))
    return out


def norm_channels(group: Any) -> dict[nn.Module, set[int]]:
    """The channels ``group`` removes from each norm over channels it reaches."""
    out: dict[nn.Module, set[int]] = {}
    for dep, idxs in group:
        if is_channel_norm(dep.target.module):
            out.setdefault(dep.target.module, set()).update(
                int(i) for i in tp._helpers.to_plain_idxs(idxs))
    return out


def removal(group: Any, dg: Any, history: list[list[Any]],
            note_removed: Callable[[nn.Module, Iterable[int]], None],
            after: Callable[[], None] | None = None) -> tuple[str, Callable[[], None]]:
    """``(name, remove)`` for ``group``, rebuilt from its root when it is removed.

    torch-pruning computes concatenation offsets when a group is created: a group created
    before an earlier group of the same step was removed carries stale offsets wherever both
    feed one chain of concatenations (DenseNet). Only the root and its indices are kept; the
    members are found again on the model as it is then, as :meth:`StructuredPruner.restore_`
    does when it replays the history. ``note_removed`` hears which channels leave each norm
    (see :func:`~compress.pruning.norms.restricted_norms`); ``after()`` runs after each removal
    (widths a model keeps besides its layers, see :func:`~compress.pruning.attention.sync_widths_`).
    """
    name = group_name(group, dg)
    module, handler = group[0].dep.target.module, group[0].dep.handler
    is_out = bool(dg.is_out_channel_pruning_fn(handler))
    idxs = [int(i) for i in tp._helpers.to_plain_idxs(group[0].idxs)]

    def remove() -> None:
        history.append([name, is_out, idxs])
        fresh = dg.get_pruning_group(module, handler, idxs)
        for norm, gone in norm_channels(fresh).items():
            note_removed(norm, gone)
        fresh.prune()
        if after is not None:
            after()
    return name, remove
