"""What every pruning kind shares: the :class:`Pruner` interface, the step record, the proof.

A kind registers a :class:`PruningKind`: its handler ``build(model, example_inputs, spec,
cumulative_ratios) -> Pruner``, the criteria ``pruning.importance`` may name for it, and one
line for ``compress list``. The run drives every kind the same way: one :meth:`Pruner.step_`
per scheduled step (each step proves its own transformation), then :meth:`Pruner.finalize_`
before export.

Example:
    >>> PruningKind(build=dict, criteria=("l1",), description="a kind").criteria
    ('l1',)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from compress.pruning.proof import Proof, remove_all_, run_proof
from compress.registry import Registry

__all__ = ["Pruner", "PruningKind", "StepRecord", "PRUNING_KINDS", "prove_removals_",
           "PROVEN", "NOT_PROVEN", "COUNT_CHECK",
           "scheduled_step", "ratio_or_macs", "check_ratio_or_target",
           "check_transformer_fractions"]


@dataclass
class StepRecord:
    """What one pruning step did, and the proof that it is exact.

    ``removed`` counts ``unit``s (channels for structured, weights otherwise); ``layers`` maps
    layer names to their output width (structured) or weight sparsity (unstructured, n:m).
    ``max_abs_diff`` is the measured output difference of the proof, ``None`` when none was
    measured; ``proof`` says which: :data:`PROVEN`, :data:`NOT_PROVEN` (``pruning.verify:
    false``) or :data:`COUNT_CHECK` (a pattern check that compares no outputs). Left out, it
    follows from ``max_abs_diff``: a number was measured, ``None`` was not.

    Example:
        >>> StepRecord(0.5, 1, 2, "channels", None).proof
        'not proven'
    """

    target_ratio: float
    groups: int
    removed: int
    unit: str
    max_abs_diff: float | None
    layers: dict[str, Any] = field(default_factory=dict)
    proof: str | None = None
    tolerance: dict[str, Any] | None = None  # Tolerance.to_dict() of the proof, if one ran
    passes: int | None = None  # forward passes of the probe batch the proof took
    protected: dict[str, str] = field(default_factory=dict)  # left unpruned: name -> why
    note: str | None = None  # a limit of the step the report states (e.g. only blocks pruned)

    @classmethod
    def of(cls, target_ratio: float, groups: int, removed: int, unit: str,
           proof: Proof | None, layers: dict[str, Any]) -> StepRecord:
        """The record of a step proven by ``proof`` (``None``: not proven)."""
        if proof is None:
            return cls(target_ratio, groups, removed, unit, None, layers)
        return cls(target_ratio, groups, removed, unit, proof.max_diff, layers,
                   tolerance=proof.tolerance.to_dict(), passes=proof.passes)

    def __post_init__(self) -> None:
        if self.proof is None:
            self.proof = PROVEN if self.max_abs_diff is not None else NOT_PROVEN
        assert self.proof in (PROVEN, NOT_PROVEN, COUNT_CHECK), self.proof
        assert (self.max_abs_diff is None) == (self.proof != PROVEN), (self.proof,
                                                                        self.max_abs_diff)

    def describe_proof(self) -> str:
        """The measured difference (``1.2e-06``) or, when none was measured, why not."""
        return self.proof if self.max_abs_diff is None else f"{self.max_abs_diff:.2e}"


# What a step record's ``proof`` says; report.json, report.md and the CLI show these words.
PROVEN = "proven"
NOT_PROVEN = "not proven"
COUNT_CHECK = "not applicable (count check)"


class Pruner(Protocol):
    needs_grad: bool  # its criterion needs accumulate_gradients before each step
    # Optional (absent reads False): its criterion needs use_calibration(calibration), a
    # compress.pruning.calibrated.Calibration, before each step.
    # needs_calibration: bool

    def step_(self, target_ratio: float, probe: torch.Tensor) -> StepRecord:
        ...

    def accumulate_gradients(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                             device: torch.device) -> None:
        ...

    def finalize_(self) -> None:
        """Make the result plain: no masks, hooks or re-parametrisations left."""

    def get_state(self) -> dict[str, Any]:
        """JSON-safe state from which :meth:`restore_` rebuilds the pruner after a crash."""
        ...

    def get_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors the state needs besides :meth:`get_state` (masks), saved with safetensors."""
        ...

    def restore_(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """On the freshly built model, redo what the saved steps did (not the weights)."""

    def groups(self) -> list[dict[str, Any]]:
        """What it prunes, nothing pruned: ``{"root", "channels", "members"}`` per group."""
        ...


@dataclass(frozen=True)
class PruningKind:
    """A registered pruning kind: its handler, the criteria it accepts, one line about it, the
    checks of its recipe keys (``check(spec)`` raises ValueError, reported at the recipe's
    ``pruning`` path) and the cumulative target its schedule must reach."""

    build: Callable[..., Pruner]  # (model, example_inputs, spec, *, cumulative_ratios)
    criteria: tuple[str, ...]
    description: str
    check: Callable[[Any], None] = field(default=lambda spec: None)
    final_target: Callable[[Any], float] = field(default=lambda spec: ratio_or_macs(spec))
    shrinks_shapes: bool = False  # removes whole channels/heads (dense speedup, MACs targets)
    single_step: bool = False  # a fixed pattern reached in one step (one-shot schedules only)


def ratio_or_macs(spec: Any) -> float:
    """The target of kinds that take ``ratio`` or ``target``: whichever is given."""
    value = spec.target.value() if spec.target is not None else spec.ratio
    assert value is not None, "checked by the kind"
    return value


def check_ratio_or_target(spec: Any) -> None:
    """Exactly one of ``ratio`` and ``target``."""
    if (spec.ratio is None) == (spec.target is None):
        raise ValueError("give exactly one of 'ratio' (e.g. 0.5) or 'target' "
                         "(e.g. {macs: 0.5})")


def check_transformer_fractions(spec: Any, *, structured: bool) -> None:
    """``heads``, ``ffn`` and ``hidden`` only with structured pruning; beside a MACs target,
    the search needs one of ``heads`` and ``ffn`` left to it; a params target sets them all
    (and the blocks), with local scope."""
    if (spec.heads is not None or spec.ffn is not None or spec.hidden is not None
            or getattr(spec, "blocks", None) is not None) and not structured:
        raise ValueError("'heads', 'ffn', 'hidden' and 'blocks' need kind: structured (they "
                         "scale with the schedule like the ratio does)")
    if spec.target is not None and spec.target.params is not None:
        given = [k for k in ("heads", "ffn", "hidden", "blocks") if getattr(spec, k) is not None]
        if given:
            raise ValueError(f"with target params, leave {' and '.join(given)} out: the search "
                             f"picks the width and depth that meet it")
        if spec.scope != "local":
            raise ValueError("target params needs scope: local (a stock transformers config "
                             "holds one width for all blocks)")
    if spec.target is not None and spec.heads is not None and spec.ffn is not None:
        raise ValueError("with 'target', leave 'heads' or 'ffn' out: the search sets its "
                         "fraction to meet the target (a fraction given keeps its value)")


PRUNING_KINDS: Registry[PruningKind] = Registry("pruning kind")


@contextlib.contextmanager
def scheduled_step(model: nn.Module, ratios: Sequence[float], done: int,
                   target_ratio: float) -> Iterator[None]:
    """The frame of a structured step: it must be the next scheduled one; inside, the model is
    in eval mode (frozen normalisation statistics); after, its mode is back and its stale
    gradients (of the shapes before the step) are gone.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> with scheduled_step(net, [0.5], 0, 0.5):
        ...     net.training
        False
        >>> net.training
        True
    """
    assert done < len(ratios), "more steps than scheduled"
    assert abs(ratios[done] - target_ratio) < 1e-12, (target_ratio, ratios)
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
    model.zero_grad(set_to_none=True)


def prove_removals_(model: nn.Module, probe: torch.Tensor,
                    removals: Iterable[tuple[str, Callable[[], None]]], *, verify: bool,
                    atol: float, also: Iterable[Any] = (), strategy: str = "bisect",
                    explain: Callable[[str], str | None] | None = None) -> Proof | None:
    """Apply each ``(group name, remove)`` and prove the output did not change.

    Call it once every group is zeroed: the zeroed model's output on ``probe`` is the
    reference, and the removals must reproduce it (a removal that breaks the forward pass or
    moves the output past the tolerance, ``atol`` times the output's peak magnitude, raises
    :class:`CheckFailed` naming the group; see :func:`~compress.pruning.proof.run_proof` for
    how the group is found in O(log groups) passes; ``explain(name)``, when given, may name a
    known cause of a mismatch, with advice, instead of a mis-wired dependency graph). Returns
    the :class:`Proof`, or ``None`` without ``verify`` (the removals are applied, nothing is
    measured). ``also``: objects other than the model that a removal changes.

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> prove_removals_(lin, torch.ones(1, 2), [("noop", lambda: None)], verify=True,
        ...                 atol=1e-6).max_diff
        0.0
        >>> prove_removals_(lin, torch.ones(1, 2), [], verify=False, atol=1e-6) is None
        True
    """
    if not verify:
        remove_all_(removals)
        return None
    return run_proof(model, probe, list(removals), atol=atol, strategy=strategy, also=also,
                     explain=explain)
