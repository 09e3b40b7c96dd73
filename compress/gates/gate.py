"""Compression gates: pure functions from a report and thresholds to pass/fail per gate.

Nothing here reads or writes files: ``compress apply`` evaluates the recipe's gates on the
report it just built, and ``compress gate`` (through :mod:`compress.gates.run`, which reads the
report and writes JUnit/Markdown) evaluates a stored report against thresholds from the command
line, falling back to the recipe's gates per threshold.

Example:
    >>> from compress.recipe.stages import GatesSpec
    >>> report = {"baseline": {"accuracy": 90.0}, "compressed": {"accuracy": 89.5}}
    >>> [g.message for g in evaluate_gates(report, GatesSpec(max_accuracy_drop=1.0))]
    ['accuracy drop: 0.50 points <= 1.0']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from pydantic import ValidationError

from compress.errors import InputError
from compress.measure.chance import models_at_chance
from compress.recipe.stages import GatesSpec
from compress.report.proof import proof_cell, unproven_steps

__all__ = ["GateOutcome", "GATE_NAMES", "evaluate_gates", "gates_passed", "resolve_gates",
           "check_report", "gate_cells", "cli_flag"]


class _Gate(NamedTuple):
    label: str
    comparison: str  # "<=" (a ceiling) or ">=" (a floor)
    fmt: Callable[[float], str]
    required: str | None = None  # a yes/no gate: what it requires, instead of a threshold


# Order is the order gates are checked and printed in.
_GATES: dict[str, _Gate] = {
    "max_accuracy_drop": _Gate("accuracy drop", "<=", lambda v: f"{v:.2f} points"),
    "max_accuracy_drop_relative": _Gate("relative accuracy drop", "<=", lambda v: f"{v:.2f} %"),
    "min_speedup": _Gate("speedup", ">=", lambda v: f"{v:.2f}x"),
    "max_size_mb": _Gate("model size", "<=", lambda v: f"{v:.3g} MB"),
    "min_macs_reduction": _Gate("MACs reduction", ">=", lambda v: f"{v:.3f}"),
    "min_baseline_accuracy": _Gate("baseline accuracy", ">=", lambda v: f"{v:.2f} %"),
    # Measured: how many of baseline and compressed score at chance level; passes at 0.
    "above_chance": _Gate("above chance", "<=", lambda v: f"{v:.0f} model(s) at chance",
                          required="baseline and compressed above chance"),
    # Measured: how many steps were not proven; the gate passes at 0.
    "require_proof": _Gate("pruning proof", "<=", lambda v: f"{v:.0f} step(s) not proven",
                           required="every step proven"),
}
GATE_NAMES: tuple[str, ...] = tuple(_GATES)
_NEGATED = {"<=": ">", ">=": "<"}


@dataclass(frozen=True)
class GateOutcome:
    """One gate's verdict. ``source`` says where the threshold came from: recipe or cli."""

    name: str
    passed: bool
    measured: float | None
    threshold: float
    comparison: str  # "<=" or ">="
    message: str
    source: str = "recipe"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cli_flag(name: str) -> str:
    """The ``compress gate`` option for a gate: ``max_size_mb`` -> ``--max-size-mb``."""
    return "--" + name.replace("_", "-")


def _num(x: float) -> str:
    # str(float) is the shortest exact form: 1.0, 0.45, 10.0 - thresholds read as typed.
    return str(float(x))


