"""Hostile YAML: alias bombs, deep nesting, self-references, oversized files, non-mapping
recipes with ``--set``: each one sentence, exit 2, refused before anything is expanded or written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile import Tree, assert_refused, invoke

pytestmark = pytest.mark.hostile

BASE = ("version: 1\nmodel: {source: cifar_resnet, name: resnet20}\n"
        "data: {source: digits}\n")


def _bomb(levels: int = 10) -> str:
    """Nested anchors: ten aliases per level, 10**levels nodes once expanded."""
    lines = ["b0: &b0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"b{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def _refuse(tmp_path: Path, text: str, *fragments: str, args: tuple[str, ...] = ()) -> str:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    tree = Tree(tmp_path)
    result = invoke(["validate", recipe, *args], cwd=tmp_path)
    line = assert_refused(result, *fragments)
    assert tree.new_files() == []
    return line


@pytest.mark.parametrize("where", ["pruning.ratio", "model.kwargs"])
def test_alias_bomb_in_a_known_field_is_refused(tmp_path: Path, where: str) -> None:
    section, key = where.split(".")
    text = _with_bomb(section, key, _bomb())
    _refuse(tmp_path, text, "aliases")


def _with_bomb(section: str, key: str, body: str) -> str:
    model = "model:\n  source: cifar_resnet\n  name: resnet20\n"
    pruning = "pruning:\n"
    if section == "model":
        model += f"  {key}:\n" + "".join(f"  {ln}\n" for ln in body.splitlines())
        pruning += "  ratio: 0.5\n"
    else:
        pruning += "  bombs:\n" + "".join(f"  {ln}\n" for ln in body.splitlines())
        pruning += f"  {key}: *b9\n"
    return f"version: 1\n{model}data: {{source: digits}}\n{pruning}"


def test_alias_bomb_in_a_set_value_is_refused(tmp_path: Path) -> None:
    _refuse(tmp_path, BASE + "pruning: {ratio: 0.5}\n", "override",
            args=("--set", "model.kwargs=" + _nested_flow_bomb()))


def _nested_flow_bomb() -> str:
    text = "&a0 [x, x, x, x, x, x, x, x, x, x]"
    for i in range(1, 7):
        text = f"&a{i} [{text}, " + ", ".join([f"*a{i - 1}"] * 9) + "]"
    return f"{{k: [{text}, *a6, *a6, *a6, *a6, *a6, *a6, *a6, *a6, *a6]}}"


def test_nesting_fifty_thousand_deep_is_refused(tmp_path: Path) -> None:
    _refuse(tmp_path, BASE + "pruning: {ratio: " + "[" * 50_000 + "]" * 50_000 + "}\n",
            "nested deeper")


def test_deep_block_mapping_is_refused(tmp_path: Path) -> None:
    deep = "".join("  " * i + f"k{i}:\n" for i in range(300)) + "  " * 300 + "v: 1\n"
    _refuse(tmp_path, BASE + "model_extra:\n" + "".join("  " + ln + "\n"
                                                        for ln in deep.splitlines()),
            "nested deeper")


def test_self_referencing_alias_is_refused(tmp_path: Path) -> None:
    _refuse(tmp_path, BASE + "pruning: &p {ratio: 0.5, again: *p}\n", "refers to itself")


def test_oversized_recipe_file_is_refused(tmp_path: Path) -> None:
    _refuse(tmp_path, BASE + "# " + "x" * (2 << 20) + "\n", "larger than")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_recipe_with_set_is_refused(tmp_path: Path, text: str) -> None:
    _refuse(tmp_path, text, "mapping of sections", args=("--set", "pruning.ratio=0.5"))
