"""Several runs side by side: one column per run, one row per headline number.

The library returns the table as strings (testable, renderer-agnostic) and the same figures as
numbers (``compare --json``); ``compress compare`` draws the strings with rich.

Example:
    >>> table = compare_reports([("a", {"baseline": {"accuracy": 90.0},
    ...                                 "compressed": {"accuracy": 89.0}})])
    >>> table.columns, table.rows[0], table.values[0]
    (['a'], ('top-1 accuracy before (%)', ['90.00']), ('accuracy_before', [90.0]))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.report.build import load_report
from compress.report.markdown import human_count

__all__ = ["Comparison", "COMPARE_ROWS", "compare_reports", "compare_runs"]


@dataclass(frozen=True)
class Comparison:
    """``columns``: one name per run; ``rows``: (label, one cell per run) as text;
    ``values``: (key, one value per run) as numbers (or ``None``), in the same order."""

    columns: list[str]
    rows: list[tuple[str, list[str]]]
    values: list[tuple[str, list[Any]]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """What ``compare --json`` prints: numbers in ``values``, the cells as shown in ``text``."""
        return {"columns": self.columns,
                "rows": [{"key": key, "label": label, "values": values, "text": cells}
                         for (label, cells), (key, values) in zip(self.rows, self.values)]}


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _f(value: Any, spec: str, suffix: str = "") -> str:
    v = _num(value)
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def _accuracy(r: dict[str, Any], which: str) -> float | None:
    return _num((r.get(which) or {}).get("accuracy"))


def _drop_points(r: dict[str, Any]) -> float | None:
    b, c = _accuracy(r, "baseline"), _accuracy(r, "compressed")
    return None if b is None or c is None else round(b - c, 6)


def _drop(r: dict[str, Any]) -> str:
    b, drop = _accuracy(r, "baseline"), _drop_points(r)
    if b is None or drop is None:
        return "n/a"
    rel = f" ({100 * drop / b:.2f} %)" if b > 0 else ""
    return f"{drop:.2f} points{rel}"


def _epochs_total(r: dict[str, Any]) -> float | None:
    total = r.get("finetune_epochs_total")
    if total is None and r.get("steps"):  # older reports: sum the steps
        total = sum(_num(s.get("finetune_epochs")) or 0.0 for s in r["steps"])
    return _num(total)


def _recipe(r: dict[str, Any], section: str, key: str) -> Any:
    return ((r.get("recipe") or {}).get(section) or {}).get(key)


def _schedule(r: dict[str, Any]) -> str:
    kind = r.get("schedule") or _recipe(r, "schedule", "kind") or "n/a"
    steps = len(r.get("steps") or [])
    return f"{kind} ({steps} step{'s' if steps != 1 else ''})" if steps else str(kind)


def _params(r: dict[str, Any]) -> dict[str, Any]:
    return {"before": (r.get("baseline") or {}).get("params"),
            "after": (r.get("compressed") or {}).get("params")}


def _onnx_bytes(r: dict[str, Any]) -> float | None:
    return _num((r.get("compressed") or {}).get("onnx_bytes"))


def _headline(r: dict[str, Any]) -> float | None:
    return _num((r.get("speedup") or {}).get("headline"))


Row = tuple[str, str, Callable[[dict[str, Any]], Any], Callable[[dict[str, Any]], str]]

# (label, key, value, cell text): the rows of the comparison, in order. ``value`` is what
# --json gives (a number, None when not measured); the text is how a person reads it.
COMPARE_ROWS: list[Row] = [
    ("top-1 accuracy before (%)", "accuracy_before", lambda r: _accuracy(r, "baseline"),
     lambda r: _f(_accuracy(r, "baseline"), ".2f")),
    ("top-1 accuracy after (%)", "accuracy_after", lambda r: _accuracy(r, "compressed"),
     lambda r: _f(_accuracy(r, "compressed"), ".2f")),
    ("accuracy drop", "accuracy_drop_points", _drop_points, _drop),
    ("MACs reduction", "macs_reduction", lambda r: _num(r.get("macs_reduction")),
     lambda r: _f(r.get("macs_reduction"), ".1%")),
    ("parameters", "params", _params,
     lambda r: f"{human_count(_params(r)['before'])} -> {human_count(_params(r)['after'])}"),
    ("ONNX size (MB)", "onnx_bytes", _onnx_bytes,
     lambda r: _f(None if _onnx_bytes(r) is None else _onnx_bytes(r) / 1e6, ".2f")),
    ("speedup (onnxruntime, largest batch)", "speedup", _headline,
     lambda r: _f(_headline(r), ".2f", "x")),
    ("speedup ÷ MACs reduction", "speedup_per_macs_reduction",
     lambda r: _num(r.get("speedup_per_macs_reduction")),
     lambda r: _f(r.get("speedup_per_macs_reduction"), ".2f")),
    ("fine-tune epochs (total)", "finetune_epochs_total", _epochs_total,
     lambda r: _f(_epochs_total(r), ".2f")),
    ("schedule", "schedule", _schedule, _schedule),
    ("kind", "kind", lambda r: str(r.get("kind") or _recipe(r, "pruning", "kind") or "n/a"),
     lambda r: str(r.get("kind") or _recipe(r, "pruning", "kind") or "n/a")),
    ("status", "status", lambda r: r.get("status"), lambda r: str(r.get("status", "n/a"))),
]


def compare_reports(named: Sequence[tuple[str, dict[str, Any]]]) -> Comparison:
    """The comparison table of already loaded reports, given as (column name, report)."""
    return Comparison([name for name, _ in named],
                      [(label, [text(r) for _, r in named]) for label, _, _, text in COMPARE_ROWS],
                      [(key, [value(r) for _, r in named]) for _, key, value, _ in COMPARE_ROWS])


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
