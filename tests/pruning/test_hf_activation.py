"""importance: activation (Minitron): heads and FFN neurons ranked by what they compute on
calibration samples (L2 over the sequence, mean over the samples), hidden channels by what they
contribute to the layers reading them, streamed block by block; checked against a hand
computation on the whole model's forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import compress
from compress.errors import InputError
from compress.pruning.calibrated import Calibration
from compress.pruning.hf_activation import activation_stats, hidden_importance
from compress.pruning.hf_hidden import output_layers
from compress.pruning.hf_layout import blocks
from compress.pruning.transformer import TransformerPruner
from compress.recipe.pruning import PruningSpec
from tests.hf_models import build_tiny, example_input, save_tiny


def _by_hand(model, batches):
    """The statistics from one hooked forward of the whole model, with explicit loops."""
    found = blocks(model.hf, model.layout)
    seen: dict[tuple[int, str], list[torch.Tensor]] = {}
    handles = []
    for b in found:
        for key, m in (("heads", b.out), ("ffn", b.ffn_out), ("q", b.qkv[0]),
                       ("up", b.ffn_in[0])):
            handles.append(m.register_forward_hook(
                lambda mod, a, out, k=(b.index, key): seen.setdefault(k, []).append(a[0])))
    hidden = model.layout.hidden  # a decoder's output layers read its final norm's output
    for name in hidden.outputs if hidden is not None else ():
        if hasattr(model.hf, name):
            handles.append(getattr(model.hf, name).register_forward_hook(
                lambda mod, a, out: seen.setdefault((-1, "final"), []).append(a[0])))
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in handles:
        h.remove()
    pad = model.pad_token_id
    real = torch.cat([x != pad if pad is not None else torch.ones_like(x, dtype=torch.bool)
                      for x in batches])
    n = len(real)

    def score(acts: torch.Tensor, unit) -> torch.Tensor:  # acts: samples x tokens x features
        out = []
        for u in range(unit[0]):
            total = 0.0
            for s in range(n):
                ss = sum(float(unit[1](acts[s, t], u)) ** 2 for t in range(acts.shape[1])
                         if real[s, t])
                total += ss ** 0.5
            out.append(total / n)
        return torch.tensor(out, dtype=torch.float64)

    result = {}
    for b in found:
        heads = torch.cat(seen[(b.index, "heads")])
        d = b.head_dim
        result[(b.index, "heads")] = score(
            heads, (b.heads, lambda v, h: v[h * d:(h + 1) * d].norm()))
        ffn = torch.cat(seen[(b.index, "ffn")])
        result[(b.index, "ffn")] = score(ffn, (ffn.shape[-1], lambda v, i: v[i]))
        for key, name in (("q", "attention"), ("up", "ffn in")):
            hid = torch.cat(seen[(b.index, key)])
            result[("read", b.index, name)] = score(hid, (hid.shape[-1], lambda v, i: v[i]))
    if (-1, "final") in seen:
        final = torch.cat(seen[(-1, "final")])
        result[("read", -1, "output")] = score(final, (final.shape[-1], lambda v, i: v[i]))
    return result


def _hidden_by_hand(model, reads) -> torch.Tensor:
    """Each channel: the sum over the layers reading the stream of its input statistic times
    the norm of the layer's weight column for it, with explicit loops."""
    pairs = [(reads[(b.index, "attention")], m) for b in blocks(model.hf, model.layout)
             for m in b.qkv]
    pairs += [(reads[(b.index, "ffn in")], m) for b in blocks(model.hf, model.layout)
              for m in b.ffn_in]
    pairs += [(reads[(-1, "output")], m) for m in output_layers(model.hf, model.layout)]
    width = model.hidden_width()
    out = []
    for c in range(width):
        total = 0.0
        for stat, m in pairs:
            w = m.weight.detach().double()
            column = w[:, c] if isinstance(m, torch.nn.Linear) else w[c, :]  # Conv1D: (in, out)
            total += float(stat[c]) * float(column.pow(2).sum()) ** 0.5
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("arch", ["llama", pytest.param("bert", marks=pytest.mark.slow)])
def test_statistics_match_a_hand_computation(arch: str, tmp_path: Path) -> None:
    """Llama (GQA, no padding; its final norm's output counts for the hidden channels) and
    BERT (padded rows: padding left out)."""
    model = build_tiny(*save_tiny(arch, tmp_path / arch)).eval()  # no dropout by hand
    x = example_input(model, batch=3, length=6)
    batches = [x[:2], x[2:]]
    stats = activation_stats(model, blocks(model.hf, model.layout), batches)
    expected = _by_hand(model, batches)
    assert stats.samples == 3
    for b in blocks(model.hf, model.layout):
        assert torch.allclose(stats.heads[b.index], expected[(b.index, "heads")], rtol=1e-4)
        assert torch.allclose(stats.ffn[b.index], expected[(b.index, "ffn")], rtol=1e-4)
        for key in ("attention", "ffn in"):
            assert torch.allclose(stats.reads[(b.index, key)],
                                  expected[("read", b.index, key)], rtol=1e-4)
    assert ((-1, "output") in stats.reads) == (arch == "llama")
    if arch == "llama":
        assert torch.allclose(stats.reads[(-1, "output")], expected[("read", -1, "output")],
                              rtol=1e-4)
        found = blocks(model.hf, model.layout)
        assert torch.allclose(hidden_importance(stats, found, output_layers(model.hf,
                                                                             model.layout)),
                              _hidden_by_hand(model, stats.reads), rtol=1e-6)


