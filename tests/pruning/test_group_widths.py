"""Per-group widths for a latency budget: the greedy knapsack on synthetic tables, the widths
the pruner then cuts equal to the planned ones (residual streams, concatenations, depthwise
convolutions), nested steps, and plans that survive JSON (table files, a run's resume)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from compress.measure.layer_timing import capture_layers, layer_io_widths
from compress.models.cifar_resnet import cifar_resnet
from compress.pruning.group_widths import GroupCut, GroupRatios, Unreachable, plan_widths
from compress.pruning.latency_groups import keep_cost, plannable_groups
from compress.pruning.structured_kind import build_structured
from compress.recipe.pruning import PruningSpec
from tests.pruning.test_latency_plan import _macs_ms


def _sum(per_layer):
    """``layer_ms`` from a per-layer function of (name, in, out)."""
    return lambda many: [sum(per_layer(n, i, o) for n, (i, o) in w.items()) for w in many]


def test_staircase_is_crossed_to_where_the_time_drops() -> None:
    """Time drops only at multiples of 8: a width in between saves nothing and is never kept;
    the planner jumps across the flat stretch."""
    cut = GroupCut("a", 16, list(range(16, 0, -1)), [float(k) for k in range(16)],
                   [("a", "out")])
    ms = _sum(lambda n, i, o: 8.0 * -(-o // 8))  # 16 ms at 9..16 channels, 8 ms at 1..8
    plan = plan_widths([cut], {"a": (1, 16)}, set(), ms, [12.0])
    assert plan.widths == [{"a": 8}] and plan.predicted_ms == [8.0] and plan.lost == [8.0]


def test_the_cheapest_importance_per_millisecond_goes_first_and_steps_nest() -> None:
    # b saves twice the time per channel of a, at the same importance per channel.
    a = GroupCut("a", 4, [4, 3, 2, 1], [0.0, 1.0, 2.0, 3.0], [("a", "out")])
    b = GroupCut("b", 4, [4, 3, 2, 1], [0.0, 1.0, 2.0, 3.0], [("b", "out")])
    ms = _sum(lambda n, i, o: o * (2.0 if n == "b" else 1.0))
    plan = plan_widths([a, b], {"a": (1, 4), "b": (1, 4)}, set(), ms, [10.0, 6.0])
    assert plan.widths == [{"a": 4, "b": 3}, {"a": 4, "b": 1}]
    assert plan.predicted_ms == [10.0, 6.0]  # each budget met exactly
    with pytest.raises(Unreachable) as err:
        plan_widths([a, b], {"a": (1, 4), "b": (1, 4)}, set(), ms, [2.0])
    assert err.value.ms == 3.0  # both at their narrowest width: 1 + 2


def test_the_cost_of_a_cut_is_the_share_of_importance_kept_so_cuts_spread() -> None:
    """A 16-channel group at 4x the ms per channel of a 64-channel one (stage 1 against
    stage 3 of a CIFAR ResNet), every channel scored 1 as per-group normalisation leaves them.
    Summed scores made the small group's channels the cheapest per ms: it went to its
    narrowest. The share kept compares across groups: both lose about as much."""
    def cut(root: str, channels: int, cost) -> GroupCut:
        widths = list(range(channels, 0, -1))
        lost = cost(torch.arange(channels + 1, dtype=torch.float64))
        return GroupCut(root, channels, widths, [float(lost[channels - w]) for w in widths],
                        [(root, "out")])

    ms = _sum(lambda n, i, o: (4.0 if n == "small" else 1.0) * o)  # 128 ms in full
    full = {"small": (1, 16), "big": (1, 64)}
    summed = plan_widths([cut("small", 16, lambda c: c), cut("big", 64, lambda c: c)],
                         full, set(), ms, [64.0])
    assert summed.widths == [{"small": 1, "big": 60}]  # the old cost: the small one emptied
    shared = plan_widths([cut("small", 16, keep_cost), cut("big", 64, keep_cost)],
                         full, set(), ms, [64.0])
    [w] = shared.widths
    assert shared.predicted_ms == [64.0]
    assert abs(w["small"] / 16 - w["big"] / 64) <= 2 / 16, w  # about the same fraction kept
    assert keep_cost(torch.tensor([0.0, 0.0, 2.0]))[1] == 0.0  # a zero-score channel is free
    assert keep_cost(torch.zeros(3)).tolist()[:2] == [0.0, pytest.approx(0.6931, abs=1e-4)]


def test_a_residual_stream_costs_once_per_layer_it_feeds() -> None:
    """The stream's channels save time in three layers, a block's inner channels in two; at
    equal scores per layer, the stream's importance counts three times."""
    net = cifar_resnet("resnet20").eval()
    shapes = capture_layers(net, torch.zeros(1, 3, 32, 32))
    cuts = plannable_groups(net, torch.zeros(1, 3, 32, 32), PruningSpec(ratio=0.5, round_to=8),
                            sorted(shapes))
    by_root = {c.root: c for c in cuts}
    assert len(by_root["conv1"].members) == 8  # stem, three blocks' conv1 in and conv2 out, ...
    assert by_root["layer1.0.conv1"].members == [("layer1.0.conv1", "out"),
                                                 ("layer1.0.conv2", "in")]
    assert by_root["layer1.0.conv1"].candidates == [16, 8]


