"""Several runs side by side: one column per run, one row per headline number.

The library returns the table as strings (testable, renderer-agnostic); ``compress compare``
draws it with rich.

Example:
    >>> table = compare_reports([("a", {"baseline": {"accuracy": 90.0},
    ...                                 "compressed": {"accuracy": 89.0}})])
    >>> table.columns, table.rows[0]
    (['a'], ('top-1 accuracy before (%)', ['90.00']))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.report.build import load_report
from compress.report.markdown import human_count

__all__ = ["Comparison", "COMPARE_ROWS", "compare_reports", "compare_runs"]


@dataclass(frozen=True)
class Comparison:
    """``columns``: one name per run; ``rows``: (label, one cell per run)."""

    columns: list[str]
    rows: list[tuple[str, list[str]]]


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _f(value: Any, spec: str, suffix: str = "") -> str:
    v = _num(value)
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def _drop(r: dict[str, Any]) -> str:
    b = _num(r.get("baseline", {}).get("accuracy"))
    c = _num(r.get("compressed", {}).get("accuracy"))
    if b is None or c is None:
        return "n/a"
    rel = f" ({100 * (b - c) / b:.2f} %)" if b > 0 else ""
    return f"{b - c:.2f} points{rel}"


def _epochs(r: dict[str, Any]) -> str:
    total = r.get("finetune_epochs_total")
    if total is None and r.get("steps"):  # older reports: sum the steps
        total = sum(_num(s.get("finetune_epochs")) or 0.0 for s in r["steps"])
    return _f(total, ".2f")


def _recipe(r: dict[str, Any], section: str, key: str) -> Any:
    return ((r.get("recipe") or {}).get(section) or {}).get(key)


def _schedule(r: dict[str, Any]) -> str:
    kind = r.get("schedule") or _recipe(r, "schedule", "kind") or "n/a"
    steps = len(r.get("steps") or [])
    return f"{kind} ({steps} step{'s' if steps != 1 else ''})" if steps else str(kind)


# (label, cell function): the rows of the comparison, in order.
COMPARE_ROWS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("top-1 accuracy before (%)", lambda r: _f(r.get("baseline", {}).get("accuracy"), ".2f")),
    ("top-1 accuracy after (%)", lambda r: _f(r.get("compressed", {}).get("accuracy"), ".2f")),
    ("accuracy drop", _drop),
    ("MACs reduction", lambda r: _f(r.get("macs_reduction"), ".1%")),
    ("parameters", lambda r: f"{human_count(r.get('baseline', {}).get('params'))} -> "
                             f"{human_count(r.get('compressed', {}).get('params'))}"),
    ("ONNX size (bytes)", lambda r: human_count(r.get("compressed", {}).get("onnx_bytes"))),
    ("speedup (onnxruntime, largest batch)",
     lambda r: _f((r.get("speedup") or {}).get("headline"), ".2f", "x")),
    ("speedup ÷ MACs reduction", lambda r: _f(r.get("speedup_per_macs_reduction"), ".2f")),
    ("fine-tune epochs (total)", _epochs),
    ("schedule", _schedule),
    ("kind", lambda r: str(r.get("kind") or _recipe(r, "pruning", "kind") or "n/a")),
    ("status", lambda r: str(r.get("status", "n/a"))),
]


def compare_reports(named: Sequence[tuple[str, dict[str, Any]]]) -> Comparison:
    """The comparison table of already loaded reports, given as (column name, report)."""
    return Comparison([name for name, _ in named],
                      [(label, [cell(r) for _, r in named]) for label, cell in COMPARE_ROWS])


def compare_runs(paths: Sequence[str | os.PathLike[str]]) -> Comparison:
    """Load each run folder's (or file's) report and compare them.

    Columns are the reports' names; when two runs share a name, their folders are used.
    Raises :class:`InputError` for a path that holds no compress report.
    """
    loaded = [load_report(p) for p in paths]
    names = [str(r.get("name") or path.parent.name) for r, path in loaded]
    if len(set(names)) < len(names):
        names = [str(Path(p)) for p in paths]
    return compare_reports(list(zip(names, (r for r, _ in loaded))))
