"""A full disk or a read-only file system at each stage of a run: one sentence naming the file
and why, exit 2, ``status.json`` left ``failed`` with that sentence, no temp file anywhere and
no partial artifact outside ``steps/``; when ``status.json`` cannot be written either, still one
sentence. The faults are injected in-process (:mod:`tests.disk_faults`): tests run as root.
"""

import errno
from pathlib import Path

import pytest
import torch
import yaml

from compress.errors import InputError
from compress.export.hf import save_hf_
from compress.models import build_model
from compress.recipe.sources import ModelSpec
from compress.run.folder import read_status
from compress.run.owner import describe_state
from tests.conftest import tiny_recipe
from tests.disk_faults import WHY, fail_writes, leftovers
from tests.hf_models import example_input, save_tiny
from tests.hostile import Tree, assert_refused, hostile, invoke

CODES = [errno.ENOSPC, errno.EROFS]

# stage -> (paths that fail, relative to the run folder; what the sentence names; the artifact
# that must not exist afterwards)
STAGES = {
    "step checkpoint": (r"^steps/01(/|$)", "steps/01", None),
    "model.safetensors": (r"^\.?model\.safetensors", "model.safetensors'", "model.safetensors"),
    "onnx": (r"^\.?model\.onnx", "model.onnx'", "model.onnx"),
    "report": (r"^\.?report\.json", "report.json'", "report.json"),
    "recipe.json": (r"^\.?recipe\.json", "recipe.json'", "recipe.json"),
}


def _recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, report={"latency": False},
                                               gates={"max_accuracy_drop": 100.0})))
    return path


@hostile
@pytest.mark.parametrize("code", CODES, ids=["ENOSPC", "EROFS"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_a_failing_disk_at_each_stage_is_one_sentence_and_a_failed_status(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str, code: int) -> None:
    pattern, named, artifact = STAGES[stage]
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    tree = Tree(tmp_path)
    failed = fail_writes(monkeypatch, out, pattern, code)
    result = invoke(["apply", recipe, "--out", out], cwd=tmp_path)
    monkeypatch.undo()
    assert failed, "the fault was never reached"
    line = assert_refused(result, "cannot write ", named, WHY[code])
    assert leftovers(out) == []
    assert tree.new_files(allowed=["run"]) == []
    if artifact is not None:
        assert not (out / artifact).exists()
    status = read_status(out)
    if stage == "recipe.json":  # the run never started: nothing to resume, no status
        assert status is None
        return
    assert status["state"] == "failed" and f"error: {status['reason']}" == line


@hostile
@pytest.mark.parametrize("code", CODES, ids=["ENOSPC", "EROFS"])
def test_when_status_json_cannot_be_written_either_it_is_still_one_sentence(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    failed = fail_writes(monkeypatch, out, r"^\.?(report|status)\.json",
                         code, when=lambda: (out / "model.onnx").exists())
    result = invoke(["apply", recipe, "--out", out], cwd=tmp_path)
    monkeypatch.undo()
    assert any("status.json" in f for f in failed)
    assert_refused(result, "report.json'", WHY[code], "status.json could not be updated either")
    assert leftovers(out) == []
    # status.json still says running, but its owner is gone: readers say so.
    assert read_status(out)["state"] == "running"
    assert describe_state(out, read_status(out)) == "interrupted (owner gone)"


@hostile
@pytest.mark.parametrize("code", CODES, ids=["ENOSPC", "EROFS"])
def test_a_failing_disk_under_the_lock_or_first_status_is_one_sentence(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    fail_writes(monkeypatch, out, r"^(\.lock|\.?status\.json)", code)
    result = invoke(["apply", recipe, "--out", out], cwd=tmp_path)
    monkeypatch.undo()
    assert_refused(result, "cannot write ", WHY[code])
    assert leftovers(out) == []


@hostile
@pytest.mark.parametrize("code", CODES, ids=["ENOSPC", "EROFS"])
def test_a_failing_disk_while_writing_hf_leaves_no_partial_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    folder, task = save_tiny("bert", tmp_path / "tiny")
    model = build_model(ModelSpec(source="huggingface", name=str(folder), task=task))
    x = example_input(model)
    out = tmp_path / "out"
    out.mkdir()
    fail_writes(monkeypatch, out, r"^(\.hf\.|hf(/|$))", code)
    with pytest.raises(InputError, match=rf"cannot write '{out}/hf': {WHY[code]}"):
        save_hf_(model, out, x)
    monkeypatch.undo()
    assert list(out.iterdir()) == []
    with torch.no_grad():
        assert save_hf_(model, out, x)["saved"]  # the same call works on a healthy disk
