"""``compress gate`` as a library call: check a stored report, write JUnit XML and Markdown.

:mod:`compress.gates.gate` stays pure (report and thresholds in, outcomes out); this module adds the
file side of a CI step: it reads the report, evaluates it, writes the requested files and
returns a :class:`GateRun` holding every line the command shows. It never prints or exits:
the CLI decides where each line goes and what the exit code is.

Example:
    >>> import json, tempfile
    >>> report = {"schema_version": 1, "name": "demo", "baseline": {"accuracy": 90.0},
    ...           "compressed": {"accuracy": 89.5}}
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     _ = Path(folder, "report.json").write_text(json.dumps(report))
    ...     run = run_gate(folder, {"max_accuracy_drop": 1.0})
    >>> run.lines, run.verdict
    ([(True, 'PASS accuracy drop: 0.50 points <= 1.0')], 'demo: all 1 gates passed')
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.fsutil import write_text_atomic
from compress.gates.gate import GateOutcome, check_report
from compress.gates.junit import gates_junit_xml
from compress.gates.stored import read_stored_report
from compress.report.markdown import gates_markdown

__all__ = ["GateRun", "run_gate"]


@dataclass(frozen=True)
class GateRun:
    """What one ``compress gate`` did: the report checked, each gate's outcome, files written.

    ``junit`` and ``markdown`` are the paths written, as given (None when not asked for).

    Example:
        >>> from compress.gates.gate import GateOutcome
        >>> run = GateRun("demo", Path("report.json"), (GateOutcome(
        ...     "min_speedup", False, 1.2, 1.5, ">=", "speedup: 1.20x < 1.5 (required >= 1.5)"),))
        >>> run.failed, run.verdict
        (1, 'demo: 1 of 1 gates failed')
        >>> run.lines
        [(False, 'FAIL speedup: 1.20x < 1.5 (required >= 1.5)  [from the recipe]')]
    """

    name: str
    path: Path
    outcomes: tuple[GateOutcome, ...]
    junit: Path | None = None
    markdown: Path | None = None

    @property
    def failed(self) -> int:
        """How many gates failed."""
        return sum(not g.passed for g in self.outcomes)

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def lines(self) -> list[tuple[bool, str]]:
        """One ``(passed, "PASS ..."/"FAIL ...")`` line per gate, in the order checked."""
        # Thresholds typed on the command line are the reader's own; the recipe's are flagged.
        return [(g.passed, f"{'PASS' if g.passed else 'FAIL'} {g.message}"
                           f"{'  [from the recipe]' if g.source == 'recipe' else ''}")
                for g in self.outcomes]

    @property
    def verdict(self) -> str:
        """The closing line: ``"<name>: N of M gates failed"`` or ``"all M gates passed"``."""
        total = len(self.outcomes)
        return (f"{self.name}: {self.failed} of {total} gates failed" if self.failed
                else f"{self.name}: all {total} gates passed")

    @property
    def written(self) -> list[Path]:
        """The files written, JUnit first."""
        return [p for p in (self.junit, self.markdown) if p is not None]

    def to_dict(self) -> dict[str, Any]:
        """``compress gate --json``: name, report, passed, failed, gates, junit, markdown."""
        return {"name": self.name, "report": str(self.path), "passed": self.passed,
                "failed": self.failed, "gates": [g.to_dict() for g in self.outcomes],
                "junit": str(self.junit) if self.junit else None,
                "markdown": str(self.markdown) if self.markdown else None}


def run_gate(report_path: str | os.PathLike[str],
             overrides: Mapping[str, float | bool | None], *,
             junit: str | os.PathLike[str] | None = None,
             markdown: str | os.PathLike[str] | None = None) -> GateRun:
    """Check the report at ``report_path`` (a report.json or its run folder) and write files.

    Each threshold comes from ``overrides`` (gate name -> value, None = not given) or else the
    report's recipe (see :func:`compress.gates.gate.check_report`). ``junit`` / ``markdown``: also
    write the outcomes there as JUnit XML / a Markdown table (atomically, folders created).
    Raises :class:`InputError` for a missing, foreign or mistyped report (see
    :mod:`compress.gates.stored`) and for bad or no thresholds; nothing is written then. A
    failed gate is not an error: see :attr:`GateRun.failed`.

    Example:
        >>> run_gate("runs/quickstart", {"min_speedup": 1.5}).verdict  # doctest: +SKIP
        'quickstart: all 2 gates passed'
    """
    data, path = read_stored_report(report_path)
    outcomes = tuple(check_report(data, overrides))
    run = GateRun(str(data.get("name") or path.parent.name), path, outcomes,
                  Path(junit) if junit is not None else None,
                  Path(markdown) if markdown is not None else None)
    if run.junit is not None:
        write_text_atomic(run.junit, gates_junit_xml(
            outcomes, run.name, timestamp=data.get("created"),
            properties={"report": path, "status": data.get("status", "unknown")}))
    if run.markdown is not None:
        title = f"compress gates: {run.name}: {'FAILED' if run.failed else 'passed'}"
        write_text_atomic(run.markdown,
                          gates_markdown([g.to_dict() for g in outcomes], title=title) + "\n")
    return run
