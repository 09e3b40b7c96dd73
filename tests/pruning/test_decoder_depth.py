"""Depth pruning (pruning.blocks) of decoders: whole blocks ranked by 1 - cos(input, output) on
calibration data, proven against the model run with those blocks bypassed, dropped with the
layer indices (KV cache) and the config's per-layer lists rewritten; stock reload, generate()
equality, ONNX parity, compress.load and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import compress.pruning.transformer as tp
from compress.errors import CheckFailed, InputError
from compress.pruning.calibrated import Calibration
from compress.pruning.hf_depth import block_importance
from compress.pruning.hf_layout import blocks
from compress.pruning.transformer import TransformerPruner
from compress.recipe.pruning import PruningSpec
from tests.decoder_checks import assert_stock_and_onnx
from tests.hf_models import build_tiny, example_input, fast_subset, save_tiny

DECODERS = ("llama", "qwen2", "qwen3", "mistral", "gpt2")
# Qwen3 with sliding-window layers between full ones: which types stay matters.
TYPES = ["full_attention", "sliding_attention", "full_attention", "sliding_attention"]


def _four_blocks(arch: str, root: Path) -> tuple[Path, str]:
    """``arch``'s tiny model with 4 blocks instead of 2."""
    import transformers

    from compress.models.huggingface import TASKS

    folder, task = save_tiny(arch, root / arch)
    config = transformers.AutoConfig.from_pretrained(str(folder))
    config.num_hidden_layers = 4
    if arch == "qwen3":
        config.use_sliding_window, config.sliding_window = True, 4
        config.layer_types = list(TYPES)
    elif getattr(config, "layer_types", None) is not None:
        config.layer_types = ["full_attention"] * 4
    torch.manual_seed(0)
    getattr(transformers, TASKS[task]).from_config(config).save_pretrained(str(folder))
    return folder, task


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("deep")
    return {arch: _four_blocks(arch, root) for arch in DECODERS}


@pytest.mark.parametrize("arch", fast_subset(DECODERS, {"llama"}))
def test_blocks_dropped_proven_reloaded_generating_and_exported(arch: str, folders,
                                                                tmp_path: Path) -> None:
    folder, task = folders[arch]
    model = build_tiny(folder, task)
    x = example_input(model)
    # Llama loses blocks and half its hidden size in the same step; GPT-2 its heads too.
    spec = PruningSpec(ratio=0.5, heads=0.5 if arch == "gpt2" else 0.0, ffn=0.0,
                       hidden=0.5 if arch in ("llama", "gpt2") else None, blocks=0.5,
                       round_to=1)
    pruner = TransformerPruner(model, x[:1], spec)
    scores = block_importance(model, [x])
    record = pruner.step_(0.5, x)
    assert record.max_abs_diff is not None and record.max_abs_diff < 1e-4
    assert pruner.block_scores == pytest.approx(scores)
    kept = sorted(torch.tensor(scores).argsort()[2:].tolist())
    assert model.block_origin == kept and record.layers["blocks"] == 2
    assert model.hf.config.num_hidden_layers == 2 and pruner.config_problems == []
    assert [b.attention.layer_idx for b in blocks(model.hf, model.layout)] == [0, 1]
    assert_stock_and_onnx(model, x, tmp_path, folder, task)


def test_blocks_and_hidden_size_proven_group_by_group_as_on_a_big_model(
        folders, monkeypatch, tmp_path: Path) -> None:
    import compress.pruning.proof as proof

    monkeypatch.setattr(proof, "SNAPSHOT_MAX_BYTES", 0)  # as for a model over 1 GiB
    folder, task = folders["llama"]
    model = build_tiny(folder, task)
    x = example_input(model)
    spec = PruningSpec(ratio=0.5, heads=0.0, ffn=0.5, hidden=0.5, blocks=2, round_to=1)
    record = TransformerPruner(model, x[:1], spec).step_(0.5, x)
    assert record.max_abs_diff is not None and record.max_abs_diff < 1e-4
    assert model.hf.config.num_hidden_layers == 2
    assert_stock_and_onnx(model, x, tmp_path, folder, task)


def test_middle_blocks_keep_their_types_and_the_cache_its_indices(folders, monkeypatch,
                                                                  tmp_path: Path) -> None:
    folder, task = folders["qwen3"]
    model = build_tiny(folder, task)
    x = example_input(model)
    import compress.pruning.transformer_plan as plan

    monkeypatch.setattr(plan, "block_importance", lambda m, b: [0.9, 0.1, 0.2, 0.8])
    record = TransformerPruner(model, x[:1], PruningSpec(ratio=0.5, heads=0.0, ffn=0.0,
                                                         blocks=2)).step_(0.5, x)
    assert record.max_abs_diff is not None and model.block_origin == [0, 3]
    config = model.hf.config
    assert config.layer_types == [TYPES[0], TYPES[3]] and config.max_window_layers == 2
    found = blocks(model.hf, model.layout)
    assert [b.attention.layer_type for b in found] == [TYPES[0], TYPES[3]]
    assert [b.attention.layer_idx for b in found] == [0, 1]
    assert_stock_and_onnx(model, x, tmp_path, folder, task)  # generate() uses the KV cache
    saved = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 2 and saved["layer_types"] == [TYPES[0], TYPES[3]]


