import gzip
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compress.pruning.masks as sparsity
from compress.errors import CheckFailed, InputError
from compress.measure.counts import compressed_size, weight_sparsity
from compress.pruning import build_pruner
from compress.pruning.nm import NMPruner
from compress.pruning.unstructured import UnstructuredPruner
from compress.recipe.pruning import PruningSpec
from tests.conftest import tiny_cnn


def _mlp(first_in: int = 12) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(first_in, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(),
                         nn.Linear(24, 5))


MODELS = {"cnn": (tiny_cnn, (4, 3, 8, 8), "head"), "mlp": (_mlp, (6, 12), "4")}


def _probe(shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def _fake_finetune(model: nn.Module, opt: torch.optim.Optimizer, shape, classes: int) -> None:
    model.train()
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        x = torch.randn(*shape, generator=gen)
        y = torch.randint(0, classes, (shape[0],), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


def _masked(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight_mask == 0 for n, m in model.named_modules() if hasattr(m, "weight_mask")}


@pytest.mark.parametrize("importance", ["l1", "random"])
@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("which", list(MODELS))
def test_iterative_unstructured_reaches_targets_and_keeps_pruned(which, scope, importance):
    factory, shape, out_name = MODELS[which]
    model = factory().eval()
    probe = _probe(shape)
    modules = dict(model.named_modules())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    spec = PruningSpec(kind="unstructured", ratio=0.75, scope=scope, importance=importance)
    pruner = UnstructuredPruner(model, probe[:1], spec, cumulative_ratios=[0.5, 0.75])
    previous: dict[str, torch.Tensor] = {}
    for target in (0.5, 0.75):
        record = pruner.step_(target, probe)
        # Measured: the masked model's probe output vs the copy with the masks folded in.
        assert record.unit == "weights" and record.proof == "proven"
        assert record.max_abs_diff is not None and 0.0 <= record.max_abs_diff < 1e-5
        masked = _masked(model)
        assert out_name not in masked and set(masked) == set(record.layers)
        for name, was in previous.items():
            assert masked[name][was].all(), "a previously pruned weight came back"
        total = sum(m.numel() for m in masked.values())
        pruned = sum(int(m.sum()) for m in masked.values())
        assert record.removed == pruned - sum(int(m.sum()) for m in previous.values())
        if scope == "global":
            assert pruned == round(target * total)
        else:
            assert all(int(m.sum()) == round(target * m.numel()) for m in masked.values())
        assert pruner.sparsity()["overall"] == pytest.approx(target, abs=1 / total + 1e-9)
        trained = {n: modules[n].weight_orig.detach().clone() for n in masked}
        _fake_finetune(model, opt, shape, 4 if which == "cnn" else 5)
        assert any(not torch.equal(modules[n].weight_orig, w) for n, w in trained.items())
        for name, m in masked.items():  # masked weights stay zero through training
            assert (modules[name].weight[m] == 0).all()
            assert (modules[name].weight_orig.grad[m] == 0).all()
        previous = masked
    with torch.no_grad():
        before = model(probe)
    pruner.finalize_()
    keys = list(model.state_dict())
    assert not any(k.endswith(("_orig", "_mask")) for k in keys)
    assert f"{out_name}.weight" in keys and all(isinstance(p, nn.Parameter)
                                                for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(probe), before)
    for name, was in previous.items():  # the masks are now in the plain weights
        assert (modules[name].weight[was] == 0).all()
    assert pruner.sparsity()["overall"] >= 0.75 - 1e-3


def test_output_and_ignored_layers_stay_untouched():
    model = tiny_cnn().eval()
    probe = _probe((6, 3, 16, 16))
    head, conv_a = model.head.weight.detach().clone(), model.conv_a.weight.detach().clone()
    spec = PruningSpec(kind="unstructured", ratio=0.5, scope="global", ignored=["conv_a"])
    record = UnstructuredPruner(model, probe[:1], spec, cumulative_ratios=[0.5]).step_(0.5, probe)
    assert set(record.layers) == {"stem.0", "conv_b"}
    assert torch.equal(model.head.weight, head) and torch.equal(model.conv_a.weight, conv_a)
    model = tiny_cnn().eval()
    spec = PruningSpec(kind="n:m", ignored=[r"re:conv_\w", "stem"])  # a parent covers children
    with pytest.raises(InputError, match="no eligible layer"):
        NMPruner(model, probe[:1], spec, cumulative_ratios=[0.5])


def test_biases_and_norms_only_when_asked():
    probe = _probe((6, 3, 16, 16))
    model = tiny_cnn().eval()
    UnstructuredPruner(model, probe[:1], PruningSpec(kind="unstructured", ratio=0.5),
                       cumulative_ratios=[0.5]).step_(0.5, probe)
    assert not hasattr(model.conv_a, "bias_mask") and not hasattr(model.bn_a, "weight_mask")
    model = tiny_cnn().eval()
    spec = PruningSpec(kind="unstructured", ratio=0.5, prune_biases=True, prune_norms=True)
    pruner = UnstructuredPruner(model, probe[:1], spec, cumulative_ratios=[0.5])
    layers = pruner.step_(0.5, probe).layers
    assert layers["conv_a.bias"] == 0.5 and layers["bn_a"] == 0.5 and layers["stem.1"] == 0.5
    assert not hasattr(model.head, "bias_mask")  # the output layer keeps its bias too
    assert not hasattr(model.bn_a, "bias_mask")  # norm shifts are not scales: kept
    pruner.finalize_()
    assert int((model.conv_a.bias == 0).sum()) == 16


@pytest.mark.parametrize("scope", ["local", "global"])
def test_ties_never_overshoot(scope):
    model = _mlp().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)  # every weight ties with every other
    probe = _probe((6, 12))
    spec = PruningSpec(kind="unstructured", ratio=0.3, scope=scope)
    UnstructuredPruner(model, probe[:1], spec, cumulative_ratios=[0.3]).step_(0.3, probe)
    pruned = [int((m.weight_mask == 0).sum()) for m in (model[0], model[2])]
    if scope == "local":
        assert pruned == [round(0.3 * 384), round(0.3 * 768)]
    else:
        assert sum(pruned) == round(0.3 * (384 + 768))


@pytest.mark.parametrize("importance", ["l1", "random"])
@pytest.mark.parametrize("which", list(MODELS))
def test_nm_pattern_holds_and_indivisible_layers_are_skipped(which, importance):
    factory, shape, out_name = MODELS[which]
    model = factory().eval()
    probe = _probe(shape)
    spec = PruningSpec(kind="n:m", n=2, m=4, importance=importance)
    pruner = NMPruner(model, probe[:1], spec, cumulative_ratios=[0.5])
    record = pruner.step_(0.5, probe)
    masked = _masked(model)
    assert out_name not in masked
    for name, m in masked.items():
        w = dict(model.named_modules())[name].weight.detach()
        blocks = (w.movedim(1, -1) != 0).reshape(*w.movedim(1, -1).shape[:-1], -1, 4)
        assert (blocks.sum(-1) <= 2).all() and record.layers[name] == 0.5
    if which == "cnn":
        assert "stem.0" in pruner.skipped and record.layers["stem.0"] == 0.0  # 3 input channels
        assert set(masked) == {"conv_a", "conv_b"}
    with torch.no_grad():
        before = model(probe)
    pruner.finalize_()
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(probe), before)


