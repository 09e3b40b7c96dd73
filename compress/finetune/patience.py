"""Early stopping for patience-based fine-tuning: the stopping rule and the best weights.

:class:`Patience` is a pure object fed one monitored value per evaluation; :class:`BestWeights`
keeps a CPU copy of the model's state at the best evaluation so it can be put back;
:class:`Monitor` ties them to a validation function and schedule for the fine-tune
(:mod:`compress.finetune.finetune`).

Example:
    >>> p = Patience(2, mode="max", min_delta=0.5)
    >>> [p.update(v) for v in (80.0, 81.0, 81.4, 81.2)], p.should_stop, p.best, p.best_index
    ([True, True, False, False], True, 81.0, 1)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from compress.finetune.divergence import metric_collapse
from compress.finetune.stats import FinetuneStats
from compress.recipe.stages import FinetuneSpec

__all__ = ["Patience", "BestWeights", "Monitor", "ValidateFn", "MONITORS"]

log = logging.getLogger(__name__)

# Evaluates a model on validation data; returns at least the key the monitor reads
# ("accuracy" in percent or "loss"), like compress.measure.evaluate.evaluate.
ValidateFn = Callable[[nn.Module], Mapping[str, float]]

# recipe ``finetune.monitor`` -> (key of compress.measure.evaluate.evaluate's result, direction)
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


class Monitor:
    """The validation schedule, stopping rule and best weights of one patience-mode fine-tune.

    Evaluation 0 is the model before training; :meth:`due` says which optimizer steps are
    followed by an evaluation (every ``every``, and always the last of ``total``).

    Example:
        >>> from compress.recipe.stages import FinetuneSpec
        >>> m = Monitor(FinetuneSpec(patience=1), 1, lambda _: {"accuracy": 50.0}, 4, 10)
        >>> m.evaluate(nn.Linear(1, 1)), [s for s in range(1, 11) if m.due(s)]
        (False, [4, 8, 10])
    """

    def __init__(self, spec: FinetuneSpec, patience: int, validate: ValidateFn, every: int,
                 total: int) -> None:
        self.key, mode = MONITORS[spec.monitor]
        self.name = spec.monitor
        self.rule = Patience(patience, mode, spec.min_delta)
        self.validate = validate
        self.every, self.total = every, total
        self.drop, self.factor = spec.collapse_drop, spec.collapse_factor
        self.best = BestWeights()

    def due(self, step: int) -> bool:
        # The end of the budget is always evaluated, so the last steps can still win.
        return step % self.every == 0 or step == self.total

    def evaluate(self, model: nn.Module) -> bool:
        """Validate once, keep the weights if they are the best; True when patience ran out."""
        result = self.validate(model)
        model.train()  # a validate_fn may leave eval mode behind
        assert self.key in result, f"validation result lacks {self.key!r} for {self.name}"
        if self.rule.update(result[self.key]):
            self.best.save(model)
        log.debug("evaluation %d: %s %.4f (best %s at evaluation %s)",
                  len(self.rule.history) - 1, self.name, result[self.key], self.rule.best,
                  self.rule.best_index)
        return self.rule.should_stop

    def state(self) -> dict[str, Any]:
        """The stopping rule's progress, JSON-safe (the best weights are saved apart)."""
        rule = self.rule
        return {"history": list(rule.history), "best": rule.best, "best_index": rule.best_index,
                "stale": rule.stale}

    def restore(self, state: dict[str, Any], best: dict[str, torch.Tensor] | None) -> None:
        """Continue from :meth:`state` and the best weights saved with it."""
        rule = self.rule
        rule.history, rule.best = [float(v) for v in state["history"]], state["best"]
        rule.best_index, rule.stale = state["best_index"], state["stale"]
        self.best.state = best

    def collapse(self) -> str | None:
        """Why the last evaluation is a collapse against evaluation 0, or None."""
        history = self.rule.history
        return metric_collapse(history[-1], history[0], mode=self.rule.mode, name=self.name,
                               drop=self.drop, factor=self.factor)

    def finish(self, model: nn.Module, stats: FinetuneStats, *, stopped_early: bool,
               description: str) -> None:
        rule = self.rule
        last = len(rule.history) - 1
        stats.evaluations = list(rule.history)
        stats.best, stats.best_evaluation = rule.best, rule.best_index
        stats.stopped_early = stopped_early
        if rule.best_index is None:  # every evaluation was NaN: nothing better to go back to
            log.warning("%s: %s was never a number; keeping the last weights", description,
                        self.name)
        elif rule.best_index != last:
            self.best.load_into(model)
            stats.restored = True
        log.info("%s: %s best %.4f at evaluation %s of %d%s%s", description, self.name,
                 rule.best if rule.best is not None else float("nan"), rule.best_index, last,
                 ", stopped early" if stopped_early else "",
                 ", best weights restored" if stats.restored else "")
