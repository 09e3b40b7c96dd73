"""Compression gates: a pure function from a report and thresholds to pass/fail per gate.

Example:
    >>> from compress.recipe import GatesSpec
    >>> report = {"baseline": {"accuracy": 90.0}, "compressed": {"accuracy": 89.5}}
    >>> [g.passed for g in evaluate_gates(report, GatesSpec(max_accuracy_drop=1.0))]
    [True]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from compress.errors import InputError
from compress.recipe import GatesSpec

__all__ = ["GateOutcome", "evaluate_gates", "gates_passed"]


@dataclass(frozen=True)
class GateOutcome:
    name: str
    passed: bool
    measured: float | None
    threshold: float
    comparison: str  # "<=" or ">="
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _get(report: dict[str, Any], *path: str) -> Any:
    node: Any = report
    for key in path:
        if not isinstance(node, dict) or key not in node:
            raise InputError(f"report has no '{'.'.join(path)}'; was it written by "
                             f"'compress apply' with the needed measurements enabled?")
        node = node[key]
    return node


def _measure(report: dict[str, Any], name: str) -> float | None:
    if name == "max_accuracy_drop":
        return float(_get(report, "baseline", "accuracy")) - float(
            _get(report, "compressed", "accuracy"))
    if name == "min_speedup":
        value = _get(report, "speedup").get("headline") if "speedup" in report else None
        return None if value is None else float(value)
    if name == "max_size_mb":
        return float(_get(report, "compressed", "onnx_bytes")) / 1e6
    if name == "min_macs_reduction":
        return 1.0 - float(_get(report, "compressed", "macs")) / float(
            _get(report, "baseline", "macs"))
    raise AssertionError(name)


_LABELS = {
    "max_accuracy_drop": ("accuracy drop (points)", "<="),
    "min_speedup": ("speedup", ">="),
    "max_size_mb": ("model size (MB)", "<="),
    "min_macs_reduction": ("MACs reduction", ">="),
}


def evaluate_gates(report: dict[str, Any], gates: GatesSpec) -> list[GateOutcome]:
    """Check every threshold that is set; a missing measurement fails its gate."""
    outcomes = []
    for name, (label, cmp) in _LABELS.items():
        threshold = getattr(gates, name)
        if threshold is None:
            continue
        measured = _measure(report, name)
        if measured is None:
            passed, msg = False, f"{label}: not measured (threshold {cmp} {threshold:g})"
        else:
            passed = measured <= threshold if cmp == "<=" else measured >= threshold
            msg = (f"{label}: {measured:.4g} {cmp} {threshold:g}" if passed
                   else f"{label}: {measured:.4g} violates {cmp} {threshold:g}")
        outcomes.append(GateOutcome(name, passed, measured, float(threshold), cmp, msg))
    return outcomes


def gates_passed(outcomes: list[GateOutcome]) -> bool:
    return all(o.passed for o in outcomes)
