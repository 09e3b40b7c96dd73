"""``compress inspect``: a dry run of a recipe, without training.

It builds the model and the dependency graph, lists the pruning groups and what each ``ignored``
pattern matched (and a params target's width/depth candidates, scored as apply scores them),
and predicts per-layer widths, parameters and MACs after each scheduled step
by pruning a throw-away copy. With ``sensitivity`` it also prunes each group alone at a few
ratios and measures the accuracy drop on a small evaluation subset.

Example:
    >>> recipe = load_recipe("recipes/resnet20-cifar10-geometric.yaml")  # doctest: +SKIP
    >>> info = inspect_recipe(recipe)  # doctest: +SKIP
    >>> [round(s["macs_reduction"], 2) for s in info["steps"]]  # doctest: +SKIP
    [0.4, 0.58, 0.75]
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.data.calibration import calibration_batches
from compress.errors import InputError
from compress.measure.counts import count_macs_params
from compress.measure.evaluate import evaluate
from compress.progress import report_phase
from compress.pruning import build_pruner
from compress.pruning.calibrated import Calibration
from compress.pruning.params_plan import plan_pruning
from compress.pruning.planning import gradient_free
from compress.pruning.selection import resolve_ignored
from compress.pruning.transformer import TransformerPruner, is_transformer
from compress.recipe.pruning import PruningSpec
from compress.recipe.spec import Recipe
from compress.run.folder import read_status
from compress.run.owner import describe_state
from compress.run.pipeline import latency_planner, vocab_size_of
from compress.run.preflight import check_recipe
from compress.run.prepare import prepare
from compress.schedules import plan_targets

__all__ = ["inspect_recipe", "list_groups", "sensitivity_scan", "plot_sensitivity",
           "run_folder_state"]

log = logging.getLogger(__name__)


def inspect_recipe(recipe: Recipe, *, sensitivity: bool = False,
                   ratios: Sequence[float] = (0.25, 0.5, 0.75),
                   eval_samples: int = 512) -> dict[str, Any]:
    """Groups, pattern matches and predicted per-step widths/params/MACs (no training)."""
    check_recipe(recipe)
    target = recipe.pruning.target
    by_params = target is not None and target.params is not None
    # A params target scores its candidates on the calibration samples (train split default).
    prepared = prepare(recipe, train=by_params)
    bundle, model, example = prepared.bundle, prepared.model.eval(), prepared.probe[:1]
    macs, params = count_macs_params(model, example)
    pruning = gradient_free(recipe.pruning.model_copy(update={"verify": False}),
                            "compress inspect")
    info: dict[str, Any] = {
        "model": {"macs": macs, "params": params, "sample_shape": list(bundle.sample_shape)},
        "ignored": resolve_ignored(model, recipe.pruning.ignored),
        "groups": list_groups(model, example, pruning),
    }
    targets = plan_targets(recipe.schedule, pruning.final_target())
    trial = copy.deepcopy(model)
    # A latency target is planned from the layer table alone: a dry run times no model.
    planner = latency_planner(recipe, tuple(prepared.probe.shape[1:]),
                              vocab_size=vocab_size_of(model), closed_loop=False)
    calibration = (calibration_batches(bundle, recipe.calibration, recipe.seed) if by_params
                   else None)
    pruning, ratios_per_step, searched = plan_pruning(model, example, pruning, targets, planner,
                                                      calibration)
    if searched is not None:
        info["params_target"] = searched
    pruner = build_pruner(trial, example, pruning, ratios_per_step)
    if calibration and hasattr(pruner, "use_calibration"):
        pruner.use_calibration(Calibration(calibration))  # blocks ranked as apply ranks them
    steps = []
    for i, (goal, ratio) in enumerate(zip(targets, ratios_per_step), start=1):
        record = pruner.step_(ratio, example)
        m, p = count_macs_params(trial, example)
        steps.append({"step": i, "target": goal, "ratio": ratio, "macs": m, "params": p,
                      "macs_reduction": 1 - m / macs, "params_reduction": 1 - p / params,
                      "layers": record.layers})
        if planner is not None:
            ms = planner.predict_ms(trial)
            steps[-1].update(predicted_latency_ms=ms,
                             predicted_speedup=planner.record["baseline_predicted_ms"] / ms)
    info["steps"] = steps
    if planner is not None:
        rec = planner.record
        info["latency_table"] = {k: rec[k] for k in ("table", "hardware", "planned_by",
                                                     "baseline_predicted_ms",
                                                     "fitted_to_this_machine")}
    if sensitivity:
        subset = list(itertools.islice(_samples(bundle.eval), eval_samples))
        info["sensitivity"] = sensitivity_scan(model, example, recipe, subset, ratios)
    info["run_folder"] = run_folder_state(Path("runs") / (recipe.name or "run"))
    return info


def run_folder_state(path: Path) -> dict[str, str] | None:
    """The state of the run folder ``compress apply`` would write by default, as readers show
    it (``interrupted (owner gone)`` for a killed run), or None when there is none. Reads only.
    """
    try:
        status = read_status(path)
    except InputError as err:
        return {"path": str(path), "state": f"unreadable ({err})"}
    if status is None:
        return None
    return {"path": str(path), "state": describe_state(path, status)}


def list_groups(model: nn.Module, example: torch.Tensor,
                pruning: PruningSpec) -> list[dict[str, Any]]:
    """What ``pruning``'s kind would prune in ``model``, as groups; nothing is pruned.

    Example:
        >>> from compress.models.cifar_resnet import cifar_resnet
        >>> groups = list_groups(cifar_resnet("resnet20"), torch.randn(1, 3, 32, 32),
        ...                      PruningSpec(ratio=0.5))
        >>> groups[0]["root"], groups[0]["channels"]
        ('conv1', 16)
    """
    probe = pruning.model_copy(update={"ratio": 0.5, "target": None, "verify": False})
    return build_pruner(model, example, probe, [0.5]).groups()


def _samples(loader: Any) -> Any:
    for x, y in loader:
        yield from zip(x, y)


def sensitivity_scan(model: nn.Module, example: torch.Tensor, recipe: Recipe,
                     samples: list[tuple[torch.Tensor, torch.Tensor]],
                     ratios: Sequence[float]) -> list[dict[str, Any]]:
    """Prune each group alone at each ratio; accuracy drop in points on ``samples``.

    A group is a CNN dependency group, or a transformer block's heads or FFN neurons (and the
    hidden size when the recipe prunes it). Gradient criteria rank with l2 here (the copies
    have no gradients; with local scope the widths are the same).
    """
    x = torch.stack([s[0] for s in samples])
    y = torch.stack([torch.as_tensor(s[1]) for s in samples])
    batches = [(x[i:i + 256], y[i:i + 256]) for i in range(0, len(y), 256)]
    device = torch.device("cpu")
    base = evaluate(model, batches, device)["accuracy"]
    pruning = gradient_free(recipe.pruning.model_copy(update={"verify": False, "target": None}),
                            "--sensitivity")
    transformer = is_transformer(model)
    roots = [g["root"] for g in list_groups(model, example, pruning)]
    rows = []
    with report_phase("sensitivity", len(roots) * len(ratios)) as phase:
        for root in roots:
            row: dict[str, Any] = {"group": root, "drops": {}}
            for r in ratios:
                trial = copy.deepcopy(model)
                if transformer:
                    unit = (-1, "hidden") if root.startswith("hidden") else \
                        (int(root.split()[1]), root.split()[2])
                    spec = pruning.model_copy(update={"ratio": r, "heads": r, "ffn": r,
                                                      "hidden": r if unit[0] < 0 else None})
                    TransformerPruner(trial, example, spec, cumulative_ratios=[r],
                                      only={unit}).step_(r, example)
                else:
                    others = [g for g in roots if g != root]
                    spec = pruning.model_copy(update={"ratio": r,
                                                      "ignored": [*pruning.ignored, *others]})
                    build_pruner(trial, example, spec, [r]).step_(r, example)
                row["drops"][str(r)] = base - evaluate(trial, batches, device)["accuracy"]
                phase.advance(message=f"{root} at {r}: {row['drops'][str(r)]:+.2f} points")
            rows.append(row)
            log.debug("sensitivity %s: %s", root, row["drops"])
        phase.result = f"{len(roots)} groups, {len(ratios)} ratios each"
    return rows


def plot_sensitivity(rows: list[dict[str, Any]], path: Path) -> Path:
    """A bar chart of the accuracy drop per group and ratio, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = list(rows[0]["drops"]) if rows else []
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows)), 4))
    width = 0.8 / max(len(ratios), 1)
    for k, r in enumerate(ratios):
        ax.bar([i + k * width for i in range(len(rows))], [row["drops"][r] for row in rows],
               width=width, label=f"ratio {r}")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))],
                  [row["group"] for row in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("accuracy drop (points)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
