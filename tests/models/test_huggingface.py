"""Transformers models: load, prune heads and FFN (GQA-aware), stock reload, ONNX parity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress.errors import CheckFailed, InputError
from compress.export.hf import save_hf_
from compress.export.load import load_model
from compress.export.model import export_model
from compress.measure.counts import count_macs_params
from compress.models import build_model
from compress.pruning.hf_layout import LAYOUTS, blocks
from compress.pruning.transformer import TransformerPruner
from compress.recipe.pruning import PruningSpec
from compress.recipe.sources import ModelSpec
from compress.recipe.stages import ExportSpec
from tests.hf_models import ARCHS, example_input, minilm_path, save_tiny

# Heads can be pruned AND saved for stock from_pretrained only where the config carries
# head_dim; elsewhere heads are pruned and compress.load rebuilds the model.
STOCK_HEADS = {a for a in ARCHS if LAYOUTS.get(a).head_dim_in_config}


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("hf")
    return {arch: save_tiny(arch, root / arch) for arch in ARCHS}


def _build(folder: Path, task: str) -> torch.nn.Module:
    return build_model(ModelSpec(source="huggingface", name=str(folder), task=task))


def _stock_reload(path: str, task: str, model: torch.nn.Module) -> torch.nn.Module:
    import transformers

    from compress.models.huggingface import TASKS, HFModel

    hf = getattr(transformers, TASKS[task]).from_pretrained(path)
    return HFModel(hf, task, pad_token_id=model.pad_token_id).eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_prune_save_stock_reload_and_onnx(arch: str, tiny_folders, tmp_path: Path) -> None:
    folder, task = tiny_folders[arch]
    model = _build(folder, task)
    x = example_input(model)
    heads = 0.5 if arch in STOCK_HEADS else 0.0
    before = {b.index: (b.heads, b.ffn) for b in blocks(model.hf, model.layout)}
    pruner = TransformerPruner(model, x[:1], PruningSpec(ratio=0.5, heads=heads, ffn=0.5,
                                                         round_to=1))
    record = pruner.step_(0.5, x)
    assert record.max_abs_diff < 1e-4
    for b in blocks(model.hf, model.layout):
        h0, f0 = before[b.index]
        assert b.ffn == f0 // 2
        assert b.heads == (h0 // 2 if heads else h0)
    info = save_hf_(model, tmp_path, x)
    assert info["saved"], info
    reloaded = _stock_reload(info["path"], task, model)
    with torch.no_grad():
        assert (reloaded(x) - model(x)).abs().max().item() < 1e-5
    spec = ModelSpec(source="huggingface", name=str(folder), task=task)
    exported = export_model(model, tmp_path, ExportSpec(), spec, x)
    assert exported["parity"]["onnx"] < 1e-4
    assert exported["parity"]["safetensors"] == 0.0


@pytest.mark.parametrize("arch", sorted(set(ARCHS) - STOCK_HEADS))
def test_heads_the_config_cannot_express_load_through_the_manifest(arch: str, tiny_folders,
                                                                   tmp_path: Path) -> None:
    folder, task = tiny_folders[arch]
    model = _build(folder, task)
    x = example_input(model)
    TransformerPruner(model, x[:1], PruningSpec(ratio=0.5, round_to=1)).step_(0.5, x)
    info = save_hf_(model, tmp_path, x)
    assert not info["saved"] and "head size" in info["reason"]
    assert not (tmp_path / "hf").exists()
    export_model(model, tmp_path, ExportSpec(onnx=False),
                 ModelSpec(source="huggingface", name=str(folder), task=task), x)
    rebuilt = load_model(tmp_path, force=True)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))


def test_gqa_keeps_kv_heads_and_generates(tiny_folders, tmp_path: Path) -> None:
    folder, task = tiny_folders["llama"]
    model = _build(folder, task)
    x = example_input(model)
    k_width = model.hf.model.layers[0].self_attn.k_proj.out_features
    TransformerPruner(model, x[:1], PruningSpec(ratio=0.5)).step_(0.5, x)
    attn = model.hf.model.layers[0].self_attn
    assert attn.q_proj.out_features == 4 * 8 and attn.k_proj.out_features == k_width
    assert attn.num_key_value_groups == 2  # 4 query heads over 2 kv heads
    config = model.hf.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 2, 8)
    info = save_hf_(model, tmp_path, x)
    reloaded = _stock_reload(info["path"], task, model).hf
    out = reloaded.generate(x[:1, :5], max_new_tokens=4, do_sample=False)
    expected = model.hf.generate(x[:1, :5], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 9) and torch.equal(out, expected)


def test_stock_reload_needs_no_compress_import(tiny_folders, tmp_path: Path) -> None:
    folder, task = tiny_folders["bert"]
    model = _build(folder, task)
    x = example_input(model)
    TransformerPruner(model, x[:1], PruningSpec(ratio=0.5, heads=0.0, round_to=1)).step_(0.5, x)
    info = save_hf_(model, tmp_path, x)
    with torch.no_grad():
        expected = model(x)
    torch.save({"x": x, "y": expected}, tmp_path / "io.pt")
    code = (
        "import sys, torch, transformers\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        f"m = transformers.AutoModelForSequenceClassification.from_pretrained({info['path']!r})\n"
        "out = m(input_ids=io['x'], attention_mask=(io['x'] != 0).long()).logits\n"
        "assert 'compress' not in sys.modules\n"
        "print((out - io['y']).abs().max().item())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-5


def test_the_proof_catches_a_wrong_channel_mapping(tiny_folders, monkeypatch) -> None:
    import compress.pruning.transformer as tpm

    folder, task = tiny_folders["bert"]
    model = _build(folder, task)
    x = example_input(model)
    real = tpm.TransformerPruner._apply

    def remove_other_heads(self, block, kind, units, zero):
        # Zero one set of heads but remove another: the output changes and must be caught.
        if not zero and kind == "heads":
            units = sorted((u + 1) % block.heads for u in units)
        return real(self, block, kind, units, zero)

    monkeypatch.setattr(tpm.TransformerPruner, "_apply", remove_other_heads)
    with pytest.raises(CheckFailed, match=r"block \d heads"):
        TransformerPruner(model, x[:1], PruningSpec(ratio=0.5, ffn=0.0)).step_(0.5, x)


def test_macs_include_attention_matmuls(tiny_folders) -> None:
    folder, task = tiny_folders["bert"]
    model = _build(folder, task)
    x = example_input(model, batch=1, length=16)
    macs, _ = count_macs_params(model, x)
    h, layers, ffn, length, labels = 32, 2, 64, 16, 3
    per_layer = length * (4 * h * h + 2 * h * ffn) + 2 * length * length * h
    expected = layers * per_layer + h * h + h * labels  # + pooler and classifier (1 token)
    assert macs == expected


def test_global_scope_gives_per_block_widths_and_says_so(tiny_folders, tmp_path: Path) -> None:
    folder, task = tiny_folders["bert"]
    model = _build(folder, task)
    with torch.no_grad():  # 48 of block 0's 64 neurons become unimportant
        layer = model.hf.bert.encoder.layer[0]
        layer.intermediate.dense.weight[:48].mul_(0.01)
        layer.output.dense.weight[:, :48].mul_(0.01)
    x = example_input(model)
    TransformerPruner(model, x[:1], PruningSpec(ratio=0.5, heads=0.0, scope="global",
                                                round_to=1)).step_(0.5, x)
    widths = [b.ffn for b in blocks(model.hf, model.layout)]
    assert widths == [16, 48]
    info = save_hf_(model, tmp_path, x)
    assert not info["saved"] and "different FFN widths" in info["reason"]


def test_unsupported_criterion_and_unknown_architecture(tiny_folders) -> None:
    folder, task = tiny_folders["bert"]
    model = _build(folder, task)
    with pytest.raises(InputError, match="available: activation, l1, l2, random, taylor"):
        TransformerPruner(model, example_input(model)[:1], PruningSpec(ratio=0.5,
                                                                       importance="lamp"))
    with pytest.raises(InputError, match="unknown transformer architecture 'nope'"):
        LAYOUTS.get("nope")


def test_minilm_ffn_pruning_reloads_with_stock_transformers(tmp_path: Path) -> None:
    model = build_model(ModelSpec(source="huggingface", name=str(minilm_path()),
                                  task="feature-extraction"))
    x = example_input(model, batch=2, length=16)
    pruner = TransformerPruner(model, x[:1], PruningSpec(ratio=0.5, heads=0.0))
    assert pruner.step_(0.5, x).max_abs_diff < 1e-4
    assert model.hf.config.intermediate_size == 768
    info = save_hf_(model, tmp_path, x)
    assert info["saved"] and info["parity"] < 1e-5
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    reloaded = _stock_reload(info["path"], "feature-extraction", model)
    with torch.no_grad():
        assert (reloaded(x) - model(x)).abs().max().item() < 1e-5
    saved = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert saved["intermediate_size"] == 768 and saved["num_attention_heads"] == 12


def test_restore_replays_the_recorded_removals(tiny_folders) -> None:
    folder, task = tiny_folders["llama"]
    model, fresh = _build(folder, task), _build(folder, task)
    x = example_input(model)
    pruner = TransformerPruner(model, x[:1], PruningSpec(ratio=0.5), cumulative_ratios=[0.25, 0.5])
    pruner.step_(0.25, x)
    state = json.loads(json.dumps(pruner.get_state()))
    replay = TransformerPruner(fresh, x[:1], PruningSpec(ratio=0.5), cumulative_ratios=[0.25, 0.5])
    replay.restore_(state, pruner.get_tensors())
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert replay.widths() == pruner.widths()
    pruner.step_(0.5, x)
    replay.step_(0.5, x)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


# Encoders with a classification head (decoders: tests/pruning/test_decoder_hidden.py).
HIDDEN = sorted(a for a in ARCHS if LAYOUTS.get(a).hidden is not None
                and LAYOUTS.get(a).hidden.heads)


@pytest.mark.parametrize("arch", HIDDEN)
def test_hidden_pruned_with_heads_reloads_with_stock_transformers(arch: str, tiny_folders,
                                                                  tmp_path: Path) -> None:
    folder, task = tiny_folders[arch]
    model = _build(folder, task)
    x = example_input(model)
    pruner = TransformerPruner(model, x[:1], PruningSpec(ratio=0.5, heads=0.5, ffn=0.5,
                                                         hidden=0.5, round_to=1),
                               cumulative_ratios=[0.25, 0.5])
    for ratio in (0.25, 0.5):
        record = pruner.step_(ratio, x)
        assert record.max_abs_diff < 1e-4 and record.layers["hidden"] == 32 - round(32 * ratio)
    assert pruner.config_problems == []
    config = model.hf.config
    assert (config.hidden_size, config.num_attention_heads) == (16, 2)
    info = save_hf_(model, tmp_path, x)
    assert info["saved"], info
    reloaded = _stock_reload(info["path"], task, model)
    with torch.no_grad():
        assert (reloaded(x) - model(x)).abs().max().item() < 1e-5
    exported = export_model(model, tmp_path, ExportSpec(),
                            ModelSpec(source="huggingface", name=str(folder), task=task), x)
    assert exported["parity"]["onnx"] < 1e-4
    rebuilt = load_model(tmp_path, force=True)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))


def test_hidden_alone_is_not_expressible_and_loads_through_the_manifest(
        tiny_folders, tmp_path: Path) -> None:
    folder, task = tiny_folders["bert"]
    model = _build(folder, task)
    x = example_input(model)
    pruner = TransformerPruner(model, x[:1], PruningSpec(ratio=0.5, heads=0.0, ffn=0.0,
                                                         hidden=0.5, round_to=1))
    assert pruner.step_(0.5, x).max_abs_diff < 1e-4
    assert any("head size" in p for p in pruner.config_problems)
    info = save_hf_(model, tmp_path, x)
    assert not info["saved"]
    export_model(model, tmp_path, ExportSpec(onnx=False),
                 ModelSpec(source="huggingface", name=str(folder), task=task), x)
    rebuilt = load_model(tmp_path, force=True)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))


@pytest.mark.parametrize("others", [0.0, 0.5])
def test_the_proof_catches_a_wrong_hidden_mapping(tiny_folders, monkeypatch,
                                                  others: float) -> None:
    """With heads and FFN neurons cut in the same step, the bisection redoes their removals
    from the snapshot (norms masked, blocks' head counts restored) and still names the hidden
    cut; a right step costs two forward passes whatever its number of groups."""
    import compress.pruning.transformer as tp

    folder, task = tiny_folders["bert"]
    spec = PruningSpec(ratio=0.5, heads=others, ffn=others, hidden=0.5, round_to=1)
    model = _build(folder, task)
    x = example_input(model)
    record = TransformerPruner(model, x[:1], spec).step_(0.5, x)
    assert record.passes == 2 and record.groups == (5 if others else 1)
    real = tp.cut_hidden_

    def shifted(s, keep, head_keep):  # keeps the neighbour of each chosen channel
        real(s, (keep + 1) % s.width, head_keep)

    monkeypatch.setattr(tp, "cut_hidden_", shifted)
    model = _build(folder, task)
    pruner = TransformerPruner(model, x[:1], spec)
    with pytest.raises(CheckFailed, match="hidden size"):
        pruner.step_(0.5, x)


def test_hidden_replays_on_resume(tiny_folders) -> None:
    folder, task = tiny_folders["distilbert"]
    model, fresh = _build(folder, task), _build(folder, task)
    x = example_input(model)
    spec = PruningSpec(ratio=0.5, hidden=0.5, heads=0.5, importance="taylor")
    pruner = TransformerPruner(model, x[:1], spec, cumulative_ratios=[0.25, 0.5])
    pruner.accumulate_gradients([(x, torch.tensor([0, 1, 2, 0]))], torch.device("cpu"))
    pruner.step_(0.25, x)
    replay = TransformerPruner(fresh, x[:1], spec, cumulative_ratios=[0.25, 0.5])
    replay.restore_(json.loads(json.dumps(pruner.get_state())), {})
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model.eval()(x))
    assert replay.widths() == pruner.widths() and replay.widths()["hidden"] == 24


def test_hidden_pruning_names_where_it_works(tiny_folders) -> None:
    folder, task = tiny_folders["vit"]
    model = _build(folder, task)
    with pytest.raises(InputError, match="not supported for vit models; supported: bert, "):
        TransformerPruner(model, example_input(model)[:1], PruningSpec(ratio=0.5, hidden=0.5))


def test_hidden_pruning_refuses_feature_extraction() -> None:
    model = build_model(ModelSpec(source="huggingface", name=str(minilm_path()),
                                  task="feature-extraction"))
    with pytest.raises(InputError, match="needs model.task: sequence-classification"):
        TransformerPruner(model, example_input(model)[:1], PruningSpec(ratio=0.5, hidden=0.5))


def test_minilm_heads_and_hidden_reload_with_stock_transformers(tmp_path: Path) -> None:
    model = build_model(ModelSpec(source="huggingface", name=str(minilm_path()),
                                  task="sequence-classification", num_classes=2, head="train"))
    x = example_input(model, batch=2, length=16)
    pruner = TransformerPruner(model, x[:1], PruningSpec(ratio=0.5, heads=0.5, hidden=0.5))
    assert pruner.step_(0.5, x).max_abs_diff < 1e-4
    config = model.hf.config
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size) == \
        (192, 6, 768)
    info = save_hf_(model, tmp_path, x)
    assert info["saved"] and info["parity"] < 1e-5
    reloaded = _stock_reload(info["path"], "sequence-classification", model)
    with torch.no_grad():
        assert (reloaded(x) - model(x)).abs().max().item() < 1e-5
    spec = ModelSpec(source="huggingface", name=str(minilm_path()),
                     task="sequence-classification", num_classes=2)
    exported = export_model(model, tmp_path, ExportSpec(), spec, x)
    assert exported["parity"]["onnx"] < 1e-4 and exported["parity"]["safetensors"] == 0.0