def test_no_eligible_layer_or_bad_importance_is_bad_input():
    model = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 5))
    with pytest.raises(InputError, match="no eligible layer"):
        NMPruner(model, torch.randn(1, 10), PruningSpec(kind="n:m", n=2, m=4),
                 cumulative_ratios=[0.5])
    with pytest.raises(InputError, match="no eligible layer"):  # only the output layer
        UnstructuredPruner(nn.Sequential(nn.Linear(4, 3)), torch.randn(1, 4),
                           PruningSpec(kind="unstructured", ratio=0.5), cumulative_ratios=[0.5])
    with pytest.raises(ValueError, match="n:m pruning supports importance l1, l2, random"):
        PruningSpec(kind="n:m", importance="taylor")  # checked once, where the recipe enters


@pytest.mark.parametrize("kind", ["unstructured", "n:m"])
def test_a_mask_that_leaves_a_weight_is_caught(kind, monkeypatch):
    real = sparsity._install_

    def leaky(t, keep):
        real(t, keep)
        with torch.no_grad():
            t.mask().view(-1)[int((keep.view(-1) == 0).nonzero()[0])] = 1.0

    monkeypatch.setattr(sparsity, "_install_", leaky)
    spec = PruningSpec(kind="unstructured", ratio=0.5) if kind == "unstructured" else \
        PruningSpec(kind="n:m", n=2, m=4)
    pruner = build_pruner(_mlp().eval(), torch.randn(1, 12), spec, [0.5])
    with pytest.raises(CheckFailed):
        pruner.step_(0.5, torch.randn(4, 12))


