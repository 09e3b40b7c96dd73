"""``compress gate``: thresholds from the CLI or the recipe, exit codes, JUnit and Markdown."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from compress.cli.app import app
from compress.errors import InputError
from compress.gates.gate import check_report, evaluate_gates, gate_cells
from compress.gates.run import GateRun, run_gate
from compress.recipe.stages import GatesSpec

runner = CliRunner()

# The keys of a real structured one-shot report.json (quickstart) that gates, renderers and
# comparisons read; numbers rounded from a real run.
_REPORT: dict[str, Any] = {
    "schema_version": 1, "name": "quickstart", "created": "2026-01-01T00:00:00+00:00",
    "status": "passed", "kind": "structured", "schedule": "one-shot",
    "recipe": {"pruning": {"kind": "structured"}, "schedule": {"kind": "one-shot"},
               "gates": {"max_accuracy_drop": 2.0, "min_speedup": None, "max_size_mb": None,
                         "min_macs_reduction": 0.45}},
    "baseline": {"accuracy": 99.44, "loss": 0.015, "eval_samples": 360, "macs": 11903498,
                 "params": 520394, "onnx_bytes": 2095433,
                 "latency_ms": {"onnxruntime": {"1": {"median": 0.388, "p90": 0.487},
                                                "64": {"median": 27.25, "p90": 32.3}},
                                "torch": {"1": {"median": 7.05, "p90": 13.9},
                                          "64": {"median": 163.4, "p90": 257.6}}}},
    "compressed": {"accuracy": 99.17, "loss": 0.025, "macs": 5545402, "params": 250114,
                   "onnx_bytes": 1015081, "safetensors_bytes": 1005664,
                   "latency_ms": {"onnxruntime": {"1": {"median": 0.173, "p90": 0.226},
                                                  "64": {"median": 16.37, "p90": 23.07}},
                                  "torch": {"1": {"median": 3.21, "p90": 27.1},
                                            "64": {"median": 76.14, "p90": 200.0}}},
                   "weight_sparsity": 0.0},
    "accuracy_drop": {"points": 0.27, "relative_percent": 0.2715},
    "macs_reduction": 0.5341, "params_reduction": 0.5194,
    "speedup": {"onnxruntime": {"1": 2.146, "64": 1.8254}, "torch": {"1": 2.2, "64": 2.15},
                "headline": 1.8254},
    "speedup_per_macs_reduction": 0.85, "finetune_epochs_total": 3.0,
    "steps": [{"step": 1, "target": 0.5, "ratio": 0.275, "macs": 5545402, "params": 250114,
               "macs_reduction": 0.5341, "params_reduction": 0.5194, "accuracy": 99.17,
               "loss": 0.025, "finetune_epochs": 3.0, "max_abs_diff": 1.43e-06,
               "removed_unit": "channels",
               "layers": {"0": 40, "3": 88, "7": 88, "10": 184, "15": 10}}],
    "baseline_widths": {"0": 64, "3": 128, "7": 128, "10": 256, "15": 10},
    "parity": {"safetensors": 0.0, "onnx": 1.9e-06},
    "notes": [],
    "gates": [{"name": "max_accuracy_drop", "passed": True, "measured": 0.27, "threshold": 2.0,
               "comparison": "<=", "message": "accuracy drop: 0.27 points <= 2.0"}],
    "environment": {"python": "3.11.7", "torch": "2.14.1", "threads": 2},
}


def make_report(*, accuracy: tuple[float, float] | None = None, gates: dict | None = None,
                **top: Any) -> dict[str, Any]:
    """A copy of the fixture report: ``accuracy=(baseline, compressed)``, the recipe's
    ``gates`` replaced, and any top-level key overridden."""
    report = copy.deepcopy(_REPORT)
    if accuracy is not None:
        report["baseline"]["accuracy"], report["compressed"]["accuracy"] = accuracy
        report["steps"][-1]["accuracy"] = accuracy[1]
    if gates is not None:
        report["recipe"]["gates"] = gates
    report.update(top)
    return report


def write_run(folder: Path, report: dict[str, Any]) -> Path:
    """A run folder holding ``report.json``, as ``compress apply`` leaves it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def _junit_cases(path: Path) -> tuple[ET.Element, dict[str, ET.Element]]:
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    assert suite is not None
    return suite, {c.get("name"): c for c in suite.iter("testcase")}


