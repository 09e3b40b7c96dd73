"""``pruning.target.latency``: exactly one resource per target, a table file only with it, and
the engine it is timed on; each refusal is one sentence naming the YAML path, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress.recipe.load import parse_recipe
from tests.hostile import Tree, assert_refused, invoke

BASE = ("version: 1\nmodel: {source: cifar_resnet, name: resnet20}\n"
        "data: {source: digits}\n")


def test_latency_target_validates() -> None:
    r = parse_recipe({"version": 1, "model": {"source": "cifar_resnet", "name": "resnet20"},
                      "data": {"source": "digits"},
                      "pruning": {"target": {"latency": 0.5, "latency_table": "t.json"}}})
    assert r.pruning.final_target() == 0.5 and r.pruning.target.macs is None


@pytest.mark.hostile
@pytest.mark.parametrize("section, fragments", [
    ("pruning: {target: {macs: 0.5, latency: 0.5}}\n",
     ("'pruning.target'", "exactly one of 'macs'", "'latency'")),
    ("pruning: {target: {tolerance: 0.1}}\n", ("'pruning.target'", "exactly one of 'macs'")),
    ("pruning: {target: {macs: 0.5, latency_table: t.json}}\n",
     ("'pruning.target'", "'latency_table' goes with a 'latency' target")),
    ("pruning: {target: {latency: 1.5}}\n", ("'pruning.target.latency'", "less than 1")),
    ("pruning: {target: {latency: 0.5}}\nreport: {engines: [torch]}\n",
     ("onnxruntime's CPU engine", "report.engines")),
], ids=["both", "neither", "table-without-latency", "out-of-range", "no-onnxruntime"])
def test_bad_latency_target_is_refused_naming_the_path(tmp_path: Path, section: str,
                                                       fragments: tuple[str, ...]) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE + section)
    tree = Tree(tmp_path)
    assert_refused(invoke(["validate", recipe], cwd=tmp_path), *fragments)
    assert tree.new_files() == []
