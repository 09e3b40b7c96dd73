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
from compress.pruning.mask_store import MaskStore, unpack_bits
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


def _masked(pruner) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """The pruned entries (True) of every masked weight, by key."""
    return {t.key: ~keep for t in pruner._tensors if (keep := pruner._keep(t)) is not None
            and t.param == "weight"}


OPTIMIZERS = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
              "adam": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-3),
              "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)}


@pytest.mark.parametrize("importance, optimizer", [("l1", "sgd"), ("random", "adam"),
                                                   ("l1", "adamw")])
@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("which", list(MODELS))
def test_iterative_unstructured_reaches_targets_and_keeps_pruned(which, scope, importance,
                                                                 optimizer):
    factory, shape, out_name = MODELS[which]
    model = factory().eval()
    probe = _probe(shape)
    modules = dict(model.named_modules())
    keys = list(model.state_dict())
    bytes_before = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    opt = OPTIMIZERS[optimizer](model.parameters())
    spec = PruningSpec(kind="unstructured", ratio=0.75, scope=scope, importance=importance)
    pruner = UnstructuredPruner(model, probe[:1], spec, cumulative_ratios=[0.5, 0.75])
    previous: dict[str, torch.Tensor] = {}
    for target in (0.5, 0.75):
        record = pruner.step_(target, probe)
        # The pruned weights are zeros in the parameters themselves: the proof holds them to
        # exactly zero, and the model holds nothing more than before (no copies, no masks).
        assert record.unit == "weights" and record.proof == "proven"
        assert record.max_abs_diff == 0.0 and record.tolerance["value"] == 0.0
        assert list(model.state_dict()) == keys
        assert sum(v.numel() * v.element_size() for v in model.state_dict().values()) == \
            bytes_before
        masked = _masked(pruner)
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
        trained = {n: modules[n].weight.detach().clone() for n in masked}
        _fake_finetune(model, opt, shape, 4 if which == "cnn" else 5)
        assert any(not torch.equal(modules[n].weight, w) for n, w in trained.items())
        for name, m in masked.items():  # masked weights stay zero through training
            assert (modules[name].weight[m] == 0).all()
            assert (modules[name].weight.grad[m] == 0).all()
            assert (modules[name].weight.grad[~m] != 0).any()
        previous = masked
    with torch.no_grad():
        before = model(probe)
    pruner.finalize_()
    assert list(model.state_dict()) == keys and _masked(pruner) == {}
    with torch.no_grad():
        assert torch.equal(model(probe), before)
    for name, was in previous.items():  # the zeros stay in the plain weights
        assert (modules[name].weight[was] == 0).all()
    assert pruner.sparsity()["overall"] >= 0.75 - 1e-3
    model.train()  # the gradient hooks are gone: pruned weights get gradients again
    F.cross_entropy(model(probe), torch.zeros(len(probe), dtype=torch.long)).backward()
    name, was = next(iter(previous.items()))
    assert (modules[name].weight.grad[was] != 0).any()


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
    assert (model.conv_a.bias != 0).all() and (model.bn_a.weight != 0).all()
    model = tiny_cnn().eval()
    spec = PruningSpec(kind="unstructured", ratio=0.5, prune_biases=True, prune_norms=True)
    pruner = UnstructuredPruner(model, probe[:1], spec, cumulative_ratios=[0.5])
    layers = pruner.step_(0.5, probe).layers
    assert layers["conv_a.bias"] == 0.5 and layers["bn_a"] == 0.5 and layers["stem.1"] == 0.5
    assert "head.bias" not in layers  # the output layer keeps its bias too
    assert "bn_a.bias" not in layers  # norm shifts are not scales: kept
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
    pruned = [int((m.weight == 0).sum()) for m in (model[0], model[2])]
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
    masked = _masked(pruner)
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
    assert _masked(pruner) == {}
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