def test_hidden_importance_ignores_a_rescaling_that_keeps_the_function(tmp_path: Path) -> None:
    """Channel 3's norm weights up 100x and every block layer reading it down 100x: the same
    model. Its activation where the stream is read grows 100x (what Minitron ranks by); its
    importance, what it contributes to those layers, stays."""
    model = build_tiny(*save_tiny("llama", tmp_path / "llama")).eval()
    x = example_input(model, batch=3, length=6)
    found = blocks(model.hf, model.layout)
    outputs = output_layers(model.hf, model.layout)
    with torch.no_grad():
        logits = model(x)
    before = activation_stats(model, found, [x])
    importance = hidden_importance(before, found, outputs)
    with torch.no_grad():
        for b in found:
            for norm in (b.module.input_layernorm, b.module.post_attention_layernorm):
                norm.weight[3] *= 100
            for m in (*b.qkv, *b.ffn_in):
                m.weight[:, 3] /= 100
        assert torch.allclose(model(x), logits, atol=1e-4)
    after = activation_stats(model, found, [x])
    key = (found[0].index, "attention")
    assert torch.allclose(after.reads[key][3], 100 * before.reads[key][3], rtol=1e-4)
    assert torch.allclose(hidden_importance(after, found, outputs), importance, rtol=1e-4)


def test_activation_removes_the_neurons_that_compute_least_where_weights_disagree(
        tmp_path: Path) -> None:
    """Neurons 0-3 get their up-projection rows scaled down 1000x and their output columns up
    1000x: the same function, a large weight norm, a tiny activation. l2 keeps them,
    activation removes them."""
    removed = {}
    for importance in ("l2", "activation"):
        model = build_tiny(*save_tiny("llama", tmp_path / importance))
        b = blocks(model.hf, model.layout)[0]
        with torch.no_grad():
            b.ffn_in[1].weight[:4] *= 1e-3  # up_proj
            b.ffn_out.weight[:, :4] *= 1e3  # down_proj
        x = example_input(model)
        pruner = TransformerPruner(model, x[:1], PruningSpec(ratio=0.5, importance=importance,
                                                             heads=0.0, ffn=0.5, round_to=1))
        pruner.use_calibration(Calibration([x]))
        pruner.step_(0.5, x)
        removed[importance] = set(next(e[2] for e in pruner.history[0] if e[:2] == [0, "ffn"]))
    assert {0, 1, 2, 3} <= removed["activation"]
    assert not removed["l2"] & {0, 1, 2, 3}


def test_activation_needs_calibration_samples(tmp_path: Path) -> None:
    model = build_tiny(*save_tiny("llama", tmp_path / "llama"))
    x = example_input(model)
    with pytest.raises(InputError, match="needs calibration samples"):
        compress.prune(model, x, ratio=0.5, importance="activation")


def test_activation_is_refused_for_a_model_without_transformer_blocks() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with pytest.raises(InputError, match="'activation' ranks the heads.*use one of"):
        compress.prune(net, torch.randn(1, 4), ratio=0.5, importance="activation")
