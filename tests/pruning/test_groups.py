"""Groups of one step are removed one at a time, each rebuilt on the model as it is then."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.pruning.structured import StructuredPruner
from compress.recipe.pruning import PruningSpec
from tests.pruning.test_norms import prune_to_half_the_macs


class DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, 2 * growth, 1)
        self.norm2 = nn.BatchNorm2d(2 * growth)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))
        return torch.cat([x, y], 1)


class DenseToy(nn.Module):
    """Two chained concatenations, then a transition and a second chain, as in DenseNet."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.block1 = nn.Sequential(DenseLayer(16, 8), DenseLayer(24, 8))
        self.trans = nn.Sequential(nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 16, 1))
        self.block2 = nn.Sequential(DenseLayer(16, 8), DenseLayer(24, 8))
        self.norm, self.head = nn.BatchNorm2d(32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.trans(self.block1(self.stem(x))))
        return self.head(F.adaptive_avg_pool2d(F.relu(self.norm(x)), 1).flatten(1))


def _toy() -> DenseToy:
    torch.manual_seed(0)
    model = DenseToy()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # statistics of a trained model: a wrong channel shows
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.copy_(0.1 * torch.randn(bn.num_features, generator=gen))
                bn.running_var.copy_(0.5 + torch.rand(bn.num_features, generator=gen))
                bn.bias.copy_(0.1 * torch.randn(bn.num_features, generator=gen))
    return model.eval()


def _probe() -> torch.Tensor:
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_chained_concatenations_prune_exactly() -> None:
    model = _toy()
    spec = PruningSpec(ratio=0.5, round_to=1)
    record = StructuredPruner(model, _probe()[:1], spec).step_(0.5, _probe())
    assert record.max_abs_diff < 1e-5 and record.groups >= 8
    first, second = model.block1
    assert first.conv2.out_channels == 4 and second.norm1.num_features == 8 + 4
    assert model.trans[0].num_features == 8 + 4 + 4 and model.head.in_features == 16
    assert model(_probe()).shape == (4, 10)


def test_resume_replays_the_steps_to_the_same_model() -> None:
    model, spec = _toy(), PruningSpec(ratio=0.6, round_to=1)
    fresh = copy.deepcopy(model)
    pruner = StructuredPruner(model, _probe()[:1], spec, cumulative_ratios=[0.3, 0.6])
    pruner.step_(0.3, _probe())
    pruner.step_(0.6, _probe())
    state = json.loads(json.dumps(pruner.get_state()))
    again = StructuredPruner(fresh, _probe()[:1], spec, cumulative_ratios=[0.3, 0.6])
    again.restore_(state, {})
    assert again.widths() == pruner.widths() and again.steps_done == 2
    fresh.load_state_dict(model.state_dict())  # same shapes everywhere
    assert torch.equal(fresh(_probe()), model(_probe()))


@pytest.mark.slow
def test_torchvision_densenet121_prunes_to_half_the_macs_proven() -> None:
    removed, rel_diff = prune_to_half_the_macs("densenet121", 32)
    assert removed >= 0.5 - 0.01 and rel_diff < 1e-4
