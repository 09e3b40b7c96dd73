"""run_recipe across pruning kinds and schedules, on the tiny digits recipe (latency off)."""

import json
from pathlib import Path

import pytest
import torch

import compress
from compress.recipe.load import parse_recipe
from compress.run.pipeline import run_recipe
from tests.conftest import tiny_recipe

FAST = {"report": {"latency": False}}


def _run(tmp_path: Path, **sections) -> dict:
    recipe = parse_recipe(tiny_recipe(tmp_path, **{**FAST, **sections}))
    result = run_recipe(recipe, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "report.json").read_text())["name"] == "tiny"
    return result.report


def test_iterative_structured_writes_a_curve_and_checkpoints(tmp_path: Path) -> None:
    report = _run(tmp_path, schedule={"kind": "iterative", "steps": 3, "step_rule": "constant"},
                  pruning={"ratio": 0.6, "round_to": 1}, export={"steps": "all"})
    steps = report["steps"]
    assert [round(s["target"], 6) for s in steps] == [0.2, 0.4, 0.6]
    assert [s["macs"] for s in steps] == sorted((s["macs"] for s in steps), reverse=True)
    for s in steps:
        step_dir = Path(s["checkpoint"])
        assert (step_dir / "model.onnx").is_file() and (step_dir / "model.safetensors").is_file()
        assert compress.load(step_dir, trust_code=True)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    assert report["finetune_epochs_total"] == pytest.approx(sum(s["finetune_epochs"]
                                                                for s in steps))


def test_unstructured_reports_sparsity_and_an_honest_note(tmp_path: Path) -> None:
    report = _run(tmp_path, pruning={"kind": "unstructured", "ratio": 0.8, "scope": "global",
                                     "importance": "l1"},
                  schedule={"kind": "iterative", "steps": 2})
    comp = report["compressed"]
    assert comp["macs"] == report["baseline"]["macs"]  # dense shapes
    assert comp["weight_sparsity"] > 0.7  # the output layer stays dense
    gz = comp["safetensors_compressed_bytes"]
    assert gz["gzip_bytes"] < gz["bytes"]
    assert any("does not improve" in n for n in report["notes"])
    # the exported model carries the zeros and no masks
    model = compress.load(Path(report["outputs"]["safetensors"]).parent, trust_code=True)
    assert not any(k.endswith("_mask") for k in model.state_dict())


def test_n_m_kind(tmp_path: Path) -> None:
    report = _run(tmp_path, pruning={"kind": "n:m", "n": 2, "m": 4, "ratio": None})
    assert report["steps"][0]["target"] == 0.5
    w = compress.load(tmp_path / "run", trust_code=True).state_dict()["7.weight"]  # 3x3, 32 -> 32
    blocks = w.permute(0, 2, 3, 1).reshape(-1, 4)
    assert int((blocks != 0).sum(dim=1).max()) <= 2


def test_patience_and_distillation(tmp_path: Path) -> None:
    report = _run(tmp_path, data={"val_subset": 100},
                  finetune={"patience": [2, 1], "max_epochs": 2, "max_steps": None,
                            "eval_every": 2, "distill": {"alpha": 0.5, "temperature": 2.0}},
                  schedule={"kind": "hybrid", "first_step": 0.3, "steps": 1})
    assert len(report["steps"]) == 2
    for s in report["steps"]:
        assert len(s["val_history"]) >= 2  # evaluation 0 and at least one more


def test_patience_without_validation_data_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(compress.InputError, match="set data.val_subset"):
        parse_recipe(tiny_recipe(tmp_path, finetune={"patience": 3}))
