"""wanda and sparsegpt: the hand-computed mask, streaming against the all-in-memory reference,
and causal-LM recipes end to end through ``compress apply`` (perplexity, resume)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

import compress.pruning.calibrated as calibrated
from compress.models import build_model
from compress.pruning import build_pruner
from compress.pruning.calibrated import Calibration
from compress.recipe.load import load_recipe
from compress.recipe.pruning import PruningSpec
from compress.recipe.sources import ModelSpec
from compress.run.pipeline import run_recipe
from tests.hf_models import example_input, save_tiny

WORDS = ("the small model reads a long story about rivers , mountains and old towns where "
         "people trade bread , wine and stories every morning before the sun rises .").split()


def test_wanda_mask_matches_a_hand_computed_layer() -> None:
    net = nn.Sequential(nn.Linear(4, 2, bias=False), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 3.0, 2.0, -5.0], [0.6, -2.0, 6.0, 1.0]]))
    # One token per input column: ||X_j|| = (4, 1, 1, 0.5).
    x = torch.diag(torch.tensor([4.0, 1.0, 1.0, 0.5]))
    pruner = build_pruner(net, x[:1], PruningSpec(kind="unstructured", importance="wanda",
                                                  ratio=0.5), [0.5])
    pruner.use_calibration(Calibration([x[:3], x[3:]]))
    pruner.step_(0.5, x)
    # |W| * ||X_j||: row 0 (4, 3, 2, 2.5) drops columns 2, 3; row 1 (2.4, 2, 6, 0.5) drops
    # 3, 1. Magnitude alone would drop 0, 2 and 0, 3.
    assert (net[0].weight != 0).tolist() == [[True, True, False, False],
                                             [True, False, True, False]]
    assert pruner.sparsity()["layers"] == {"0": 0.5}


def _llama(tmp_path: Path) -> tuple[nn.Module, torch.Tensor]:
    folder, task = save_tiny("llama", tmp_path / "llama")
    model = build_model(ModelSpec(source="huggingface", name=str(folder), task=task)).eval()
    return model, example_input(model, batch=6, length=10)


@pytest.mark.parametrize("kind, importance", [("unstructured", "wanda"),
                                              ("unstructured", "sparsegpt"),
                                              ("n:m", "sparsegpt")])
def test_streaming_gives_the_masks_of_the_all_in_memory_run(kind, importance,
                                                            tmp_path: Path) -> None:
    model, x = _llama(tmp_path)
    extra = {"ratio": 0.5} if kind == "unstructured" else {}
    spec = PruningSpec(kind=kind, importance=importance, sparsegpt_block=16, **extra)
    results = []
    for carry in (True, False):
        m = copy.deepcopy(model)
        pruner = build_pruner(m, x[:1], spec, [0.5])
        pruner.use_calibration(Calibration([x[:3], x[3:]], carry=carry))
        pruner.step_(0.5, x)
        results.append((pruner.get_tensors(), m.state_dict()))
    (masks, state), (ref_masks, ref_state) = results
    assert masks.keys() == ref_masks.keys() and len(masks) == 14
    assert all(torch.equal(masks[k], ref_masks[k]) for k in masks)
    assert all(torch.equal(state[k], ref_state[k]) for k in state)


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
@pytest.mark.parametrize("kind, importance", [("unstructured", "wanda"), ("n:m", "sparsegpt")])
def test_gpt2_conv1d_and_padded_encoders_prune_exactly(arch, kind, importance,
                                                       tmp_path: Path) -> None:
    folder, task = save_tiny(arch, tmp_path / arch)
    extra = {"num_classes": 3} if task == "sequence-classification" else {}
    model = build_model(ModelSpec(source="huggingface", name=str(folder), task=task, **extra))
    x = example_input(model.eval())  # BERT's rows end in padding, left out of the statistics
    ratio = {"ratio": 0.5} if kind == "unstructured" else {}
    pruner = build_pruner(model, x[:1], PruningSpec(kind=kind, importance=importance,
                                                    sparsegpt_block=16, **ratio), [0.5])
    pruner.use_calibration(Calibration([x[:2], x[2:]]))
    record = pruner.step_(0.5, x)
    assert record.proof == "proven" and set(record.layers.values()) == {0.5}
    # Every block linear (GPT-2: Conv1D, weight [in, out]) plus BERT's pooler, outside blocks.
    assert len(record.layers) == (8 if arch == "gpt2" else 13)
    for key, t in ((t.key, t) for t in pruner._tensors):
        w = t.effective()
        rows = w.T if arch == "gpt2" else w
        assert int((rows == 0).sum()) == rows.numel() // 2, key
        if kind == "n:m":
            assert ((rows != 0).reshape(rows.shape[0], -1, 4).sum(-1) <= 2).all(), key


def _write_text(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 600), ("test", 300)):
        order = torch.randint(0, len(WORDS), (n,), generator=gen).tolist()
        (folder / f"{split}.txt").write_text(" ".join(WORDS[i] for i in order), encoding="utf-8")


def _recipe(tmp_path: Path, kind: str, importance: str, **extra) -> Path:
    model = save_tiny("llama", tmp_path / "llama")[0]
    _write_text(tmp_path / "text")
    pruning = {"kind": kind, "importance": importance, "sparsegpt_block": 16}
    if kind == "unstructured":
        pruning["ratio"] = 0.5
    recipe = {"version": 1, "name": f"{importance}-{kind.replace(':', '')}",
              "model": {"source": "huggingface", "name": str(model), "task": "causal-lm"},
              "data": {"source": "text_lm", "path": str(tmp_path / "text"), "max_length": 16},
              "calibration": {"samples": 12, "batch_size": 4},
              "pruning": pruning, "finetune": {"epochs": 0},
              "report": {"latency": False}, **extra}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


@pytest.mark.parametrize("kind, importance", [
    ("unstructured", "wanda"),
    pytest.param("n:m", "sparsegpt", marks=pytest.mark.slow)])
def test_causal_lm_recipe_end_to_end(kind, importance, tmp_path: Path) -> None:
    from tests.hostile import invoke

    path = _recipe(tmp_path, kind, importance)
    result = invoke(["apply", path, "--out", tmp_path / "run"], cwd=tmp_path)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    base, comp = report["baseline"], report["compressed"]
    assert base["perplexity"] > 1 and comp["perplexity"] > 1
    assert comp["layer_sparsity"]["hf.model.layers.1.mlp.down_proj"] == 0.5
    weights = _weights(tmp_path / "run")
    linears = [k for k in weights if k.endswith("proj.weight")]
    assert len(linears) == 14
    for key in linears:
        w = weights[key]
        assert int((w == 0).sum()) == w.numel() // 2, key  # exact count, exactly zero
        if kind == "n:m":
            assert ((w != 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all(), key
    step = report["steps"][0]
    assert step["proof"] == "proven" and step["layers"]["hf.model.layers.0.self_attn.q_proj"] \
        == 0.5
    assert not (tmp_path / "run" / "steps" / "01" / "blocks").exists()


def test_a_killed_run_resumes_from_its_blocks_bitwise(tmp_path: Path, monkeypatch) -> None:
    path = _recipe(tmp_path, "unstructured", "sparsegpt", export={"onnx": False})
    whole = run_recipe(load_recipe(path), tmp_path / "whole")
    assert whole.ok
    saves = []
    real_save = calibrated.save_tensors_atomic

    def save_then_die(tensors, file, metadata=None):
        real_save(tensors, file, metadata)
        saves.append(file.name)
        raise KeyboardInterrupt("killed after the first block")

    monkeypatch.setattr(calibrated, "save_tensors_atomic", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(load_recipe(path), tmp_path / "killed")
    assert saves == ["00.safetensors"]
    monkeypatch.setattr(calibrated, "save_tensors_atomic", real_save)
    gathered = []
    real_gather = calibrated._gather
    monkeypatch.setattr(calibrated, "_gather",
                        lambda block, *a: gathered.append(block) or real_gather(block, *a))
    resumed = run_recipe(load_recipe(path), tmp_path / "killed", resume=True)
    assert resumed.ok and len(gathered) == 1  # block 0 restored, block 1 computed
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind, importance", [("unstructured", "wanda"), ("n:m", "sparsegpt")])
def test_the_python_api_prunes_with_calibration_batches(kind, importance,
                                                        tmp_path: Path) -> None:
    import compress

    model, x = _llama(tmp_path)
    extra = {"ratio": 0.5} if kind == "unstructured" else {}
    result = compress.prune(model, x[:1], kind=kind, importance=importance,
                            calibration=[x[:3], x[3:]], **extra)
    assert result.steps[0]["proof"] == "proven"
    linears = [m for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and "lm_head" not in name]
    assert all(int((m.weight == 0).sum()) == m.weight.numel() // 2 for m in linears)
    with pytest.raises(compress.InputError, match=r"needs calibration samples; pass "
                       r"calibration=\[input batches\]"):
        compress.prune(model, x[:1], kind=kind, importance=importance, **extra)
    with pytest.raises(compress.InputError, match="non-empty list of input batches"):
        compress.prune(model, x[:1], kind=kind, importance=importance, calibration=x, **extra)
