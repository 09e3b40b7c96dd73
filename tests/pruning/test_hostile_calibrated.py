"""Bad calibrated-pruning input: one sentence, exit 2, nothing written outside the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.hostile import Tree, assert_refused, hostile, invoke
from tests.pruning.test_calibrated import _recipe

pytestmark = hostile


def _edit(path: Path, **changes) -> Path:
    recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        recipe.setdefault(section, {})[key] = value
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.mark.parametrize("changes, fragments", [
    ({"schedule__kind": "iterative", "schedule__steps": 2},
     ["importance wanda chooses every weight from one calibration pass", "one-shot"]),
    ({"pruning__scope": "global"}, ["within each output row", "scope: local"]),
    ({"pruning__prune_biases": True}, ["remove prune_biases/prune_norms"]),
    ({"calibration__seq_len": 64}, ["calibration.seq_len (64) exceeds data.max_length (16)"]),
])
@pytest.mark.parametrize("command", ["validate", "apply"])
def test_refused_before_the_run(command, changes, fragments, tmp_path: Path) -> None:
    path = _edit(_recipe(tmp_path, "unstructured", "wanda"), **changes)
    tree = Tree(tmp_path)
    assert_refused(invoke([command, path], cwd=tmp_path), *fragments)
    assert tree.new_files() == []


def test_sparsegpt_blocks_must_hold_whole_groups(tmp_path: Path) -> None:
    path = _edit(_recipe(tmp_path, "n:m", "sparsegpt"), pruning__sparsegpt_block=6)
    assert_refused(invoke(["validate", path], cwd=tmp_path),
                   "sparsegpt_block (6) must be a multiple of m (4)")


def test_more_samples_than_the_split_holds(tmp_path: Path) -> None:
    path = _edit(_recipe(tmp_path, "unstructured", "wanda"), calibration__samples=5000)
    tree = Tree(tmp_path)
    assert_refused(invoke(["apply", path, "--out", tmp_path / "run"], cwd=tmp_path),
                   "calibration.samples is 5000 but the train split holds only")
    assert tree.new_files(allowed=["run"]) == []
