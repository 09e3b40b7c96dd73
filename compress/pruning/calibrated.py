"""One-shot calibrated pruning of the mask kinds, block by block (Wanda, SparseGPT).

The weights of block ``k`` are chosen from the inputs its layers see when the calibration
samples run through blocks ``0..k-1`` already pruned (as both papers do): the statistics of
all of block ``k``'s layers are gathered in one pass over the block as it was, its layers are
pruned, and the pruned block makes the next block's inputs
(:func:`~compress.pruning.calibration.stream_blocks`). Layers outside the blocks (a pooler, a
model without a known layout) are pruned last from one pass of the whole model.

After each block its masks (and, for criteria that update weights, its new weights) are
written to ``<checkpoints>/KK.safetensors``: a run killed mid-step finds them on resume,
restores those blocks instead of recomputing them, and streams the calibration samples through
them to the first block not done. The samples, their order and every operation are the same,
so on the CPU the resumed result is bitwise the uninterrupted one.

Example:
    >>> stats = LayerStats(3, hessian=False)
    >>> stats.add_(torch.tensor([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0]]))
    >>> stats.column_norms().tolist()
    [1.4142135623730951, 2.8284271247461903, 0.0]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.errors import InputError
from compress.fsutil import save_tensors_atomic
from compress.progress import report_phase
from compress.pruning.calibration import (
    BlockInputs,
    model_blocks,
    real_tokens,
    record_inputs,
    stream_blocks,
)
from compress.pruning.sparsegpt import Hessian, prune_lowest, sparsegpt_

__all__ = ["Calibration", "CalibratedCriteria", "LayerStats", "prune_in_blocks_", "weight_rows",
           "is_conv1d"]

log = logging.getLogger(__name__)


@dataclass
class Calibration:
    """A step's calibration batches (model inputs) and the folder of its block checkpoints
    (None: no checkpoints, nothing resumed). ``carry=False`` computes each block's inputs with
    a whole forward of the model instead of carrying them from block to block: the same
    numbers at quadratic cost, the reference the streaming is tested against."""

    batches: list[torch.Tensor]
    checkpoints: Path | None = None
    carry: bool = True


class LayerStats:
    """What a layer's inputs add up to: per-column sums of squares (Wanda's ``||X_j||²``) and,
    when asked, the Hessian ``2 X Xᵀ / N`` (SparseGPT)."""

    def __init__(self, columns: int, *, hessian: bool) -> None:
        self.squares = torch.zeros(columns, dtype=torch.float64)
        self.hessian = Hessian(columns) if hessian else None

    def add_(self, x: torch.Tensor) -> None:
        x = x.to("cpu", torch.float64)
        self.squares += (x * x).sum(dim=0)
        if self.hessian is not None:
            self.hessian.add_(x)

    def column_norms(self) -> torch.Tensor:
        """``||X_j||₂`` of every input column over all calibration tokens."""
        return self.squares.sqrt()


# (tensor, its input statistics) -> its keep mask, installed (and its weights updated)
PruneOne = Callable[[Any, LayerStats], torch.Tensor]
# (tensor, keep mask, saved weights or None) -> the saved result reinstalled
RestoreOne = Callable[[Any, torch.Tensor, torch.Tensor | None], None]


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2): a linear layer whose weight is stored ``[in, out]``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _columns(module: nn.Module) -> int:
    return module.weight.shape[0] if is_conv1d(module) else module.weight.shape[1]


def _gather(block: nn.Module, inputs: BlockInputs, tensors: Sequence[Any],
            hessian: bool) -> dict[str, LayerStats]:
    stats = {t.key: LayerStats(_columns(t.module), hessian=hessian) for t in tensors}
    record_inputs(block, inputs, {t.key: t.module for t in tensors},
                  lambda key, x: stats[key].add_(x))
    return stats


def _load_block(path: Path, tensors: Sequence[Any]) -> dict[str, torch.Tensor] | None:
    """A block checkpoint that holds exactly these tensors' results, or None (none written)."""
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            keys = json.loads((f.metadata() or {}).get("keys", "null"))
            saved = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError, ValueError) as err:
        raise InputError(f"the block checkpoint {str(path)!r} is not readable ({err}); pass "
                         f"--overwrite to start over") from None
    if keys != [t.key for t in tensors]:
        raise InputError(f"the block checkpoint {str(path)!r} holds other layers than the "
                         f"model's block; pass --overwrite to start over")
    return saved


