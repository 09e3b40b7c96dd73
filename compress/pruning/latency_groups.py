"""The per-group side of a latency target's plan: the groups torch-pruning's graph offers,
each with its candidate widths and the importance lost at each, planned against a latency
table with :func:`~compress.pruning.group_widths.plan_widths`.

Example:
    >>> from compress.models.cifar_resnet import cifar_resnet
    >>> from compress.recipe.pruning import PruningSpec
    >>> net, x = cifar_resnet("resnet20").eval(), torch.zeros(1, 3, 32, 32)
    >>> cuts = plannable_groups(net, x, PruningSpec(ratio=0.5, round_to=8), ["conv1", "fc"])
    >>> len(cuts), cuts[0].root, cuts[0].candidates, cuts[0].members
    (12, 'conv1', [16, 8], [('conv1', 'out')])
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from compress.errors import InputError
from compress.measure.latency_table import LatencyTable
from compress.measure.layer_timing import LayerShape
from compress.pruning.group_widths import GroupCut, GroupRatios, Unreachable, plan_widths
from compress.pruning.planning import gradient_free
from compress.pruning.structured import StructuredPruner
from compress.pruning.structured_kind import build_structured
from compress.recipe.pruning import PruningSpec

__all__ = ["plannable_groups", "plan_group_ratios", "group_cuts", "keep_cost"]


def plannable_groups(model: nn.Module, example: torch.Tensor, spec: PruningSpec,
                     names: Sequence[str]) -> list[GroupCut] | None:
    """The groups a per-group plan cuts; None for a model pruned inside closed blocks
    (planned with one channel ratio, as a MACs target). A gradient criterion (taylor) has
    no gradients here: the groups are ranked by l2 magnitude, and the criterion still picks
    which channels go when the run prunes."""
    trial = gradient_free(spec.model_copy(update={"verify": False}),
                          "pruning.target.latency (its plan ranks the groups' channels)")
    pruner = build_structured(copy.deepcopy(model).eval(), example, trial,
                              cumulative_ratios=[0.5])
    if not isinstance(pruner, StructuredPruner):
        return None
    return group_cuts(pruner, names, spec.max_layer_ratio)


def plan_group_ratios(cuts: list[GroupCut], shapes: dict[str, LayerShape],
                      table: LatencyTable, wants: Sequence[float],
                      budget: Callable[[float], float], reduction: Callable[[float], float],
                      tol: float) -> list[tuple[GroupRatios, float]]:
    """Per-group ratios and the table's ms of each cumulative target in ``wants``; the
    last may fall short by ``tol`` when nothing reaches it."""
    names = sorted(shapes)
    full = {n: (shapes[n].in_width, shapes[n].out_width) for n in names}
    depthwise = {n for n, s in shapes.items()
                 if s.kind == "conv" and 1 < s.groups == s.in_width == s.out_width}

    def layer_ms(many: Sequence[dict[str, tuple[int, int]]]) -> list[float]:
        ms = table.times([(shapes[n], *w[n]) for w in many for n in names])
        k = len(names)
        return [sum(ms[i * k:(i + 1) * k]) for i in range(len(many))]

    budgets = [budget(t) for t in wants]
    try:
        plan = plan_widths(cuts, full, depthwise, layer_ms, budgets)
    except Unreachable as err:
        most = reduction(err.ms)
        if wants[-1] - most > tol or len(budgets) > 1 and err.ms > budgets[-2]:
            raise InputError(f"pruning.target.latency={wants[-1]:.4g} cannot be reached: at "
                             f"most {most:.1%} of the latency predicted by the table can be "
                             f"removed with these settings (every group at its narrowest "
                             f"width); lower the target, lower round_to, raise "
                             f"max_layer_ratio or ignore fewer layers") from None
        plan = plan_widths(cuts, full, depthwise, layer_ms, [*budgets[:-1], err.ms])
    channels = {c.root: c.channels for c in cuts}
    return [(GroupRatios.of_widths(channels, w), ms)
            for w, ms in zip(plan.widths, plan.predicted_ms, strict=True)]


def group_cuts(structured: StructuredPruner, timed: Sequence[str],
               max_ratio: float) -> list[GroupCut]:
    """The :class:`GroupCut` of every channel group ``structured`` (a
    :class:`~compress.pruning.structured.StructuredPruner`, nothing pruned yet) may cut.

    Attention groups and groups whose importance torch-pruning cannot estimate are left out:
    they keep their widths. ``timed``: the layers of the latency table.
    """
    pruner = structured._pruner
    dg, names, timed_set = pruner.DG, pruner.DG._module2name, set(timed)
    step_all = structured.round_to or 1
    cuts = []
    with torch.no_grad():
        for group in dg.get_all_groups(ignored_layers=pruner.ignored_layers,
                                       root_module_types=pruner.root_module_types):
            root_module = group[0].dep.target.module
            root = names.get(root_module)
            if root is None or pruner._is_atten_group(group)[0]:
                continue
            try:
                imp = pruner.estimate_importance(group)
            except Exception:  # a pattern torch-pruning cannot map: the pruner protects it
                imp = None
            channels = dg.get_out_channels(root_module)
            if imp is None or channels is None or len(imp) != channels:
                continue
            per = pruner._get_channel_groups(group)
            scores = (imp.view(per, -1).mean(dim=0) if per > 1 else imp).double().sort().values
            cost = keep_cost(torch.cat([scores.new_zeros(1), scores.cumsum(0)]))
            step = math.lcm(step_all, per)
            floor = max(1, math.ceil(channels * (1 - max_ratio) - 1e-9))
            widths = [channels] + [w for w in range(channels - 1, floor - 1, -1)
                                   if w % step == 0]
            parts: dict[tuple[str, str], int] = {}  # member -> how many of the channels
            for dep, idxs in group:
                if (n := names.get(dep.target.module)) in timed_set:
                    side = "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in"
                    parts[(n, side)] = parts.get((n, side), 0) + len(idxs)
            members = sorted(parts)
            # A producer of a concatenation holds part of the channels: which of them go
            # depends on the scores at the step, so it is predicted to lose its share.
            removed = [[round((channels - w) * min(parts[m], channels) / channels)
                        for w in widths] for m in members]
            # A channel lost from every layer it feeds counts once per layer (a residual
            # stream's channels are read and written by many).
            weight = max(1, len(members))
            cuts.append(GroupCut(root, channels, widths,
                                 [weight * float(cost[(channels - w) // per]) for w in widths],
                                 members, removed))
    return cuts


def keep_cost(lost: torch.Tensor) -> torch.Tensor:
    """The plan's cost of each cut, from ``lost`` (the cumulative scores of the lowest
    channels, from none to all): minus the log of the share of the group's importance kept.

    torch-pruning's scores are normalised per group, so their sums do not compare across
    groups: summed, a plan cut whole stages to their narrowest where milliseconds per channel
    are cheapest (ResNet-56 at 2x lost to even widths; BENCHMARKS.md section 10). A share is
    comparable: halving any group's importance costs the same wherever it is, and the last
    channels cost ever more (a group kept at 1/k of its importance costs log k), so the plan
    spreads its cuts as a uniform ratio would and moves them where the table says time drops.
    A group without importance (all scores 0) shares by channel count.

    >>> [round(float(c), 3) for c in keep_cost(torch.tensor([0.0, 1.0, 3.0, 4.0]))]
    [0.0, 0.288, 1.386, 20.723]
    """
    total = float(lost[-1])
    share = (lost / total if total > 0
             else torch.linspace(0, 1, len(lost), dtype=lost.dtype))
    return 0.0 - torch.log((1 - share).clamp_min(1e-9))
