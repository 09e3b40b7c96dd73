"""pruning.target.params: the width/depth candidates that meet a parameter budget on a tiny
Llama with grouped-query attention, each pruned on a copy and scored on calibration samples;
the best is kept and every candidate recorded; bad input refused in one sentence."""

from __future__ import annotations

import math

import pytest
import torch

from compress.errors import InputError
from compress.measure.counts import count_params
from compress.models.huggingface import HFModel
from compress.pruning.calibrated import Calibration
from compress.pruning.params_plan import calibration_score, plan_params
from compress.pruning.transformer import TransformerPruner
from compress.recipe.load import parse_recipe
from compress.recipe.pruning import PruningSpec

NAMES = ["width", "ffn", "width+hidden", "depth", "depth+width"]


def _llama(blocks: int = 4) -> HFModel:
    """Four blocks, 8 query heads in 2 k/v groups, a small vocabulary (blocks hold most of the
    parameters, so both width and depth can reach the budget)."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=512, hidden_size=64, num_hidden_layers=blocks, num_attention_heads=8,
        num_key_value_heads=2, head_dim=8, intermediate_size=96, tie_word_embeddings=False,
        pad_token_id=None, initializer_range=0.2)
    torch.manual_seed(0)
    return HFModel(transformers.LlamaForCausalLM(config).eval(), "causal-lm")


def _ids(seed: int, rows: int = 4, length: int = 16) -> torch.Tensor:
    return torch.randint(0, 512, (rows, length), generator=torch.Generator().manual_seed(seed))


def test_params_target_meets_the_budget_and_keeps_the_best_scored_candidate() -> None:
    model, x = _llama(), _ids(0)
    calibration = [_ids(1), _ids(2)]
    base = count_params(model)
    spec = PruningSpec(target={"params": 0.3}, importance="activation")
    chosen, ratios, record = plan_params(model, x[:1], spec, [0.3], calibration)
    assert count_params(model) == base  # candidates are pruned on copies
    rows = {r["name"]: r for r in record["candidates"]}
    assert list(rows) == NAMES and record["base_params"] == base
    scored = [r for r in rows.values() if r["score"] is not None]
    assert len(scored) >= 2 and record["chosen"] == min(scored, key=lambda r: r["score"])["name"]
    for r in scored:  # the budget within the search's tolerance (channel rounding), stated
        assert r["params_reduction"] >= 0.3 - record["tolerance"] and r["skipped"] is None
        assert r["params"] == round(base * (1 - r["params_reduction"]))
    # 6 of 8 query heads beside hidden 64: LlamaConfig refuses it, so it is not scored.
    assert rows["depth+width"]["architecture"]["heads"] == 6
    assert "config cannot express" in rows["depth+width"]["skipped"]
    assert rows["depth+width"]["score"] is None
    # Llama-style configs keep their heads when the hidden size shrinks (at least round_to).
    assert rows["width+hidden"]["architecture"]["hidden"] == 56
    assert rows["width+hidden"]["architecture"]["heads"] == 8
    assert rows["depth"]["architecture"]["blocks"] == 2 and rows["depth"]["fixed"]["blocks"] == 2

    # The run prunes the chosen mix with the proof, and gets the architecture that was scored.
    best = rows[record["chosen"]]
    assert {k: getattr(chosen, k) for k in best["fixed"]} == best["fixed"]
    pruner = TransformerPruner(model, x[:1], chosen, cumulative_ratios=ratios)
    pruner.use_calibration(Calibration(calibration))
    step = pruner.step_(ratios[-1], x)
    assert step.max_abs_diff is not None and step.max_abs_diff < 1e-4
    assert pruner.config_problems == [] and count_params(model) == best["params"]
    assert count_params(model) <= base * (1 - 0.3 + record["tolerance"])
    assert calibration_score(model, calibration) == pytest.approx(best["score"], rel=1e-6)


def test_calibration_score_is_the_perplexity_of_the_real_tokens() -> None:
    model = _llama(blocks=1)
    x = _ids(3, rows=2, length=6)
    model.pad_token_id = 7
    x[1, 4:] = 7  # padding: neither predicted nor counted
    with torch.no_grad():
        logp = model.hf(input_ids=x, attention_mask=(x != 7).long()).logits.log_softmax(-1)
    nll = [-float(logp[b, t, x[b, t + 1]]) for b in range(2) for t in range(5)
           if x[b, t + 1] != 7]
    assert calibration_score(model, [x]) == pytest.approx(math.exp(sum(nll) / len(nll)),
                                                          rel=1e-5)


def test_an_unreachable_params_target_is_refused_in_one_sentence() -> None:
    model, x = _llama(), _ids(0)
    with pytest.raises(InputError, match=r"^pruning.target.params=0.9 cannot be reached by any "
                                         r"width/depth candidate \(width: .*depth: .*\)$") as err:
        plan_params(model, x[:1], PruningSpec(target={"params": 0.9}), [0.9], [_ids(1)])
    assert "\n" not in str(err.value)


def test_a_params_target_needs_a_transformer_and_calibration() -> None:
    from compress.models.cifar_resnet import cifar_resnet

    spec = PruningSpec(target={"params": 0.5})
    with pytest.raises(InputError, match="width/depth mixes of transformers models; for this "
                                         "model use pruning.target.macs"):
        plan_params(cifar_resnet("resnet20"), torch.randn(1, 3, 32, 32), spec, [0.5], [])
    with pytest.raises(InputError, match="scores its candidates on calibration samples"):
        plan_params(_llama(1), _ids(0)[:1], spec, [0.5], [])


@pytest.mark.parametrize("pruning, message", [
    ({"target": {"params": 1.5}}, "'pruning.target.params'"),
    ({"target": {"params": 0.5, "macs": 0.5}}, "exactly one of 'macs'"),
    ({"target": {"params": 0.5}, "blocks": 2}, "with target params, leave blocks out"),
    ({"target": {"params": 0.5}, "heads": 0.0, "hidden": 0.1},
     "leave heads and hidden out"),
    ({"target": {"params": 0.5}, "scope": "global"}, "target params needs scope: local"),
    ({"target": {"params": 0.5}, "kind": "unstructured"}, "target"),
])
def test_bad_params_targets_are_refused_at_their_path(pruning: dict, message: str) -> None:
    with pytest.raises(InputError, match=r"pruning") as err:
        parse_recipe({"version": 1, "model": {"source": "cifar_resnet", "name": "resnet20"},
                      "data": {"source": "digits"}, "pruning": pruning})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_classifier_is_scored_by_the_kl_divergence_from_its_unpruned_outputs(
        tmp_path) -> None:
    from tests.hf_models import build_tiny, example_input, save_tiny

    model = build_tiny(*save_tiny("bert", tmp_path / "bert"))
    x = example_input(model)
    calibration = [x[:2], x[2:]]
    with torch.no_grad():
        before = [model(c).log_softmax(-1) for c in calibration]
    chosen, ratios, record = plan_params(model, x[:1], PruningSpec(target={"params": 0.01}),
                                         [0.01], calibration)
    assert record["score"].startswith("KL divergence")
    rows = {r["name"]: r for r in record["candidates"]}
    # BERT derives the head size from hidden / heads: fewer heads alone is not expressible.
    assert "derive the head size" in rows["width"]["skipped"]
    best = rows[record["chosen"]]
    assert best["score"] == min(r["score"] for r in rows.values() if r["score"] is not None)
    pruner = TransformerPruner(model, x[:1], chosen, cumulative_ratios=ratios)
    pruner.use_calibration(Calibration(calibration))
    pruner.step_(ratios[-1], x)
    with torch.no_grad():  # KL(before || after) per sample, summed over the classes
        kl = sum(float((b.exp() * (b - model(c).log_softmax(-1))).sum())
                 for b, c in zip(before, calibration)) / len(x)
    assert best["score"] == pytest.approx(kl, rel=1e-5, abs=1e-7)
