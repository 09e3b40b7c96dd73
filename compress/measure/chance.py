"""Accuracy at chance level: what guessing scores, and whether a measured top-1 is told apart
from it on the samples it was measured on.

A classifier that scores within two standard errors of ``100 / classes`` % (the binomial
spread of a guesser on ``samples`` evaluations) has learned nothing measurable; its pruning
numbers mean nothing either. The run says so (a warning in the report) and the
``above_chance`` gate fails such a run.

Example:
    >>> round(chance_ceiling(2, 872), 2), at_chance(50.92, 2, 872), at_chance(79.9, 2, 872)
    (53.39, True, False)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["chance_ceiling", "at_chance", "models_at_chance", "chance_warnings"]


def chance_ceiling(classes: int, samples: int) -> float:
    """The top-1 (in %) below which a score is not told apart from guessing among ``classes``
    on ``samples`` evaluations: chance plus two standard errors."""
    p = 1.0 / classes
    return 100.0 * (p + 2.0 * math.sqrt(p * (1.0 - p) / max(samples, 1)))


def at_chance(accuracy: float, classes: int, samples: int) -> bool:
    """Is ``accuracy`` (in %) within reach of guessing?"""
    return classes > 1 and accuracy <= chance_ceiling(classes, samples)


def models_at_chance(report: Mapping[str, Any]) -> list[str] | None:
    """``baseline`` and/or ``compressed`` when their top-1 is at chance level; None when the
    report cannot tell (no class count: a language model, or an older report).

    Example:
        >>> models_at_chance({"baseline": {"accuracy": 51.0, "eval_samples": 872, "classes": 2},
        ...                   "compressed": {"accuracy": 80.0}})
        ['baseline']
    """
    base = report.get("baseline") or {}
    classes, samples = base.get("classes"), base.get("eval_samples")
    if not isinstance(classes, int) or classes < 2 or not isinstance(samples, int):
        return None
    return [side for side in ("baseline", "compressed")
            if isinstance((report.get(side) or {}).get("accuracy"), (int, float))
            and at_chance(report[side]["accuracy"], classes, samples)]


def chance_warnings(report: Mapping[str, Any]) -> list[str]:
    """One sentence per model whose accuracy is at chance level.

    Example:
        >>> chance_warnings({"baseline": {"accuracy": 50.9, "eval_samples": 872, "classes": 2},
        ...                  "compressed": {"accuracy": 50.1}})[0][:52]
        'the baseline scores 50.90 % top-1 on 2 classes: at c'
    """
    out = []
    base = report.get("baseline") or {}
    for side in models_at_chance(report) or []:
        acc = report[side]["accuracy"]
        ceiling = chance_ceiling(base["classes"], base["eval_samples"])
        why = ("it has not learned the task: train it longer or on more data before pruning"
               if side == "baseline" else "pruning or its fine-tune lost what it had learned")
        out.append(f"the {side} scores {acc:.2f} % top-1 on {base['classes']} classes: at "
                   f"chance level (not above {ceiling:.2f} %, guessing plus two standard errors "
                   f"on {base['eval_samples']} samples); {why}, and its other figures mean "
                   f"little")
    return out
