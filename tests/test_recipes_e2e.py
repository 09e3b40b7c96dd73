"""The shipped recipes, end to end. Fast variants shrink budgets with --set; the full runs are
marked slow (``make test-slow``). Recipes on ../shared skip when it is absent."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import compress
from compress.cli.app import app
from compress.export.onnx import onnx_session
from compress.recipe.load import load_recipe
from tests.conftest import ROOT, shared_path

runner = CliRunner()
SMALL = ["report.rounds=2", "report.runs_per_round=1", "report.warmup=1",
         "report.batch_sizes=[1, 8]"]


def _apply(recipe: str, out: Path, *sets: str) -> dict:
    args = ["apply", str(ROOT / "recipes" / recipe), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


def _needs_shared(recipe: str) -> None:
    r = load_recipe(ROOT / "recipes" / recipe)
    for p in (r.model.checkpoint, r.data.path):
        if p:
            shared_path(*r.resolve_path(p).resolve().relative_to(
                (ROOT.parent / "shared").resolve()).parts)


def test_quickstart_recipe(tmp_path: Path) -> None:
    report = _apply("quickstart.yaml", tmp_path / "q", "finetune.epochs=1", *SMALL)
    assert abs(report["macs_reduction"] - 0.5) < 0.05
    assert report["baseline"]["accuracy"] > 95
    assert report["status"] == "passed"


def test_resnet20_on_shared_data_small_budget(tmp_path: Path) -> None:
    _needs_shared("resnet20-cifar10-oneshot.yaml")
    report = _apply("resnet20-cifar10-oneshot.yaml", tmp_path / "r20",
                    "data.train_subset=256", "data.eval_subset=200", "finetune.max_steps=2",
                    "report.latency=false")
    assert report["baseline"]["accuracy"] > 60  # the pretrained weights really loaded
    _assert_widths_follow_targets(report)
    assert report["steps"][0]["max_abs_diff"] < 1e-3


ORIGINAL_WIDTHS = {1: 16, 2: 32, 3: 64}


def _assert_widths_follow_targets(report: dict) -> None:
    """Each pruned conv keeps floor(C * (1 - cumulative target)) channels after each step."""
    for step in report["steps"]:
        for name, width in step["layers"].items():
            if name == "linear":
                assert width == 10
                continue
            stage = int(name[5]) if name.startswith("layer") else 1
            expected = int(ORIGINAL_WIDTHS[stage] * (1 - step["target"]))
            assert abs(width - expected) <= 1, (step["step"], name, width, expected)


@pytest.mark.slow
def test_resnet56_recipe_one_epoch(tmp_path: Path) -> None:
    _needs_shared("resnet56-cifar10.yaml")
    out = tmp_path / "r56"
    report = _apply("resnet56-cifar10.yaml", out, "finetune.epochs=1")
    assert abs(report["macs_reduction"] - 0.5) <= 0.05
    assert report["baseline"]["eval_samples"] == 10000
    assert report["parity"]["onnx"] < 1e-3
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        loaded = compress.load(out, trust_code=True)(x).numpy()
    onnx_out = onnx_session(out / "model.onnx").run(None, {"input": x.numpy()})[0]
    assert abs(loaded - onnx_out).max() < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("regime", ["oneshot", "geometric", "patience", "hybrid"])
def test_resnet20_regimes_write_the_curve(regime: str, tmp_path: Path) -> None:
    recipe = f"resnet20-cifar10-{regime}.yaml"
    _needs_shared(recipe)
    report = _apply(recipe, tmp_path / regime, *SMALL)
    targets = [s["target"] for s in report["steps"]]
    assert targets == sorted(targets) and abs(targets[-1] - 0.5) < 1e-9
    _assert_widths_follow_targets(report)
    for step in report["steps"]:
        assert Path(step["checkpoint"]).is_dir()
        assert step["accuracy"] is not None and step["finetune_epochs"] > 0
