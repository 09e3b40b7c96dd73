"""A recipe ``name`` becomes a folder under ``runs/``: anything but a plain folder name is refused
by ``compress validate``, naming the YAML path ``name``, and nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_recipe
from tests.hostile import Tree, assert_refused, hostile, invoke


@hostile
@pytest.mark.parametrize("name", ["/abs", "../x", "a/b", "a\\b", ".", "..", ".hidden", "",
                                  "x" * 101, "nul\0byte"])
def test_name_that_is_not_a_plain_folder_name_is_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, name=name)))
    tree = Tree(tmp_path)
    assert_refused(invoke(["validate", path], cwd=tmp_path), "'name'")
    assert tree.new_files() == []


def test_plain_names_pass(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, name="resnet56-half_macs.v2")))
    assert invoke(["validate", path], cwd=tmp_path).exit_code == 0