def _get(report: Mapping[str, Any], *path: str) -> Any:
    node: Any = report
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            raise InputError(f"report has no '{'.'.join(path)}'; was it written by "
                             f"'compress apply' with the needed measurements enabled?")
        node = node[key]
    return node


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _measure(report: Mapping[str, Any], name: str) -> float | None:
    """The measured value a gate compares, or None when the run did not measure it."""
    if name in ("max_accuracy_drop", "max_accuracy_drop_relative"):
        base = _number(_get(report, "baseline", "accuracy"))
        comp = _number(_get(report, "compressed", "accuracy"))
        if base is None or comp is None:
            return None
        if name == "max_accuracy_drop":
            return base - comp
        return 100.0 * (base - comp) / base if base > 0 else None
    if name == "min_speedup":
        return _number((report.get("speedup") or {}).get("headline"))
    if name == "max_size_mb":
        size = _number(_get(report, "compressed").get("onnx_bytes"))
        return None if size is None else size / 1e6
    if name == "min_macs_reduction":
        base = _number(_get(report, "baseline", "macs"))
        comp = _number(_get(report, "compressed", "macs"))
        return None if base is None or comp is None or base <= 0 else 1.0 - comp / base
    if name == "require_proof":
        steps = report.get("steps") or []
        return float(len(unproven_steps(steps))) if steps else None
    if name == "min_baseline_accuracy":
        return _number(_get(report, "baseline", "accuracy"))
    if name == "above_chance":
        sides = models_at_chance(report)
        return None if sides is None else float(len(sides))
    raise AssertionError(name)


def _chance_message(report: Mapping[str, Any], passed: bool) -> str:
    """What the chance gate saw.

    Example:
        >>> _chance_message({"baseline": {"accuracy": 50.5, "eval_samples": 800, "classes": 2},
        ...                  "compressed": {"accuracy": 50.0}}, False)
        'above chance: baseline, compressed at chance level (required: both above chance)'
    """
    sides = models_at_chance(report)
    if sides is None:
        return ("above chance: not measured, the report has no class count (required: both "
                "above chance)")
    if not passed:
        return (f"above chance: {', '.join(sides)} at chance level (required: both above "
                f"chance)")
    return "above chance: baseline and compressed both above chance level"


def _proof_message(report: Mapping[str, Any], passed: bool) -> str:
    """What the proof gate saw: which steps were not proven, or how the steps were checked.

    Example:
        >>> _proof_message({"steps": [{"step": 1, "max_abs_diff": None, "proof": "not proven"}]},
        ...                False)
        'pruning proof: step(s) 1 not proven (required: every step proven)'
    """
    steps = report.get("steps") or []
    if not steps:
        return "pruning proof: the report lists no pruning steps (required: every step proven)"
    if not passed:
        numbers = ", ".join(str(n) for n in unproven_steps(steps))
        return f"pruning proof: step(s) {numbers} not proven (required: every step proven)"
    other = [proof_cell(s) for s in steps if s.get("max_abs_diff") is None]
    if not other:
        return f"pruning proof: all {len(steps)} step(s) proven"
    return (f"pruning proof: none unproven ({len(steps) - len(other)} proven, {len(other)} "
            f"{other[0]})")


def _message(name: str, measured: float | None, threshold: float, passed: bool) -> str:
    gate = _GATES[name]
    assert gate.required is None, name  # yes/no gates say it their own way
    if measured is None:
        return f"{gate.label}: not measured (required {gate.comparison} {_num(threshold)})"
    if passed:
        return f"{gate.label}: {gate.fmt(measured)} {gate.comparison} {_num(threshold)}"
    return (f"{gate.label}: {gate.fmt(measured)} {_NEGATED[gate.comparison]} {_num(threshold)} "
            f"(required {gate.comparison} {_num(threshold)})")


def evaluate_gates(report: Mapping[str, Any], gates: GatesSpec) -> list[GateOutcome]:
    """Check every threshold that is set; a measurement the run did not take fails its gate.

    Raises :class:`InputError` when the report lacks a block every run has (baseline,
    compressed accuracy or MACs): that is not a compress report.
    """
    outcomes = []
    for name, gate in _GATES.items():
        threshold = getattr(gates, name)
        if threshold is None or threshold is False:
            continue
        if gate.required is not None:
            threshold = 0.0  # a yes/no gate: none of what it counts is allowed
        measured = _measure(report, name)
        passed = measured is not None and (measured <= threshold if gate.comparison == "<="
                                           else measured >= threshold)
        message = (_proof_message(report, passed) if name == "require_proof"
                   else _chance_message(report, passed) if name == "above_chance"
                   else _message(name, measured, threshold, passed))
        outcomes.append(GateOutcome(name, passed, measured, float(threshold), gate.comparison,
                                    message))
    return outcomes


