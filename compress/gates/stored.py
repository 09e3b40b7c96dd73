"""What ``compress gate`` reads from a stored ``report.json``, as a pydantic model.

A report is input: it may have been edited by hand or by a script, or written by another tool.
Every field a gate reads is checked here, before any gate is evaluated, so a wrong type
(``"speedup": "fast"``, ``"gates": [1, 2]``, a recipe that is a string) is one sentence naming
the field path, exit 2, instead of a traceback from deep inside a gate. Fields no gate reads are
left alone (reports carry many), and so are gates a newer compress may add to the recipe.

Example:
    >>> report = {"schema_version": 1, "baseline": {"accuracy": 90.0},
    ...           "compressed": {"accuracy": 89.5}, "speedup": "fast"}
    >>> check_stored_report(report, "'report.json'")
    Traceback (most recent call last):
    compress.errors.InputError: 'report.json': 'speedup' should be a JSON object (got 'fast')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, StrictStr

from compress.jsonio import validate_json
from compress.report.build import load_report

__all__ = ["StoredReport", "check_stored_report", "read_stored_report"]

# A measured number: an int or a float, never a string or a boolean; null when not measured.
_Number = Annotated[float, Strict()] | None


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Measured(_Open):
    accuracy: _Number = None
    macs: _Number = None
    onnx_bytes: _Number = None
    eval_samples: StrictInt | None = None
    classes: StrictInt | None = None


class _Speedup(_Open):
    headline: _Number = None


class _Step(_Open):
    step: StrictInt
    max_abs_diff: _Number = None
    proof: StrictStr | None = None


class _RecipeGates(_Open):
    max_accuracy_drop: _Number = None
    max_accuracy_drop_relative: _Number = None
    min_speedup: _Number = None
    max_size_mb: _Number = None
    min_macs_reduction: _Number = None
    min_baseline_accuracy: _Number = None
    above_chance: StrictBool | None = None
    require_proof: StrictBool | None = None


class _Recipe(_Open):
    gates: _RecipeGates | None = None


class _StoredGate(_Open):
    name: StrictStr
    passed: StrictBool


class StoredReport(_Open):
    """The fields of ``report.json`` that ``compress gate`` reads, with their JSON types."""

    schema_version: StrictInt
    name: StrictStr | None = None
    created: StrictStr | None = None
    status: StrictStr | None = None
    recipe: _Recipe | None = None
    baseline: _Measured
    compressed: _Measured
    speedup: _Speedup | None = None
    steps: list[_Step] = Field(default_factory=list)
    gates: list[_StoredGate] = Field(default_factory=list)


def check_stored_report(report: Any, where: str) -> None:
    """Raise :class:`~compress.errors.InputError` naming the first field of ``report`` whose
    type is wrong for a gate (``where`` names the file)."""
    validate_json(StoredReport, report, where)


def read_stored_report(path: str | os.PathLike[str]) -> tuple[dict[str, Any], Path]:
    """The report at ``path`` (a report.json or its run folder), bounded and type-checked.

    Example:
        >>> read_stored_report("runs/quickstart")[1].name  # doctest: +SKIP
        'report.json'
    """
    report, file = load_report(path)
    check_stored_report(report, str(file))
    return report, file
