"""Early stopping for patience-based fine-tuning: the stopping rule and the best weights.

:class:`Patience` is a pure object fed one monitored value per evaluation; :class:`BestWeights`
keeps a CPU copy of the model's state at the best evaluation so it can be put back.

Example:
    >>> p = Patience(2, mode="max", min_delta=0.5)
    >>> [p.update(v) for v in (80.0, 81.0, 81.4, 81.2)], p.should_stop, p.best, p.best_index
    ([True, True, False, False], True, 81.0, 1)
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

__all__ = ["Patience", "BestWeights", "MONITORS"]

# recipe ``finetune.monitor`` -> (key of compress.evaluate.evaluate's result, better direction)
MONITORS: dict[str, tuple[str, Literal["max", "min"]]] = {
    "val_accuracy": ("accuracy", "max"),
    "val_loss": ("loss", "min"),
}


class Patience:
    """Stop after ``patience`` consecutive evaluations without improvement.

    An evaluation improves when it beats the best so far by MORE than ``min_delta`` (higher for
    ``mode="max"``, lower for ``"min"``); the first finite value always improves. NaN never
    improves, so a diverging loss runs out of patience instead of becoming the best.

    Example:
        >>> p = Patience(1, mode="min")
        >>> p.update(0.9), p.update(0.7), p.should_stop, p.update(0.7), p.should_stop
        (True, True, False, False, True)
    """

    def __init__(self, patience: int, mode: Literal["max", "min"] = "max",
                 min_delta: float = 0.0) -> None:
        assert patience >= 1, "patience counts evaluations; the recipe validates it"
        assert mode in ("max", "min") and min_delta >= 0
        self.patience = patience
        self.mode = mode
        self.min_delta = min_delta
        self.history: list[float] = []
        self.best: float | None = None
        self.best_index: int | None = None  # index into history
        self.stale = 0  # consecutive evaluations without improvement

    def update(self, value: float) -> bool:
        """Record one evaluation; True when it is the new best."""
        value = float(value)
        self.history.append(value)
        if math.isnan(value):
            improved = False
        elif self.best is None:
            improved = True
        elif self.mode == "max":
            improved = value > self.best + self.min_delta
        else:
            improved = value < self.best - self.min_delta
        if improved:
            self.best, self.best_index, self.stale = value, len(self.history) - 1, 0
        else:
            self.stale += 1
        return improved

    @property
    def should_stop(self) -> bool:
        """True once the last ``patience`` evaluations all failed to improve."""
        return self.stale >= self.patience


class BestWeights:
    """A CPU copy of a model's state dict: :meth:`save` takes it, :meth:`load_into` puts it back.

    On CPU so the copy costs no accelerator memory; ``load_state_dict`` copies back into the
    model's own tensors, so they stay on their device.

    Example:
        >>> m = nn.Linear(2, 1); best = BestWeights(); best.save(m)
        >>> _ = m.weight.data.zero_(); best.load_into(m); bool(m.weight.abs().sum() > 0)
        True
    """

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None

    def save(self, model: nn.Module) -> None:
        self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def load_into(self, model: nn.Module) -> None:
        assert self.state is not None, "no weights were saved"
        model.load_state_dict(self.state)
