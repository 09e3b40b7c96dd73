"""Structured pruning through torch-pruning's dependency graph, with a proof for every step.

With :mod:`~compress.pruning.groups` (zeroing, removing and naming torch-pruning's groups) and
:mod:`~compress.pruning.norms` (norms over channels), it is where ``torch_pruning`` is used. A
pruning step:

1. asks torch-pruning's pruner for the groups it wants to remove (nothing is removed yet);
2. zeroes every group (producer rows, norm scales and shifts, consumer columns) and runs a fixed
   probe batch: the reference output;
3. removes the groups, each rebuilt from its root on the model as it is then (concatenation
   offsets change as earlier groups go), running the probe after each removal; the output must
   stay equal to the reference, taken with every norm over pruned channels restricted to its
   kept channels (what the pruned norm computes). The first group that breaks it is named in
   :class:`CheckFailed`, with the cause when it is a known one (a norm compress cannot
   restrict, a softmax or mean over the channels).

Zeroed entries all belong to channels that are removed, so zeroing in place costs no copy of the
model. A dependency graph that wires channels wrongly (e.g. an unknown op treated as
element-wise) makes the removed model compute something else, and the check catches it.

Example:
    >>> import torch
    >>> from compress.models.cifar_resnet import cifar_resnet
    >>> from compress.recipe.pruning import PruningSpec
    >>> model = cifar_resnet("resnet20").eval()
    >>> x = torch.randn(2, 3, 32, 32)
    >>> pruner = StructuredPruner(model, x[:1], PruningSpec(ratio=0.5))
    >>> record = pruner.step_(0.5, probe=x)
    >>> record.max_abs_diff < 1e-4
    True
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from compress.pruning.attention import heads_of, refuse_unfollowable_attention, sync_widths_
from compress.pruning.base import StepRecord, prove_removals_, scheduled_step
from compress.pruning.criteria import IMPORTANCE
from compress.pruning.gradients import backprop_task_loss_
from compress.pruning.graph_errors import choose_groups, graph_state
from compress.pruning.group_widths import GroupRatios
from compress.pruning.groups import (
    GroupRoundingPruner,
    custom_pruners,
    group_members,
    group_name,
    norm_channels,
    offsets_cached,
    removal,
    zero_dep_,
)
from compress.pruning.local import layer_widths
from compress.pruning.norms import restricted_norms, suspect_cause
from compress.pruning.selection import channel_round_to, protected_layers
from compress.recipe.pruning import PruningSpec

__all__ = ["StructuredPruner"]

log = logging.getLogger(__name__)

_ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)  # roots a diagnosis needs the width of


class StructuredPruner:
    """Drives one torch-pruning pruner over a run's steps; each :meth:`step_` is proven exact.

    ``cumulative_ratios`` are channel ratios of the ORIGINAL model after each step.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, spec: PruningSpec, *,
                 cumulative_ratios: Sequence[float] | None = None) -> None:
        self.model = model
        self.spec = spec
        self.example_inputs = example_inputs
        ratios = list(cumulative_ratios) if cumulative_ratios else [spec.ratio or 0.5]
        assert all(0 <= r < 1 for r in ratios), ratios
        self.criterion = IMPORTANCE.get(spec.importance)
        ignored_names = protected_layers(model, example_inputs, spec.ignored)
        refuse_unfollowable_attention(model, ignored_names)
        self.ignored_names = ignored_names
        was_training = model.training
        model.eval()
        modules = dict(model.named_modules())
        self.round_to = channel_round_to(model, spec.round_to)
        global_scope = spec.scope == "global"
        # A latency plan gives every group its own ratio (GroupRatios); the others keep 0.
        planned = sorted({n for r in ratios if isinstance(r, GroupRatios) for n in r.groups})
        self._pruner = GroupRoundingPruner(
            model,
            example_inputs,
            importance=self.criterion.factory(),
            pruning_ratio=ratios[-1],
            iterative_steps=len(ratios),
            iterative_pruning_ratio_scheduler=lambda _r, _n: [0.0, *ratios],
            global_pruning=global_scope and not planned,  # a plan ranks within groups
            max_pruning_ratio=spec.max_layer_ratio if global_scope else 1.0,
            ignored_layers=[modules[n] for n in ignored_names],
            round_to=self.round_to,
            customized_pruners=custom_pruners(model),
            out_channel_groups=heads_of(model),
            pruning_ratio_dict={modules[n]: 0.0 for n in planned} or None,
        )
        if planned:
            self._plan_group_ratios_(ratios, {n: modules[n] for n in planned})
        self._ratios = ratios
        self.proof_strategy = "bisect"  # or "per-group" (benchmarks/proof_cost.py compares)
        self.protected: dict[str, str] = {}  # layers left unpruned: torch-pruning cannot map them
        # Widths as traced: the graph's autograd nodes saved shapes of the unpruned model.
        self._traced_widths = {m: n for m in self._pruner.DG.module2node
                               if isinstance(m, _ROOT_TYPES) and
                               (n := self._pruner.DG.get_out_channels(m)) is not None}
        self.history: list[list[list[Any]]] = []  # per step: [root name, is_out, indices]
        model.train(was_training)

    def _plan_group_ratios_(self, ratios: Sequence[float], roots: dict[str, nn.Module]) -> None:
        """Each planned root's own cumulative ratio per step; every other group keeps its
        width. torch-pruning keeps ``int(channels * (1 - ratio))``: half a channel under the
        planned fraction makes that exactly the planned width."""
        assert all(isinstance(r, GroupRatios) for r in ratios), ratios
        self._pruner.per_step_pruning_ratio = [0.0] * (len(ratios) + 1)
        dg = self._pruner.DG
        for name, module in roots.items():
            channels = dg.get_out_channels(module)
            self._pruner.pruning_ratio_dict[module] = [0.0, *[
                max(0.0, r.groups.get(name, 0.0) - 0.5 / channels) for r in ratios]]

    @property
    def steps_done(self) -> int:
        return self._pruner.current_step

    def widths(self) -> dict[str, int]:
        """Output width of every prunable layer (conv/linear), by module name."""
        return layer_widths(self.model)

    def accumulate_gradients(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                             device: torch.device, *, model: nn.Module | None = None) -> None:
        """Fill ``.grad`` for gradient-based criteria from a few training batches.

        ``model``: the whole model the batches are for, when this pruner prunes a block of it.
        """
        n, squares = backprop_task_loss_(self.model if model is None else model, batches,
                                         device, importance=self.spec.importance,
                                         per_sample=self.criterion.per_sample)
        if squares is not None:
            # torch-pruning's own accumulate_grad keys by parameter but tests by name, so it
            # keeps only the last sample; fill its accumulators directly instead.
            imp = self._pruner.importance
            imp.zero_grad()
            imp._accu_grad = squares
            imp._counter = {p: n for p in squares}

    def share_scores_(self, other: StructuredPruner) -> None:
        """Take the per-sample gradient scores ``other`` accumulated over the same whole model
        (``.grad`` itself is shared by the parameters)."""
        if self.criterion.per_sample:
            theirs, mine = other._pruner.importance, self._pruner.importance
            mine.zero_grad()
            mine._accu_grad, mine._counter = theirs._accu_grad, theirs._counter

    def step_(self, target_ratio: float, probe: torch.Tensor) -> StepRecord:
        """Prune to the next scheduled ratio in place and prove the result on ``probe``."""
        with scheduled_step(self.model, self._ratios, self.steps_done, target_ratio), \
                offsets_cached():
            dg = self._pruner.DG
            with torch.no_grad():
                groups = choose_groups(self._pruner, self.model, self.protected)
                norms: dict[nn.Module, set[int]] = {}
                roots: dict[nn.Module, str] = {}  # a group reaching the norm: what to ignore
                for group in groups:
                    for dep, idxs in group:
                        zero_dep_(dep, tp._helpers.to_plain_idxs(idxs),
                                  dg.is_out_channel_pruning_fn(dep.handler))
                    for norm, gone in norm_channels(group).items():
                        norms.setdefault(norm, set()).update(gone)
                        roots.setdefault(norm, group_name(group, dg))
                removed = sum(len(group[0].idxs) for group in groups)
                history: list[list[Any]] = []
                by_name = {group_name(g, dg): g for g in groups}

                def explain(name: str) -> str | None:
                    group = by_name.get(name)
                    if group is None:  # not one group's root: no diagnosis
                        return None
                    traced = self._traced_widths.get(group[0].dep.target.module, -1)
                    return suspect_cause(group_members(group, dg), name, traced)

                def sync() -> None:
                    sync_widths_(self.model)

                # The pruned norms normalise over the kept channels: so must the reference.
                with restricted_norms(norms, dg._module2name, roots) as note_removed:
                    proof = prove_removals_(
                        self.model, probe,
                        [removal(g, dg, history, note_removed, after=sync)
                         for g in groups],
                        verify=self.spec.verify, atol=self.spec.verify_atol, explain=explain,
                        strategy=self.proof_strategy,
                        also=[*graph_state(self._pruner), *note_removed.restrictions])
            self.history.append(history)
        record = StepRecord.of(target_ratio, len(groups), removed, "channels", proof,
                               layer_widths(self.model))
        record.protected = dict(self.protected)
        log.debug("step %d: removed %d channels in %d groups, max |zeroed - removed| = %s",
                  self.steps_done, removed, len(groups), record.describe_proof())
        return record

    def retarget_(self, ratio: float) -> None:
        """Plan one step to ``ratio`` afresh, on a model restored to its state at build time
        (the MACs search's trials reuse one pruner; see :meth:`trial_state`)."""
        self._ratios = [ratio]
        self._pruner.pruning_ratio = ratio
        self._pruner.per_step_pruning_ratio = [0.0, ratio]
        self._pruner.current_step = 0

    def trial_state(self) -> list[Any]:
        """The objects besides the model that a step changes (this pruner, the graph's)."""
        return [self, *graph_state(self._pruner)]

    @property
    def needs_grad(self) -> bool:
        return self.criterion.needs_grad

    def groups(self) -> list[dict[str, Any]]:
        """The prunable channel groups: root layer, channel count and coupled layers.

        Nothing is pruned; the graph was traced when this pruner was built.
        """
        dg = self._pruner.DG
        out = []
        for group in dg.get_all_groups(ignored_layers=self._pruner.ignored_layers,
                                       root_module_types=self._pruner.root_module_types):
            members = []
            for dep, _ in group:
                name = dg._module2name.get(dep.target.module)
                if name is not None:
                    side = "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in"
                    members.append(f"{name} ({side})")
            out.append({"root": group_name(group, dg), "channels": len(group[0].idxs),
                        "members": sorted(set(members))})
        return out

    def finalize_(self) -> None:
        """Nothing to do: removed channels are gone physically."""

    def get_state(self) -> dict[str, Any]:
        """JSON-safe state from which :meth:`restore_` rebuilds this pruner after a crash."""
        return {"kind": "structured", "steps_done": self.steps_done, "history": self.history,
                "scope_initial": dict(self._pruner._scope_initial_channels)}

    def get_tensors(self) -> dict[str, torch.Tensor]:
        """None: :meth:`get_state` holds everything (the removed channels' indices)."""
        return {}

    def restore_(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Replay the recorded steps on the freshly built (unpruned) model.

        The model's architecture then matches the checkpoint of the last finished step, and the
        pruner continues with the same schedule state as the interrupted run.
        """
        assert self.steps_done == 0 and state["kind"] == "structured"
        dg = self._pruner.DG
        modules = dict(self.model.named_modules())
        with torch.no_grad(), offsets_cached():
            for step in state["history"]:
                for name, is_out, idxs in step:
                    module = modules[name]
                    fn_owner = dg.get_pruner_of_module(module)
                    fn = fn_owner.prune_out_channels if is_out else fn_owner.prune_in_channels
                    dg.get_pruning_group(module, fn, idxs).prune(record_history=False)
                    sync_widths_(self.model)
        self._pruner.current_step = state["steps_done"]
        self._pruner._scope_initial_channels.update(state["scope_initial"])
        self.history = [list(h) for h in state["history"]]