def prune_in_blocks_(model: nn.Module, tensors: Sequence[Any], calibration: Calibration, *,
                     prune_one: PruneOne, restore_one: RestoreOne, hessian: bool,
                     saves_weights: bool) -> int:
    """Prune every tensor (``key``, ``module``, ``original()``), block by block; returns how
    many. ``prune_one`` installs each mask as it is chosen: no more than one block's masks are
    held here at a time. ``hessian``: gather Hessians (SparseGPT) besides column norms;
    ``saves_weights``: the criterion changes kept weights, so checkpoints hold them too."""
    owner: dict[int, int] = {}
    stack = model_blocks(model)
    for index, block in enumerate(stack if stack is not None else []):
        owner.update((id(m), index) for m in block.modules())
    by_block: dict[int, list[Any]] = {}
    for t in tensors:
        by_block.setdefault(owner.get(id(t.module), -1), []).append(t)
    done = 0
    device = next(model.parameters()).device
    batches = [b.to(device) for b in calibration.batches]

    def visit(index: int, block: nn.Module, inputs: BlockInputs) -> None:
        nonlocal done
        mine = by_block.get(index, [])
        done += len(mine)
        path = calibration.checkpoints / f"{index:02d}.safetensors" \
            if calibration.checkpoints is not None else None
        saved = _load_block(path, mine) if path is not None and mine else None
        if saved is not None:
            for t in mine:
                restore_one(t, saved[f"{t.key}.keep"].to(device), saved.get(f"{t.key}.weight"))
            log.debug("block %d: restored from %s", index, path)
            phase.advance(message=f"block {index} restored from its checkpoint")
            return
        stats = _gather(block, inputs, mine, hessian)
        keeps = {t.key: prune_one(t, stats.pop(t.key)) for t in mine}
        if path is not None and mine:
            out = {f"{t.key}.keep": keeps[t.key].cpu().contiguous() for t in mine}
            if saves_weights:
                out |= {f"{t.key}.weight": t.original().detach().cpu().contiguous()
                        for t in mine}
            path.parent.mkdir(parents=True, exist_ok=True)
            save_tensors_atomic(out, path, {"keys": json.dumps([t.key for t in mine])})
        log.debug("block %d: %d layers pruned", index, len(mine))
        phase.advance(message=f"block {index}: {len(mine)} layers pruned")

    rest = by_block.get(-1, [])
    # A phase of its own, one unit per block: on a large model this takes minutes.
    with report_phase("calibrated prune, block by block",
                      len(stack or []) + bool(rest)) as phase:
        stream_blocks(model, batches, visit, carry=calibration.carry)
        if rest:  # outside the blocks, or no blocks at all: one pass of the whole model
            was_training = model.training
            model.eval()
            try:
                inputs = BlockInputs.of_batches(batches,
                                                [real_tokens(model, b) for b in batches])
                stats = _gather(model, inputs, rest, hessian)
            finally:
                model.train(was_training)
            for t in rest:
                prune_one(t, stats.pop(t.key))
            done += len(rest)
            phase.advance(message=f"layers outside the blocks: {len(rest)}")
        phase.result = f"{done} layers pruned"
    return done


def weight_rows(t: Any) -> torch.Tensor:
    """``t``'s trained weight as a ``[out, in]`` view (Conv1D stores it transposed)."""
    w = t.original()
    return w.T if is_conv1d(t.module) else w


class CalibratedCriteria:
    """Wanda and SparseGPT for a mask pruner (mixed into
    :class:`~compress.pruning.masks.MaskPruner`, which provides ``model``, ``spec``,
    ``_tensors``, ``_install(t, keep)`` and its kind's ``_pattern(t, target) -> RowPattern``)."""

    _calibration: Calibration | None = None

    def use_calibration(self, calibration: Calibration) -> None:
        """The samples (and block checkpoint folder) of the next step."""
        self._calibration = calibration

    def _calibrated_prune_(self, target_ratio: float) -> None:
        """Every tensor's keep mask, chosen and installed block by block."""
        self_: Any = self
        assert self._calibration is not None, "use_calibration before the step"
        sparsegpt = self_.spec.importance == "sparsegpt"
        done = prune_in_blocks_(
            self_.model, self_._tensors, self._calibration,
            prune_one=lambda t, stats: self._prune_one(t, stats, target_ratio),
            restore_one=self._restore_one, hessian=sparsegpt, saves_weights=sparsegpt)
        assert done == len(self_._tensors), (done, len(self_._tensors))

    def _prune_one(self, t: Any, stats: LayerStats, target_ratio: float) -> torch.Tensor:
        self_: Any = self
        rows = weight_rows(t)
        pattern = self_._pattern(t, target_ratio)
        spec = self_.spec
        with torch.no_grad():
            if spec.importance == "wanda":
                scores = rows.detach().abs().double() * stats.column_norms().to(rows.device)
                keep = ~prune_lowest(scores, pattern)
            else:
                assert stats.hessian is not None
                try:
                    keep = sparsegpt_(rows, stats.hessian.matrix, pattern, consume=True,
                                      damping=spec.sparsegpt_damping, block=spec.sparsegpt_block)
                except torch.linalg.LinAlgError:
                    raise InputError(f"sparsegpt: the Hessian of {t.key!r} is not positive "
                                     f"definite with pruning.sparsegpt_damping "
                                     f"{spec.sparsegpt_damping:g}; raise it (e.g. 0.1)") from None
        keep = keep.T.contiguous() if is_conv1d(t.module) else keep
        self_._install(t, keep)
        return keep

    def _restore_one(self, t: Any, keep: torch.Tensor, weight: torch.Tensor | None) -> None:
        self_: Any = self
        if weight is not None:
            with torch.no_grad():
                t.original().copy_(weight.to(t.original().device, t.original().dtype))
        self_._install(t, keep.to(torch.bool))
