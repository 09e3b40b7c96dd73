"""A model at chance level: a warning in the report (gate or not), the `above_chance` gate and
`min_baseline_accuracy`, from `compress apply`'s own gates and `compress gate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress.gates.gate import evaluate_gates, gates_passed
from compress.measure.chance import chance_warnings
from compress.recipe.stages import GatesSpec
from tests.hf_models import tiny_text_run
from tests.hostile import invoke


def _report(base: float, comp: float, classes: int | None = 2, samples: int = 872) -> dict:
    return {"baseline": {"accuracy": base, "eval_samples": samples, "classes": classes},
            "compressed": {"accuracy": comp}, "steps": []}


@pytest.mark.parametrize("report, at_chance", [
    (_report(79.9, 78.8), []),
    (_report(50.92, 50.1), ["baseline", "compressed"]),   # the README's old quick look
    (_report(79.9, 52.0), ["compressed"]),
    (_report(34.0, 80.0, classes=3, samples=500), ["baseline"]),
    (_report(56.0, 56.0, samples=64), ["baseline", "compressed"]),  # few samples: wide spread
])
def test_chance_warning_and_gate(report: dict, at_chance: list[str]) -> None:
    warnings = chance_warnings(report)
    assert [w.split()[1] for w in warnings] == at_chance
    outcome, = evaluate_gates(report, GatesSpec(above_chance=True))
    assert outcome.passed is (not at_chance) and outcome.measured == len(at_chance)


def test_no_class_count_is_not_measured_and_fails_the_gate() -> None:
    report = _report(50.0, 50.0, classes=None)
    assert chance_warnings(report) == []
    outcome, = evaluate_gates(report, GatesSpec(above_chance=True))
    assert not outcome.passed and "not measured" in outcome.message


@pytest.mark.parametrize("floor, passed", [(40.0, True), (90.0, False)])
def test_min_baseline_accuracy(floor: float, passed: bool) -> None:
    gates = evaluate_gates(_report(79.9, 50.0), GatesSpec(min_baseline_accuracy=floor))
    assert gates_passed(gates) is passed
    assert gates[0].message.startswith("baseline accuracy: 79.90 %")


@pytest.fixture(scope="module")
def chance_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 16 evaluation sentences of a tiny random BERT trained for one epoch: chance level.
    return tiny_text_run(tmp_path_factory.mktemp("chance"), gates={"above_chance": True})


def test_a_run_at_chance_warns_in_its_report_and_fails_its_gate(chance_run: Path) -> None:
    report = json.loads((chance_run / "report.json").read_text())
    assert report["baseline"]["classes"] == 2
    assert report["warnings"] and report["warnings"][0].startswith("the baseline scores")
    assert report["status"] == "gate_failed"
    assert "warning: the baseline scores" in (chance_run / "report.md").read_text()
    assert "at chance level" in (chance_run / "report.html").read_text()
    from compress.cli.render import apply_summary

    assert "\nwarning: the baseline scores" in apply_summary(report)
    cli = invoke(["gate", str(chance_run), "--no-above-chance", "--min-baseline-accuracy", "99"])
    assert cli.exit_code == 1 and "baseline accuracy:" in cli.output
    assert invoke(["gate", str(chance_run), "--above-chance"]).exit_code == 1
    assert invoke(["gate", str(chance_run), "--no-above-chance",
                   "--min-baseline-accuracy", "1"]).exit_code == 0
