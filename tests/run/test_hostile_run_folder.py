"""Hostile run folders: a damaged or foreign ``--out`` is refused in one sentence naming the file.

``status.json``, ``recipe.json`` and a step's ``state.json`` are read back by
:mod:`compress.run.folder` only; whatever they hold (not JSON, not an object, a key missing or
wrong-typed), ``compress apply --out`` and ``--resume`` exit 2 with one ``error:`` sentence, no
traceback, and write nothing outside the run folder. Most folders are made by hand; the cases
that need a real step checkpoint copy the session's finished tiny run (``finished_run``).
"""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_recipe
from tests.hostile import Tree, assert_refused, hostile, invoke


def _recipe(tmp_path: Path) -> Path:
    """The recipe of ``finished_run`` (same content, so a resume of its copy matches it)."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, gates={"max_accuracy_drop": 100.0})))
    return path


def _refused(tmp_path: Path, fragment: str, *flags: str) -> None:
    """``apply --out run FLAGS`` is refused naming ``fragment``; nothing new outside ``run``."""
    recipe = _recipe(tmp_path)
    tree = Tree(tmp_path)
    result = invoke(["apply", recipe, "--out", tmp_path / "run", *flags], cwd=tmp_path)
    assert_refused(result, fragment)
    assert tree.new_files(allowed=["run"]) == []


def _hand_made(tmp_path: Path, status: str, recipe: str | None = None) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "status.json").write_text(status)
    if recipe is not None:
        (run / "recipe.json").write_text(recipe)
    return run


BAD_STATUS = ["{}", "[]", '"x"', "not json {", '{"state": 3}', '{"state": "bogus"}']


@hostile
@pytest.mark.parametrize("status", BAD_STATUS)
@pytest.mark.parametrize("flags", [(), ("--resume",)], ids=["apply", "resume"])
def test_a_bad_status_json_is_refused_naming_it(tmp_path: Path, status: str,
                                                flags: tuple[str, ...]) -> None:
    _hand_made(tmp_path, status, recipe="{}")
    _refused(tmp_path, "status.json", *flags)


@hostile
@pytest.mark.parametrize("recipe", [None, "not json", "[]", '"x"'],
                         ids=["missing", "not-json", "list", "string"])
def test_resume_with_a_bad_recipe_json_is_refused_naming_it(tmp_path: Path,
                                                            recipe: str | None) -> None:
    _hand_made(tmp_path, '{"state": "interrupted"}', recipe=recipe)
    _refused(tmp_path, "recipe.json", "--resume")


@pytest.fixture
def interrupted(tmp_path: Path, finished_run: Path) -> Path:
    """A copy of the finished tiny run, marked interrupted after its one pruning step."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "status.json").write_text(json.dumps({"state": "interrupted", "reason": "test"}))
    assert (run / "steps" / "01" / "state.json").is_file()
    return run


@hostile
@pytest.mark.parametrize("content, fragment", [
    ("not json", "state.json"),
    ("[]", "state.json"),
    ('{"pruner": 1, "rows": []}', "'pruner'"),
    ('{"pruner": {}, "rows": {}}', "'rows'"),
], ids=["not-json", "list", "pruner-int", "rows-dict"])
def test_resume_with_a_bad_step_state_is_refused_naming_it(tmp_path: Path, interrupted: Path,
                                                           content: str, fragment: str) -> None:
    (interrupted / "steps" / "01" / "state.json").write_text(content)
    _refused(tmp_path, fragment, "--resume")


@hostile
def test_resume_with_the_step_state_missing_is_refused(tmp_path: Path, interrupted: Path) -> None:
    (interrupted / "steps" / "01" / "state.json").unlink()
    _refused(tmp_path, "no pruning step finished", "--resume")


@hostile
@pytest.mark.parametrize("name", ["rng.safetensors", "model.safetensors"])
@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_resume_with_a_damaged_step_tensor_file_is_refused(tmp_path: Path, interrupted: Path,
                                                           name: str, damage: str) -> None:
    path = interrupted / "steps" / "01" / name
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(b"\x00" * 7)
    _refused(tmp_path, name, "--resume")
