"""Structured pruning inside closed blocks, for models whose whole graph cannot be traced.

torch-pruning cannot map some patterns of a whole model: a channel shuffle (ShuffleNet V2's
reshape, transpose and reshape), attention that splits its channels into heads inside its own
forward (Swin, MaxViT). Such a model still holds blocks whose inner width nothing outside can
see: a plain ``nn.Sequential`` of convolutions, linears, norms and activations (an MLP, a
ShuffleNet branch) reads its input and writes its output at fixed widths, and every channel
between its first and its last layer is its own. Each such block gets a dependency graph of its
own (traced in milliseconds) whose last layer, and any grouped convolution reading the block's
input, are protected, so only the inner channels go; each block's step is proven zeroed ≡
removed on the input the block sees in the probe batch, which proves the whole model's step
(the block is a function of its input only). The report says which blocks were pruned and why
the rest was kept.

Example:
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Sequential(
    ...     nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1)))
    >>> closed_blocks(net, [])
    ['1']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from compress.errors import CompressError
from compress.pruning.base import NOT_PROVEN, PROVEN, StepRecord
from compress.pruning.selection import channel_round_to, resolve_ignored
from compress.recipe.pruning import PruningSpec

__all__ = ["closed_blocks", "BlockPruner", "layer_widths"]

_PRODUCERS = (nn.modules.conv._ConvNd, nn.Linear)
_LEAVES = (*_PRODUCERS, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
           nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
           nn.Tanh, nn.LeakyReLU, nn.Dropout, nn.Identity)


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every convolution and linear layer of ``model``, by module name.

    Example:
        >>> layer_widths(nn.Sequential(nn.Linear(2, 3)))
        {'0': 3}
    """
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
    return out


def _chain(m: nn.Module) -> list[nn.Module] | None:
    """The layers of ``m`` in the order data flows through them, or None when ``m`` is not a
    plain sequential chain of known layers (its own forward, a branch, an unknown layer)."""
    if not isinstance(m, nn.Sequential) or type(m).forward is not nn.Sequential.forward:
        return None
    layers: list[nn.Module] = []
    for child in m.children():
        if isinstance(child, nn.Sequential):
            inner = _chain(child)
            if inner is None:
                return None
            layers += inner
        elif type(child) in _LEAVES or isinstance(child, _LEAVES[:3]):
            layers.append(child)
        else:
            return None
    return layers


def _fixed_layers(block: nn.Module, layers: list[nn.Module]) -> list[str]:
    """Names (inside ``block``) of the layers whose channels the outside sees: the last
    producer (it writes the block's output) and grouped convolutions that read the block's
    input before any dense producer (their input and output channels are coupled)."""
    names = {m: n for n, m in block.named_modules()}
    producers = [m for m in layers if isinstance(m, _PRODUCERS)]
    fixed = [names[producers[-1]]]
    for m in producers:
        if not (isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1):
            break
        fixed.append(names[m])
    return sorted(set(fixed))


def closed_blocks(model: nn.Module, ignored: Sequence[str]) -> list[str]:
    """Names of the outermost closed blocks of ``model`` with inner channels to prune: plain
    ``nn.Sequential`` chains of two or more convolutions/linears, none of whose parameters is
    used outside it, not under an ``ignored`` module name."""
    shared = _shared_parameters(model)
    found: list[str] = []
    for name, m in model.named_modules():
        if not name or any(name == f or name.startswith(f"{f}.") for f in [*found, *ignored]):
            continue
        layers = _chain(m)
        if layers is None or sum(isinstance(x, _PRODUCERS) for x in layers) < 2:
            continue
        if any(id(p) in shared for p in m.parameters()):
            continue
        found.append(name)
    return found


def _shared_parameters(model: nn.Module) -> set[int]:
    owners: dict[int, set[str]] = {}
    for name, m in model.named_modules():
        for p in m.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(name)
    return {k for k, v in owners.items() if len(v) > 1}


