"""One-shot: a single step straight to the target (best below ~80 % sparsity, per the paper)."""

from __future__ import annotations

from typing import Any

from compress.schedules import SCHEDULES

__all__ = ["one_shot"]


@SCHEDULES.register("one-shot")
def one_shot(spec: Any, final: float) -> list[float]:
    """``[final]``: prune everything at once, then fine-tune once."""
    return [final]
