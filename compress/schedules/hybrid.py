"""Hybrid ("few-shot"): one big step to ``first_step``, then small geometric steps to the target.

The paper's guideline: the first step reaches about 60-80 % of the target; later steps remove
about 10 % of what remains when the target is below 80 %, about 2 % above; the patience of the
later fine-tunes is about 1/20 of the first (``finetune.patience: [200, 10]``).
"""

from __future__ import annotations

from typing import Any

from compress.errors import InputError
from compress.schedules import SCHEDULES
from compress.schedules.iterative import geometric_targets, rate_targets, require_steps_or_rate

__all__ = ["hybrid"]


@SCHEDULES.register("hybrid")
def hybrid(spec: Any, final: float) -> list[float]:
    """Cumulative targets: ``[first_step, ...geometric steps..., final]``.

    Example:
        >>> from compress.recipe.pruning import ScheduleSpec
        >>> [round(t, 6) for t in hybrid(ScheduleSpec(kind="hybrid", first_step=0.6, steps=1), 0.88)]
        [0.6, 0.88]
    """
    if spec.first_step is None:
        raise InputError("schedule.kind 'hybrid' needs schedule.first_step (the cumulative "
                         "target of the first step, about 0.6-0.8 of the final target)")
    if not spec.first_step < final:
        raise InputError(f"schedule.first_step ({spec.first_step}) must be below the final "
                         f"target ({final})")
    require_steps_or_rate(spec, "hybrid", " for the steps after the first")
    if spec.step_rule == "constant" and "step_rule" in spec.model_fields_set:
        raise InputError("hybrid's later steps are geometric; drop step_rule: constant")
    later = (rate_targets(spec.first_step, final, spec.step_rate) if spec.step_rate is not None
             else geometric_targets(spec.first_step, final, spec.steps))
    return [spec.first_step, *later]
