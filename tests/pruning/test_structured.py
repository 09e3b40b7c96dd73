import copy
from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import CheckFailed, InputError
from compress.measure.counts import count_macs_params
from compress.models.cifar_resnet import ChannelMapShortcut, cifar_resnet
from compress.pruning.criteria import IMPORTANCE, structured_criteria
from compress.pruning.planning import solve_ratio_for_macs, solve_ratios_for_macs
from compress.pruning.selection import resolve_ignored
from compress.pruning.structured import StructuredPruner
from compress.recipe.pruning import PruningSpec
from tests.conftest import tiny_cnn


def _probe(shape=(6, 3, 16, 16)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("criterion", structured_criteria())  # the graph pruner's
def test_every_criterion_prunes_a_tiny_model_exactly(criterion: str) -> None:
    model = tiny_cnn().eval()
    probe = _probe()
    spec = PruningSpec(ratio=0.5, importance=criterion)
    pruner = StructuredPruner(model, probe[:1], spec)
    if IMPORTANCE.get(criterion).needs_grad:
        batches = [(probe, torch.tensor([0, 1, 2, 3, 0, 1]))]
        pruner.accumulate_gradients(batches, torch.device("cpu"))
    record = pruner.step_(0.5, probe)
    assert record.groups >= 2 and record.removed > 0 and record.unit == "channels"
    assert record.max_abs_diff < 1e-4
    assert model.stem[0].out_channels == 8 and model.conv_a.out_channels == 16
    assert model.head.out_features == 4  # the output layer is never pruned
    assert model(probe).shape == (6, 4)


def test_gradient_criterion_without_batches_is_bad_input() -> None:
    model = tiny_cnn().eval()
    pruner = StructuredPruner(model, _probe()[:1], PruningSpec(ratio=0.5, importance="taylor"))
    with pytest.raises(InputError, match="needs training batches"):
        pruner.accumulate_gradients([], torch.device("cpu"))


def test_round_to_keeps_widths_multiples() -> None:
    model = tiny_cnn(width=32).eval()
    StructuredPruner(model, _probe()[:1], PruningSpec(ratio=0.3, round_to=8)).step_(0.3, _probe())
    for m in (model.stem[0], model.conv_a, model.conv_b):
        assert m.out_channels % 8 == 0


def test_ignored_layers_keep_their_width() -> None:
    model = tiny_cnn().eval()
    spec = PruningSpec(ratio=0.5, ignored=["conv_a"])
    StructuredPruner(model, _probe()[:1], spec).step_(0.5, _probe())
    assert model.conv_a.out_channels == 32 and model.stem[0].out_channels == 8


def test_ignored_patterns_resolve_and_unmatched_is_an_error() -> None:
    model = cifar_resnet("resnet20")
    hits = resolve_ignored(model, ["linear", r"re:layer\d\.\d\.conv2"])
    assert hits["linear"] == ["linear"] and len(hits[r"re:layer\d\.\d\.conv2"]) == 9
    with pytest.raises(InputError, match="'nothing_here' matches no module"):
        resolve_ignored(model, ["nothing_here"])
    with pytest.raises(InputError, match="not a valid regular expression"):
        resolve_ignored(model, ["re:("])


def test_resnet_residual_stream_through_option_a_shortcut_is_exact() -> None:
    model = cifar_resnet("resnet20").eval()
    probe = _probe((4, 3, 32, 32))
    record = StructuredPruner(model, probe[:1], PruningSpec(ratio=0.5)).step_(0.5, probe)
    assert record.max_abs_diff < 1e-4
    assert model.conv1.out_channels == 8           # the stream itself was pruned
    assert model.layer3[0].shortcut.in_channels == 16


class _PadShortcut(nn.Module):
    """The original option-A lambda: torch-pruning sees F.pad as element-wise."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


def test_equivalence_check_catches_torch_pruning_pad_miswiring() -> None:
    model = cifar_resnet("resnet20").eval()
    for stage in (model.layer2, model.layer3):
        stage[0].shortcut = _PadShortcut(stage[0].conv2.out_channels)
    probe = _probe((4, 3, 32, 32))
    with pytest.raises(CheckFailed, match="pruning group rooted at 'conv1'"):
        StructuredPruner(model, probe[:1], PruningSpec(ratio=0.5)).step_(0.5, probe)


class _OffByOneShortcut(ChannelMapShortcut):
    """Deliberately mis-wired: drops the neighbour of each input channel it is told to drop."""

    def prune_in_channels_(self, idxs: Sequence[int]) -> None:
        super().prune_in_channels_([(i + 1) % self.in_channels for i in idxs])


def test_equivalence_check_catches_a_silent_miswiring() -> None:
    model = cifar_resnet("resnet20").eval()
    for stage in (model.layer2, model.layer3):
        old = stage[0].shortcut
        stage[0].shortcut = _OffByOneShortcut(old.in_channels, pad=old.index_map.count(-1) // 2)
    probe = _probe((4, 3, 32, 32))
    with pytest.raises(CheckFailed, match="equivalence check failed: removing the pruning group "
                                          "rooted at '.*' changed the probe output"):
        StructuredPruner(model, probe[:1], PruningSpec(ratio=0.5)).step_(0.5, probe)


def test_solve_ratio_hits_macs_target() -> None:
    model = cifar_resnet("resnet20").eval()
    example = torch.zeros(1, 3, 32, 32)
    base, _ = count_macs_params(model, example)
    spec = PruningSpec(target={"macs": 0.5}, round_to=1)
    ratio, achieved = solve_ratio_for_macs(model, example, spec, 0.5)
    assert abs(achieved - 0.5) < 0.02
    trial = copy.deepcopy(model)
    StructuredPruner(trial, example, spec, cumulative_ratios=[ratio]).step_(ratio, example)
    assert abs(1 - count_macs_params(trial, example)[0] / base - achieved) < 1e-9
    assert count_macs_params(model, example)[0] == base  # the original is untouched


def test_macs_search_with_a_gradient_criterion() -> None:
    """Taylor needs gradients, which the search's throw-away copies lack: local scope searches
    with l2 (the same widths); global scope, where the criterion decides the widths, refuses."""
    model = tiny_cnn(width=32).eval()
    example = _probe()[:1]
    taylor = PruningSpec(target={"macs": 0.5}, importance="taylor", round_to=1)
    l2 = PruningSpec(target={"macs": 0.5}, round_to=1)
    assert solve_ratio_for_macs(model, example, taylor, 0.5) == \
        solve_ratio_for_macs(model, example, l2, 0.5)
    with pytest.raises(InputError, match="needs scope: local"):
        solve_ratio_for_macs(model, example, taylor.model_copy(update={"scope": "global"}), 0.5)


def test_unreachable_macs_target() -> None:
    model = tiny_cnn().eval()
    spec = PruningSpec(target={"macs": 0.99}, ignored=["conv_a", "conv_b"])
    with pytest.raises(InputError, match="cannot be reached"):
        solve_ratio_for_macs(model, _probe()[:1], spec, 0.99)


def test_global_scope_prunes_unevenly_but_exactly() -> None:
    model = tiny_cnn(width=32).eval()
    record = StructuredPruner(model, _probe()[:1], PruningSpec(ratio=0.5, scope="global",
                                                               round_to=1)).step_(0.5, _probe())
    assert record.max_abs_diff < 1e-4
    total = model.stem[0].out_channels + model.conv_a.out_channels
    assert total < 32 + 64


def test_macs_search_never_falls_short_beyond_tolerance() -> None:
    # ResNet-20's 16-wide stage with round_to 8 makes the reduction coarse: nothing lies within
    # 0.02 below 0.6, so the search must return a reduction above the target, not the nearer one
    # below it.
    model = cifar_resnet("resnet20").eval()
    example = torch.zeros(1, 3, 32, 32)
    _, achieved = solve_ratio_for_macs(model, example, PruningSpec(target={"macs": 0.6}), 0.6,
                                       tolerance=0.02)
    assert achieved >= 0.58


def test_hessian_accumulates_every_sample() -> None:
    model = tiny_cnn().eval()
    probe = _probe()
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    pruner = StructuredPruner(model, probe[:1], PruningSpec(ratio=0.5, importance="hessian"))
    pruner.accumulate_gradients([(probe, labels)], torch.device("cpu"))
    expected = torch.zeros_like(model.conv_a.weight)
    for i in range(len(labels)):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(probe[i:i + 1]), labels[i:i + 1]).backward()
        expected += model.conv_a.weight.grad.pow(2)
    accumulated = pruner._pruner.importance._accu_grad[model.conv_a.weight]
    assert torch.allclose(accumulated, expected, rtol=1e-4, atol=1e-9)
    assert pruner.step_(0.5, probe).max_abs_diff < 1e-4


def test_macs_searches_of_one_schedule_share_their_trials() -> None:
    model = tiny_cnn(width=32).eval()
    example = _probe()[:1]
    spec = PruningSpec(target={"macs": 0.5}, round_to=1)
    shared: dict[float, float] = {}
    solve_ratio_for_macs(model, example, spec, 0.3, cache=shared)
    after_first = len(shared)
    _, achieved = solve_ratio_for_macs(model, example, spec, 0.5, cache=shared)
    alone: dict[float, float] = {}
    _, achieved_alone = solve_ratio_for_macs(model, example, spec, 0.5, cache=alone)
    assert len(shared) - after_first < len(alone)  # the second search reused the first's trials
    assert abs(achieved - 0.5) < 0.02 and abs(achieved_alone - 0.5) < 0.02
    ratios = solve_ratios_for_macs(model, example, spec, [0.3, 0.5])
    assert ratios[0] < ratios[1]
