"""Planning for a parameter target (``pruning.target.params``): which width/depth mix removes
that share of a transformer's parameters, chosen by a short calibration score.

The candidates that can meet the budget:

* ``width``: heads and FFN neurons, one fraction found by the MACs target's search
  (:func:`~compress.pruning.planning.solve_ratio_for_macs`, counting parameters instead);
* ``ffn``: FFN neurons only, the fraction searched the same way;
* ``width+hidden``: the hidden size by half the target (at least one ``round_to``) and the FFN
  fraction searched; configs that derive the head size from hidden / heads lose heads by the
  hidden size's share, Llama-style ones keep their heads (their config class wants the hidden
  size a multiple of the head count);
* ``depth``: the fewest whole blocks that hold the share;
* ``depth+width``: half those blocks, heads and FFN searched for the rest.

Each is pruned once more on a copy, with the recipe's criterion and the calibration samples,
and scored on those samples before any recovery: a causal LM's perplexity, otherwise the KL
divergence of the outputs from the unpruned model's. The lowest score wins. A candidate that
cannot meet the budget, that the pruner refuses, whose result a stock transformers config
cannot express, or that prunes to an architecture already scored is skipped with its reason.
Every candidate is recorded (the first step's row, ``report.json``'s ``params_target``).
Only the model and one pruned copy are held at a time.

Example:
    >>> depth_blocks([10, 12, 10, 10], total=60, share=0.3)  # 18 parameters: two blocks
    2
    >>> depth_blocks([10, 10], total=60, share=0.5) is None  # would take every block
    True
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import InputError
from compress.measure.counts import count_params
from compress.measure.evaluate import IGNORE_INDEX, task_loss
from compress.progress import report_phase
from compress.pruning.calibrated import Calibration
from compress.pruning.hf_layout import blocks
from compress.pruning.planning import channel_ratios, gradient_free, solve_ratio_for_macs
from compress.pruning.structured_kind import build_structured
from compress.pruning.transformer import is_transformer
from compress.recipe.pruning import PruningSpec

__all__ = ["Candidate", "depth_blocks", "candidates", "calibration_score", "plan_params",
           "plan_pruning"]

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One width/depth mix: the fractions (or block count) it gives the pruner, whether the
    channel ratio of the rest is searched, and why it was skipped (None: it was not)."""

    name: str
    fixed: dict[str, Any] = field(default_factory=dict)
    search: bool = True
    skipped: str | None = None


def depth_blocks(sizes: Sequence[int], total: int, share: float) -> int | None:
    """The fewest blocks whose parameters reach ``share`` of ``total`` whichever blocks the
    ranking drops (the smallest are counted); None when all of them would be needed."""
    need, got = share * total, 0
    for n, size in enumerate(sorted(sizes), start=1):
        got += size
        if got >= need:
            return n if n < len(sizes) else None
    return None


