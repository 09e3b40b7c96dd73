"""Pruning inside closed blocks (compress.pruning.local): which blocks qualify, what stays
fixed, the proof per block, gradient criteria through the whole model, resume."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compress.pruning.local import BlockPruner, closed_blocks
from compress.pruning.structured import StructuredPruner
from compress.recipe.pruning import PruningSpec


class Net(nn.Module):
    """A stem, a closed conv block, a closed MLP over channels-last features, a head.

    ``shuffle`` mixes channels between the blocks the way no dependency graph follows here:
    the blocks' own inner widths are what can be pruned.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),
                                   nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32),
                                                 nn.BatchNorm2d(32)),
                                   nn.Conv2d(32, 8, 1), nn.ReLU())
        self.mlp = nn.Sequential(nn.Linear(8, 24), nn.GELU(), nn.Dropout(0.0),
                                 nn.Linear(24, 8))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(self.stem(x))
        y = y.flip(1)  # the outside depends on every one of the block's 8 output channels
        z = self.mlp(y.mean((2, 3)))
        return self.head(z + y.amax((2, 3)))


def _net() -> Net:
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net


def _x() -> torch.Tensor:
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _pruner(net: nn.Module, **spec: object) -> BlockPruner:
    return BlockPruner(net, _x()[:1], PruningSpec(**{"ratio": 0.5, **spec}),
                       closed_blocks(net, []), why="a test says so", build=StructuredPruner)


def test_closed_blocks_are_plain_chains_not_shared_and_not_ignored() -> None:
    net = _net()
    assert closed_blocks(net, []) == ["block", "mlp"]
    assert closed_blocks(net, ["mlp"]) == ["block"]
    shared = _net()
    shared.extra = nn.Linear(8, 24)
    shared.extra.weight = shared.mlp[0].weight  # used outside the block too
    assert closed_blocks(shared, []) == ["block"]


def test_a_chain_with_a_module_of_its_own_is_not_closed() -> None:
    class Gate(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * x.mean(1, keepdim=True)

    net = nn.Sequential(nn.Sequential(nn.Linear(4, 8), Gate(), nn.Linear(8, 4)))
    assert closed_blocks(net, []) == []


def test_only_inner_channels_go_and_each_block_is_proven() -> None:
    net = _net()
    x = _x()
    with torch.no_grad():
        reference_shape = net(x).shape
    record = _pruner(net).step_(0.5, x)
    assert record.proof == "proven" and record.max_abs_diff < 1e-4
    assert "2 closed blocks" in record.note and "a test says so" in record.note
    # The outside sees the same widths; inside, the 1x1 expansion, the depthwise conv and the
    # MLP's hidden layer lost channels.
    assert net.stem.out_channels == 8 and net.block[4].out_channels == 8
    assert net.mlp[3].out_features == 8
    assert net.block[0].out_channels < 32 and net.block[3][0].out_channels < 32
    assert net.mlp[0].out_features < 24
    with torch.no_grad():
        assert net(x).shape == reference_shape


def test_a_grouped_conv_reading_the_block_input_stays() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.Conv2d(8, 16, 1),
        nn.ReLU(), nn.Conv2d(16, 8, 1))).eval()
    pruner = BlockPruner(net, _x()[:1], PruningSpec(ratio=0.5), ["1"], why="test",
                         build=StructuredPruner)
    pruner.step_(0.5, _x())
    assert net[1][0].out_channels == 8 and net[1][4].out_channels == 8
    assert net[1][2].out_channels < 16


def test_the_proof_catches_a_wrong_removal(monkeypatch: pytest.MonkeyPatch) -> None:
    from compress.errors import CheckFailed
    from compress.pruning import structured

    original = structured.zero_dep_

    def zero_nothing_in_the_mlp(dep, idxs, is_out):  # type: ignore[no-untyped-def]
        if isinstance(dep.target.module, nn.Linear):
            return None  # the zeroed reference keeps channels the removal takes away
        return original(dep, idxs, is_out)

    monkeypatch.setattr(structured, "zero_dep_", zero_nothing_in_the_mlp)
    with pytest.raises(CheckFailed, match="^in block 'mlp': .*'0'"):
        _pruner(_net()).step_(0.5, _x())


def test_gradient_scores_come_from_the_whole_model() -> None:
    net = _net()
    pruner = _pruner(net, importance="taylor")
    assert pruner.needs_grad
    batches = [(_x(), torch.tensor([0, 1, 2, 3]))]
    pruner.accumulate_gradients(batches, torch.device("cpu"))
    assert net.mlp[0].weight.grad is not None and net.block[0].weight.grad is not None
    assert net.head.weight.grad is not None  # the loss is the whole model's
    assert pruner.step_(0.5, _x()).proof == "proven"


def test_restore_replays_the_steps_on_a_fresh_model() -> None:
    net = _net()
    fresh = copy.deepcopy(net)
    pruner = _pruner(net)
    pruner.step_(0.5, _x())
    state = pruner.get_state()
    again = _pruner(fresh)
    again.restore_(state, {})
    assert {k: v.shape for k, v in fresh.state_dict().items()} == \
        {k: v.shape for k, v in net.state_dict().items()}
    for (name, a), (_, b) in zip(net.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name
