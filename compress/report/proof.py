"""A pruning step's proof as people read it, from its record in report.json.

Shared by every output that shows a step (report.md and .html, the apply summary, report notes)
and by ``compress gate``'s proof gate, so a skipped proof reads "not proven" everywhere and is
never shown as a difference that was not measured. Imports nothing of compress: the report
renderers and the gates both build on it.

Example:
    >>> steps = [{"step": 1, "max_abs_diff": 2e-7, "proof": "proven"},
    ...          {"step": 2, "max_abs_diff": None, "proof": "not proven"}]
    >>> [proof_cell(s) for s in steps], unproven_steps(steps)
    (['2.0e-07', 'not proven'], [2])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["proof_cell", "tolerance_words", "unproven_steps"]


def proof_cell(step: Mapping[str, Any]) -> str:
    """A step's proof as shown to people: the measured max difference, or why there is none.

    A step without a measured difference (``max_abs_diff`` null) shows its ``proof`` words,
    never a number; reports from before ``proof`` existed read "not proven" then.

    Example:
        >>> proof_cell({"max_abs_diff": 1.5e-6, "proof": "proven"})
        '1.5e-06'
        >>> proof_cell({"max_abs_diff": None, "proof": "not proven"})
        'not proven'
    """
    diff = step.get("max_abs_diff")
    return f"{diff:.1e}" if diff is not None else str(step.get("proof") or "not proven")


def unproven_steps(steps: Sequence[Mapping[str, Any]]) -> list[int]:
    """The numbers of the steps whose proof was skipped (``pruning.verify: false``).

    Example:
        >>> unproven_steps([{"step": 1, "max_abs_diff": None, "proof": "not proven"},
        ...                 {"step": 2, "max_abs_diff": 0.0, "proof": "proven"}])
        [1]
    """
    return [s["step"] for s in steps if proof_cell(s) == "not proven"]


def tolerance_words(tol: Mapping[str, Any] | None, lead: str = "; tolerance ") -> str:
    """``lead`` and a recorded tolerance in words (``""`` when none was recorded).

    Example:
        >>> tolerance_words({"value": 2e-7, "factor": 1e-4, "peak": 2e-3, "dtype": "float32"})
        '; tolerance 1e-04 × max|output| 2.0e-03 = 2.0e-07 (float32)'
    """
    # Lazy: rendering a report does not need torch, which the tolerance module imports.
    from compress.measure.tolerance import describe_tolerance

    return lead + describe_tolerance(tol) if tol else ""
