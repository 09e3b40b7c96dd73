"""Hostile reports for ``compress gate``, and the gate that requires every step proven.

Whatever a report.json holds (wrong types, huge nesting, a 5,000-digit integer, not JSON), the
gate exits 2 with one ``error:`` sentence naming the file and the field path, writes no JUnit
or Markdown file, and never shows a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.gates.test_gate import make_report, write_run
from tests.hostile import Tree, assert_refused, hostile, invoke


def _gate(tmp_path: Path, text: str, *args: str) -> Any:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "report.json").write_text(text)
    tree = Tree(tmp_path)
    result = invoke(["gate", run, "--min-speedup", "1.0", "--junit", tmp_path / "g.xml",
                     "--markdown", tmp_path / "g.md", *args])
    if result.exit_code == 2:
        assert tree.new_files() == [], "a refused report must write nothing"
    return result


def _with(path: str, value: Any) -> str:
    """The fixture report with the dotted ``path`` set to ``value``, as JSON text."""
    report = make_report()
    *parents, last = path.split(".")
    node: Any = report
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return json.dumps(report)


@hostile
@pytest.mark.parametrize("path, value, fragment", [
    ("recipe", "x", "'recipe' should be a JSON object (got 'x')"),
    ("speedup", "fast", "'speedup' should be a JSON object (got 'fast')"),
    ("speedup.headline", "fast", "'speedup.headline' should be a number (got 'fast')"),
    ("speedup.headline", True, "'speedup.headline' should be a number (got True)"),
    ("gates", [1, 2], "'gates.0' should be a JSON object (got 1)"),
    ("gates", {"a": 1}, "'gates' should be a JSON list"),
    ("baseline", None, "'baseline' should be a JSON object (got None)"),
    ("baseline.accuracy", "99.4", "'baseline.accuracy' should be a number (got '99.4')"),
    ("compressed.macs", [1], "'compressed.macs' should be a number (got [1])"),
    ("compressed.onnx_bytes", {"b": 1}, "'compressed.onnx_bytes' should be a number"),
    ("steps", "all", "'steps' should be a JSON list (got 'all')"),
    ("steps.0.step", "1", "'steps.0.step' should be a whole number (got '1')"),
    ("steps.0.max_abs_diff", "0.0", "'steps.0.max_abs_diff' should be a number"),
    ("steps.0.proof", 0, "'steps.0.proof' should be a string (got 0)"),
    ("recipe.gates", [], "'recipe.gates' should be a JSON object (got [])"),
    ("recipe.gates.max_accuracy_drop", "2", "'recipe.gates.max_accuracy_drop' should be a "
                                            "number (got '2')"),
    ("recipe.gates.require_proof", "yes", "'recipe.gates.require_proof' should be true or "
                                          "false (got 'yes')"),
    ("name", ["x"], "'name' should be a string (got ['x'])"),
    ("status", 3, "'status' should be a string (got 3)"),
    ("created", {}, "'created' should be a string (got {})"),
    ("schema_version", 1.0, "is not a compress report (no integer 'schema_version')"),
    ("schema_version", 99, "has schema_version 99, newer than this compress reads"),
])
def test_wrong_types_are_one_sentence_naming_the_field(tmp_path: Path, path: str, value: Any,
                                                       fragment: str) -> None:
    line = assert_refused(_gate(tmp_path, _with(path, value)), fragment)
    assert "report.json" in line


@hostile
def test_a_missing_block_is_named(tmp_path: Path) -> None:
    report = make_report()
    del report["compressed"]
    assert_refused(_gate(tmp_path, json.dumps(report)), "'compressed' is missing")


@hostile
@pytest.mark.parametrize("text, fragment", [
    ("[" * 100_000 + "]" * 100_000, "levels deep, the most read"),
    ('{"schema_version": ' + "7" * 5000 + "}", "holds an integer of 5,000 digits"),
    (_with("baseline.macs", 0).replace('"macs": 0', '"macs": ' + "1" * 5000),
     "holds an integer of 5,000 digits"),
    (_with("notes", 0).replace('"notes": 0', '"notes": ' + "[" * 500 + "]" * 500),
     "levels deep, the most read"),
    ("[1, 2]", "holds a JSON list, not an object"),
    ("null", "holds a JSON null, not an object"),
    ("", "is not JSON"),
    ('{"a": 1', "is not JSON"),
    ("{\xff}", "is not UTF-8 text"),
])
def test_unreadable_reports_are_one_sentence(tmp_path: Path, text: str, fragment: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_bytes(text.encode("latin-1"))
    result = invoke(["gate", run, "--min-speedup", "1.0", "--junit", tmp_path / "g.xml"])
    assert_refused(result, fragment, "report.json")
    assert not (tmp_path / "g.xml").exists()


# -- the proof gate ---------------------------------------------------------------------------

_UNPROVEN = {"max_abs_diff": None, "proof": "not proven"}
_COUNTED = {"max_abs_diff": None, "proof": "not applicable (count check)"}


def _report(*steps: dict[str, Any], **gates: Any) -> dict[str, Any]:
    report = make_report(gates={"max_accuracy_drop": 2.0, **gates})
    report["steps"] = [{**report["steps"][0], "step": i + 1, **s} for i, s in enumerate(steps)]
    return report


def test_require_proof_fails_an_unproven_step(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", _report({}, _UNPROVEN))
    result = invoke(["gate", run, "--require-proof", "--junit", tmp_path / "g.xml",
                     "--markdown", tmp_path / "g.md"])
    assert result.exit_code == 1, result.output
    assert "FAIL pruning proof: step(s) 2 not proven (required: every step proven)" in \
        result.output
    assert "PASS accuracy drop" in result.output  # the recipe's gate is still checked
    assert "| pruning proof | 1 step(s) not proven | every step proven | ❌ FAIL |" in \
        (tmp_path / "g.md").read_text()
    assert 'name="require_proof"' in (tmp_path / "g.xml").read_text()


def test_require_proof_passes_proven_and_count_checked_steps(tmp_path: Path) -> None:
    proven = invoke(["gate", write_run(tmp_path / "a", _report({}, {})), "--require-proof"])
    assert proven.exit_code == 0, proven.output
    assert "PASS pruning proof: all 2 step(s) proven" in proven.output
    counted = invoke(["gate", write_run(tmp_path / "b", _report(_COUNTED)), "--require-proof"])
    assert counted.exit_code == 0, counted.output
    assert "PASS pruning proof: none unproven (0 proven, 1 not applicable (count check))" in \
        counted.output


def test_a_step_without_proof_words_or_difference_counts_as_not_proven(tmp_path: Path) -> None:
    """Reports from before ``proof`` existed: a null difference was never measured."""
    run = write_run(tmp_path, _report({"max_abs_diff": None, "proof": None}))
    result = invoke(["gate", run, "--require-proof"])
    assert result.exit_code == 1 and "step(s) 1 not proven" in result.output


def test_the_recipe_can_require_proof_and_the_cli_can_drop_it(tmp_path: Path) -> None:
    run = write_run(tmp_path, _report(_UNPROVEN, require_proof=True))
    required = invoke(["gate", run])
    assert required.exit_code == 1
    assert "FAIL pruning proof: step(s) 1 not proven (required: every step proven)  " \
           "[from the recipe]" in required.output
    dropped = invoke(["gate", run, "--no-require-proof"])
    assert dropped.exit_code == 0, dropped.output
    assert "pruning proof" not in dropped.output
    alone = write_run(tmp_path / "alone", make_report(gates={"require_proof": True,
                                                             "max_accuracy_drop": None}))
    assert_refused(invoke(["gate", alone, "--no-require-proof"]), "no thresholds to check")


def test_a_report_without_steps_fails_the_proof_gate(tmp_path: Path) -> None:
    report = _report()
    result = invoke(["gate", write_run(tmp_path, report), "--require-proof"])
    assert result.exit_code == 1
    assert "FAIL pruning proof: the report lists no pruning steps" in result.output