def candidates(model: nn.Module, spec: PruningSpec, share: float) -> list[Candidate]:
    """The mixes :func:`plan_params` tries for ``share`` of ``model``'s parameters."""
    found = blocks(model.hf, model.layout)
    n = len(found)
    sizes = [sum(p.numel() for p in b.module.parameters()) for b in found]
    assert spec.target is not None
    depth = depth_blocks(sizes, count_params(model), share - spec.target.tolerance)
    out = [Candidate("width"), Candidate("ffn", {"heads": 0.0})]
    if model.hidden_width() is None:
        out.append(Candidate("width+hidden", skipped=f"the hidden size of "
                             f"{model.hf.config.model_type} {model.task} models is not pruned"))
    else:
        # Half the target, but at least one round_to unit of channels (else it rounds away).
        unit = 8 if spec.round_to == "auto" else spec.round_to
        h = round(max(share / 2, unit / model.hidden_width()), 4)
        out.append(Candidate("width+hidden", {"heads": 0.0 if model.layout.head_dim_in_config
                                              else h, "hidden": h}))
    if depth is None:
        out.append(Candidate("depth", search=False, skipped=f"it would take every one of the "
                             f"{n} blocks"))
    else:
        out.append(Candidate("depth", {"heads": 0.0, "ffn": 0.0, "blocks": depth},
                             search=False))
    if depth == 1 or n < 2:
        out.append(Candidate("depth+width", skipped="depth alone needs a single block"
                             if n >= 2 else "the model has a single block"))
    else:
        out.append(Candidate("depth+width", {"blocks": max(1, min(depth or n, n - 1) // 2)}))
    return out


@torch.no_grad()
def calibration_score(model: nn.Module, batches: Sequence[torch.Tensor],
                      reference: Sequence[torch.Tensor] | None = None) -> float:
    """Perplexity of a causal LM on ``batches`` (padding left out), or, given ``reference``
    (the unpruned model's log-probabilities), the mean KL divergence from it per sample."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i, x in enumerate(batches):
        x = x.to(device)
        out = model(x).float()
        if reference is None:
            pad = getattr(model, "pad_token_id", None)
            target = x if pad is None else x.masked_fill(x == pad, IGNORE_INDEX)
            total += float(task_loss(out, target, reduction="sum"))
            count += int((target[:, 1:] != IGNORE_INDEX).sum())
        else:
            total += float(F.kl_div(out.log_softmax(-1), reference[i].to(device),
                                    log_target=True, reduction="sum"))
            count += len(x)
    return math.exp(min(total / max(count, 1), 700.0)) if reference is None \
        else total / max(count, 1)


def _architecture(model: nn.Module) -> dict[str, Any]:
    found = blocks(model.hf, model.layout)

    def one(values: list[int]) -> int | list[int]:
        return values[0] if len(set(values)) == 1 else values

    return {"blocks": len(found), "heads": one([b.heads for b in found]),
            "kv_heads": one([b.kv_heads for b in found]), "ffn": one([b.ffn for b in found]),
            "hidden": model.hidden_width()}


def _refuse(model: nn.Module, spec: PruningSpec) -> None:
    if not is_transformer(model):
        raise InputError("pruning.target.params picks among width/depth mixes of transformers "
                         "models; for this model use pruning.target.macs")
    if spec.kind != "structured":
        raise InputError("pruning.target.params needs pruning.kind: structured")
    if model.task not in ("causal-lm", "sequence-classification", "image-classification"):
        raise InputError(f"pruning.target.params scores its candidates by a causal LM's "
                         f"perplexity or a classifier's outputs; model.task {model.task} has "
                         f"neither")


def plan_params(model: nn.Module, example: torch.Tensor, spec: PruningSpec,
                targets: Sequence[float], calibration: Sequence[torch.Tensor]
                ) -> tuple[PruningSpec, list[float], dict[str, Any]]:
    """The pruning section with the best candidate's fractions, the per-step channel ratios
    (the chosen fractions scale with the schedule's targets) and the record of every candidate.
    """
    assert spec.target is not None and spec.target.params is not None
    _refuse(model, spec)
    if not calibration:
        raise InputError("pruning.target.params scores its candidates on calibration samples; "
                         "give the recipe a calibration section")
    share, tol = spec.target.params, spec.target.tolerance
    total = count_params(model)
    lm = model.task == "causal-lm"
    reference = None if lm else [model.eval()(x.to(next(model.parameters()).device))
                                 .float().log_softmax(-1) for x in calibration]
    scoring = gradient_free(spec.model_copy(update={"verify": False}),
                            "pruning.target.params (its candidates are pruned on copies)")
    rows, ratios = [], {}
    found = candidates(model, spec, share)
    with report_phase("architecture search", len(found)) as phase:
        for c in found:
            row: dict[str, Any] = {"name": c.name, "fixed": dict(c.fixed), "ratio": None,
                                   "architecture": None, "params": None,
                                   "params_reduction": None, "score": None}
            try:
                if c.skipped is None:
                    ratio = share
                    if c.search:  # the widths, not the choice, decide the count: l2 is enough
                        ratio, _ = solve_ratio_for_macs(
                            model, example, spec.model_copy(update={**c.fixed, "importance":
                                                                    "l2", "verify": False}),
                            share, tolerance=tol, quantity="params",
                            reduction_of=lambda m: 1 - count_params(m) / total)
                    trial = copy.deepcopy(model).eval()
                    pruner = build_structured(trial, example, scoring.model_copy(update=c.fixed),
                                              cumulative_ratios=[ratio])
                    pruner.use_calibration(Calibration(list(calibration)))
                    pruner.step_(ratio, example)
                    params = count_params(trial)
                    row.update(ratio=ratio, architecture=_architecture(trial), params=params,
                               params_reduction=1 - params / total)
                    twin = next((r["name"] for r in rows if r["skipped"] is None
                                 and r["architecture"] == row["architecture"]), None)
                    if twin is not None:  # e.g. a hidden share that rounds to no channel
                        c.skipped = f"it prunes to the same architecture as {twin}"
                    elif pruner.config_problems:
                        c.skipped = ("a stock transformers config cannot express it: "
                                     + "; ".join(pruner.config_problems))
                    else:
                        row["score"] = calibration_score(trial, calibration, reference)
                        ratios[c.name] = ratio
                    del trial, pruner
            except InputError as err:  # its first clause: the advice is for a user's recipe
                c.skipped = str(err).split("; ")[0]
            row["skipped"] = c.skipped
            rows.append(row)
            phase.advance(message=f"{c.name}: " + (f"skipped ({c.skipped})" if c.skipped else
                                                  f"score {row['score']:.4g}"))
        scored = [r for r in rows if r["score"] is not None]
        if not scored:
            raise InputError(f"pruning.target.params={share} cannot be reached by any "
                             f"width/depth candidate (" + "; ".join(
                                 f"{r['name']}: {r['skipped']}" for r in rows) + ")")
        best = min(scored, key=lambda r: r["score"])
        phase.result = (f"{best['name']} removes {best['params_reduction']:.2%} of the "
                        f"parameters, score {best['score']:.4g}; {len(scored)} of {len(rows)} "
                        f"candidates scored")
    chosen = next(c for c in found if c.name == best["name"])
    record = {"target": share, "tolerance": tol, "base_params": total, "chosen": best["name"],
              "score": "calibration perplexity" if lm else
              "KL divergence from the unpruned model's outputs on the calibration samples",
              "calibration_samples": sum(len(x) for x in calibration),
              "importance": scoring.importance, "candidates": rows}
    final = ratios[chosen.name]
    return (spec.model_copy(update=chosen.fixed), [final * t / share for t in targets], record)


def plan_pruning(model: nn.Module, example: torch.Tensor, spec: PruningSpec,
                 targets: Sequence[float], latency: Any = None,
                 calibration: Sequence[torch.Tensor] | None = None
                 ) -> tuple[PruningSpec, list[float], dict[str, Any] | None]:
    """What the pruner is built with: ``spec`` (a params target's choice), the per-step ratios
    (:func:`~compress.pruning.planning.channel_ratios`) and the params target's record."""
    if spec.target is not None and spec.target.params is not None:
        return plan_params(model, example, spec, targets, calibration or [])
    return spec, channel_ratios(model, example, spec, targets, latency), None
