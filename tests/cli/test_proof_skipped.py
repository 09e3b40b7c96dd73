"""``pruning.verify: false`` skips the pruning proof: every output says "not proven" and
report.json stores no difference (null), never a 0.0 that was not measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from compress.cli.app import app
from tests.conftest import tiny_recipe

runner = CliRunner()


@pytest.fixture(scope="module")
def unverified_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("unverified")
    recipe = tmp / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp, pruning={"ratio": 0.5, "verify": False},
                                                 gates={"max_accuracy_drop": 100.0})))
    result = runner.invoke(app, ["apply", str(recipe), "--out", str(tmp / "run")])
    assert result.exit_code == 0, result.output
    return tmp / "run", result.output


def test_report_json_stores_null_not_zero(unverified_run) -> None:
    out, _ = unverified_run
    step = json.loads((out / "report.json").read_text())["steps"][0]
    assert step["max_abs_diff"] is None and step["proof"] == "not proven"
    notes = json.loads((out / "report.json").read_text())["notes"]
    assert any("not proven" in n and "verify" in n for n in notes), notes


def test_report_md_and_html_say_not_proven(unverified_run) -> None:
    out, _ = unverified_run
    md = (out / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| 1 |"))
    assert row.endswith("| not proven |") and "e+00" not in row
    html = (out / "report.html").read_text()
    assert "<td>not proven</td>" in html and "0.0e+00" not in html


def test_terminal_summary_says_not_proven(unverified_run) -> None:
    _, output = unverified_run
    assert "pruning proof     step 1: not proven" in output


def test_the_proof_gate_fails_the_run_when_required(unverified_run, tmp_path: Path) -> None:
    out, _ = unverified_run
    result = runner.invoke(app, ["gate", str(out), "--require-proof", "--junit",
                                 str(tmp_path / "gates.xml")])
    assert result.exit_code == 1, result.output
    assert "FAIL pruning proof: step(s) 1 not proven (required: every step proven)" in \
        result.output
    assert "PASS accuracy drop" in result.output  # the recipe's own gate still passes
    assert 'name="require_proof"' in (tmp_path / "gates.xml").read_text()
    assert runner.invoke(app, ["gate", str(out)]).exit_code == 0  # not required: not checked


def test_a_recipe_cannot_require_proof_and_skip_it(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, pruning={"ratio": 0.5, "verify": False},
                                                 gates={"require_proof": True})))
    for command in (["validate", str(recipe)], ["apply", str(recipe), "--out",
                                                str(tmp_path / "run")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert "gates.require_proof needs the proofs that pruning.verify: false skips" in \
            result.stderr
    assert not (tmp_path / "run").exists()
