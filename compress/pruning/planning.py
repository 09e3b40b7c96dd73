"""Planning for a MACs target: the channel ratio whose pruning removes a given share of MACs.

A schedule's cumulative MACs targets become channel ratios for the structured pruner by
searching on throw-away copies (nothing is proven: nothing is kept; a trial whose cut model
does not run is redone with the proof, which names the group that broke it). Trials are cached
by ratio, across the steps of a schedule. Copies have no gradients, so gradient criteria are
planned with l2 where that gives the same widths. For transformers the ratio is the fraction of
heads and FFN neurons removed; a kind given beside the target (``heads: 0``, ``ffn: 0.25``)
keeps its fraction and the search sets the others'.

Example:
    >>> from compress.models.cifar_resnet import cifar_resnet
    >>> from compress.recipe.pruning import PruningSpec
    >>> net, x = cifar_resnet("resnet20").eval(), torch.randn(1, 3, 32, 32)
    >>> spec = PruningSpec(target={"macs": 0.5})
    >>> [round(r, 1) for r in channel_ratios(net, x, spec, [0.5])]
    [0.1]
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from compress.errors import CheckFailed, InputError
from compress.measure.counts import count_macs_params
from compress.progress import report_phase
from compress.pruning.criteria import IMPORTANCE
from compress.pruning.proof import Snapshot
from compress.pruning.structured_kind import build_structured
from compress.pruning.transformer import is_transformer
from compress.recipe.pruning import PruningSpec

__all__ = ["gradient_free", "solve_ratio_for_macs", "solve_ratios_for_macs", "channel_ratios"]

log = logging.getLogger(__name__)


def gradient_free(spec: PruningSpec, what: str) -> PruningSpec:
    """``spec`` for pruning copies that have no gradients: the widths, not the choice, matter.

    With local scope every layer loses the same share whatever the criterion, so a gradient
    criterion (taylor, hessian) is replaced by l2, which gives exactly the same widths. With
    global scope the criterion decides the widths: :class:`InputError` naming ``what``.

    Example:
        >>> gradient_free(PruningSpec(ratio=0.5, importance="taylor"), "x").importance
        'l2'
    """
    if not IMPORTANCE.get(spec.importance).needs_grad:
        return spec
    if spec.scope != "local":
        raise InputError(f"{what} with importance {spec.importance!r} needs scope: local (the "
                         f"pruned copies have no gradients); with scope: global give a ratio "
                         f"and use compress apply")
    return spec.model_copy(update={"importance": "l2"})


class _ReusedTrials:
    """One copy and one dependency graph for every trial of a search: each trial restores the
    copy (and the graph's state) from a :class:`~compress.pruning.proof.Snapshot` and prunes
    it to its ratio, instead of copying the model and tracing a new graph (~1-2 s for a
    ResNet-56). Transformers (their own pruner, no graph) keep fresh copies."""

    def __init__(self, model: nn.Module, example: torch.Tensor, spec: PruningSpec) -> None:
        self.source, self.example, self.spec = model, example, spec
        self.snapshot: Snapshot | None = None  # built by the first trial

    @property
    def ok(self) -> bool:
        return not is_transformer(self.source)

    def prune(self, ratio: float) -> nn.Module:
        if self.snapshot is None:
            self.model = copy.deepcopy(self.source).eval()
            self.pruner = build_structured(self.model, self.example, self.spec,
                                           cumulative_ratios=[ratio])
            self.snapshot = Snapshot(self.model, self.pruner.trial_state())
        self.snapshot.restore_()
        self.pruner.retarget_(ratio)
        self.pruner.step_(ratio, self.example)
        return self.model


def solve_ratio_for_macs(model: nn.Module, example_inputs: torch.Tensor, spec: PruningSpec,
                         macs_reduction: float, *, tolerance: float = 0.0,
                         iterations: int = 7, precision: float = 0.002,
                         cache: dict[float, float] | None = None,
                         final_ratio: float | None = None,
                         reduction_of: Callable[[nn.Module], float] | None = None,
                         quantity: str = "macs",
                         on_trial: Callable[[float, float], None] | None = None
                         ) -> tuple[float, float]:
    """Find the channel ratio whose pruning removes ``macs_reduction`` of the MACs.

    Prunes throw-away copies (no proof needed: nothing is kept). With ``round_to`` the
    reduction is a step function of the ratio; the closest achievable ratio is returned as
    ``(ratio, achieved_reduction)``. When the target itself is out of reach, the largest
    reduction is accepted if it falls short by at most ``tolerance``. The bisection stops early
    once a trial lands within ``precision`` of the target. ``cache`` (ratio -> reduction) may be
    shared between searches on the same model and spec: the steps of a schedule then start
    from what earlier searches measured. ``final_ratio``: the schedule's last ratio, for an
    earlier step of a transformer whose given fractions scale with the schedule.
    ``reduction_of(pruned copy)``: another resource's reduction to search for (``quantity``
    names it in ``pruning.target``), e.g. latency predicted from a latency table.
    ``on_trial(ratio, reduction)`` is called after each trial prune.
    """
    base_macs, _ = count_macs_params(model, example_inputs)
    cache = {} if cache is None else cache
    trial_spec = gradient_free(spec.model_copy(update={"verify": False}),
                               f"pruning.target.{quantity} (its search prunes copies)")

    def trial(r: float, spec: PruningSpec) -> nn.Module:
        pruned = copy.deepcopy(model).eval()
        ratios = [r] if final_ratio is None else [r, final_ratio]
        build_structured(pruned, example_inputs, spec, cumulative_ratios=ratios).step_(
            r, example_inputs)
        return pruned

    reused = _ReusedTrials(model, example_inputs, trial_spec)

    def reduction(r: float) -> float:
        if r not in cache:
            pruned = reused.prune(r) if reused.ok else trial(r, trial_spec)
            if reduction_of is not None:
                cache[r] = reduction_of(pruned)
                return cache[r]
            try:
                macs = count_macs_params(pruned, example_inputs)[0]
            except Exception as err:  # the unproven cut broke the model: which group did?
                trial(r, trial_spec.model_copy(update={"verify": True}))  # raises, naming it
                raise CheckFailed(f"a trial prune of the MACs search (channel ratio {r:.3f}) "
                                  f"broke the model and the proof could not name the group: "
                                  f"{type(err).__name__}: {err}") from None
            cache[r] = 1.0 - macs / base_macs
            if on_trial is not None:
                on_trial(r, cache[r])
        return cache[r]

    # Coarse scan first: with round_to, very high ratios can round a layer to zero width, which
    # torch-pruning refuses, so the reduction is not monotone near 1. Bracket from below.
    # (Each trial prunes the whole copy once more: keep trials few.)
    cache[0.0] = 0.0
    above = [r for r in cache if cache[r] >= macs_reduction]
    hi = min(above) if above else None
    lo = max((r for r in cache if cache[r] < macs_reduction and (hi is None or r < hi)),
             default=0.0)
    if hi is None:
        for r in (0.2, 0.4, 0.6, 0.8):
            if r <= lo:
                continue
            if reduction(r) >= macs_reduction:
                hi = r
                break
            lo = r
    if hi is None:
        best = max(cache, key=cache.__getitem__)
        if macs_reduction - cache[best] > tolerance:
            raise InputError(f"pruning.target.{quantity}={macs_reduction} cannot be reached: "
                             f"at most {cache[best]:.1%} of the {_WHAT[quantity]} can be removed "
                             f"with these "
                             f"settings; {_advice(model, spec)}")
        hi = best  # within tolerance: refine between the best ratio and the one below it
        lo = max((r for r in cache if r < best), default=0.0)
    for _ in range(iterations):
        if min(abs(cache[hi] - macs_reduction), abs(cache[lo] - macs_reduction)) <= precision:
            break
        mid = (lo + hi) / 2
        if reduction(mid) < macs_reduction:
            lo = mid
        else:
            hi = mid
    # Closest reachable reduction, but never more than `tolerance` short of the target.
    allowed = [r for r in cache if r > 0 and cache[r] >= macs_reduction - tolerance]
    assert allowed, cache
    best = min(allowed, key=lambda r: abs(cache[r] - macs_reduction))
    log.debug("ratio %.4f removes %.2f%% of the %s (target %.2f%%)", best, 100 * cache[best],
              _WHAT[quantity], 100 * macs_reduction)
    return best, cache[best]


_WHAT = {"macs": "MACs", "latency": "latency predicted from the latency table",
         "params": "parameters"}


def _advice(model: nn.Module, spec: PruningSpec) -> str:
    if not is_transformer(model):
        return "lower the target, lower round_to, use scope: global or ignore fewer layers"
    kept = [k for k in ("heads", "ffn") if getattr(spec, k) is not None]
    # What stays whatever the ratio: embeddings, the output head, k/v heads of grouped-query
    # attention, one query head per k/v group, round_to neurons.
    return ("lower the target" + (f", or leave pruning.{' and pruning.'.join(kept)} out so the "
                                  f"search sets it" if kept else "")
            + (", or lower round_to" if spec.round_to != 1 else "")
            + " (embeddings and the output head are not pruned)")


def solve_ratios_for_macs(model: nn.Module, example_inputs: torch.Tensor, spec: PruningSpec,
                          targets: Sequence[float]) -> list[float]:
    """The channel ratio of each cumulative MACs target of a schedule, sharing one cache."""
    assert spec.target is not None
    found: dict[float, tuple[float, float]] = {}  # target -> (ratio, MACs reduction)

    def solve(target: float, cache: dict[float, float], final: float | None = None) -> float:
        found[target] = solve_ratio_for_macs(
            model, example_inputs, spec, target, cache=cache, tolerance=spec.target.tolerance,
            final_ratio=final,
            on_trial=lambda r, red: phase.advance(message=f"trial ratio {r:.4f}: {red:.1%}"))
        return found[target][0]

    # One phase, reported as one line with its result: the trials are its inner workings
    # (each one advances the phase, so a long search still shows a heartbeat in a CI log).
    with report_phase("width search") as phase:
        cache: dict[float, float] = {}
        if not (spec.heads or spec.ffn or spec.hidden) or len(targets) == 1:
            ratios = [solve(t, cache) for t in targets]
        else:
            # A fraction given beside the target is reached at the last step and scales with
            # the schedule before it (as the pruner plans it), so earlier steps are searched
            # against the last step's ratio, with a cache of their own.
            final = solve(targets[-1], cache)
            earlier: dict[float, float] = {}
            ratios = [solve(t, earlier, final) for t in targets[:-1]] + [final]
        phase.result = "; ".join(
            f"channel ratio {found[t][0]:.4f} removes {found[t][1]:.2%} of MACs (target {t:.2%})"
            for t in targets) + f"; {phase.completed} trial prunes"
    return ratios


def channel_ratios(model: nn.Module, example: torch.Tensor, pruning: PruningSpec,
                   targets: Sequence[float], latency: Any = None) -> list[float]:
    """Per-step ratios for the pruner: MACs targets are turned into channel ratios by search,
    latency targets by ``latency`` (a :class:`~compress.pruning.latency_plan.LatencyPlanner`,
    which times layers and models: ``compress apply`` and ``compress inspect`` make one)."""
    if pruning.target is None:
        return list(targets)
    if pruning.target.params is not None:  # it also picks the fractions: see params_plan
        raise InputError("pruning.target.params is planned by compress apply and compress "
                         "inspect; use pruning.target.macs here")
    if pruning.target.latency is not None:
        if latency is None:
            raise InputError("pruning.target.latency is planned from a latency table, which "
                             "compress apply and compress inspect make; use "
                             "pruning.target.macs here")
        return latency.ratios(model, example, pruning, targets)
    return solve_ratios_for_macs(model, example, pruning, targets)