def test_finalize_proof_can_fail(monkeypatch):
    model = _mlp().eval()
    pruner = UnstructuredPruner(model, torch.randn(1, 12), PruningSpec(kind="unstructured",
                                ratio=0.5), cumulative_ratios=[0.5])
    pruner.step_(0.5, torch.randn(4, 12))
    real = sparsity.prune.remove

    def sloppy(module, name):
        real(module, name)
        with torch.no_grad():
            getattr(module, name).add_(0.1)

    monkeypatch.setattr(sparsity.prune, "remove", sloppy)
    with pytest.raises(CheckFailed, match=r"unstructured finalize \(masks folded into the "
                       r"weights\): the probe output differs from the masked model's by "):
        pruner.finalize_()


SPECS = {"unstructured": PruningSpec(kind="unstructured", ratio=0.5),
         "n:m": PruningSpec(kind="n:m", n=2, m=4)}


def _nudged(delta: float):  # type: ignore[no-untyped-def]
    """A folded_copy whose first weight is off by ``delta``: folding that does not match."""
    real = sparsity.folded_copy

    def folded(model, device="cpu"):  # type: ignore[no-untyped-def]
        copy = real(model, device)
        with torch.no_grad():
            next(p for n, p in copy.named_parameters() if n.endswith("weight")).view(-1)[0] += \
                delta
        return copy
    return folded


@pytest.mark.parametrize("kind", list(SPECS))
def test_the_step_proof_measures_the_folded_copy(kind, monkeypatch):
    # A copy off by 1e-6 passes (within the tolerance) and its measured difference is reported:
    # the figure is a measurement, not a constant.
    monkeypatch.setattr(sparsity, "folded_copy", _nudged(1e-6))
    model, probe = _mlp().eval(), _probe((6, 12))
    record = build_pruner(model, probe[:1], SPECS[kind], [0.5]).step_(0.5, probe)
    assert record.proof == "proven" and 0.0 < record.max_abs_diff < 1e-4


@pytest.mark.parametrize("kind", list(SPECS))
def test_a_folded_copy_that_differs_fails_the_step(kind, monkeypatch):
    monkeypatch.setattr(sparsity, "folded_copy", _nudged(10.0))
    model, probe = _mlp().eval(), _probe((6, 12))
    pruner = build_pruner(model, probe[:1], SPECS[kind], [0.5])
    with pytest.raises(CheckFailed, match=rf"{kind} step 1 \(masks folded into the weights\): "
                       r"the probe output differs from the masked model's by [\d.]+, past the "
                       r"proof tolerance for pruning.verify_atol 0.0001"):
        pruner.step_(0.5, probe)


@pytest.mark.parametrize("kind", list(SPECS))
def test_without_verify_nothing_is_measured_or_folded(kind, monkeypatch):
    def boom(*_):  # type: ignore[no-untyped-def]
        raise AssertionError("verify: false must not run the proof")

    monkeypatch.setattr(sparsity, "folded_copy", boom)
    spec = SPECS[kind].model_copy(update={"verify": False})
    model, probe = _mlp().eval(), _probe((6, 12))
    record = build_pruner(model, probe[:1], spec, [0.5]).step_(0.5, probe)
    assert record.proof == "not proven" and record.max_abs_diff is None


def test_the_step_proof_costs_one_extra_forward_pass():
    model, probe = _mlp().eval(), _probe((6, 12))
    calls: list[int] = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))  # deep-copied with the model
    pruner = UnstructuredPruner(model, probe[:1], PruningSpec(kind="unstructured", ratio=0.75),
                                cumulative_ratios=[0.5, 0.75])
    for target in (0.5, 0.75):
        calls.clear()
        pruner.step_(target, probe)
        assert len(calls) == 2  # the masked model (it runs to a finite output) + the folded copy


