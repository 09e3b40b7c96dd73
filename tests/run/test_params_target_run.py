"""pruning.target.params from a recipe: compress apply keeps the best-scored width/depth mix and
records every candidate in report.json and report.md; compress inspect shows them; compress
validate refuses more blocks than a local config has, without building anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from compress.recipe.load import parse_recipe
from compress.run.pipeline import run_recipe
from tests.conftest import Killed, killed_after_writing
from tests.hf_models import MINILM_VOCAB, minilm_path
from tests.hostile import Tree, assert_refused, invoke

WORDS = "the cat sat on the mat and the dog ran to the park while a bird sang".split()


def _llama_folder(root: Path) -> Path:
    """Four blocks with wide FFNs beside tied embeddings: the blocks hold about half the
    parameters, so 20 % can come from width or from depth."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=MINILM_VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, head_dim=8, intermediate_size=1024, tie_word_embeddings=True,
        pad_token_id=None, initializer_range=0.2)
    torch.manual_seed(0)
    folder = root / "llama"
    transformers.LlamaForCausalLM(config).save_pretrained(str(folder))
    transformers.AutoTokenizer.from_pretrained(str(minilm_path())).save_pretrained(str(folder))
    return folder


def _recipe(root: Path, folder: Path, pruning: dict) -> dict:
    (root / "text").mkdir(exist_ok=True)
    (root / "text" / "train.txt").write_text(" ".join(WORDS * 40), encoding="utf-8")
    (root / "text" / "test.txt").write_text(" ".join(WORDS[::-1] * 12), encoding="utf-8")
    return {
        "version": 1, "name": "tiny-params",
        "model": {"source": "huggingface", "name": str(folder), "task": "causal-lm"},
        "data": {"source": "text_lm", "path": str(root / "text"), "max_length": 16,
                 "batch_size": 8, "eval_batch_size": 16},
        "calibration": {"samples": 6, "seq_len": 12, "batch_size": 3},
        "pruning": pruning,
        "finetune": {"epochs": 0},
        "export": {"parity_batch": 2, "onnx": False},
        "report": {"latency": False},
    }


@pytest.mark.slow
def test_apply_and_inspect_show_the_candidates_and_keep_the_best(tmp_path: Path) -> None:
    import transformers

    folder = _llama_folder(tmp_path)
    recipe = _recipe(tmp_path, folder, {"target": {"params": 0.2}, "importance": "activation"})
    result = run_recipe(parse_recipe(recipe, base_dir=tmp_path), tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    plan = report["params_target"]
    assert plan == result.report["steps"][0]["params_target"]
    scored = [c for c in plan["candidates"] if c["score"] is not None]
    assert len(scored) >= 2 and plan["score"] == "calibration perplexity"
    best = min(scored, key=lambda c: c["score"])
    assert plan["chosen"] == best["name"] and plan["calibration_samples"] == 6
    base, after = report["baseline"]["params"], report["compressed"]["params"]
    assert after == best["params"] <= base * (1 - 0.2 + plan["tolerance"])
    assert report["steps"][-1]["proof"] == "proven"
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## Parameter target" in md and f"| **{best['name']}** |" in md
    stock = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "hf")
    assert sum(p.numel() for p in stock.parameters()) == after

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    shown = invoke(["inspect", path], cwd=tmp_path)
    assert shown.exit_code == 0, shown.output
    assert "pruning.target.params 0.2: candidates" in shown.output
    assert f"{best['name']} (chosen)" in shown.output


def test_validate_refuses_more_blocks_than_the_local_config_has(tmp_path: Path) -> None:
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama",
                                                    "num_hidden_layers": 4}))
    path = tmp_path / "r.yaml"
    recipe = _recipe(tmp_path, folder, {"ratio": 0.5, "heads": 0.0, "ffn": 0.0, "blocks": 4})
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    tree = Tree(tmp_path)
    assert_refused(invoke(["validate", path], cwd=tmp_path),
                   "pruning.blocks: 4 would remove all 4 blocks of the model; give at most 3")
    assert tree.new_files() == []
    recipe["pruning"]["blocks"] = 3
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    assert invoke(["validate", path], cwd=tmp_path).exit_code == 0


def test_validate_does_not_warn_of_an_unloadable_head_size_under_a_params_target(
        tmp_path: Path) -> None:
    from compress.models.hf_preflight import hf_notes
    from compress.recipe.pruning import PruningSpec
    from compress.recipe.sources import ModelSpec

    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert",
                                                    "num_hidden_layers": 2}))
    spec = ModelSpec(source="huggingface", name=str(folder), task="sequence-classification")

    def notes(**pruning: object) -> str:
        return " ".join(hf_notes(spec, PruningSpec(**pruning), Path))

    assert "derive the head size" in notes(target={"macs": 0.5})
    # The params target skips the mixes a stock config cannot express (and says which).
    assert "derive the head size" not in notes(target={"params": 0.5})


@pytest.mark.slow
def test_a_run_killed_after_its_first_step_resumes_with_the_same_choice(
        tmp_path: Path) -> None:
    from compress.run.folder import read_status

    folder = _llama_folder(tmp_path)
    recipe = _recipe(tmp_path, folder, {"target": {"params": 0.2}})
    recipe["schedule"] = {"kind": "iterative", "steps": 2}
    out = tmp_path / "run"
    with killed_after_writing(out / "steps" / "01" / "state.json"), pytest.raises(Killed):
        run_recipe(parse_recipe(recipe, base_dir=tmp_path), out)
    first = json.loads((out / "steps" / "01" / "state.json").read_text())
    result = run_recipe(parse_recipe(recipe, base_dir=tmp_path), out, resume=True)
    assert read_status(out)["state"] == "done"
    plan = result.report["params_target"]
    best = next(c for c in plan["candidates"] if c["name"] == plan["chosen"])
    # The search is redone on resume (the ratios alone do not say which mix was chosen) and
    # chooses the same: the last step lands on the scored architecture.
    assert result.report["compressed"]["params"] == best["params"]
    assert [s["step"] for s in result.report["steps"]] == [1, 2]
    assert first["rows"][0]["params_target"] == plan
