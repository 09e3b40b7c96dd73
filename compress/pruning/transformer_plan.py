"""What the transformers pruner removes: head, FFN-neuron and hidden-channel importance
(l1, l2, taylor, random) and the plan of each step (per block or across blocks, whole
key/value groups kept intact for grouped-query attention, counts rounded to ``round_to``).

:class:`~compress.pruning.transformer.TransformerPruner` adds the surgery and its proof; this
base only reads the model. It expects ``model``, ``spec``, ``needs_grad``, ``layout``, ``round_to``,
``steps_done`` and the original sizes ``_heads0``, ``_ffn0`` (and ``_hidden0`` when the hidden
size is pruned), which the pruner sets.

Example:
    >>> class Sizes(TransformerPlanner):
    ...     round_to = 8
    >>> Sizes()._keep_count(64, 0.5), Sizes()._keep_count(64, 0.9)
    (32, 8)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from compress.errors import InputError
from compress.measure.evaluate import task_loss
from compress.pruning.hf_hidden import Stream, stream
from compress.pruning.hf_layout import Block, blocks

__all__ = ["TransformerPlanner"]


class TransformerPlanner:
    """Scores and plans; the state it reads is the pruner's (see the module docstring)."""

    # -- importance ---------------------------------------------------------------------------
    def accumulate_gradients(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                             device: torch.device) -> None:
        """Fill ``.grad`` for the taylor criterion from a few training batches."""
        if not self.needs_grad:
            return
        was_training = self.model.training
        self.model.eval()
        self.model.zero_grad(set_to_none=True)
        n = 0
        for x, y in batches:
            task_loss(self.model(x.to(device)), y.to(device)).backward()
            n += 1
        if n == 0:
            raise InputError("importance 'taylor' needs training batches; configure data with "
                             "a training split")
        self.model.train(was_training)

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

    def _head_scores(self, block: Block) -> torch.Tensor:
        d, h = block.head_dim, block.heads
        if self.spec.importance == "random":
            return torch.rand(h, generator=self._generator(block, 0))
        rows = torch.arange(h * d)
        projections = block.qkv[:1] if self.layout.gqa else block.qkv
        if len(block.qkv) == 1:  # fused [q | k | v]: score the three slices of each head
            total = sum(self._score(block.qkv[0], rows + part * h * d, self._dim(block.qkv[0], True))
                        for part in range(3))
        else:
            total = sum(self._score(m, rows, self._dim(m, True)) for m in projections)
        total = total + self._score(block.out, rows, self._dim(block.out, False))
        per_head = total.view(h, d).sum(dim=1)
        return per_head if self.spec.importance != "l2" else per_head.sqrt()

    def _ffn_scores(self, block: Block) -> torch.Tensor:
        f = block.ffn
        if self.spec.importance == "random":
            return torch.rand(f, generator=self._generator(block, 1))
        idx = torch.arange(f)
        total = sum(self._score(m, idx, self._dim(m, True)) for m in block.ffn_in)
        total = total + self._score(block.ffn_out, idx, self._dim(block.ffn_out, False))
        return total if self.spec.importance != "l2" else total.sqrt()

    def _stream(self) -> Stream:
        return stream(self.model.hf, self.layout, blocks(self.model.hf, self.layout))

    def _hidden_cut(self, s: Stream, fraction: float) -> tuple[list[int], list[int]]:
        """(hidden channels, head square-layer outputs) to remove: the same count of each."""
        n_remove = s.width - self._keep_count(self._hidden0, fraction)
        if n_remove <= 0:
            return [], []
        if self.spec.importance == "random":
            gen = torch.Generator().manual_seed(1000 * self.steps_done + 7)
            channel, head = torch.rand(s.width, generator=gen), torch.rand(s.width, generator=gen)
        else:
            channel = sum(self._score(m, torch.arange(s.width), d) for m, d in s.slices())
            head = (self._score(s.square, torch.arange(s.width), 0)
                    + self._score(s.head_out, torch.arange(s.width), 1))
            if self.spec.importance == "l2":
                channel, head = channel.sqrt(), head.sqrt()
        return (sorted(channel.argsort()[:n_remove].tolist()),
                sorted(head.argsort()[:n_remove].tolist()))

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