SPECS = {"unstructured": PruningSpec(kind="unstructured", ratio=0.5),
         "n:m": PruningSpec(kind="n:m", n=2, m=4)}


@pytest.mark.parametrize("kind", list(SPECS))
def test_a_mask_that_leaves_a_weight_is_caught(kind, monkeypatch):
    real = MaskStore.install_

    def leaky(self, key, module, param, keep):  # type: ignore[no-untyped-def]
        real(self, key, module, param, keep)
        with torch.no_grad():
            getattr(module, param).view(-1)[int((~keep).view(-1).nonzero()[0])] = 0.25

    monkeypatch.setattr(MaskStore, "install_", leaky)
    pruner = build_pruner(_mlp().eval(), torch.randn(1, 12), SPECS[kind], [0.5])
    caught = {"unstructured": "a pruned weight of '0' is 0.25, not zero",  # the zeros check
              "n:m": "'0' has a block of 4 weights with 3 non-zeros"}  # its pattern, first
    with pytest.raises(CheckFailed, match=caught[kind]):
        pruner.step_(0.5, torch.randn(4, 12))


@pytest.mark.parametrize("kind", list(SPECS))
def test_finalize_fails_when_a_pruned_weight_moved(kind):
    """An optimizer step the gradient hook did not see (a weight written directly)."""
    model = _mlp().eval()
    pruner = build_pruner(model, torch.randn(1, 12), SPECS[kind], [0.5])
    pruner.step_(0.5, torch.randn(4, 12))
    with torch.no_grad():
        model[2].weight.view(-1)[int((~pruner._keep(pruner._tensors[1])).view(-1).nonzero()[0])] \
            = -0.5
    with pytest.raises(CheckFailed, match=rf"{kind} finalize: a pruned weight of '2' is 0.5, "
                       r"not zero, in the weight the forward uses"):
        pruner.finalize_()


@pytest.mark.parametrize("kind", list(SPECS))
def test_without_verify_nothing_is_checked(kind, monkeypatch):
    def boom(*_):  # type: ignore[no-untyped-def]
        raise AssertionError("verify: false must not run the proof")

    monkeypatch.setattr(sparsity.MaskPruner, "_prove", boom)
    monkeypatch.setattr(sparsity.MaskPruner, "_check_zeros", boom)
    spec = SPECS[kind].model_copy(update={"verify": False})
    model, probe = _mlp().eval(), _probe((6, 12))
    pruner = build_pruner(model, probe[:1], spec, [0.5])
    record = pruner.step_(0.5, probe)
    assert record.proof == "not proven" and record.max_abs_diff is None
    pruner.finalize_()


def test_a_copy_of_a_masked_model_is_plain_and_the_original_stays_masked():
    """Mid-run exports copy the model: the copy carries no gradient hook, the original does."""
    model, probe = _mlp().eval(), _probe((6, 12))
    pruner = build_pruner(model, probe[:1], SPECS["unstructured"], [0.5])
    pruner.step_(0.5, probe)
    copied = sparsity.export_copy(model).train()
    for net in (model.train(), copied):
        F.cross_entropy(net(probe), torch.zeros(6, dtype=torch.long)).backward()
    pruned = ~pruner._keep(pruner._tensors[0])
    assert (model[0].weight.grad[pruned] == 0).all()
    assert (copied[0].weight.grad[pruned] != 0).any()
    assert torch.equal(copied[0].weight, model[0].weight)


