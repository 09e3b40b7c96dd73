"""What the transformers pruner removes: head, FFN-neuron and hidden-channel importance
(l1, l2, taylor, random, and activation from the pruner's ``_activation`` statistics), the
whole blocks a step drops (least block importance) and the plan of each step (per block or
across blocks, whole key/value groups kept intact for grouped-query attention, counts rounded
to ``round_to``).

:class:`~compress.pruning.transformer.TransformerPruner` adds the surgery and its proof; this
base only reads the model. It expects ``model``, ``spec``, ``needs_grad``, ``layout``, ``round_to``,
``steps_done`` and the original sizes ``_heads0``, ``_ffn0`` (and ``_hidden0`` when the hidden
size is pruned), the blocks dropped after each step ``_drops``, the calibration samples
``_calibration`` and ``only``, which the pruner sets.

Example:
    >>> class Sizes(TransformerPlanner):
    ...     round_to = 8
    >>> Sizes()._keep_count(64, 0.5), Sizes()._keep_count(64, 0.9)
    (32, 8)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from compress.errors import InputError
from compress.pruning.calibrated import Calibration
from compress.pruning.gradients import backprop_task_loss_
from compress.pruning.hf_activation import hidden_importance
from compress.pruning.hf_depth import block_importance
from compress.pruning.hf_hidden import Stream, output_layers, stream
from compress.pruning.hf_layout import Block, blocks

__all__ = ["TransformerPlanner"]

log = logging.getLogger("compress.pruning.transformer")  # the pruner's log, one place


class TransformerPlanner:
    """Scores and plans; the state it reads is the pruner's (see the module docstring)."""

    # -- importance ---------------------------------------------------------------------------
    def accumulate_gradients(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                             device: torch.device) -> None:
        """Fill ``.grad`` for the taylor criterion from a few training batches."""
        if self.needs_grad:
            backprop_task_loss_(self.model, batches, device, importance=self.spec.importance)

    def _score(self, module: nn.Module, idx: torch.Tensor, dim: int) -> torch.Tensor:
        """Importance of slices ``idx`` (grouped in rows of the result) along ``dim``."""
        w = module.weight
        kind = self.spec.importance
        if kind == "taylor":
            if w.grad is None:
                raise InputError("importance 'taylor' found no gradients; it needs training "
                                 "data (data with a training split)")
            values = (w.detach() * w.grad).abs()
        else:
            values = w.detach().abs() if kind == "l1" else w.detach().pow(2)
        values = values.index_select(dim, idx.to(w.device)).float()
        return values.transpose(0, dim).reshape(idx.numel(), -1).sum(dim=1).cpu()

    def _dim(self, module: nn.Module, out: bool) -> int:
        is_linear = isinstance(module, nn.Linear)
        return (0 if is_linear else 1) if out else (1 if is_linear else 0)

    def _unit_scores(self, block: Block, kind: str, count: int) -> torch.Tensor:
        """Importance of each of the block's ``count`` heads or FFN neurons: the sum over every
        slice a unit owns (all parts of a fused layer)."""
        per_row = torch.zeros(count * (block.head_dim if kind == "heads" else 1))
        for module, is_out, idx in block.unit_slices(kind, range(count)):
            per_row += self._score(module, idx, self._dim(module, is_out)).view(-1, per_row.numel()
                                                                                ).sum(dim=0)
        total = per_row.view(count, -1).sum(dim=1)
        return total if self.spec.importance != "l2" else total.sqrt()

    def _head_scores(self, block: Block) -> torch.Tensor:
        if self.spec.importance == "activation":
            return self._activation.heads[block.index].float()
        if self.spec.importance == "random":
            return torch.rand(block.heads, generator=self._generator(block, 0))
        return self._unit_scores(block, "heads", block.heads)

    def _ffn_scores(self, block: Block) -> torch.Tensor:
        if self.spec.importance == "activation":
            return self._activation.ffn[block.index].float()
        if self.spec.importance == "random":
            return torch.rand(block.ffn, generator=self._generator(block, 1))
        return self._unit_scores(block, "ffn", block.ffn)

    def _stream(self, block_list: list[Block] | None = None) -> Stream:
        if block_list is None:
            block_list = blocks(self.model.hf, self.layout)
        return stream(self.model.hf, self.layout, block_list)

    def _hidden_cut(self, s: Stream, fraction: float,
                    block_list: list[Block]) -> tuple[list[int], list[int]]:
        """(hidden channels, head square-layer outputs) to remove: the same count of each
        (none of the latter without a square head layer: decoders). ``s`` is the stream over
        ``block_list``, the blocks kept."""
        n_remove = s.width - self._keep_count(self._hidden0, fraction)
        if n_remove <= 0:
            return [], []
        if self.spec.importance == "random":
            gen = torch.Generator().manual_seed(1000 * self.steps_done + 7)
            channel, head = torch.rand(s.width, generator=gen), torch.rand(s.width, generator=gen)
        else:
            everything = torch.arange(s.width)
            # A classifier's square layer's outputs are ranked by their weights' size (its
            # activations are not recorded).
            head = (self._score(s.square, everything, 0) + self._score(s.head_out, everything, 1)
                    if s.square is not None else torch.zeros(s.width))
            if self.spec.importance in ("l2", "activation"):
                head = head.sqrt()
            if self.spec.importance == "activation":
                channel = hidden_importance(self._activation, block_list,
                                            output_layers(self.model.hf, self.layout)).float()
            else:
                channel = sum(self._score(m, everything, d) for m, d in s.slices())
                channel = channel.sqrt() if self.spec.importance == "l2" else channel
        head_cut = sorted(head.argsort()[:n_remove].tolist()) if s.square is not None else []
        return sorted(channel.argsort()[:n_remove].tolist()), head_cut

    # -- depth --------------------------------------------------------------------------------
    def use_calibration(self, calibration: Calibration) -> None:
        """The calibration samples the next step reads: activation statistics, and the
        ranking of whole blocks (without them, blocks are ranked on the probe batch)."""
        self._calibration = list(calibration.batches)

    def _blocks_to_drop(self, probe: torch.Tensor) -> list[int]:
        """The least important blocks this step drops (indices of the blocks now)."""
        n = self._drops[self.steps_done] - (self._drops[self.steps_done - 1]
                                            if self.steps_done else 0)
        if n <= 0 or (self.only is not None and (-1, "blocks") not in self.only):
            return []
        data = self._calibration or [probe]
        self.block_scores = block_importance(self.model, data)
        log.info("block importance (1 - cos) on %d %s: %s", sum(len(b) for b in data),
                 "calibration samples" if self._calibration else "probe samples",
                 ", ".join(f"{v:.4f}" for v in self.block_scores))
        return sorted(torch.tensor(self.block_scores).argsort()[:n].tolist())

    def _generator(self, block: Block, kind: int) -> torch.Generator:
        return torch.Generator().manual_seed(1000 * self.steps_done + 10 * block.index + kind)

    # -- planning -----------------------------------------------------------------------------
    def _heads_to_remove(self, block: Block, fraction: float,
                         scores: torch.Tensor) -> list[int]:
        groups = block.kv_heads if self.layout.gqa else 1
        per_group0 = self._heads0[block.index] // groups
        keep_per_group = max(1, per_group0 - round(per_group0 * fraction))
        per_group = block.heads // groups
        remove: list[int] = []
        for g in range(groups):
            members = list(range(g * per_group, (g + 1) * per_group))
            order = sorted(members, key=lambda h: float(scores[h]))
            remove += order[: max(0, per_group - keep_per_group)]
        return sorted(remove)

    def _keep_count(self, size0: int, fraction: float) -> int:
        """Units left of ``size0`` after removing ``fraction``, rounded up to ``round_to``."""
        keep = max(1, size0 - round(size0 * fraction))
        if self.round_to and self.round_to > 1:
            keep = min(size0, max(self.round_to, -(-keep // self.round_to) * self.round_to))
        return keep

    def _plan_step(self, all_blocks: list[Block], head_frac: float,
                   ffn_frac: float) -> list[tuple[Block, str, list[int]]]:
        plan = []
        if self.spec.scope == "global":
            return self._plan_global(all_blocks, head_frac, ffn_frac)
        for block in all_blocks:
            if head_frac > 0:
                heads = self._heads_to_remove(block, head_frac, self._head_scores(block))
                if heads:
                    plan.append((block, "heads", heads))
            if ffn_frac > 0:
                scores = self._ffn_scores(block)
                n_remove = block.ffn - self._keep_count(self._ffn0[block.index], ffn_frac)
                if n_remove > 0:
                    plan.append((block, "ffn", sorted(scores.argsort()[:n_remove].tolist())))
        return plan

    def _plan_global(self, all_blocks: list[Block], head_frac: float,
                     ffn_frac: float) -> list[tuple[Block, str, list[int]]]:
        """Rank units across blocks by importance relative to their block's mean."""
        plan: list[tuple[Block, str, list[int]]] = []
        for kind, frac, scorer, size0 in (("heads", head_frac, self._head_scores, self._heads0),
                                          ("ffn", ffn_frac, self._ffn_scores, self._ffn0)):
            if frac <= 0:
                continue
            units = []
            for block in all_blocks:
                s = scorer(block)
                s = s / s.mean().clamp_min(1e-12)
                units += [(float(v), block.index, i) for i, v in enumerate(s)]
            total0 = sum(size0.values())
            current = len(units)
            n_remove = current - (total0 - round(total0 * frac))
            cap = {b.index: size0[b.index] - max(1, round(size0[b.index] *
                                                         (1 - self.spec.max_layer_ratio)))
                   for b in all_blocks}
            removed_so_far = {b.index: size0[b.index] - (b.heads if kind == "heads" else b.ffn)
                              for b in all_blocks}
            chosen: dict[int, list[int]] = {}
            for _, bi, i in sorted(units):
                if n_remove <= 0:
                    break
                if removed_so_far[bi] >= cap[bi]:
                    continue
                chosen.setdefault(bi, []).append(i)
                removed_so_far[bi] += 1
                n_remove -= 1
            plan += [(b, kind, sorted(chosen[b.index])) for b in all_blocks if b.index in chosen]
        return plan

