"""Structured pruning of attention heads and FFN neurons in transformers models, proven exact.

torch-pruning's graph needs per-model hand configuration for attention (head counts, which
attributes to rewrite) and mis-handles grouped-query attention, so transformers models are cut
here directly from a :class:`~compress.pruning.hf_layout.Layout`: a head is its query (key,
value) rows plus its output-projection columns, an FFN neuron its input rows plus its output
column. Grouped-query models lose the same number of query heads in every key/value group,
so the q/kv ratio, the head-to-group mapping and RoPE's head size all stay intact.

Each step is proven like a torch-pruning step: every group is zeroed, the probe output is the
reference, and removing the groups one at a time must reproduce it.

Example:
    >>> pruner = TransformerPruner(model, example, PruningSpec(ratio=0.5))  # doctest: +SKIP
    >>> record = pruner.step_(0.5, probe)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from compress.errors import InputError
from compress.pruning.base import StepRecord, prove_removals_, scheduled_step
from compress.pruning.criteria import IMPORTANCE, transformer_criteria
from compress.pruning.hf_activation import ActivationStats, activation_stats
from compress.pruning.hf_depth import block_count, bypassed, drop_blocks_
from compress.pruning.hf_hidden import Stream, cut_hidden_, masked_norms, stream, zero_hidden_
from compress.pruning.hf_layout import (
    LAYOUTS,
    Block,
    blocks,
    remove_units_,
    rewrite_config_,
    unsupported_sentence,
    zero_units_,
)
from compress.pruning.transformer_plan import TransformerPlanner
from compress.recipe.pruning import PruningSpec

__all__ = ["TransformerPruner", "is_transformer", "refuse_without_layout"]

log = logging.getLogger(__name__)

def is_transformer(model: nn.Module) -> bool:
    """Whether ``model`` is compress's wrapper around a transformers model with a layout."""
    return getattr(model, "layout", None) is not None and hasattr(model, "hf")


def refuse_without_layout(model: nn.Module) -> None:
    """Raise :class:`InputError` for a transformers model compress cannot prune structurally.

    torch-pruning's generic graph crashes or runs for minutes on attention it does not know,
    so such a model is refused in one sentence rather than sent there.

    Example:
        >>> refuse_without_layout(nn.Linear(2, 2))  # not a transformers model: nothing to say
    """
    hf = getattr(model, "hf", None)
    if hf is not None and getattr(model, "layout", "") is None:
        raise InputError(unsupported_sentence(hf.config.model_type))
    config = getattr(model, "config", None)
    if hasattr(config, "model_type") and hasattr(model, "base_model_prefix"):
        raise InputError(f"a bare transformers {type(model).__name__} is not pruned by "
                         f"compress; wrap it as compress.models.huggingface.HFModel(model, "
                         f"task) (one-tensor input, heads and FFN neurons pruned) or load it "
                         f"with model.source: huggingface")