def test_build_pruner_picks_the_kind():
    example = torch.randn(1, 12)
    assert isinstance(build_pruner(_mlp(), example, PruningSpec(kind="unstructured", ratio=0.5),
                                   [0.5]), UnstructuredPruner)
    assert isinstance(build_pruner(_mlp(), example, PruningSpec(kind="n:m", n=2, m=4), [0.5]),
                      NMPruner)


def test_weight_sparsity_counts_exact_zeros():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight[:2] = 0.0   # 8 of 16
        model[2].weight[0, 0] = 0.0  # 1 of 8
        model[1].weight.zero_()  # norms are not counted
    result = weight_sparsity(model)
    assert result["layers"] == {"0": 0.5, "2": 0.125}
    assert result["overall"] == pytest.approx(9 / 24) and result["zeros"] == 9


def test_compressed_size(tmp_path):
    zeros = tmp_path / "zeros.bin"
    zeros.write_bytes(bytes(1 << 20))
    sizes = compressed_size(zeros)
    assert sizes["bytes"] == 1 << 20 and sizes["gzip_bytes"] < sizes["bytes"] / 100
    assert abs(sizes["gzip_bytes"] - len(gzip.compress(bytes(1 << 20), 6))) < 64
    noise = tmp_path / "noise.bin"
    noise.write_bytes(torch.randint(0, 256, (1 << 16,), dtype=torch.uint8).numpy().tobytes())
    assert compressed_size(noise)["gzip_bytes"] > (1 << 16) * 0.95
    assert ("zstd_bytes" in sizes) == (importlib.util.find_spec("zstandard") is not None)
    with pytest.raises(InputError, match="is not a file"):
        compressed_size(tmp_path / "missing.bin")


@pytest.mark.parametrize("importance", ["l1", "random"])
def test_a_restored_pruner_continues_like_the_original(importance):
    """get_state + get_tensors (the masks) + the plain per-step weights rebuild the pruner."""
    from compress.export.safetensors import plain_state_dict

    spec = PruningSpec(kind="unstructured", ratio=0.75, importance=importance)
    probe = _probe((6, 12))
    original = _mlp()
    pruner = UnstructuredPruner(original, probe[:1], spec, cumulative_ratios=[0.5, 0.75])
    pruner.step_(0.5, probe)
    _fake_finetune(original, torch.optim.SGD(original.parameters(), lr=0.1), (6, 12), 5)
    state, tensors, weights = pruner.get_state(), pruner.get_tensors(), plain_state_dict(original)
    assert set(tensors) == {"0", "2"} and all(t.dtype == torch.bool for t in tensors.values())

    rebuilt = _mlp()
    again = UnstructuredPruner(rebuilt, probe[:1], spec, cumulative_ratios=[0.5, 0.75])
    again.restore_(state, tensors)
    sparsity.load_state_(rebuilt, weights)
    assert again.sparsity() == pruner.sparsity()
    assert torch.equal(rebuilt(probe), original(probe))
    pruner.step_(0.75, probe)
    again.step_(0.75, probe)
    assert all(torch.equal(a, b) for a, b in zip(_masked(original).values(),
                                                 _masked(rebuilt).values(), strict=True))
    with pytest.raises(RuntimeError, match="keys the model lacks"):
        sparsity.load_state_(rebuilt, {**weights, "9.weight": torch.zeros(1)})


def test_finalize_leaves_positive_zeros_where_pruned():
    model = _mlp()
    probe = _probe((6, 12))
    pruner = UnstructuredPruner(model, probe[:1], PruningSpec(kind="unstructured", ratio=0.5),
                                cumulative_ratios=[0.5])
    pruner.step_(0.5, probe)
    negative = sum(int(((m.weight_orig < 0) & (m.weight_mask == 0)).sum())
                   for m in model.modules() if hasattr(m, "weight_mask"))
    assert negative > 0  # without the fix these would be -0.0 after folding
    pruner.finalize_()
    zeros = torch.cat([m.weight[m.weight == 0] for m in model.modules()
                       if isinstance(m, nn.Linear)])
    assert len(zeros) > 0 and not torch.signbit(zeros).any()
