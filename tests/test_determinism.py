"""Determinism on CPU: the same recipe and seed give the same architecture, metrics and weights.

Two runs of an iterative structured recipe into two folders must agree exactly, step by step
(widths, MACs, params, accuracy, loss) and in every exported tensor; a different seed must not
(so the comparison can fail at all).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from compress.recipe.load import parse_recipe
from compress.run.pipeline import run_recipe
from tests.conftest import tiny_recipe

STEP_KEYS = ("layers", "macs", "params", "accuracy", "loss", "finetune_steps", "removed")


def _run(tmp: Path, name: str, seed: int = 0) -> Path:
    recipe = tiny_recipe(tmp, schedule={"kind": "iterative", "steps": 2},
                         pruning={"ratio": 0.5}, finetune={"epochs": 1, "max_steps": 4},
                         report={"latency": False}, export={"onnx": False}, seed=seed)
    out = tmp / name
    run_recipe(parse_recipe(recipe), out)
    return out


def _report(out: Path) -> dict[str, Any]:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("determinism"), "reference")


def test_same_recipe_and_seed_give_identical_runs(reference: Path, tmp_path: Path) -> None:
    again = _run(tmp_path, "again")
    first, second = _report(reference), _report(again)
    assert len(first["steps"]) == len(second["steps"]) == 2
    for a, b in zip(first["steps"], second["steps"]):
        assert {k: a[k] for k in STEP_KEYS} == {k: b[k] for k in STEP_KEYS}, a["step"]
    for key in ("accuracy", "loss", "macs", "params"):
        assert first["compressed"][key] == second["compressed"][key], key
        assert first["baseline"][key] == second["baseline"][key], key
    # The widths really shrank, so equal widths are a statement about the pruning.
    assert first["steps"][1]["macs"] < first["steps"][0]["macs"] < first["baseline"]["macs"]
    for name in ("model.safetensors", "steps/01/model.safetensors",
                 "steps/02/model.safetensors"):
        assert _same_tensors(_weights(reference / name), _weights(again / name)), name
        assert (reference / name).read_bytes() == (again / name).read_bytes(), name


def test_a_different_seed_trains_differently(reference: Path, tmp_path: Path) -> None:
    other = _run(tmp_path, "other", seed=1)
    first, second = _report(reference), _report(other)
    metrics = [(s["accuracy"], s["loss"]) for s in first["steps"]]
    assert metrics != [(s["accuracy"], s["loss"]) for s in second["steps"]]
    assert not _same_tensors(_weights(reference / "model.safetensors"),
                             _weights(other / "model.safetensors"))