class TransformerPruner(TransformerPlanner):
    """Prunes heads and FFN neurons of every block to the scheduled fractions.

    ``cumulative_ratios`` drive the schedule; the head and FFN fractions removed at step k are
    ``spec.heads`` and ``spec.ffn`` (default: the ratio itself) times ``ratio_k / ratio_final``;
    the hidden size's likewise from ``spec.hidden`` (default 0: kept).
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, spec: PruningSpec, *,
                 cumulative_ratios: Sequence[float] | None = None,
                 only: set[tuple[int, str]] | None = None) -> None:
        assert is_transformer(model)
        if spec.importance not in transformer_criteria():
            raise InputError(f"pruning.importance {spec.importance!r} is not supported for "
                             f"transformers models; available: "
                             f"{', '.join(transformer_criteria())}")
        if spec.ignored:
            raise InputError("pruning.ignored is not used for transformers models (heads and "
                             "FFN neurons are pruned); set pruning.heads: 0 or pruning.ffn: 0 "
                             "to keep one kind")
        self.model, self.spec = model, spec
        self.needs_grad = IMPORTANCE.get(spec.importance).needs_grad
        self.layout = model.layout
        ratios = list(cumulative_ratios) if cumulative_ratios else [spec.ratio or 0.5]
        final = ratios[-1]
        head_final = spec.heads if spec.heads is not None else final
        ffn_final = spec.ffn if spec.ffn is not None else final
        hidden_final = spec.hidden or 0.0
        self._plan = [(head_final * r / final, ffn_final * r / final, hidden_final * r / final)
                      for r in ratios]
        self._ratios = ratios
        first = blocks(model.hf, self.layout)
        depth = block_count(spec.blocks, len(first))
        self._drops = [round(depth * r / final) for r in ratios]  # blocks gone after step k
        self._calibration: list[torch.Tensor] | None = None
        # activation importance: statistics of the calibration samples, taken at each step
        self.needs_calibration = spec.importance == "activation"
        self._activation = ActivationStats()
        self.block_scores: list[float] = []  # of the last step that dropped blocks
        self._heads0 = {b.index: b.heads for b in first}
        self._ffn0 = {b.index: b.ffn for b in first}
        self.prunes_hidden = hidden_final > 0
        if self.prunes_hidden:
            supported = [n for n in LAYOUTS.names() if LAYOUTS.get(n).hidden is not None]
            if self.layout.hidden is None:
                raise InputError(f"pruning.hidden is not supported for "
                                 f"{model.hf.config.model_type} models; supported: "
                                 f"{', '.join(supported)}")
            if model.task not in self.layout.hidden.tasks:
                raise InputError(f"pruning.hidden needs model.task: "
                                 f"{' or '.join(self.layout.hidden.tasks)} (for {model.task} "
                                 f"the hidden size is the output's width)")
            self._hidden0 = self._stream().width
        self.round_to = 8 if spec.round_to == "auto" else spec.round_to
        if spec.scope == "global" and depth:
            raise InputError("pruning.blocks is not supported with pruning.scope: global; use "
                             "scope: local")
        if spec.scope == "global" and self.layout.gqa:
            raise InputError("pruning.scope: global is not supported for grouped-query "
                             "attention models; use scope: local")
        # (block, "heads"|"ffn") or (-1, "hidden") units pruned; None: all (sensitivity scans).
        self.only = only
        self.history: list[list[list[Any]]] = []  # per step: [block, "heads"|"ffn", removed idx]
        self.config_problems: list[str] = []
        self.steps_done = 0

    # -- surgery --------------------------------------------------------------------------------
    def _apply(self, block: Block, kind: str, units: list[int], zero: bool) -> None:
        if zero:
            zero_units_(block, kind, units)
        else:
            remove_units_(block, self.layout, kind, units)

    def step_(self, target_ratio: float, probe: torch.Tensor) -> StepRecord:
        """Prune to the next scheduled fractions in place and prove the result on ``probe``."""
        with scheduled_step(self.model, self._ratios, self.steps_done, target_ratio):
            head_frac, ffn_frac, hidden_frac = self._plan[self.steps_done]
            all_blocks = blocks(self.model.hf, self.layout)
            if self.needs_calibration:
                if not self._calibration:
                    raise InputError("pruning.importance 'activation' needs calibration "
                                     "samples (the recipe's calibration section)")
                self._activation = activation_stats(self.model, all_blocks, self._calibration)
            drop = self._blocks_to_drop(probe)
            kept = [b for b in all_blocks if b.index not in drop]
            with torch.no_grad():
                plan = [p for p in self._plan_step(kept, head_frac, ffn_frac)
                        if self.only is None or (p[0].index, p[1]) in self.only]
                if self.only is not None and (-1, "hidden") not in self.only:
                    hidden_frac = 0.0
                for block, kind, units in plan:
                    self._apply(block, kind, units, zero=True)
                # Hidden channels are scored once the heads and neurons above are zeroed.
                s = self._stream(kept) if hidden_frac > 0 else None
                cut = self._hidden_cut(s, hidden_frac, kept) if s is not None else ([], [])
                hidden_keep = None
                if cut[0]:
                    zero_hidden_(s, torch.tensor(cut[0]), torch.tensor(cut[1]))
                    hidden_keep = _complement(s.width, cut[0])

                def removal(block: Block, kind: str, units: list[int]) -> tuple[str, Callable]:
                    return f"block {block.index} {kind}", lambda: self._apply(block, kind, units,
                                                                             zero=False)

                masking = masked_norms(s, hidden_keep) if hidden_keep is not None else nullcontext()
                # The reference: the dropped blocks bypassed (each returns its input).
                with masking as release, bypassed([all_blocks[i].module for i in drop]) as keep:
                    removals = [removal(*p) for p in plan]
                    # Blocks go before the hidden size: a dropped block keeps its full width,
                    # and a proof comparing after every group (a big model) would run it,
                    # bypassed but computed, on the narrower stream.
                    if drop:
                        def remove_blocks() -> None:
                            keep()
                            self._drop(drop)
                        removals.append((f"blocks {drop}", remove_blocks))
                    if hidden_keep is not None:
                        def remove_hidden() -> None:
                            release()  # the cut model normalises over the kept channels itself
                            self._cut_hidden(s, cut)
                        removals.append(("hidden size", remove_hidden))
                    proof = prove_removals_(self.model, probe, removals, verify=self.spec.verify,
                                            atol=self.spec.verify_atol,
                                            also=[*all_blocks, self.model.hf.config])
            self.history.append([[b.index, kind, units] for b, kind, units in plan]
                                + ([[-1, "hidden", cut[0], cut[1]]] if cut[0] else [])
                                + ([[-1, "blocks", drop]] if drop else []))
            self._renumber(all_blocks, drop)
            self.steps_done += 1
            self._rewrite_config()
        removed = sum(len(u) for _, _, u in plan) + len(cut[0]) + len(drop)
        record = StepRecord.of(target_ratio, len(plan) + bool(cut[0]) + bool(drop), removed,
                               "heads+neurons", proof, self.widths())
        log.debug("step %d: removed %d heads/neurons/channels in %d groups, max |zeroed - "
                  "removed| = %s", self.steps_done, removed, record.groups,
                  record.describe_proof())
        return record

    def _drop(self, drop: list[int]) -> None:
        stack = self.model.hf.base_model.get_submodule(self.layout.layers)
        origin = self.model.block_origin or list(range(len(stack)))
        drop_blocks_(stack, self.model.hf.config, drop)
        self.model.block_origin = [o for i, o in enumerate(origin) if i not in drop]

    def _renumber(self, before: list[Block], drop: list[int]) -> None:
        """The original head and FFN sizes, keyed by the blocks' indices after ``drop``."""
        kept = [b.index for b in before if b.index not in drop]
        self._heads0 = {new: self._heads0[old] for new, old in enumerate(kept)}
        self._ffn0 = {new: self._ffn0[old] for new, old in enumerate(kept)}

    def _cut_hidden(self, s: Stream, cut: Sequence[list[int]]) -> None:
        cut_hidden_(s, _complement(s.width, cut[0]), _complement(s.width, cut[1]))

    def _rewrite_config(self) -> None:
        self.config_problems = rewrite_config_(self.model.hf.config, self.layout,
                                               blocks(self.model.hf, self.layout),
                                               self.model.hidden_width())

    def widths(self) -> dict[str, int]:
        """Query heads and FFN width of every block."""
        out = {}
        for b in blocks(self.model.hf, self.layout):
            out[f"block{b.index}.heads"] = b.heads
            out[f"block{b.index}.ffn"] = b.ffn
        if self.prunes_hidden:
            out["hidden"] = self._stream().width
        if any(self._drops):
            out["blocks"] = len(blocks(self.model.hf, self.layout))
        return out

    def groups(self) -> list[dict[str, Any]]:
        """The prunable groups: each block's query heads and its FFN neurons, with their layers."""
        model = self.model
        names = {m: n for n, m in model.named_modules()}
        out = []
        for b in blocks(model.hf, model.layout):
            for kind, count in (("heads", b.heads), ("ffn", b.ffn)):
                members = [f"{names[m]} ({'out' if is_out else 'in'})"
                           for m, is_out, _ in b.unit_slices(kind, [])]
                out.append({"root": f"block {b.index} {kind}", "channels": count,
                            "members": sorted(members)})
        width = model.hidden_width()
        if width is not None:
            s = stream(model.hf, model.layout, blocks(model.hf, model.layout))
            members = ([names[m] for m in s.embeddings + s.norms]
                       + [f"{names[m]} (in)" for m in s.readers + [s.square]
                          if m is not None]  # decoders have no square head layer
                       + [f"{names[m]} (out)" for m in s.writers])
            out.append({"root": "hidden size (pruning.hidden)", "channels": width,
                        "members": sorted(members)})
        return out

    def finalize_(self) -> None:
        """Nothing to do: removed heads and neurons are gone physically."""

    def get_state(self) -> dict[str, Any]:
        return {"kind": "transformer", "steps_done": self.steps_done, "history": self.history}

    def get_tensors(self) -> dict[str, torch.Tensor]:
        """None: :meth:`get_state` holds the removed heads' and neurons' indices."""
        return {}

    def restore_(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Replay recorded removals on the freshly built model (resume after a crash)."""
        assert self.steps_done == 0 and state["kind"] == "transformer"
        with torch.no_grad():
            for step in state["history"]:
                before = blocks(self.model.hf, self.layout)
                drop = next((e[2] for e in step if e[1] == "blocks"), [])
                kept = [b for b in before if b.index not in drop]
                for entry in step:
                    if entry[1] == "hidden":
                        self._cut_hidden(self._stream(kept), entry[2:])
                    elif entry[1] != "blocks":
                        self._apply(before[entry[0]], entry[1], entry[2], zero=False)
                if drop:
                    self._drop(drop)
                self._renumber(before, drop)
        self.steps_done = state["steps_done"]
        self.history = [list(h) for h in state["history"]]
        self._rewrite_config()


def _complement(width: int, removed: Sequence[int]) -> torch.Tensor:
    return torch.tensor(sorted(set(range(width)) - set(removed)), dtype=torch.long)
