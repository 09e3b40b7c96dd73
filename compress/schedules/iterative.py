"""Iterative pruning: several steps to the target, fine-tuning after each.

The paper (Janusz et al., arXiv 2508.13836) finds it ahead of one-shot above about 90 %
sparsity. Step sizes, as fractions of the ORIGINAL prunable amount:

* ``constant``: each of ``n`` steps removes ``p / n``;
* ``geometric``: each step removes the same fraction ``s = 1 - (1 - p)^(1/n)`` of what is left,
  so step j removes ``s (1 - s)^(j-1)`` of the original and the steps sum to exactly ``p``;
* ``step_rate: s`` instead of ``steps``: geometric with that rate, as many steps as it takes,
  the last one trimmed to land exactly on ``p``.
"""

from __future__ import annotations

import math
from typing import Any

from compress.errors import InputError
from compress.schedules import SCHEDULES

__all__ = ["iterative", "geometric_targets", "rate_targets", "constant_targets",
           "require_steps_or_rate"]


def constant_targets(start: float, final: float, steps: int) -> list[float]:
    """Cumulative targets of ``steps`` equal steps from ``start`` to ``final``."""
    return [start + (final - start) * j / steps for j in range(1, steps)] + [final]


def geometric_targets(start: float, final: float, steps: int) -> list[float]:
    """``steps`` steps that each remove the same fraction of what remains after ``start``."""
    keep = ((1 - final) / (1 - start)) ** (1 / steps)
    return [1 - (1 - start) * keep**j for j in range(1, steps)] + [final]


def rate_targets(start: float, final: float, rate: float) -> list[float]:
    """Geometric steps of ``rate`` from ``start`` until ``final``; the last step is trimmed."""
    steps = math.ceil(math.log((1 - final) / (1 - start)) / math.log(1 - rate) - 1e-12)
    steps = max(steps, 1)
    return [1 - (1 - start) * (1 - rate) ** j for j in range(1, steps)] + [final]


def require_steps_or_rate(spec: Any, kind: str, purpose: str = "") -> None:
    """Exactly one of ``schedule.steps`` and ``schedule.step_rate`` (``purpose`` says for what)."""
    if (spec.steps is None) == (spec.step_rate is None):
        raise InputError(f"schedule.kind {kind!r} needs exactly one of schedule.steps or "
                         f"schedule.step_rate{purpose}")


@SCHEDULES.register("iterative")
def iterative(spec: Any, final: float) -> list[float]:
    """Cumulative targets of an iterative schedule.

    Example:
        >>> from compress.recipe.pruning import ScheduleSpec
        >>> iterative(ScheduleSpec(kind="iterative", steps=4, step_rule="constant"), 0.5)
        [0.125, 0.25, 0.375, 0.5]
    """
    require_steps_or_rate(spec, "iterative")
    if spec.first_step is not None:
        raise InputError("schedule.first_step belongs to kind 'hybrid'; remove it or use hybrid")
    if spec.step_rate is not None:
        if spec.step_rule == "constant" and "step_rule" in spec.model_fields_set:
            raise InputError("schedule.step_rate is a geometric rate; drop step_rule: constant")
        return rate_targets(0.0, final, spec.step_rate)
    if spec.step_rule == "constant":
        return constant_targets(0.0, final, spec.steps)
    return geometric_targets(0.0, final, spec.steps)
