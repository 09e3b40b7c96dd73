"""Run folders: status written last, guarded reuse, SIGKILL + resume == uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import compress
from compress.runstate import changed_keys, read_status
from tests.conftest import ROOT, tiny_recipe

RUN = ("import sys, compress; "
       "compress.apply(sys.argv[1], out_dir=sys.argv[2], resume=sys.argv[3] == 'resume')")


def _recipe(tmp_path: Path) -> Path:
    recipe = tiny_recipe(tmp_path, schedule={"kind": "iterative", "steps": 3},
                         pruning={"ratio": 0.6, "round_to": 1},
                         finetune={"epochs": 1, "max_steps": 12},
                         report={"latency": False})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _start(recipe: Path, out: Path, mode: str = "fresh") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUN, str(recipe), str(out), mode], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, marker: Path, out: Path, timeout: float = 240) -> None:
    """SIGKILL the run as soon as ``marker`` exists; the folder must never look done early."""
    deadline = time.time() + timeout
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        status = read_status(out)
        assert status is None or status["state"] != "done"
        assert time.time() < deadline, f"{marker} never appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_status(out)["state"] == "running"  # killed: nobody could write anything else


def _metrics(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    return {"accuracy": report["compressed"]["accuracy"], "loss": report["compressed"]["loss"],
            "macs": report["compressed"]["macs"],
            "steps": [(s["accuracy"], s["loss"], s["macs"], s["layers"]) for s in report["steps"]]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("reference")
    recipe = _recipe(tmp)
    proc = _start(recipe, tmp / "run")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert read_status(tmp / "run")["state"] == "done"
    return recipe, _metrics(tmp / "run")


@pytest.mark.parametrize("kill_after", ["steps/02/model.json",
                                        "steps/03/state.json"])
def test_sigkill_then_resume_equals_uninterrupted(reference, tmp_path: Path,
                                                  kill_after: str) -> None:
    recipe, expected = reference
    out = tmp_path / "run"
    _kill_when(_start(recipe, out), out / kill_after, out)
    with pytest.raises(compress.InputError, match="unfinished run"):
        compress.load(out)
    finished = sorted(p.parent.name for p in out.glob("steps/*/state.json"))
    stamps = {n: (out / "steps" / n / "model.safetensors").stat().st_mtime_ns for n in finished}
    proc = _start(recipe, out, "resume")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert read_status(out)["state"] == "done"
    for name, stamp in stamps.items():  # finished steps were not redone
        assert (out / "steps" / name / "model.safetensors").stat().st_mtime_ns == stamp
    assert _metrics(out) == expected
    assert compress.load(out) is not None


def test_finished_run_is_not_overwritten(reference, tmp_path: Path) -> None:
    recipe, _ = reference
    out = tmp_path / "run"
    out.mkdir()
    (out / "status.json").write_text(json.dumps({"state": "done"}))
    with pytest.raises(compress.InputError, match="holds a finished run; pass --overwrite"):
        compress.apply(recipe, out_dir=out)
    with pytest.raises(compress.InputError, match="nothing to resume"):
        compress.apply(recipe, out_dir=tmp_path / "empty", resume=True)


def test_unfinished_run_needs_resume_or_overwrite_and_the_same_recipe(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    stored = yaml.safe_load(recipe.read_text())
    (out / "recipe.json").write_text(json.dumps(compress.recipe.parse_recipe(stored).to_dict()))
    (out / "status.json").write_text(json.dumps({"state": "running"}))
    with pytest.raises(compress.InputError, match="unfinished run .*--resume"):
        compress.apply(recipe, out_dir=out)
    with pytest.raises(compress.InputError, match=r"recipe changed .*finetune\.max_steps"):
        compress.apply(recipe, out_dir=out, resume=True, finetune={"max_steps": 5})
    with pytest.raises(compress.InputError, match="choose one of"):
        compress.apply(recipe, out_dir=out, resume=True, overwrite=True)


def test_changed_keys() -> None:
    assert changed_keys({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 4}) == ["a.c", "d"]


def test_sigterm_marks_the_run_interrupted(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    out = tmp_path / "run"
    proc = _start(recipe, out)
    deadline = time.time() + 240
    while not (out / "steps" / "01" / "state.json").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    status = read_status(out)
    assert status["state"] == "interrupted" and "--resume" in status["reason"]
