"""The benchmark scripts start, and each runs its tiny configuration (benchmarks are not tests:
their numbers are measured by hand, see BENCHMARKS.md)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, shared_path

BENCH = ROOT / "benchmarks"
SCRIPTS = ["regimes", "peer_torch_pruning", "overheads", "latency_levers", "conv_efficiency",
           "proof_cost"]


def _run(script: str, *args: str, timeout: int = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(BENCH / f"{script}.py"), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def regimes():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("regimes")
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_starts(script: str) -> None:
    proc = _run(script, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and "--tiny" in proc.stdout


def test_every_regime_gets_the_same_image_budget(regimes) -> None:
    for profile in regimes.PROFILES.values():
        totals = set()
        for regime in regimes.REGIMES:
            sec = regimes.regime_sections(regime, 0.9, profile)
            assert sec["finetune"]["max_steps"] == sec["per_step"]
            # never cut short by the end of an epoch (the full profile trains 10 epochs)
            epochs = sec["finetune"].get("max_epochs", sec["finetune"]["epochs"])
            assert epochs * regimes.TRAIN_IMAGES >= sec["per_step"] * profile["batch"]
            totals.add(sec["steps"] * sec["per_step"])
        assert totals == {profile["budget_steps"]}, (profile, totals)


def test_per_step_gives_every_pruning_step_the_whole_budget(regimes) -> None:
    profile = {**regimes.PROFILES["cpu"], "per_step": True}
    for regime, steps in (("one-shot", 1), ("iterative-geometric", 5), ("hybrid", 3)):
        sec = regimes.regime_sections(regime, 0.9, profile)
        assert sec["steps"] == steps and sec["per_step"] == profile["budget_steps"]


def test_hybrid_starts_at_seventy_percent_of_the_target(regimes) -> None:
    sec = regimes.regime_sections("hybrid", 0.9, regimes.PROFILES["cpu"])
    assert sec["schedule"] == {"kind": "hybrid", "first_step": 0.63, "steps": 2}
    assert sec["finetune"]["patience"] == [4, 2]


def test_crossover_sentence_reads_the_table(regimes) -> None:
    holds = {("unstructured", 0.5): {"one-shot": 80.0, "iterative-geometric": 80.2},
             ("unstructured", 0.7): {"one-shot": 79.0, "iterative-geometric": 79.1},
             ("unstructured", 0.9): {"one-shot": 60.0, "iterative-geometric": 70.0},
             ("unstructured", 0.95): {"one-shot": 40.0, "iterative-geometric": 55.0}}
    assert "holds here" in regimes.crossover_sentence(holds, se=0.9)
    reversed_ = {k: {"one-shot": v["iterative-geometric"], "iterative-geometric": v["one-shot"]}
                 for k, v in holds.items()}
    assert "does not clearly hold" in regimes.crossover_sentence(reversed_, se=0.9)


@pytest.mark.slow
@pytest.mark.parametrize("script,args", [
    ("regimes", ["--kinds", "unstructured", "--regimes", "one-shot", "hybrid"]),
    ("regimes", ["--kinds", "structured", "--regimes", "iterative-constant", "--per-step"]),
    ("peer_torch_pruning", []),
    ("overheads", []),
    ("latency_levers", []),
    ("conv_efficiency", []),
])
def test_tiny_configuration_runs(script: str, args: list[str], tmp_path: Path) -> None:
    shared_path("models", "resnet-cifar10")
    shared_path("data", "cifar10-jpg")
    proc = _run(script, "--tiny", "--out", str(tmp_path), "--work", str(tmp_path / "work"),
                *args, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name = script + ("-per-step" if "--per-step" in args else "") + "-tiny"
    written = {p.name for p in tmp_path.iterdir()}
    assert f"{name}.json" in written and f"{name}.md" in written
    result = json.loads((tmp_path / f"{name}.json").read_text())
    assert result["machine"]["cores"] >= 1 and result["command"].startswith("python ")
