"""The proof of a step: one comparison when right, a bisection naming the culprit when wrong,
and a tolerance that follows the output's scale."""

import math

import pytest
import torch
from torch import nn

from compress.errors import CheckFailed, InputError
from compress.models.cifar_resnet import cifar_resnet
from compress.pruning import structured
from compress.pruning.proof import Snapshot, run_proof
from compress.pruning.structured import StructuredPruner
from compress.recipe.pruning import PruningSpec


def _probe(shape=(4, 3, 32, 32)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def _count_passes(model: nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _unzeroed(monkeypatch: pytest.MonkeyPatch, model: nn.Module, names: set[str]) -> None:
    """A wrong step: the channels of ``names`` are removed but were never zeroed, so the
    zeroed reference still uses them and their removal changes the output."""
    modules = {model.get_submodule(n) for n in names}
    zero = structured.zero_dep_

    def skipping(dep, idxs, is_out):
        if dep.target.module not in modules:
            zero(dep, idxs, is_out)
    monkeypatch.setattr(structured, "zero_dep_", skipping)


@pytest.mark.parametrize("strategy", ["bisect", "per-group"])
def test_a_wrong_removal_is_named(monkeypatch: pytest.MonkeyPatch, strategy: str) -> None:
    model = cifar_resnet("resnet20").eval()
    _unzeroed(monkeypatch, model, {"layer2.1.conv1", "layer2.1.bn1", "layer2.1.conv2"})
    pruner = StructuredPruner(model, _probe()[:1], PruningSpec(ratio=0.5))
    pruner.proof_strategy = strategy
    with pytest.raises(CheckFailed, match="removing the pruning group rooted at "
                                          "'layer2.1.conv1' changed the probe output"):
        pruner.step_(0.5, _probe())


def test_a_right_step_takes_two_passes_and_a_wrong_one_log_groups(
        monkeypatch: pytest.MonkeyPatch) -> None:
    probe = _probe()
    model = cifar_resnet("resnet20").eval()
    pruner = StructuredPruner(model, probe[:1], PruningSpec(ratio=0.5))
    calls = _count_passes(model)
    record = pruner.step_(0.5, probe)
    assert record.groups >= 10 and record.passes == calls[0] == 2  # reference + one check

    bad = cifar_resnet("resnet20").eval()
    _unzeroed(monkeypatch, bad, {"layer3.2.conv1", "layer3.2.bn1", "layer3.2.conv2"})
    pruner = StructuredPruner(bad, probe[:1], PruningSpec(ratio=0.5))
    calls = _count_passes(bad)
    with pytest.raises(CheckFailed, match="'layer3.2.conv1'"):
        pruner.step_(0.5, probe)
    assert calls[0] <= 2 + math.ceil(math.log2(record.groups))
    # The old way compares after every removal up to the culprit.
    old = cifar_resnet("resnet20").eval()
    _unzeroed(monkeypatch, old, {"layer3.2.conv1", "layer3.2.bn1", "layer3.2.conv2"})
    pruner = StructuredPruner(old, probe[:1], PruningSpec(ratio=0.5))
    pruner.proof_strategy = "per-group"
    calls_old = _count_passes(old)
    with pytest.raises(CheckFailed, match="'layer3.2.conv1'"):
        pruner.step_(0.5, probe)
    assert calls_old[0] > calls[0]


def _removals(net: nn.Sequential, bad: int, n: int = 16, by: float = 0.0):
    """n removals of which ``bad`` moves output 0 by ``by`` (relative to the weight)."""
    def remove(i: int):
        def go() -> None:
            if i == bad:
                with torch.no_grad():
                    net[-1].bias[0] += by
        return f"group{i}", go
    return [remove(i) for i in range(n)]


@pytest.mark.parametrize("bad", [0, 5, 15])
def test_bisection_finds_any_position(bad: int) -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with pytest.raises(CheckFailed, match=f"'group{bad}'"):
        run_proof(net, torch.ones(2, 4), _removals(net, bad, by=1.0), atol=1e-4)


def test_a_removal_that_breaks_the_forward_pass_is_named() -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()

    def shrink() -> None:
        net[0].weight = nn.Parameter(net[0].weight[:4].clone())
        net[0].bias = nn.Parameter(net[0].bias[:4].clone())
    removals = [(f"g{i}", lambda: None) for i in range(9)]
    removals[6] = ("g6", shrink)
    with pytest.raises(CheckFailed, match="pruning group rooted at 'g6' broke the model: "
                                          "RuntimeError"):
        run_proof(net, torch.ones(2, 4), removals, atol=1e-4)


def test_a_removal_that_raises_is_bad_input_naming_it() -> None:
    net = nn.Linear(2, 2)

    def fail() -> None:
        raise IndexError("index 64 is out of bounds")
    with pytest.raises(InputError, match="group rooted at 'conv9' cannot be removed "
                                         r"\(IndexError: index 64"):
        run_proof(net, torch.ones(1, 2), [("conv9", fail)], atol=1e-4)


def test_tolerance_follows_a_small_output() -> None:
    """Outputs around 1e-3: a removal that moves one by 1% of its size passed the old rule
    (1e-4 x max(1, |output|) = 1e-4) and is caught now (1e-4 x 1e-3)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        net[-1].weight.mul_(1e-3)
        net[-1].bias.mul_(1e-3)
        peak = net(torch.ones(2, 4)).abs().max().item()
    assert 1e-4 < peak < 1e-2
    moved = 0.01 * peak
    assert moved < 1e-4 * max(1.0, peak)  # the old tolerance let it through
    with pytest.raises(CheckFailed, match="tolerance .* max\\|output\\|"):
        run_proof(net, torch.ones(2, 4), _removals(net, 3, by=moved), atol=1e-4)
    proof = run_proof(net, torch.ones(2, 4), _removals(net, 3, by=0.0), atol=1e-4)
    assert proof.tolerance.value == pytest.approx(1e-4 * peak)


def test_snapshot_restores_shapes_identities_and_hooks() -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
    weight = net[0].weight
    handle = net[1].register_forward_hook(lambda m, i, o: o * 0)
    snap = Snapshot(net)
    handle.remove()
    net[0].weight = nn.Parameter(torch.zeros(2, 4))
    net[0].out_features = 2
    snap.restore_()
    assert net[0].weight is weight and net[0].out_features == 8
    assert bool((net(torch.ones(1, 4)) == 0).all())  # the hook is back ...
    handle.remove()  # ... in the dict its handle holds
    assert not bool((net(torch.ones(1, 4)) == 0).all())


def test_a_model_too_large_for_a_snapshot_compares_after_every_group(monkeypatch) -> None:
    """Same verdict, no model copy: one pass per group instead of a snapshot."""
    import compress.pruning.proof as proof

    lin = nn.Linear(4, 4)  # 80 bytes of parameters
    removals = [(f"g{i}", lambda: None) for i in range(3)]
    assert run_proof(lin, torch.ones(1, 4), removals, atol=1e-6).passes == 2
    monkeypatch.setattr(proof, "SNAPSHOT_MAX_BYTES", 79)
    monkeypatch.setattr(proof, "Snapshot", None)  # never built
    assert run_proof(lin, torch.ones(1, 4), removals, atol=1e-6).passes == 4
    bad = [("g0", lambda: None), ("g1", lambda: lin.weight.data.add_(1.0)), ("g2", lambda: None)]
    with pytest.raises(CheckFailed, match="g1"):  # the culprit is still named
        run_proof(lin, torch.ones(1, 4), bad, atol=1e-6)