class _Mixed(nn.Module):
    """Two producers (concatenated, or added), then a depthwise conv and a pointwise one."""

    def __init__(self, concat: bool) -> None:
        super().__init__()
        self.concat = concat
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(3, 8 if concat else 16, 1)
        width = 24 if concat else 16
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.pw = nn.Conv2d(width, 16, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x).relu(), self.b(x).relu()
        y = self.dw(torch.cat([a, b], 1) if self.concat else a + b).relu()
        return self.head(self.pw(y).relu().mean((2, 3)))


def _plan_and_prune(net: nn.Module, x: torch.Tensor, fractions: list[float]):
    """Plan ``fractions`` of the synthetic (MACs) latency, prune step by step: per step the
    plan's ms and the table's ms of the widths really cut."""
    spec = PruningSpec(ratio=0.5, round_to=2)
    spec = PruningSpec(ratio=0.5, round_to=2)
    shapes = capture_layers(net, x[:1])
    names = sorted(shapes)
    cuts = plannable_groups(net, x[:1], spec, names)
    full = {n: (shapes[n].in_width, shapes[n].out_width) for n in names}
    depthwise = {n for n, s in shapes.items() if 1 < s.groups == s.in_width == s.out_width}

    def layer_ms(many):
        out = []
        for w in many:
            out.append(sum(_macs_ms([(shapes[n], *w[n]) for n in names])))
        return out

    base = layer_ms([full])[0]
    plan = plan_widths(cuts, full, depthwise, layer_ms, [f * base for f in fractions])
    assert plan.predicted_ms[-1] <= fractions[-1] * base
    assert any(c.candidates[0] != plan.widths[-1][c.root] for c in cuts)
    channels = {c.root: c.channels for c in cuts}
    steps = [GroupRatios.of_widths(channels, w) for w in plan.widths]
    pruned = copy.deepcopy(net)
    pruner = build_structured(pruned, x[:1], spec, cumulative_ratios=steps)
    real = []
    for step in steps:
        assert pruner.step_(step, x).proof == "proven"
        real.append(layer_ms([layer_io_widths(pruned, names)])[0])
    return plan.predicted_ms, real


@pytest.mark.parametrize("build", [lambda: cifar_resnet("resnet20"), lambda: _Mixed(False)],
                         ids=["resnet20", "add-depthwise"])
def test_the_pruner_cuts_exactly_the_planned_widths(build) -> None:
    torch.manual_seed(0)
    planned, real = _plan_and_prune(build().eval(), torch.randn(2, 3, 16, 16), [0.7, 0.45])
    assert real == pytest.approx(planned, rel=1e-12)


def test_a_concatenation_s_producers_are_planned_by_their_share() -> None:
    """Which producer's channels go depends on the scores at the step: the plan predicts
    each producer's share, the widths really cut differ from it by a few channels."""
    torch.manual_seed(0)
    net = _Mixed(True).eval()
    planned, real = _plan_and_prune(net, torch.randn(2, 3, 16, 16), [0.6])
    assert real == pytest.approx(planned, rel=0.2)


def test_group_ratios_survive_json_and_copies() -> None:
    r = GroupRatios(0.25, {"layer1.0.conv1": 0.5, "conv1": 0.0})
    again = GroupRatios.from_json(json.loads(json.dumps(r.to_json())))
    assert isinstance(again, GroupRatios) and again.groups == r.groups and again == 0.25
    assert copy.deepcopy(r).groups == r.groups
    assert GroupRatios.from_json(0.3) == 0.3 and not isinstance(GroupRatios.from_json(0.3),
                                                                GroupRatios)
    for bad in [{"ratio": 0.2}, {"ratio": 0.2, "groups": {"a": 1.0}}, "0.2", True,
                {"ratio": 0.2, "groups": {"a": 0.1}, "x": 1}]:
        with pytest.raises(ValueError):
            GroupRatios.from_json(bad)
