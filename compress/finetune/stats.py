"""What one fine-tune did: the record the schedule loop, the report and patience share.

Its own module so that patience (which fills it) does not import the fine-tune that uses it.

Example:
    >>> stats = FinetuneStats(epochs=1.0, steps=10, samples=640, seconds=2.5, final_loss=0.3,
    ...                       lr_final=0.01)
    >>> stats.stopped_early, stats.evaluations
    (False, [])
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FinetuneStats"]


@dataclass
class FinetuneStats:
    """What one fine-tune did. The patience fields keep their defaults in fixed-budget mode.

    ``epochs``, ``steps`` and ``samples`` count every optimizer step taken, including those a
    divergence rolled back (the budget they used is gone).
    """

    epochs: float  # fractional epochs actually trained
    steps: int
    samples: int
    seconds: float  # wall time, validation included
    final_loss: float | None  # training loss of the last optimizer step
    lr_final: float  # peak learning rate of the last attempt: finetune.lr, or lowered once
    evaluations: list[float] = field(default_factory=list)  # monitored metric, [0] = untrained
    best: float | None = None
    best_evaluation: int | None = None  # index into evaluations
    stopped_early: bool = False  # patience ran out before the max budget did
    restored: bool = False  # the best evaluation's weights were loaded back
    divergences: int = 0  # rollbacks to a lower learning rate (0 or 1; a second one raises)
