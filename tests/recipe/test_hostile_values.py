"""Hostile recipe values: numbers given as strings or booleans, a seed no RNG accepts, scalars
PyYAML cannot build (a date like 2024-13-45, an int of 5,000 digits): each refused by
``compress validate`` with one sentence naming the YAML path, exit 2, nothing written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile import Tree, assert_refused, invoke

pytestmark = pytest.mark.hostile

BASE = ("version: 1\nmodel: {source: cifar_resnet, name: resnet20}\n"
        "data: {source: digits}\n")


def _validate(tmp_path: Path, text: str, *args: str):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    tree = Tree(tmp_path)
    result = invoke(["validate", recipe, *args], cwd=tmp_path)
    assert tree.new_files() == []
    return result


@pytest.mark.parametrize("section, fragments", [
    ("pruning: {ratio: '0.5'}\n", ("'pruning.ratio'", "valid number", "'0.5'")),
    ("pruning: {ratio: true}\n", ("'pruning.ratio'", "valid number", "True")),
    ("pruning: {ratio: 0.5}\nfinetune: {epochs: true}\n", ("'finetune.epochs'", "valid integer")),
    ("pruning: {ratio: 0.5}\nfinetune: {epochs: 2.0}\n", ("'finetune.epochs'", "valid integer")),
    ("pruning: {ratio: 0.5}\nfinetune: {lr: '0.1'}\n", ("'finetune.lr'", "valid number")),
    ("pruning: {ratio: 0.5}\nreport: {batch_sizes: [1, '64']}\n",
     ("'report.batch_sizes.1'", "valid integer")),
    ("pruning: {ratio: 0.5}\nseed: 18446744073709551616\n",
     ("'seed'", "less than or equal to 4294967295")),
    ("pruning: {ratio: 0.5}\nseed: 4294967296\n", ("'seed'", "4294967295")),
    ("pruning: {ratio: 0.5}\nseed: -1\n", ("'seed'", "greater than or equal to 0")),
], ids=["string-ratio", "bool-ratio", "bool-int", "float-int", "string-lr",
        "string-in-int-list", "seed-2**64", "seed-2**32", "seed-negative"])
def test_wrong_number_is_refused_naming_the_path(tmp_path: Path, section: str,
                                                  fragments: tuple[str, ...]) -> None:
    assert_refused(_validate(tmp_path, BASE + section), *fragments)


def test_string_batch_size_is_refused(tmp_path: Path) -> None:
    text = BASE.replace("digits}", "digits, batch_size: '64'}") + "pruning: {ratio: 0.5}\n"
    assert_refused(_validate(tmp_path, text), "'data.batch_size'", "valid integer", "'64'")


def test_string_ratio_from_set_is_refused(tmp_path: Path) -> None:
    result = _validate(tmp_path, BASE + "pruning: {ratio: 0.5}\n", "--set", "pruning.ratio='0.4'")
    assert_refused(result, "'pruning.ratio'", "valid number")


@pytest.mark.parametrize("value", ["0.5", "1", "4294967295"])
def test_yaml_numbers_still_validate(tmp_path: Path, value: str) -> None:
    # --set values are YAML: 0.5 is a float; an int is accepted where a float is expected.
    field = "seed" if value == "4294967295" else "finetune.lr"
    result = _validate(tmp_path, BASE + "pruning: {ratio: 0.3}\n", "--set",
                       "pruning.ratio=0.5", "--set", f"{field}={value}")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("line, fragments", [
    ("name: 2024-13-45\n", ("line 4, column 7", "'2024-13-45' is not a valid timestamp")),
    ("seed: " + "1" * 5000 + "\n", ("line 4, column 7", "is not a valid int")),
])
def test_unbuildable_scalar_is_one_sentence(tmp_path: Path, line: str,
                                            fragments: tuple[str, ...]) -> None:
    text = BASE + line + "pruning: {ratio: 0.5}\n"
    assert_refused(_validate(tmp_path, text), *fragments)


def test_chain_of_aliases_nesting_past_the_limit_is_refused(tmp_path: Path) -> None:
    # Each line is shallow, but a440 expands to 440 levels: pydantic's JSON dump raised.
    chain = "".join(f"    a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 440))
    text = ("version: 1\nmodel:\n  source: python\n  factory: 'm:f'\n  kwargs:\n"
            "    a0: &a0 [1]\n" + chain + "data: {source: digits}\npruning: {ratio: 0.5}\n")
    assert_refused(_validate(tmp_path, text), "nested deeper than 100 levels once its aliases")