def test_the_proof_catches_dropping_other_blocks(folders, monkeypatch) -> None:
    real = tp.drop_blocks_
    monkeypatch.setattr(tp, "drop_blocks_",
                        lambda stack, config, drop: real(stack, config, [i ^ 1 for i in drop]))
    model = build_tiny(*folders["llama"])
    x = example_input(model)
    with pytest.raises(CheckFailed, match=r"blocks \["):
        TransformerPruner(model, x[:1], PruningSpec(ratio=0.5, heads=0.0, ffn=0.0,
                                                    blocks=1)).step_(0.5, x)


def test_block_importance_is_one_minus_cosine_of_each_blocks_hidden_states(folders) -> None:
    model = build_tiny(*folders["llama"])
    x = example_input(model)
    with torch.no_grad():
        states = model.hf(input_ids=x, output_hidden_states=True, use_cache=False).hidden_states
    # hidden_states[i] enters block i; the last entry is after the final norm, so blocks 0-2.
    expected = [float((1 - torch.cosine_similarity(states[i], states[i + 1], dim=-1)).mean())
                for i in range(3)]
    calibration = [x[:2], x[2:]]  # two batches: the mean is over all their tokens
    assert block_importance(model, calibration)[:3] == pytest.approx(expected, rel=1e-5)
    pruner = TransformerPruner(model, x[:1], PruningSpec(ratio=0.5, heads=0.0, ffn=0.0,
                                                         blocks=1))
    pruner.use_calibration(Calibration(calibration))
    pruner.step_(0.5, x[:1])  # the probe alone would rank on other data
    assert pruner.block_scores[:3] == pytest.approx(expected, rel=1e-5)


def test_dropped_blocks_replay_on_resume(folders) -> None:
    model, fresh = build_tiny(*folders["llama"]), build_tiny(*folders["llama"])
    x = example_input(model)
    spec = PruningSpec(ratio=0.5, heads=0.0, ffn=0.5, hidden=0.5, blocks=2, round_to=1)
    pruner = TransformerPruner(model, x[:1], spec, cumulative_ratios=[0.25, 0.5])
    replay = TransformerPruner(fresh, x[:1], spec, cumulative_ratios=[0.25, 0.5])
    pruner.step_(0.25, x)
    assert pruner.widths()["blocks"] == 3  # one block per step
    replay.restore_(json.loads(json.dumps(pruner.get_state())), {})
    pruner.step_(0.5, x)
    replay.step_(0.5, x)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model.eval()(x))
    assert replay.widths() == pruner.widths() and fresh.block_origin == model.block_origin


@pytest.mark.parametrize("value, message", [
    (True, "a count of blocks"), (1.0, "between 0 and 1"), (0, "at least 1"),
    ("two", "a count of blocks")])
def test_a_bad_block_count_is_refused_at_its_path(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        PruningSpec(ratio=0.5, blocks=value)
    assert err.value.errors()[0]["loc"] == ("blocks",)


@pytest.mark.parametrize("value, message", [
    (4, "would remove all 4 blocks of the model; give at most 3"),
    (0.1, "0.1 of the model's 4 blocks rounds to none; give at least 0.25 or a count")])
def test_removing_every_block_or_none_is_refused(folders, value: float, message: str) -> None:
    model = build_tiny(*folders["llama"])
    with pytest.raises(InputError, match=message):
        TransformerPruner(model, example_input(model)[:1], PruningSpec(ratio=0.5, blocks=value))


@pytest.mark.parametrize("arch", fast_subset(("bert", "vit"), {"bert"}))
def test_encoders_lose_blocks_too(arch: str, tmp_path: Path) -> None:
    model = build_tiny(*save_tiny(arch, tmp_path / arch)).eval()
    x = example_input(model)
    record = TransformerPruner(model, x[:1], PruningSpec(ratio=0.5, heads=0.0, ffn=0.0,
                                                         blocks=1)).step_(0.5, x)
    assert record.max_abs_diff is not None and record.max_abs_diff < 1e-5
    assert model.hf.config.num_hidden_layers == 1 and len(model.block_origin) == 1


def test_a_damaged_manifest_block_list_is_refused(folders) -> None:
    model = build_tiny(*folders["llama"])
    attrs = model.manifest_attrs() | {"blocks": [0, 7]}
    with pytest.raises(InputError, match="not distinct increasing indices of the model's 4 "
                                         "blocks; the manifest is damaged"):
        model.load_manifest_attrs_(attrs)


def test_blocks_apply_to_transformers_only() -> None:
    import compress

    with pytest.raises(InputError, match="pruning.blocks apply to transformers models only"):
        compress.prune(torch.nn.Sequential(torch.nn.Linear(4, 4)), torch.randn(1, 4),
                       ratio=0.5, blocks=1)
