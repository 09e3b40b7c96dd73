"""The headline figures of a report, formatted for people: one source for the terminal summary
of ``compress apply`` and the strip at the top of ``report.html``.

Numbers read the way a person says them: ``+1.50 points`` or ``no change`` (never ``+0.00`` or
``-0.00``), sizes in MB, the speedup named as the headline one with its engine and batch size,
and each figure's gate beside it (``gate: drop ≤ 2.0 points ✓``). A figure the run did not
measure says ``not measured``; nothing here invents a value.

Example:
    >>> report = {"baseline": {"accuracy": 98.1, "macs": 2e6}, "compressed": {"accuracy": 99.6,
    ...           "macs": 1e6}, "macs_reduction": 0.5, "gates": [{"name": "max_accuracy_drop",
    ...           "passed": True, "threshold": 2.0}]}
    >>> accuracy = key_figures(report)[0]
    >>> accuracy.value, accuracy.detail
    ('98.10 % → 99.60 %', '+1.50 points; gate: drop ≤ 2.0 points ✓')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["KeyFigure", "key_figures", "signed_points", "megabytes", "headline_source",
           "environment_rows", "gate_words", "human_count"]


@dataclass(frozen=True)
class KeyFigure:
    """One headline figure: ``value`` (e.g. ``98.10 % → 99.60 %``), ``detail`` (the change,
    its gate) and ``passed`` (its gate's verdict; None without a gate)."""

    key: str
    label: str
    value: str
    detail: str = ""
    passed: bool | None = None


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def signed_points(delta: float, digits: int = 2) -> str:
    """A change in percentage points with its sign; ``no change`` when it rounds to zero.

    Example:
        >>> signed_points(1.5), signed_points(-0.274), signed_points(-0.001)
        ('+1.50 points', '-0.27 points', 'no change')
    """
    if round(delta, digits) == 0:
        return "no change"
    return f"{delta:+.{digits}f} points"


def megabytes(n: Any) -> str:
    """Bytes as MB (10^6), the unit ``--max-size-mb`` gates on; ``n/a`` for no number.

    Example:
        >>> megabytes(2095433), megabytes(None)
        ('2.10 MB', 'n/a')
    """
    v = _num(n)
    if v is None:
        return "n/a"
    return f"{v / 1e6:.2f} MB" if v >= 1e4 else f"{v / 1e6:.4f} MB"


def human_count(n: Any) -> str:
    """``1234567`` -> ``'1.23M'``; anything that is not a number -> ``'n/a'``.

    Example:
        >>> human_count(1234567), human_count(950), human_count(None)
        ('1.23M', '950', 'n/a')
    """
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "n/a"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def headline_source(report: Mapping[str, Any]) -> str:
    """Which measurement the headline speedup is: engine and batch size (how
    :func:`compress.measure.latency.headline_speedup` picks it: onnxruntime, else torch, at
    the largest batch size)."""
    speed = report.get("speedup") or {}
    for engine in ("onnxruntime", "torch"):
        per_batch = speed.get(engine) or {}
        if per_batch:
            return f"{engine}, batch {max(per_batch, key=lambda b: int(b))}"
    return "not measured"


# gate name -> (the figure it belongs to, its requirement in words)
# (thresholds as typed: str(float) is the shortest exact form, 2.0 stays 2.0)
_GATE_WORDS = {
    "max_accuracy_drop": ("accuracy", lambda t: f"drop ≤ {float(t)} points"),
    "max_accuracy_drop_relative": ("accuracy", lambda t: f"drop ≤ {float(t)} %"),
    "min_macs_reduction": ("macs", lambda t: f"≥ {100 * t:g}% fewer"),
    "min_speedup": ("speedup", lambda t: f"≥ {float(t)}×"),
    "max_size_mb": ("size", lambda t: f"≤ {float(t)} MB"),
    "require_proof": ("proof", lambda t: "every step proven"),
}


def gate_words(gate: Mapping[str, Any]) -> str:
    """``gate: drop ≤ 2.0 points ✓``: a stored gate outcome, to put beside its figure."""
    words = _GATE_WORDS.get(str(gate.get("name")))
    threshold = _num(gate.get("threshold"))
    what = words[1](threshold if threshold is not None else 0.0) if words else str(gate.get(
        "name"))
    return f"gate: {what} {'✓' if gate.get('passed') else '✗ FAILED'}"


def _with_gates(figure: KeyFigure, gates: list[Mapping[str, Any]]) -> KeyFigure:
    mine = [g for g in gates if _GATE_WORDS.get(str(g.get("name")), ("",))[0] == figure.key]
    if not mine:
        return figure
    detail = "; ".join([figure.detail] * bool(figure.detail) + [gate_words(g) for g in mine])
    return KeyFigure(figure.key, figure.label, figure.value, detail,
                     all(bool(g.get("passed")) for g in mine))


def key_figures(report: Mapping[str, Any]) -> list[KeyFigure]:
    """Accuracy, MACs, measured speedup and model size, each with its change and gates."""
    b, c = report.get("baseline") or {}, report.get("compressed") or {}
    figures = []
    acc_b, acc_c = _num(b.get("accuracy")), _num(c.get("accuracy"))
    if acc_b is not None and acc_c is not None:
        figures.append(KeyFigure("accuracy", "top-1 accuracy", f"{acc_b:.2f} % → {acc_c:.2f} %",
                                 signed_points(acc_c - acc_b)))
    else:
        figures.append(KeyFigure("accuracy", "top-1 accuracy", "not measured"))
    reduction = _num(report.get("macs_reduction"))
    figures.append(KeyFigure("macs", "MACs",
                             f"{human_count(b.get('macs'))} → {human_count(c.get('macs'))}",
                             "" if reduction is None else f"{reduction:.1%} fewer"))
    headline = _num((report.get("speedup") or {}).get("headline"))
    figures.append(KeyFigure("speedup", "measured speedup",
                             "not measured" if headline is None else f"{headline:.2f}×",
                             "" if headline is None else
                             f"headline: {headline_source(report)}"))
    size_b, size_c = _num(b.get("onnx_bytes")), _num(c.get("onnx_bytes"))
    smaller = f"{1 - size_c / size_b:.1%} smaller" if size_b and size_c is not None else ""
    figures.append(KeyFigure("size", "ONNX size", f"{megabytes(size_b)} → {megabytes(size_c)}"
                             if size_b is not None else megabytes(size_c), smaller))
    gates = list(report.get("gates") or [])
    return [_with_gates(f, gates) for f in figures]


def _cell(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value) or "none"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items()) or "none"
    return str(value)


def environment_rows(env: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The environment block as (what, value) rows in words: ``None`` -> ``none``, a list of
    providers -> ``A, B`` (no Python reprs).

    Example:
        >>> environment_rows({"gpu": None, "providers": ["CPUExecutionProvider"], "threads": 2})
        [('gpu', 'none'), ('providers', 'CPUExecutionProvider'), ('threads', '2')]
    """
    return [(str(k).replace("_", " "), _cell(v)) for k, v in env.items()]