def _block_inputs(model: nn.Module, probe: torch.Tensor, names: Iterable[str]
                  ) -> dict[str, torch.Tensor]:
    """The input each block sees on its first call when ``model`` runs on ``probe``."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def hook(_m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            seen.setdefault(name, args[0].detach().clone())
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(probe)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


class BlockPruner:
    """Prunes the inner channels of each closed block with a
    :class:`~compress.pruning.structured.StructuredPruner` of its own; the same interface.

    ``why``: why the whole model's graph cannot be used (kept in the step records' notes, so
    the report says why only blocks were pruned); ``build``: the block pruner's class.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, spec: PruningSpec,
                 blocks: Sequence[str], *, why: str, build: Callable[..., Any],
                 cumulative_ratios: Sequence[float] | None = None) -> None:
        self.model, self.why = model, why
        ignored = {n for hits in resolve_ignored(model, spec.ignored).values() for n in hits}
        round_to = channel_round_to(model, spec.round_to) or 1
        inputs = _block_inputs(model, example_inputs, blocks)
        self.blocks: dict[str, Any] = {}
        for name in blocks:
            if name not in inputs:  # never called: its width cannot be proven on the probe
                continue
            block = model.get_submodule(name)
            inner = [n[len(name) + 1:] for n in ignored if n.startswith(f"{name}.")]
            block_spec = spec.model_copy(update={
                "ignored": sorted({*inner, *_fixed_layers(block, _chain(block) or [])}),
                "round_to": round_to, "target": None, "ratio": spec.ratio or 0.5})
            self.blocks[name] = build(block, inputs[name][:1], block_spec,
                                      cumulative_ratios=cumulative_ratios)
        self.blocks = {n: p for n, p in self.blocks.items() if p.groups()}
        self.criterion = next(iter(self.blocks.values())).criterion if self.blocks else None

    @property
    def proof_strategy(self) -> str:
        """How each block's step is proven (see StructuredPruner.proof_strategy)."""
        return next(iter(self.blocks.values())).proof_strategy if self.blocks else "bisect"

    @proof_strategy.setter
    def proof_strategy(self, strategy: str) -> None:
        for p in self.blocks.values():
            p.proof_strategy = strategy

    @property
    def needs_grad(self) -> bool:
        return bool(self.criterion and self.criterion.needs_grad)

    @property
    def steps_done(self) -> int:
        return min((p.steps_done for p in self.blocks.values()), default=0)

    def note(self) -> str:
        """What was pruned and why not more, for the report."""
        return (f"only the inner channels of {len(self.blocks)} closed blocks were pruned "
                f"({', '.join(list(self.blocks)[:3])}{', ...' if len(self.blocks) > 3 else ''}); "
                f"the rest of the model keeps its widths because {self.why}")

    def accumulate_gradients(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                             device: torch.device) -> None:
        """One pass over ``batches`` through the whole model fills every block's scores."""
        pruners = list(self.blocks.values())
        if not pruners:
            return
        first = pruners[0]
        first.accumulate_gradients(batches, device, model=self.model)
        for other in pruners[1:]:
            other.share_scores_(first)

    def step_(self, target_ratio: float, probe: torch.Tensor) -> StepRecord:
        """Prune every block to ``target_ratio``, each proven on the input it sees in ``probe``."""
        inputs = _block_inputs(self.model, probe, self.blocks)
        records = []
        for name, pruner in self.blocks.items():
            try:
                records.append(pruner.step_(target_ratio, inputs[name]))
            except CompressError as err:  # its layers are named inside the block
                raise type(err)(f"in block {name!r}: {err}") from None
        proven = bool(records) and all(r.proof == PROVEN for r in records)
        worst = max(records, key=lambda r: r.max_abs_diff or 0.0) if proven else None
        record = StepRecord(
            target_ratio, sum(r.groups for r in records), sum(r.removed for r in records),
            "channels", worst.max_abs_diff if worst else None, layer_widths(self.model),
            proof=PROVEN if proven else NOT_PROVEN,
            tolerance=worst.tolerance if worst else None,
            passes=sum(r.passes or 0 for r in records) if proven else None)
        record.note = self.note()
        return record

    def retarget_(self, ratio: float) -> None:
        for p in self.blocks.values():
            p.retarget_(ratio)

    def trial_state(self) -> list[Any]:
        return [self, *(s for p in self.blocks.values() for s in p.trial_state())]

    def groups(self) -> list[dict[str, Any]]:
        out = []
        for name, p in self.blocks.items():
            for g in p.groups():
                out.append({**g, "root": f"{name}.{g['root']}",
                            "members": [f"{name}.{m}" for m in g["members"]]})
        return out

    def widths(self) -> dict[str, int]:
        return layer_widths(self.model)

    def finalize_(self) -> None:
        """Nothing to do: removed channels are gone physically."""

    def get_state(self) -> dict[str, Any]:
        return {"kind": "blocks", "blocks": {n: p.get_state() for n, p in self.blocks.items()}}

    def get_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def restore_(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        assert state["kind"] == "blocks" and set(state["blocks"]) == set(self.blocks)
        for name, p in self.blocks.items():
            p.restore_(state["blocks"][name], {})
