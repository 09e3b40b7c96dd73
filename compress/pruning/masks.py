"""What the mask kinds (:mod:`~compress.pruning.unstructured`, :mod:`~compress.pruning.nm`)
share: masked tensors, the per-step proof, finalising, loading state into a masked model.

Both kinds zero single weights and keep the shapes: the file compresses better, dense MACs do
not change. Masks live in ``torch.nn.utils.prune`` re-parametrisations (``weight_orig`` *
``weight_mask``), so they stay applied while fine-tuning: a masked weight gets no gradient
through the mask, whatever the optimizer does to ``weight_orig``. :meth:`finalize_` folds the
masks into plain ``weight`` parameters before export. Every step proves that the masks have
the kind's pattern, that every pruned weight is exactly zero and that the model still runs.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    >>> with torch.no_grad():
    ...     _ = prune.random_unstructured(net[0], "weight", amount=0.5)
    >>> MaskedTensor("0", net[0], "weight").pruned()
    8
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from compress.errors import CheckFailed, InputError
from compress.pruning.base import PruningKind, StepRecord
from compress.pruning.calibrated import CalibratedCriteria, is_conv1d
from compress.pruning.criteria import IMPORTANCE
from compress.pruning.folding import folded_copy, probe_output, prove_folded
from compress.pruning.selection import protected_layers
from compress.recipe.pruning import PruningSpec

log = logging.getLogger(__name__)

# Single weights are ranked by magnitude (l1 and l2 rank them identically), at random, or from
# calibration inputs within each output row (wanda, sparsegpt: compress.pruning.calibrated).
MASK_CRITERIA = ("l1", "l2", "random", "wanda", "sparsegpt")

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
DENSE_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)

# folded_copy: mid-run exports take it from here, with the kinds' other helpers.
__all__ = ["MASK_CRITERIA", "MaskedTensor", "MaskPruner", "load_state_", "folded_copy",
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

    def mask(self) -> torch.Tensor | None:
        return getattr(self.module, self.param + "_mask", None)

    def original(self) -> torch.Tensor:
        """The trained values (``weight_orig`` while masked)."""
        return getattr(self.module, self.param + ("_orig" if self.mask() is not None else ""))

    def effective(self) -> torch.Tensor:
        """What the forward uses (the cached attribute may predate an optimizer step)."""
        mask = self.mask()
        return (self.original() * mask if mask is not None else self.original()).detach()

    def pruned(self) -> int:
        mask = self.mask()
        return int((mask == 0).sum()) if mask is not None else 0


def _install_(t: MaskedTensor, keep: torch.Tensor) -> None:
    """Apply ``keep`` (bool) as the tensor's mask; a later step replaces the mask in place."""
    mask = t.mask()
    if mask is None:
        prune.custom_from_mask(t.module, t.param, keep)
    else:  # in place: no PruningContainer, the hook reads the buffer
        mask.copy_(keep)
        setattr(t.module, t.param, t.original() * mask)  # what the pre-forward hook computes


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
        # MultiheadAttention reads out_proj.weight without calling out_proj, so the masked
        # attribute would never be recomputed: leave it dense.
        mha = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
        self.skipped: dict[str, str] = {}
        self._tensors: list[MaskedTensor] = []
        for name, m in model.named_modules():
            if not any(name == i or name.startswith(i + ".") for i in ignored) \
                    and id(m) not in mha:
                self._tensors += self._select(name, m)
        if not self._tensors:
            raise InputError(f"{self.kind} pruning found no eligible layer: a Conv/Linear layer "
                             f"must be one that {self.eligible} (skipped: "
                             f"{self.skipped or 'none'}); ignore fewer layers")
        self._total = sum(t.original().numel() for t in self._tensors)

    def _calibrated_layer(self, name: str, module: nn.Module) -> bool:
        """False (noted in :attr:`skipped`) for a convolution under a calibrated criterion:
        wanda and sparsegpt prune linear layers."""
        if self.needs_calibration and isinstance(module, nn.modules.conv._ConvNd):
            self.skipped[name] = f"{self.spec.importance} prunes linear layers only"
            return False
        return True

    def _install(self, t: MaskedTensor, keep: torch.Tensor) -> None:
        _install_(t, keep)

    def _scores(self, t: MaskedTensor) -> torch.Tensor:
        """Higher = more important; pruned weights score -inf, so they are pruned first."""
        w = t.original().detach()
        if self.spec.importance == "random":
            gen = torch.Generator().manual_seed(self._step)  # reproducible per step
            scores = torch.rand(w.shape, generator=gen).to(w.device)
        else:
            scores = w.abs().float()  # l1 and l2 rank single weights identically
        mask = t.mask()
        return scores if mask is None else scores.masked_fill(mask == 0, float("-inf"))

    def step_(self, target_ratio: float, probe: torch.Tensor) -> StepRecord:
        """Mask up to the cumulative ``target_ratio`` in place and prove it on ``probe``.

        The proof: the kind's pattern holds, every weight pruned now or before is exactly zero
        in the weight the forward uses, the model still runs to a finite output, and a copy with
        the masks folded into its weights gives that output (:func:`prove_folded`; one extra
        forward pass). Its difference is the record's ``max_abs_diff``; without
        ``pruning.verify`` nothing is measured and the record says "not proven".
        """
        assert self._step < len(self._ratios), "more steps than scheduled"
        assert abs(self._ratios[self._step] - target_ratio) < 1e-12, (target_ratio, self._ratios)
        self._probe = probe
        what = f"{self.kind} step {self._step + 1}"
        before = sum(t.pruned() for t in self._tensors)
        proof = None
        with torch.no_grad():
            keeps = self._calibrated_keeps(target_ratio) if self.needs_calibration \
                else self._keeps(target_ratio)
            for t, keep in zip(self._tensors, keeps, strict=True):
                old = t.mask()
                assert old is None or not keep[old == 0].any(), f"{t.key}: a weight came back"
                _install_(t, keep)
        if self.spec.verify:
            self._check_pattern(target_ratio)
            for t, keep in zip(self._tensors, keeps, strict=True):
                leak = t.effective()[~keep].abs().max().item() if (~keep).any() else 0.0
                if leak != 0.0:
                    raise CheckFailed(f"{what}: a pruned weight of {t.key!r} is {leak:.3g}, not "
                                      f"zero, in the weight the forward uses")
            masked = probe_output(self.model, probe, what)
            proof = prove_folded(masked, folded_copy(self.model, probe.device), probe, what,
                                 self.spec.verify_atol)
        self._step += 1
        after = sum(t.pruned() for t in self._tensors)
        touched = sum(1 for t in self._tensors if t.pruned())
        log.info("%s: %d weights newly pruned in %d tensors (%.2f%% of %d prunable)", what,
                 after - before, touched, 100 * after / self._total, self._total)
        return StepRecord.of(target_ratio, touched, after - before, "weights", proof,
                             self.sparsity()["layers"])

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
        return {t.key: mask != 0 for t in self._tensors if (mask := t.mask()) is not None}

    def restore_(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Reinstall the saved masks on the freshly built model and go on after its steps.

        Load the weights after, with :func:`load_state_`.
        """
        assert self._step == 0 and state["kind"] == self.kind, (self._step, state["kind"])
        unknown = set(tensors) - {t.key for t in self._tensors}
        assert not unknown, f"masks for tensors this pruner does not prune: {sorted(unknown)}"
        with torch.no_grad():
            for t in self._tensors:
                if t.key in tensors:
                    _install_(t, tensors[t.key].to(t.original().device, torch.bool))
        self._step = state["steps_done"]

    def sparsity(self) -> dict[str, Any]:
        """Masked fraction per prunable tensor and overall; n:m's skipped layers read 0.0."""
        counts = {t.key: (t.pruned() if t.mask() is not None else int((t.effective() == 0).sum()),
                          t.original().numel()) for t in self._tensors}
        pruned = sum(c for c, _ in counts.values())
        layers = {k: c / n for k, (c, n) in counts.items()} | dict.fromkeys(self.skipped, 0.0)
        out = {"layers": layers, "overall": pruned / self._total, "pruned": pruned,
               "total": self._total}
        return out | ({"skipped": dict(self.skipped)} if self.skipped else {})

    def finalize_(self) -> None:
        """Fold the masks into plain parameters; prove the probe output did not change."""
        masked = [t for t in self._tensors if t.mask() is not None]
        if not masked:
            return
        probe = self._probe if self._probe is not None else self.example_inputs
        what = f"{self.kind} finalize"
        before = probe_output(self.model, probe, what) if self.spec.verify else None
        for t in masked:
            keep = t.mask() != 0
            prune.remove(t.module, t.param)
            # orig * 0 is -0.0 where orig < 0: not a zero bit pattern (compresses worse), and
            # it would depend on values nothing reads (a resumed run has 0 there, not orig).
            with torch.no_grad():
                t.original().masked_fill_(~keep, 0.0)
        if before is None:
            log.info("%s: folded %d masks into the weights (not verified)", self.kind,
                     len(masked))
            return
        diff = prove_folded(before, self.model, probe, what, self.spec.verify_atol).max_diff
        log.info("%s: folded %d masks into the weights (max |diff| %.2e)", self.kind,
                 len(masked), diff)


def load_state_(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``model`` (masks installed or not), strictly.

    ``state`` may hold the masks and trained values (``w_orig``, ``w_mask``) or the masks
    folded in (``w``, as ``steps/NN/model.safetensors`` does): then ``w_orig`` is loaded from
    ``w`` and the installed mask stays. Pruned entries of ``w_orig`` then read 0 instead of
    their old values, which nothing reads: the forward, the gradients and later steps' scores
    all go through the mask.
    """
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in own.items():
        base = key.rpartition("_")[0]
        if key in state:
            mapped[key] = state[key]
        elif key.endswith("_orig") and base in state and base + "_mask" in own:
            mapped[key] = state[base]
        elif key.endswith("_mask") and base + "_orig" in own and base in state:
            mapped[key] = value
    unused = set(state) - set(mapped) - {k.rpartition("_")[0] for k in mapped
                                         if k.endswith("_orig")}
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