def test_failed_accuracy_gate_exits_1_and_junit_names_it(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", make_report(accuracy=(90.0, 88.5)))
    junit = tmp_path / "out" / "gates.xml"
    result = runner.invoke(app, ["gate", str(run), "--max-accuracy-drop", "1.0",
                                 "--min-macs-reduction", "0.4", "--junit", str(junit)])
    assert result.exit_code == 1, result.output
    assert "FAIL accuracy drop: 1.50 points > 1.0 (required <= 1.0)" in result.output
    assert "PASS MACs reduction: 0.534 >= 0.4" in result.output
    suite, cases = _junit_cases(junit)
    assert suite.get("name") == "quickstart"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "0")
    assert set(cases) == {"max_accuracy_drop", "min_macs_reduction"}
    assert all(c.get("classname") == "compress.gates" for c in cases.values())
    failure = cases["max_accuracy_drop"].find("failure")
    assert failure is not None
    assert "1.50 points" in failure.get("message") and "<= 1.0" in failure.get("message")
    assert "measured: 1.50 points" in failure.text and "threshold: <= 1.0" in failure.text
    assert cases["min_macs_reduction"].find("failure") is None


def test_passing_report_exits_0_with_one_line_per_gate(tmp_path: Path) -> None:
    path = write_run(tmp_path, make_report()) / "report.json"
    result = runner.invoke(app, ["gate", str(path), "--max-accuracy-drop", "1.0",
                                 "--min-speedup", "1.5", "--max-size-mb", "10",
                                 "--min-macs-reduction", "0.4"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:4] == ["PASS accuracy drop: 0.27 points <= 1.0", "PASS speedup: 1.83x >= 1.5",
                         "PASS model size: 1.02 MB <= 10.0", "PASS MACs reduction: 0.534 >= 0.4"]
    assert lines[4] == "quickstart: all 4 gates passed"


def test_relative_accuracy_drop_gate(tmp_path: Path) -> None:
    run = write_run(tmp_path, make_report(accuracy=(50.0, 49.0)))  # 1 point = 2 % of baseline
    ok = runner.invoke(app, ["gate", str(run), "--max-accuracy-drop", "1.5",
                             "--max-accuracy-drop-relative", "2.5"])
    assert ok.exit_code == 0, ok.output
    assert "PASS relative accuracy drop: 2.00 % <= 2.5" in ok.output
    bad = runner.invoke(app, ["gate", str(run), "--max-accuracy-drop", "1.5",
                              "--max-accuracy-drop-relative", "1.5"])
    assert bad.exit_code == 1
    assert "PASS accuracy drop: 1.00 points <= 1.5" in bad.output
    assert "FAIL relative accuracy drop: 2.00 % > 1.5" in bad.output
    # The recipe field works the same way for `compress apply`.
    outcome, = evaluate_gates(make_report(accuracy=(50.0, 49.0)),
                              GatesSpec(max_accuracy_drop_relative=1.5))
    assert outcome.name == "max_accuracy_drop_relative" and outcome.measured == pytest.approx(2.0)


def test_thresholds_come_from_the_recipe_when_not_on_the_cli(tmp_path: Path) -> None:
    run = write_run(tmp_path, make_report(accuracy=(90.0, 87.0),
                                          gates={"max_accuracy_drop": 2.0}))
    result = runner.invoke(app, ["gate", str(run)])
    assert result.exit_code == 1
    assert "FAIL accuracy drop: 3.00 points > 2.0 (required <= 2.0)  [from the recipe]" \
        in result.output
    # A CLI value replaces the recipe's for that gate; the recipe's others still apply.
    both = runner.invoke(app, ["gate", str(run), "--max-accuracy-drop", "5", "--min-speedup",
                               "1.5"])
    assert both.exit_code == 0, both.output
    assert "PASS accuracy drop: 3.00 points <= 5.0" in both.output
    report = make_report(gates={"max_accuracy_drop": 2.0, "min_macs_reduction": 0.6})
    sources = {o.name: (o.source, o.passed) for o in check_report(report, {"min_speedup": 2.0})}
    assert sources == {"max_accuracy_drop": ("recipe", True),
                       "min_macs_reduction": ("recipe", False), "min_speedup": ("cli", False)}


def _not_a_report(tmp_path: Path) -> Path:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"name": "x", "accuracy": 1}))
    return path


def _bad_json(tmp_path: Path) -> Path:
    path = tmp_path / "report.json"
    path.write_text("{ not json")
    return path


