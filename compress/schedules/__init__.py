"""Pruning schedules: pure functions from the recipe to the per-step cumulative targets.

Each schedule is one file registering a function ``(schedule_spec, final) -> list[float]``
that returns the cumulative target after each step, as fractions of the ORIGINAL prunable
amount; the last entry is ``final``.

Example:
    >>> from compress.recipe.pruning import ScheduleSpec
    >>> plan_targets(ScheduleSpec(kind="one-shot"), 0.5)
    [0.5]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from compress.errors import InputError
from compress.registry import Registry

if TYPE_CHECKING:
    from compress.recipe.pruning import ScheduleSpec

__all__ = ["SCHEDULES", "plan_targets", "step_increments"]

SCHEDULES: Registry[Callable[["ScheduleSpec", float], list[float]]] = Registry("schedule")


def plan_targets(spec: ScheduleSpec, final: float) -> list[float]:
    """Cumulative targets per step; a step that would prune nothing is bad input (too many
    steps for the target), and the plan ends exactly at ``final``."""
    targets = SCHEDULES.get(spec.kind)(spec, final)
    for i, (before, after) in enumerate(zip([0.0, *targets], targets), start=1):
        if not after > before:
            raise InputError(f"schedule: step {i} of {len(targets)} would prune nothing (the "
                             f"cumulative target stays at {before:.3g} of a final {final:.3g}); "
                             f"use fewer steps or a larger pruning target")
    assert targets and abs(targets[-1] - final) < 1e-9, targets
    return targets


def step_increments(targets: list[float]) -> list[float]:
    """What each step removes, as fractions of the original: the differences of ``targets``.

    Example:
        >>> step_increments([0.6, 0.88])
        [0.6, 0.28]
    """
    return [round(b - a, 12) for a, b in zip([0.0, *targets], targets)]


from compress.schedules import hybrid, iterative, one_shot  # noqa: E402,F401
