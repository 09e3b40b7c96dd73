"""The proof of a pruning step, at the cost of two forward passes when the step is right.

Every pruner zeroes what a step removes, runs a probe batch through the zeroed model (the
reference), then removes the zeroed channels (heads, neurons) group by group; the removed model
must compute the reference. Comparing after every group costs one forward pass per group: 500
passes for a Swin-T step. Here all groups are removed and the output compared once; only when
it differs is the culprit searched, by bisection over the removal order from a snapshot of the
zeroed model (:class:`Snapshot`): the first prefix of removals whose output differs ends with
the offending group, found in ``ceil(log2(groups))`` more passes and named as before. A removal
that raises is named at once. Nothing is lost: every difference of the whole step is caught,
and a difference the bisection cannot pin on one group still fails the step.

``strategy="per-group"`` keeps the old way (one pass per group) for comparison
(``benchmarks/proof_cost.py``) and for models that cannot be snapshotted. A bisection also
falls back to it for a model of more than :data:`SNAPSHOT_MAX_BYTES` of parameters and
buffers, whose snapshot (a copy of every parameter, with the parameters the removals replace
kept alive) would hold two to three models at once: the verdict and the culprit named are the
same, at one pass of the small probe per group. The limit is a size, not a share of this
machine's memory, so a recipe proves its steps the same way everywhere.

Example:
    >>> from torch import nn
    >>> lin = nn.Linear(2, 2)
    >>> result = run_proof(lin, torch.ones(1, 2), [("noop", lambda: None)], atol=1e-6)
    >>> result.max_diff, result.passes
    (0.0, 2)
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compress.errors import CheckFailed, InputError
from compress.measure.tolerance import Tolerance, scaled_tolerance

__all__ = ["Proof", "Snapshot", "run_proof", "remove_all_", "first_line", "STRATEGIES"]

log = logging.getLogger(__name__)

STRATEGIES = ("bisect", "per-group")
SNAPSHOT_MAX_BYTES = 2**30  # larger models compare after every group (see the docstring)
Removal = tuple[str, Callable[[], None]]


@dataclass
class Proof:
    """What a step's proof measured: the largest difference, against which tolerance, at what
    cost (forward passes of the probe batch, seconds)."""

    max_diff: float
    tolerance: Tolerance
    passes: int
    seconds: float
    groups: int


class Snapshot:
    """The state of a model (and of ``also``, plain objects a removal changes) to come back to.

    Each module's attributes are kept shallowly (a removal assigns new widths and new
    parameters, it does not mutate shared objects) and every parameter and buffer keeps its
    identity and a copy of its data, on the CPU so a GPU model does not double there.

    Example:
        >>> lin = nn.Linear(4, 2)
        >>> snap = Snapshot(lin)
        >>> lin.weight = nn.Parameter(lin.weight[:1].clone()); lin.out_features = 1
        >>> snap.restore_(); lin.weight.shape, lin.out_features
        (torch.Size([2, 4]), 2)
    """

    def __init__(self, model: nn.Module, also: Iterable[Any] = ()) -> None:
        self._saved = [(obj, {key: self._keep(key, value) for key, value in vars(obj).items()})
                       for obj in [*model.modules(), *also]]

    @staticmethod
    def _keep(key: str, value: Any) -> tuple[Any, Any]:
        """(the object, a copy of its contents): containers are refilled in place on restore,
        so whatever holds them (a hook's handle holds its dict) still sees the live one."""
        if key in ("_parameters", "_buffers"):
            return value, {n: (t, None if t is None else t.detach().to("cpu", copy=True))
                           for n, t in value.items()}
        if isinstance(value, (dict, list, set)):
            return value, copy.copy(value)
        return value, None

    @torch.no_grad()
    def restore_(self) -> None:
        """Put every saved attribute, parameter and buffer back (and drop new attributes)."""
        for obj, attrs in self._saved:
            vars(obj).clear()
            for key, (value, contents) in attrs.items():
                if key in ("_parameters", "_buffers"):
                    contents = {n: self._tensor(t, data) for n, (t, data) in contents.items()}
                if contents is not None:
                    value.clear()
                    (value.update if isinstance(value, (dict, set)) else value.extend)(contents)
                vars(obj)[key] = value

    @staticmethod
    def _tensor(t: torch.Tensor | None, data: torch.Tensor | None) -> torch.Tensor | None:
        if t is not None and data is not None:
            t.data = data.to(t.device, copy=True)  # the saved copy stays pristine
            if isinstance(t, nn.Parameter):
                t.grad = None
        return t


def _probe(model: nn.Module, probe: torch.Tensor) -> torch.Tensor:
    out = model(probe)
    assert isinstance(out, torch.Tensor), "the probe output must be a tensor"
    return out.detach()


class _Comparison:
    """Forward passes against the reference, counted; ``diff`` is inf for a wrong shape."""

    def __init__(self, model: nn.Module, probe: torch.Tensor, atol: float,
                 explain: Callable[[str], str | None] | None = None) -> None:
        self.model, self.probe, self.passes, self.explain = model, probe, 1, explain
        out = _probe(model, probe)
        self.reference = out.float()
        self.tolerance = scaled_tolerance(self.reference, atol, dtype=out.dtype)

    def diff(self) -> float:
        """Largest |output - reference|; raises what the forward pass raises."""
        self.passes += 1
        out = _probe(self.model, self.probe).float()
        if out.shape != self.reference.shape:
            return float("inf")
        return float((out - self.reference).abs().max()) if out.numel() else 0.0

    def ok(self, diff: float) -> bool:
        return diff <= self.tolerance.value  # False for NaN too

    def failure(self, name: str, diff: float | BaseException) -> CheckFailed:
        if isinstance(diff, BaseException):
            return CheckFailed(f"pruning group rooted at {name!r} broke the model: "
                               f"{type(diff).__name__}: {first_line(diff)}; add {name!r} to "
                               f"pruning.ignored")
        cause = self.explain(name) if self.explain is not None else None
        return CheckFailed(
            f"equivalence check failed: removing the pruning group rooted at {name!r} changed "
            f"the probe output by {diff:.3g} (tolerance {self.tolerance.value:.3g} = "
            f"{self.tolerance.describe()}); "
            + (cause or "the dependency graph wired its channels wrongly, add the layer to "
                        "pruning.ignored"))


def _what(diff: float | BaseException) -> str:
    if isinstance(diff, BaseException):
        return f"{type(diff).__name__}: {first_line(diff)}"
    return f"by {diff:.3g}"


def first_line(err: BaseException) -> str:
    """An exception's message, its first line only (a sentence, not a dump)."""
    return (str(err).strip().splitlines() or [""])[0]


def _remove(name: str, remove: Callable[[], None]) -> None:
    try:
        remove()
    except CheckFailed:
        raise
    except Exception as err:  # the graph library could not cut this group
        raise InputError(f"the pruning group rooted at {name!r} cannot be removed "
                         f"({type(err).__name__}: {first_line(err)}): its channels are wired "
                         f"in a way the dependency graph does not support; add {name!r} to "
                         f"pruning.ignored") from None


def remove_all_(removals: Iterable[Removal]) -> None:
    """Apply the removals without proving anything (``pruning.verify: false``)."""
    for name, remove in removals:
        _remove(name, remove)


def _measure(cmp: _Comparison) -> float | BaseException:
    try:
        return cmp.diff()
    except Exception as err:  # a mis-wired removal often breaks shapes
        return err


def run_proof(model: nn.Module, probe: torch.Tensor, removals: Sequence[Removal], *,
              atol: float, strategy: str = "bisect", also: Iterable[Any] = (),
              explain: Callable[[str], str | None] | None = None) -> Proof:
    """Apply every ``(group name, remove)`` to the zeroed ``model`` and prove the output kept.

    Raises :class:`CheckFailed` naming the first group whose removal changes the output past
    the tolerance (:func:`~compress.measure.tolerance.scaled_tolerance`) or breaks the forward
    pass, :class:`InputError` naming a group that cannot be removed at all. ``also``: objects
    besides the model that a removal changes (restored with it during a bisection);
    ``explain(name)`` may name a known cause of a mismatch (see :func:`prove_removals_`).
    """
    assert strategy in STRATEGIES, strategy
    start = time.perf_counter()
    with torch.no_grad():
        cmp = _Comparison(model, probe, atol, explain)
        # One group needs no search: the whole step's comparison names it.
        bisect = strategy == "bisect" and len(removals) > 1 and _snapshot_fits(model)
        snapshot = Snapshot(model, also) if bisect else None
        worst = 0.0
        for name, remove in removals:
            _remove(name, remove)
            if snapshot is None:  # per group: compare after each removal
                diff = _measure(cmp)
                if isinstance(diff, BaseException) or not cmp.ok(diff):
                    raise cmp.failure(name, diff)
                worst = max(worst, diff)
        if snapshot is not None:
            diff = _measure(cmp)
            if isinstance(diff, BaseException) or not cmp.ok(diff):
                _bisect(cmp, snapshot, removals, diff)
            worst = diff
    return Proof(worst, cmp.tolerance, cmp.passes, time.perf_counter() - start, len(removals))


def _snapshot_fits(model: nn.Module) -> bool:
    """Whether ``model`` is small enough (:data:`SNAPSHOT_MAX_BYTES`) for a bisection."""
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if size <= SNAPSHOT_MAX_BYTES:
        return True
    log.info("proof: the model holds %.2f GiB, over the %.0f GiB a bisection's snapshot may "
             "copy; comparing after every group instead", size / 2**30,
             SNAPSHOT_MAX_BYTES / 2**30)
    return False


def _bisect(cmp: _Comparison, snapshot: Snapshot, removals: Sequence[Removal],
            whole: float | BaseException) -> None:
    """Raise the failure of the first group whose removal (after the ones before it) changes
    the output: prefix ``lo`` is known good (none removed), prefix ``hi`` known bad (all)."""
    lo, hi, at_hi = 0, len(removals), whole
    applied: int | None = None  # the prefix the model holds now (None: the whole step)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if applied is None or applied > mid:  # after a good prefix, go on from there
            snapshot.restore_()
            applied = 0
        try:
            for _, remove in removals[applied:mid]:
                remove()
            applied = mid
        except Exception as err:  # the redo differs from the first run: no culprit to name
            raise CheckFailed(f"equivalence check failed: removing the {len(removals)} pruning "
                              f"groups of the step changed the probe output "
                              f"({_what(whole)}), and redoing the removals to find the group "
                              f"failed ({type(err).__name__}: {first_line(err)})") from None
        diff = _measure(cmp)
        if isinstance(diff, BaseException) or not cmp.ok(diff):
            hi, at_hi = mid, diff
        else:
            lo = mid
    raise cmp.failure(removals[hi - 1][0], at_hi)