def _no_thresholds(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run", make_report(gates={"max_accuracy_drop": None}))


@pytest.mark.parametrize("make, args, fragment", [
    (lambda t: t / "missing", [], "does not exist"),
    (lambda t: t, [], "does not exist"),  # a folder without report.json
    (_bad_json, [], "is not JSON"),
    (_not_a_report, [], "is not a compress report"),
    (_no_thresholds, [], "no thresholds to check"),
    (_no_thresholds, ["--min-speedup", "0"], "--min-speedup: Input should be greater than 0"),
    (_no_thresholds, ["--min-macs-reduction", "1.5"], "--min-macs-reduction"),
])
def test_bad_input_exits_2_with_one_sentence(tmp_path: Path, make, args: list[str],
                                             fragment: str) -> None:
    junit = tmp_path / "gates.xml"
    result = runner.invoke(app, ["gate", str(make(tmp_path)), *args, "--junit", str(junit)])
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert not junit.exists()


def test_a_measurement_the_run_did_not_take_fails_its_gate(tmp_path: Path) -> None:
    report = make_report(speedup={"headline": None})
    report["compressed"]["onnx_bytes"] = None  # export.onnx: false
    run = write_run(tmp_path, report)
    result = runner.invoke(app, ["gate", str(run), "--min-speedup", "1.1", "--max-size-mb", "5"])
    assert result.exit_code == 1
    assert "FAIL speedup: not measured (required >= 1.1)" in result.output
    assert "FAIL model size: not measured (required <= 5.0)" in result.output


def test_markdown_summary(tmp_path: Path) -> None:
    run = write_run(tmp_path, make_report(accuracy=(90.0, 88.5)))
    summary = tmp_path / "summary.md"
    result = runner.invoke(app, ["gate", str(run), "--max-accuracy-drop", "1.0",
                                 "--min-speedup", "1.5", "--markdown", str(summary)])
    assert result.exit_code == 1
    lines = summary.read_text().splitlines()
    assert lines[0] == "### compress gates: quickstart: FAILED"
    assert lines[2:] == ["| gate | measured | threshold | result |", "|---|---|---|---|",
                         "| accuracy drop | 1.50 points | <= 1.0 | ❌ FAIL |",
                         "| speedup | 1.83x | >= 1.5 | ✅ pass |",
                         "| MACs reduction | 0.534 | >= 0.45 | ✅ pass |"]  # from the recipe


def test_gate_cells_of_an_older_or_unknown_gate() -> None:
    assert gate_cells({"name": "future_gate", "measured": 3, "threshold": 2,
                       "comparison": "<="}) == ("future_gate", "3", "<= 2.0")
    assert gate_cells({"name": "min_speedup", "measured": None, "threshold": 1.5,
                       "comparison": ">="})[1] == "not measured"


# -- the library call behind the command ----------------------------------------------------

def test_run_gate_returns_the_lines_and_writes_the_files(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    run_dir = write_run(tmp_path / "run", make_report(accuracy=(90.0, 88.5)))
    junit, summary = tmp_path / "ci" / "gates.xml", tmp_path / "ci" / "summary.md"
    run = run_gate(run_dir, {"max_accuracy_drop": 1.0, "min_speedup": None}, junit=junit,
                   markdown=str(summary))
    assert isinstance(run, GateRun)
    assert (run.name, run.path, run.failed, run.passed) == \
        ("quickstart", run_dir / "report.json", 1, False)
    assert run.lines == [(False, "FAIL accuracy drop: 1.50 points > 1.0 (required <= 1.0)"),
                         (True, "PASS MACs reduction: 0.534 >= 0.45  [from the recipe]")]
    assert run.verdict == "quickstart: 1 of 2 gates failed"
    assert run.written == [junit, summary] and all(p.is_file() for p in run.written)
    assert summary.read_text().startswith("### compress gates: quickstart: FAILED\n")
    suite, cases = _junit_cases(junit)
    assert suite.get("timestamp") == "2026-01-01T00:00:00+00:00"
    assert set(cases) == {"max_accuracy_drop", "min_macs_reduction"}
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props == {"report": str(run_dir / "report.json"), "status": "passed"}
    assert capsys.readouterr() == ("", "")  # the library never prints


def test_gate_run_to_dict_is_the_json_result(tmp_path: Path) -> None:
    path = write_run(tmp_path, make_report(name=None)) / "report.json"  # named after its folder
    run = run_gate(path, {"min_speedup": 1.5})
    assert run.verdict == f"{tmp_path.name}: all 3 gates passed" and run.written == []
    data = run.to_dict()
    assert list(data) == ["name", "report", "passed", "failed", "gates", "junit", "markdown"]
    assert (data["passed"], data["failed"], data["junit"], data["markdown"]) == \
        (True, 0, None, None)
    assert data["gates"] == [o.to_dict() for o in run.outcomes]
    assert json.loads(json.dumps(data))["report"] == str(path)


def test_run_gate_bad_input_raises_and_writes_nothing(tmp_path: Path) -> None:
    junit = tmp_path / "gates.xml"
    with pytest.raises(InputError, match="no thresholds to check"):
        run_gate(_no_thresholds(tmp_path), {}, junit=junit, markdown=tmp_path / "s.md")
    with pytest.raises(InputError, match="does not exist"):
        run_gate(tmp_path / "missing", {"min_speedup": 1.0}, junit=junit)
    assert list(tmp_path.glob("*.xml")) == [] and not (tmp_path / "s.md").exists()
