"""One-shot: a single step straight to the target (best below ~80 % sparsity, per the paper)."""

from __future__ import annotations

from typing import Any

from compress.errors import InputError
from compress.schedules import SCHEDULES

__all__ = ["one_shot"]


@SCHEDULES.register("one-shot")
def one_shot(spec: Any, final: float) -> list[float]:
    """``[final]``: prune everything at once, then fine-tune once.

    Example:
        >>> from compress.recipe.pruning import ScheduleSpec
        >>> one_shot(ScheduleSpec(), 0.5)
        [0.5]
    """
    if spec.steps or spec.step_rate or spec.first_step:
        raise InputError("schedule.kind 'one-shot' takes no steps, step_rate or first_step")
    return [final]