def test_the_step_proof_costs_one_forward_pass():
    model, probe = _mlp().eval(), _probe((6, 12))
    calls: list[int] = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    pruner = UnstructuredPruner(model, probe[:1], PruningSpec(kind="unstructured", ratio=0.75),
                                cumulative_ratios=[0.5, 0.75])
    for target in (0.5, 0.75):
        calls.clear()
        pruner.step_(target, probe)
        assert len(calls) == 1  # the pruned model runs to a finite output; no copy is made


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
    assert set(tensors) == {"0", "2"} and all(t.dtype == torch.uint8 for t in tensors.values())
    assert tensors["0"].numel() == 32 * 12 // 8  # one bit per weight

    rebuilt = _mlp()
    again = UnstructuredPruner(rebuilt, probe[:1], spec, cumulative_ratios=[0.5, 0.75])
    again.restore_(state, tensors)
    sparsity.load_state_(rebuilt, weights)
    assert again.sparsity() == (at_first_step := pruner.sparsity())
    assert torch.equal(rebuilt(probe), original(probe))
    pruner.step_(0.75, probe)
    again.step_(0.75, probe)
    assert all(torch.equal(a, b) for a, b in zip(_masked(pruner).values(),
                                                 _masked(again).values(), strict=True))
    older = UnstructuredPruner(_mlp(), probe[:1], spec, cumulative_ratios=[0.5, 0.75])
    older.restore_(state, {k: unpack_bits(v, w.shape) for k, v in tensors.items()
                           for w in [dict(original.named_modules())[k].weight]})
    assert older.sparsity() == at_first_step  # bool masks, as runs saved them before packing
    with pytest.raises(RuntimeError, match="keys the model lacks"):
        sparsity.load_state_(rebuilt, {**weights, "9.weight": torch.zeros(1)})


def test_finalize_leaves_positive_zeros_where_pruned():
    model = _mlp()
    probe = _probe((6, 12))
    pruner = UnstructuredPruner(model, probe[:1], PruningSpec(kind="unstructured", ratio=0.5),
                                cumulative_ratios=[0.5])
    signs = {n: m.weight.detach() < 0 for n, m in model.named_modules()
             if isinstance(m, nn.Linear)}
    pruner.step_(0.5, probe)
    negative = sum(int((signs[k] & was).sum()) for k, was in _masked(pruner).items())
    assert negative > 0  # orig * 0 would leave -0.0 at these
    pruner.finalize_()
    zeros = torch.cat([m.weight[m.weight == 0] for m in model.modules()
                       if isinstance(m, nn.Linear)])
    assert len(zeros) > 0 and not torch.signbit(zeros).any()


@pytest.mark.parametrize("which", list(MODELS))
def test_row_scope_prunes_the_same_share_of_every_output_row(which):
    factory, shape, _ = MODELS[which]
    model = factory().eval()
    probe = _probe(shape)
    spec = PruningSpec(kind="unstructured", ratio=0.75, scope="row", prune_biases=True)
    pruner = UnstructuredPruner(model, probe[:1], spec, cumulative_ratios=[0.5, 0.75])
    modules = dict(model.named_modules())
    previous: dict[str, torch.Tensor] = {}
    for target in (0.5, 0.75):
        assert pruner.step_(target, probe).proof == "proven"
        masked = _masked(pruner)
        for name, was in masked.items():
            weight = modules[name].weight
            rows = was.reshape(weight.shape[0], -1)  # an output channel's whole kernel
            per_row = rows.sum(dim=1)
            assert int(per_row.max() - per_row.min()) <= 1
            assert int(per_row.sum()) == round(target * weight.numel())
            kept = weight.detach().abs().reshape(weight.shape[0], -1)
            for r in range(len(rows)):  # the smallest of each row go
                if rows[r].any() and (~rows[r]).any():
                    assert kept[r][~rows[r]].min() >= kept[r][rows[r]].max()
            if name in previous:
                assert was[previous[name]].all()
        previous = masked
    assert any(k.endswith(".bias") for k in pruner.sparsity()["layers"])


def test_row_scope_goes_with_unstructured_magnitude_only():
    for bad in ({"kind": "n:m"}, {"kind": "structured", "ratio": 0.5},
                {"kind": "unstructured", "ratio": 0.5, "importance": "wanda"}):
        with pytest.raises(ValueError, match="scope: row ranks single weights"):
            PruningSpec(scope="row", **bad)
