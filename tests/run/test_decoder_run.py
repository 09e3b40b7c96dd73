"""A decoder run from a recipe: depth, FFN and hidden-size pruning of a tiny Llama on text_lm
data, its blocks, neurons and channels ranked on the recipe's calibration samples (importance:
activation), hf/ written and reloaded by stock transformers."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from compress.api import load
from compress.recipe.load import parse_recipe
from compress.run.pipeline import run_recipe
from tests.conftest import Killed
from tests.hf_models import save_tiny

WORDS = "the cat sat on the mat and the dog ran to the park while a bird sang".split()


def _llama_on_text(tmp_path: Path) -> dict[str, Any]:
    """A tiny Llama, its text and its calibration: the recipe's model, data, calibration."""
    model_dir, task = save_tiny("llama", tmp_path / "llama")
    (tmp_path / "train.txt").write_text(" ".join(WORDS * 40), encoding="utf-8")
    (tmp_path / "test.txt").write_text(" ".join(WORDS[::-1] * 12), encoding="utf-8")
    return {"model": {"source": "huggingface", "name": str(model_dir), "task": task},
            "data": {"source": "text_lm", "path": str(tmp_path), "max_length": 16,
                     "batch_size": 8, "eval_batch_size": 16},
            "calibration": {"samples": 6, "seq_len": 12, "batch_size": 4}}


def test_blocks_and_hidden_from_a_recipe(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                         ) -> None:
    import transformers

    recipe = {**_llama_on_text(tmp_path),
        "version": 1, "name": "tiny-depth",
        "pruning": {"ratio": 0.5, "heads": 0.0, "ffn": 0.5, "hidden": 0.5, "blocks": 1,
                    "round_to": 8, "importance": "activation"},
        "finetune": {"epochs": 0},
        "export": {"parity_batch": 2},
        "report": {"batch_sizes": [2], "rounds": 1, "runs_per_round": 1, "warmup": 0,
                   "min_block_ms": 0, "engines": ["onnxruntime"]},
    }
    with caplog.at_level(logging.INFO, logger="compress.pruning.transformer"):
        result = run_recipe(parse_recipe(recipe, base_dir=tmp_path), tmp_path / "run")
    assert any("block importance (1 - cos) on 6 calibration samples" in r.getMessage()
               for r in caplog.records)
    step = result.report["steps"][-1]
    assert step["proof"] == "proven" and step["layers"]["blocks"] == 1
    assert step["layers"]["hidden"] == 32 and step["layers"]["block0.ffn"] == 48
    config = json.loads((tmp_path / "run" / "hf" / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"]) == (1, 32)
    stock = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "hf").eval()
    ids = torch.randint(1000, 2000, (2, 12))
    with torch.no_grad():
        assert (stock(input_ids=ids).logits - load(tmp_path / "run")(ids)).abs().max() < 1e-5


@pytest.mark.usefixtures("single_thread")
def test_a_distillation_killed_inside_its_fine_tune_resumes_bitwise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from safetensors.torch import load_file

    import compress.finetune.checkpoint as checkpoint

    recipe = {**_llama_on_text(tmp_path),
        "version": 1, "name": "tiny-distill",
        "pruning": {"ratio": 0.5, "heads": 0.0, "ffn": 0.5, "importance": "activation"},
        "finetune": {"epochs": 3, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01,
                     "checkpoint_every": 1, "distill": {"alpha": 0.5, "temperature": 2.0}},
        "export": {"onnx": False},
        "report": {"latency": False},
    }
    whole = run_recipe(parse_recipe(recipe, base_dir=tmp_path), tmp_path / "whole")
    assert whole.ok
    out = tmp_path / "killed"
    real = checkpoint.write_snapshot
    written: list[int] = []

    def write_then_die(folder: Path, snap: Any) -> Any:
        result = real(folder, snap)
        written.append(snap.position.step)
        if len(written) == 2:  # after the second pass over the text: inside the fine-tune
            raise Killed("killed")
        return result

    monkeypatch.setattr(checkpoint, "write_snapshot", write_then_die)
    with pytest.raises(Killed):
        run_recipe(parse_recipe(recipe, base_dir=tmp_path), out)
    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="compress"):
        resumed = run_recipe(parse_recipe(recipe, base_dir=tmp_path), out, resume=True)
    assert resumed.ok
    assert (f"resumed after step 0 of 1, inside step 1's fine-tune after optimizer step "
            f"{written[1]}\n") in caplog.text
    a = load_file(tmp_path / "whole" / "model.safetensors")
    b = load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first, second = (json.loads((d / "report.json").read_text())["steps"][0]
                     for d in (tmp_path / "whole", out))
    assert first["finetune_steps"] == second["finetune_steps"] > written[1]
