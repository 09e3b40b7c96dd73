"""What the mask kinds (:mod:`~compress.pruning.unstructured`, :mod:`~compress.pruning.nm`)
share: masked tensors, the per-step proof, finalising, loading state into a masked model.

Both kinds zero single weights and keep the shapes: the file compresses better, dense MACs do
not change. A pruned weight is zeroed in the parameter itself and its mask kept as bits
(:class:`~compress.pruning.mask_store.MaskStore`), so the model never costs more memory than
the dense one (a 1.1B decoder pruned by SparseGPT stays near its own size), the forward and
every export read the pruned weights with nothing to fold, and while fine-tuning a gradient
hook holds the pruned weights at zero. Every step proves that the masks have the kind's
pattern, that every weight pruned then or before is exactly zero in the parameter the forward
reads and that the model still runs to a finite output; :meth:`finalize_` proves the zeros
survived the last fine-tune and drops the masks.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    >>> MaskedTensor("0", net[0], "weight").original() is net[0].weight
    True
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compress.errors import CheckFailed, InputError
from compress.measure.tolerance import Tolerance
from compress.pruning.base import PruningKind, StepRecord
from compress.pruning.calibrated import CalibratedCriteria, is_conv1d
from compress.pruning.criteria import IMPORTANCE
from compress.pruning.mask_store import MaskStore, unpack_bits
from compress.pruning.probe import export_copy, probe_output
from compress.pruning.proof import Proof
from compress.pruning.selection import protected_layers
from compress.recipe.pruning import PruningSpec

log = logging.getLogger(__name__)

# Single weights are ranked by magnitude (l1 and l2 rank them identically), at random, or from
# calibration inputs within each output row (wanda, sparsegpt: compress.pruning.calibrated).
MASK_CRITERIA = ("l1", "l2", "random", "wanda", "sparsegpt")

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
DENSE_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)

# export_copy: mid-run exports take it from here, with the kinds' other helpers.
__all__ = ["MASK_CRITERIA", "MaskedTensor", "MaskPruner", "load_state_", "export_copy",
           "mask_kind", "check_mask_criterion", "DENSE_LAYERS", "NORM_LAYERS", "is_dense"]


def is_dense(module: nn.Module) -> bool:
    """A convolution or linear layer (transformers' transposed ``Conv1D`` included)."""
    return isinstance(module, DENSE_LAYERS) or is_conv1d(module)


@dataclass(frozen=True)
class MaskedTensor:
    """One prunable tensor; ``key`` is the module name for weights, ``module.param`` else."""

    key: str
    module: nn.Module
    param: str

    def original(self) -> torch.Tensor:
        """The parameter (pruned entries zero while masked)."""
        return getattr(self.module, self.param)

    def effective(self) -> torch.Tensor:
        """What the forward uses: the parameter itself, detached."""
        return self.original().detach()


class MaskPruner(CalibratedCriteria):
    """What both kinds share: choosing tensors, masking, the proof, finalising.

    A kind defines ``_select(name, module) -> [MaskedTensor]`` (its prunable tensors),
    ``_keeps(target) -> [bool mask]`` (the new masks), ``_pattern(t, target) -> RowPattern``
    (what each output row keeps, for the calibrated criteria) and ``_check_pattern(target)``
    (its own proof on the applied masks, raising CheckFailed).
    """

    kind = ""
    needs_grad = False
    eligible = "is not ignored and not the output layer"

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, spec: PruningSpec, *,
                 cumulative_ratios: Sequence[float]) -> None:
        self.model, self.spec, self.example_inputs = model, spec, example_inputs
        self._ratios, self._step, self._probe = list(cumulative_ratios), 0, None
        self.needs_calibration = IMPORTANCE.get(spec.importance).needs_calibration
        assert self._ratios and all(0 <= r < 1 for r in self._ratios), self._ratios
        self.ignored_names = ignored = protected_layers(model, example_inputs, spec.ignored)
        self.skipped: dict[str, str] = {}
        self._tensors: list[MaskedTensor] = []
        # MultiheadAttention reads out_proj.weight without calling out_proj: pruned all the
        # same, since the zeros are in that very parameter.
        for name, m in model.named_modules():
            if not any(name == i or name.startswith(i + ".") for i in ignored):
                self._tensors += self._select(name, m)
        if not self._tensors:
            raise InputError(f"{self.kind} pruning found no eligible layer: a Conv/Linear layer "
                             f"must be one that {self.eligible} (skipped: "
                             f"{self.skipped or 'none'}); ignore fewer layers")
        self._total = sum(t.original().numel() for t in self._tensors)
        self._store = MaskStore()

    def _calibrated_layer(self, name: str, module: nn.Module) -> bool:
        """False (noted in :attr:`skipped`) for a convolution under a calibrated criterion:
        wanda and sparsegpt prune linear layers."""
        if self.needs_calibration and isinstance(module, nn.modules.conv._ConvNd):
            self.skipped[name] = f"{self.spec.importance} prunes linear layers only"
            return False
        return True

    def _install(self, t: MaskedTensor, keep: torch.Tensor) -> None:
        """Zero ``t`` where ``keep`` (bool) is False, in place; keep the mask."""
        old = self._keep(t)
        assert old is None or not keep[~old].any(), f"{t.key}: a weight came back"
        self._store.install_(t.key, t.module, t.param, keep)

    def _keep(self, t: MaskedTensor) -> torch.Tensor | None:
        """``t``'s installed keep mask (None: not masked yet)."""
        return self._store.keep(t.key, t.original().device)

    def _pruned(self, t: MaskedTensor) -> int:
        return self._store.pruned(t.key)

    def _leak(self, t: MaskedTensor, keep: torch.Tensor) -> float:
        """The largest magnitude among ``t``'s pruned weights: exactly 0.0 when sound."""
        w = t.effective()
        return float(w.masked_fill(keep, 0.0).abs().max()) if w.numel() else 0.0

    def _scores(self, t: MaskedTensor) -> torch.Tensor:
        """Higher = more important; pruned weights score -inf, so they are pruned first."""
        w = t.original().detach()
        if self.spec.importance == "random":
            gen = torch.Generator().manual_seed(self._step)  # reproducible per step
            scores = torch.rand(w.shape, generator=gen).to(w.device)
        else:
            scores = w.abs().float()  # l1 and l2 rank single weights identically
        keep = self._keep(t)
        return scores if keep is None else scores.masked_fill(~keep, float("-inf"))

    def step_(self, target_ratio: float, probe: torch.Tensor) -> StepRecord:
        """Mask up to the cumulative ``target_ratio`` in place and prove it on ``probe``.

        The proof: the kind's pattern holds, every weight pruned now or before is exactly zero
        in the parameter the forward reads (the record's ``max_abs_diff`` is the largest such
        weight's magnitude, held to a tolerance of exactly zero), and the model still runs to a
        finite output (one forward pass). The pruned model is the exported one, weight for
        weight: nothing is folded later. Without ``pruning.verify`` nothing is measured and the
        record says "not proven".
        """
        assert self._step < len(self._ratios), "more steps than scheduled"
        assert abs(self._ratios[self._step] - target_ratio) < 1e-12, (target_ratio, self._ratios)
        self._probe = probe
        what = f"{self.kind} step {self._step + 1}"
        before = sum(self._pruned(t) for t in self._tensors)
        proof = None
        with torch.no_grad():
            if self.needs_calibration:  # installed block by block as they are chosen
                self._calibrated_prune_(target_ratio)
            else:  # one tensor's scores and mask at a time where the kind allows
                for t, keep in zip(self._tensors, self._keeps(target_ratio), strict=True):
                    self._install(t, keep)
        if self.spec.verify:
            proof = self._prove(what, target_ratio, probe)
        self._step += 1
        after = sum(self._pruned(t) for t in self._tensors)
        touched = sum(1 for t in self._tensors if self._pruned(t))
        log.info("%s: %d weights newly pruned in %d tensors (%.2f%% of %d prunable)", what,
                 after - before, touched, 100 * after / self._total, self._total)
        return StepRecord.of(target_ratio, touched, after - before, "weights", proof,
                             self.sparsity()["layers"])

    def _check_zeros(self, what: str) -> None:
        """:class:`CheckFailed` unless every pruned weight is exactly zero in the parameter
        the forward reads."""
        for t in self._tensors:
            keep = self._keep(t)
            leak = 0.0 if keep is None else self._leak(t, keep)
            if leak != 0.0:
                raise CheckFailed(f"{what}: a pruned weight of {t.key!r} is {leak:.3g}, not "
                                  f"zero, in the weight the forward uses")

    def _prove(self, what: str, target_ratio: float, probe: torch.Tensor) -> Proof:
        """The step's proof (see :meth:`step_`), at the cost of one forward pass."""
        t0 = time.perf_counter()
        self._check_pattern(target_ratio)
        self._check_zeros(what)
        out = probe_output(self.model, probe, what)
        dtype = str(self._tensors[0].original().dtype).removeprefix("torch.")
        peak = float(out.abs().max()) if out.numel() else 0.0
        exact = Tolerance(atol=0.0, factor=0.0, peak=peak, dtype=dtype, value=0.0)
        return Proof(max_diff=0.0, tolerance=exact, passes=1,
                     seconds=time.perf_counter() - t0, groups=len(self._tensors))

    def accumulate_gradients(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                             device: torch.device) -> None:
        """Nothing to do: no criterion of these kinds uses gradients."""

    def groups(self) -> list[dict[str, Any]]:
        """None: these kinds rank single weights, not groups of coupled channels."""
        return []

    def get_state(self) -> dict[str, Any]:
        """JSON-safe state; with :meth:`get_tensors` (the masks) :meth:`restore_` rebuilds it."""
        return {"kind": self.kind, "steps_done": self._step}

    def get_tensors(self) -> dict[str, torch.Tensor]:
        """The installed masks by key, as bits (:func:`~compress.pruning.mask_store.pack_bits`)."""
        return {t.key: self._store.masks[t.key].bits for t in self._tensors
                if t.key in self._store.masks}

    def restore_(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Reinstall the saved masks (bits, or bool from runs before masks were packed) on the
        freshly built model and go on after its steps. Load the weights after, with
        :func:`load_state_`.
        """
        assert self._step == 0 and state["kind"] == self.kind, (self._step, state["kind"])
        unknown = set(tensors) - {t.key for t in self._tensors}
        assert not unknown, f"masks for tensors this pruner does not prune: {sorted(unknown)}"
        with torch.no_grad():
            for t in self._tensors:
                if (saved := tensors.get(t.key)) is not None:
                    keep = saved.bool() if saved.dtype == torch.bool \
                        else unpack_bits(saved, t.original().shape)
                    self._install(t, keep.to(t.original().device))
        self._step = state["steps_done"]

    def sparsity(self) -> dict[str, Any]:
        """Masked fraction per prunable tensor and overall; n:m's skipped layers read 0.0."""
        counts = {t.key: (self._pruned(t) if t.key in self._store.masks
                          else int((t.effective() == 0).sum()), t.original().numel())
                  for t in self._tensors}
        pruned = sum(c for c, _ in counts.values())
        layers = {k: c / n for k, (c, n) in counts.items()} | dict.fromkeys(self.skipped, 0.0)
        out = {"layers": layers, "overall": pruned / self._total, "pruned": pruned,
               "total": self._total}
        return out | ({"skipped": dict(self.skipped)} if self.skipped else {})

    def finalize_(self) -> None:
        """Prove the pruned weights are still exactly zero (the fine-tunes kept them there)
        and drop the masks and their gradient hooks: the weights are the pruned model."""
        if not self._store.masks:
            return
        what = f"{self.kind} finalize"
        count = len(self._store.masks)
        if self.spec.verify:
            self._check_zeros(what)
        self._store.remove_all_()
        log.info("%s: %d masks dropped, their zeros %s", self.kind, count,
                 "checked exact" if self.spec.verify else "not checked")


def load_state_(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``model`` strictly.

    The masks live outside the model (zeros in its weights), so its state is a plain one. A
    state saved before masks were applied in place holds ``w_orig`` and ``w_mask`` instead of
    ``w``: they are folded (``w_orig * w_mask``) on the way in.

    Example:
        >>> lin = nn.Linear(2, 1)
        >>> load_state_(lin, {"weight_orig": torch.ones(1, 2), "weight_mask": torch.tensor(
        ...     [[1.0, 0.0]]), "bias": torch.zeros(1)})
        >>> lin.weight.tolist()
        [[1.0, 0.0]]
    """
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        base = key.removesuffix("_orig")
        if key.endswith("_orig") and base not in state and base + "_mask" in state:
            mapped[base] = value.masked_fill(state[base + "_mask"] == 0, 0.0)
        elif not (key.endswith("_mask") and key.removesuffix("_mask") + "_orig" in state):
            mapped[key] = value
    unused = set(mapped) - set(own)
    if unused:
        raise RuntimeError(f"the saved state has keys the model lacks: {sorted(unused)[:5]}")
    model.load_state_dict(mapped, strict=True)


def check_mask_criterion(spec: PruningSpec) -> None:
    """The calibrated criteria rank within each output row of each layer, weights only."""
    if not IMPORTANCE.get(spec.importance).needs_calibration:
        return
    if spec.scope != "local":
        raise ValueError(f"importance {spec.importance} compares weights within each output "
                         f"row; use scope: local")
    if spec.prune_biases or spec.prune_norms:
        raise ValueError(f"importance {spec.importance} prunes linear weights; remove "
                         f"prune_biases/prune_norms (they go with magnitude criteria)")


def mask_kind(cls: type[MaskPruner], **hooks: Any) -> PruningKind:
    doc = (cls.__doc__ or "").split("\n\n")[0]
    return PruningKind(cls, criteria=MASK_CRITERIA, description=" ".join(doc.split()), **hooks)
