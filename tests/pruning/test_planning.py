"""The MACs search's trials: one copy and one graph reused, the same widths as fresh copies."""

import copy

import pytest
import torch
from torch import nn

from compress.measure.counts import count_macs_params
from compress.models.cifar_resnet import cifar_resnet
from compress.pruning import planning
from compress.pruning.structured_kind import build_structured
from compress.recipe.pruning import PruningSpec
from tests.conftest import tiny_cnn


class _Branches(nn.Module):
    """Two branches added: one group coupling three layers, which a reuse must restore.
    (A cat of two pruned branches is left out: the structured pruner's groups carry stale
    offsets there, fresh copy or not.)"""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (self.a(x) + self.b(x)).relu()
        return self.head(self.c(y).relu().mean((2, 3)))


@pytest.mark.parametrize("make, size", [(lambda: cifar_resnet("resnet20"), 32),
                                        (lambda: tiny_cnn(width=32), 16), (_Branches, 16)])
def test_reused_trials_prune_like_fresh_copies(make, size: int) -> None:
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    spec = PruningSpec(ratio=0.5, verify=False, round_to=1)
    reused = planning._ReusedTrials(model, x, spec)
    for r in (0.2, 0.6, 0.4, 0.3):  # out of order: each trial starts from the restored copy
        fresh = copy.deepcopy(model).eval()
        build_structured(fresh, x, spec, cumulative_ratios=[r]).step_(r, x)
        trial = reused.prune(r)
        assert count_macs_params(trial, x) == count_macs_params(fresh, x)
        assert {n: p.shape for n, p in trial.named_parameters()} == \
            {n: p.shape for n, p in fresh.named_parameters()}
        with torch.no_grad():
            assert torch.allclose(trial(x), fresh(x), atol=1e-5)
    assert reused.ok and sum(1 for _ in model.parameters()) == sum(1 for _ in trial.parameters())


def test_the_search_traces_one_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    built = []
    real = planning.build_structured
    monkeypatch.setattr(planning, "build_structured",
                        lambda *a, **k: built.append(1) or real(*a, **k))
    model = cifar_resnet("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    ratio, achieved = planning.solve_ratio_for_macs(model, x, PruningSpec(target={"macs": 0.5}),
                                                    0.5, tolerance=0.02)
    assert len(built) == 1 and abs(achieved - 0.5) <= 0.02