def gates_passed(outcomes: list[GateOutcome]) -> bool:
    return all(o.passed for o in outcomes)


def _validated(values: dict[str, float], where: Callable[[str], str]) -> GatesSpec:
    try:
        return GatesSpec(**values)
    except ValidationError as err:
        e = err.errors()[0]
        name = str(e["loc"][0]) if e["loc"] else "?"
        raise InputError(f"{where(name)}: {e['msg']} (got {e.get('input')!r})") from None


def resolve_gates(report: Mapping[str, Any], overrides: Mapping[str, float | bool | None]
                  ) -> tuple[GatesSpec, dict[str, str]]:
    """Thresholds for a stored report: each from ``overrides`` if given, else the recipe's.

    Returns the thresholds and, per set gate, where it came from ("cli" or "recipe").
    Raises :class:`InputError` for an invalid threshold or when no gate is set at all.

    Example:
        >>> report = {"recipe": {"gates": {"max_accuracy_drop": 2.0, "min_speedup": None}}}
        >>> spec, sources = resolve_gates(report, {"min_speedup": 1.5})
        >>> spec.max_accuracy_drop, spec.min_speedup, sources["min_speedup"]
        (2.0, 1.5, 'cli')
    """
    unknown = sorted(set(overrides) - set(_GATES))
    if unknown:
        raise InputError(f"unknown gate {unknown[0]!r}; allowed gates: {', '.join(_GATES)}")
    cli = {k: v for k, v in overrides.items() if v is not None}
    _validated(cli, cli_flag)
    stored = (report.get("recipe") or {}).get("gates") or {}
    # Reports from other versions may carry gates this version does not know: skip those.
    recipe = {k: v for k, v in stored.items() if k in _GATES and v is not None}
    _validated(recipe, lambda n: f"the report's recipe gates.{n}")
    merged = {**recipe, **cli}
    active = [k for k, v in merged.items() if v is not False]  # --no-require-proof: off
    if not active:
        flags = ", ".join(cli_flag(n) for n in _GATES)
        raise InputError(f"no thresholds to check: the report's recipe sets no gates and none "
                         f"were given; pass at least one of {flags}")
    sources = {k: "cli" if k in cli else "recipe" for k in active}
    return GatesSpec(**merged), sources


def check_report(report: Mapping[str, Any],
                 overrides: Mapping[str, float | bool | None]) -> list[GateOutcome]:
    """Evaluate a stored report against CLI thresholds, falling back to the recipe's gates.

    Example:
        >>> report = {"baseline": {"accuracy": 90.0}, "compressed": {"accuracy": 88.0},
        ...           "recipe": {"gates": {"max_accuracy_drop": 1.0}}}
        >>> [(g.passed, g.source) for g in check_report(report, {})]
        [(False, 'recipe')]
    """
    spec, sources = resolve_gates(report, overrides)
    return [dataclasses.replace(o, source=sources[o.name]) for o in evaluate_gates(report, spec)]


def gate_cells(gate: Mapping[str, Any]) -> tuple[str, str, str]:
    """Label, measured value and threshold of a stored outcome (``to_dict``), for tables.

    Example:
        >>> gate_cells({"name": "min_speedup", "measured": 1.83, "threshold": 1.5,
        ...             "comparison": ">="})
        ('speedup', '1.83x', '>= 1.5')
    """
    spec = _GATES.get(str(gate.get("name", "")))
    label = spec.label if spec else str(gate.get("name", "?"))
    measured = _number(gate.get("measured"))
    if measured is None:
        shown = "not measured"
    else:
        shown = spec.fmt(measured) if spec else f"{measured:.4g}"
    if spec is not None and spec.required is not None:
        return label, shown, spec.required
    threshold = _number(gate.get("threshold"))
    limit = _num(threshold) if threshold is not None else "?"
    return label, shown, f"{gate.get('comparison', '')} {limit}".strip()
