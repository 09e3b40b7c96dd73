"""A damaged fine-tune snapshot is refused in one sentence naming it, never continued from.

A snapshot is written whole (temp folder, ``state.json`` last, one rename), so damage means the
disk or a hand changed it: ``--resume`` exits 2 naming the snapshot and says how to go on
(remove that folder: the step's fine-tune is then redone from the last finished step, which
ends as the uninterrupted run would) instead of silently dropping it or training from garbage.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from safetensors.torch import save_file

from compress.errors import InputError
from compress.finetune.checkpoint import latest_snapshot_dir, read_snapshot
from compress.recipe.stages import FinetuneSpec
from tests.conftest import tiny_recipe
from tests.finetune.test_checkpoint import dropout_cnn, run
from tests.hostile import Tree, assert_refused, hostile, invoke

pytestmark = pytest.mark.usefixtures("single_thread")


def _state(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(snap: Path) -> None:
        state = json.loads((snap / "state.json").read_text())
        edit(state)
        (snap / "state.json").write_text(json.dumps(state))
    return damage


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda snap: (snap / name).write_bytes(data)


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "state-not-json": (_write("state.json", b"not json {"), "not readable JSON"),
    "state-list": (_write("state.json", b"[]"), "is not a JSON object"),
    "position-missing": (_state(lambda s: s.pop("position")), "no valid 'position'"),
    "step-string": (_state(lambda s: s["position"].update(step="8")), "no valid 'step'"),
    "step-bool": (_state(lambda s: s["position"].update(batch=True)), "no valid 'batch'"),
    "position-extra": (_state(lambda s: s["position"].update(evil=1)), "unknown keys"),
    "best-string": (_state(lambda s: s.update(best="yes")), "no valid 'best'"),
    "context-list": (_state(lambda s: s.update(context=[])), "no valid 'context'"),
    "model-missing": (lambda snap: (snap / "model.safetensors").unlink(),
                      "model.safetensors is missing"),
    "weights-garbage": (_write("weights.safetensors", b"\0" * 9),
                        "weights.safetensors is not readable"),
    "optimizer-garbage": (_write("optimizer.pt", b"not a zip"), "optimizer.pt is not readable"),
    "rng-empty": (lambda snap: save_file({}, str(snap / "rng.safetensors")),
                  "tensors it records are missing"),
}


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real snapshot of a fine-tune (killed after its first), read it, never write it."""
    folder = tmp_path_factory.mktemp("snapshot")
    run(dropout_cnn, FinetuneSpec(epochs=2), folder, kill_after=1)
    snap = latest_snapshot_dir(folder)
    assert snap is not None and read_snapshot(snap).position.step == 6
    return snap


@hostile
@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_snapshot_is_an_input_error_naming_it(whole: Path, tmp_path: Path,
                                                         case: str) -> None:
    damage, fragment = DAMAGE[case]
    snap = tmp_path / whole.name
    shutil.copytree(whole, snap)
    damage(snap)
    with pytest.raises(InputError) as caught:
        read_snapshot(snap)
    message = str(caught.value)
    assert f"the fine-tune snapshot {str(snap)!r}" in message and fragment in message
    assert "remove that folder" in message and "\n" not in message


@hostile
@pytest.mark.parametrize("case", ["state-not-json", "rng-empty", "context-not-the-runs"])
def test_resume_from_a_damaged_snapshot_is_refused_in_one_sentence(
        whole: Path, finished_run: Path, tmp_path: Path, case: str) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "status.json").write_text(json.dumps({"state": "interrupted", "reason": "t"}))
    (run_dir / "steps" / "01" / "state.json").unlink()  # killed inside step 1's fine-tune
    snap = run_dir / "steps" / "01" / whole.name
    shutil.copytree(whole, snap)
    if case == "context-not-the-runs":  # a whole snapshot, but not one this run wrote
        _state(lambda s: s.update(context={"rows": []}))(snap)
    else:
        DAMAGE[case][0](snap)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, gates={"max_accuracy_drop": 100.0})))
    tree = Tree(tmp_path)
    result = invoke(["apply", recipe, "--out", run_dir, "--resume"], cwd=tmp_path)
    assert_refused(result, f"the fine-tune snapshot {str(snap)!r}", "remove that folder")
    assert tree.new_files(allowed=["run"]) == []
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
