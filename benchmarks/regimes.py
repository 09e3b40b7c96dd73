"""Pruning regimes on the pretrained ResNet-20, after Janusz et al. (arXiv 2508.13836).

    python benchmarks/regimes.py            # the CPU table (2 idle cores: 10 to 60 minutes)
    python benchmarks/regimes.py --full     # GPU budgets: 10 epochs per run, full test set
    python benchmarks/regimes.py --tiny     # smoke test: seconds, numbers mean nothing
    python benchmarks/regimes.py --per-step # the paper's protocol: every step fine-tuned alike

Five regimes, each at every target: unstructured global L1 at 50/70/90/95 % weight sparsity,
structured (L2 channel groups, the residual stream kept) at 30/50/70 % MACs reduction:

* one-shot: one step, then the whole fine-tuning budget;
* iterative-geometric / iterative-constant: 5 steps (geometric: each removes the same fraction
  of what is left; constant: the same fraction of the original);
* patience: iterative-geometric whose per-step fine-tune stops when validation accuracy has not
  improved for 2 evaluations (and restores the best weights);
* hybrid: a first step to 70 % of the target, then 2 geometric steps, patience [4, 2].

Every regime gets the SAME fine-tuning budget in images: ``--budget-steps`` optimizer steps
of ``--batch`` images in all, split evenly over its pruning steps (patience may use less; the
images it actually saw are reported). ``--per-step`` gives EVERY pruning step that budget
instead, as the paper does, so the iterative regimes cost more (the cost table shows how much).
The pretrained checkpoint is first adapted to the JPEG
data with one short epoch (``--adapt-images`` training images); every run starts from that.

Writes benchmarks/results/regimes.{json,md} (regimes-<steps>, regimes-per-step with those
options); each finished run is kept under runs/benchmarks/regimes/cells/ so an interrupted
benchmark continues where it stopped. A kept cell is reused only by the same code version
(compress and these scripts) and recipe; the result file says which cells were reused.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from pathlib import Path
from typing import Any

from _common import (
    CIFAR_JPG,
    NORMALIZE,
    RESNET_CKPT,
    add_common_args,
    code_key,
    finish,
    fmt_table,
    make_parser,
    require_shared,
    start,
    stopwatch,
)

log = logging.getLogger("bench")

REGIMES = ("one-shot", "iterative-geometric", "iterative-constant", "patience", "hybrid")
UNSTRUCTURED = (0.5, 0.7, 0.9, 0.95)  # weight sparsity
STRUCTURED = (0.3, 0.5, 0.7)  # MACs reduction
ITERATIVE_STEPS = 5
HYBRID_FIRST = 0.7  # the first step reaches this fraction of the target
HYBRID_LATER = 2
TRAIN_IMAGES = 50_000  # CIFAR-10's training split

# budget_steps: optimizer steps per run; adapt_images: the short adaptation epoch.
PROFILES = {
    "cpu": dict(budget_steps=60, batch=128, eval_subset=2000, val_subset=256,
                adapt_images=10_000, device="cpu"),
    "full": dict(budget_steps=3900, batch=128, eval_subset=None, val_subset=5000,
                 adapt_images=None, device="auto"),
    "tiny": dict(budget_steps=15, batch=16, eval_subset=64, val_subset=32,
                 adapt_images=64, device="cpu"),
}


def data_section(p: dict[str, Any], *, val: bool) -> dict[str, Any]:
    data = {"source": "imagefolder", "path": str(CIFAR_JPG), "batch_size": p["batch"],
            "eval_batch_size": 500, "augment": ["random_crop", "horizontal_flip"],
            "normalize": NORMALIZE}
    if p["eval_subset"]:
        data["eval_subset"] = p["eval_subset"]
    if val:
        data["val_subset"] = p["val_subset"]
    return data


def adapt_baseline(p: dict[str, Any], work: Path) -> tuple[Path, dict[str, Any]]:
    """Fine-tune the shared ResNet-20 for one short epoch on the JPEG images; cached."""
    from safetensors.torch import save_file

    from compress.data import build_data
    from compress.export.safetensors import plain_state_dict
    from compress.finetune.finetune import finetune_
    from compress.measure.evaluate import evaluate
    from compress.models import build_model
    from compress.recipe.sources import DataSpec, ModelSpec
    from compress.recipe.stages import FinetuneSpec
    from compress.run.context import resolve_device, seed_everything

    config = {"checkpoint": str(RESNET_CKPT["resnet20"]), "images": p["adapt_images"],
              "batch": p["batch"], "lr": 0.01, "eval_subset": p["eval_subset"],
              "code": code_key()}
    ckpt, meta = work / "resnet20-jpg-adapted.safetensors", work / "adapted.json"
    if ckpt.is_file() and meta.is_file():
        info = json.loads(meta.read_text())
        if info["config"] == config:
            log.info("adapted baseline: cached %s", ckpt)
            return ckpt, {**info, "cached": True}
    seed_everything(0)
    device = resolve_device(p["device"])
    spec = DataSpec.model_validate({**data_section(p, val=False),
                                    "train_subset": p["adapt_images"]})
    bundle = build_data(spec, seed=0)
    model = build_model(ModelSpec(source="cifar_resnet", name="resnet20",
                                  checkpoint=str(RESNET_CKPT["resnet20"]))).to(device)
    before = evaluate(model, bundle.eval, device)
    t = time.perf_counter()
    stats = finetune_(model, bundle.train, FinetuneSpec(epochs=1, lr=0.01), device,
                      description="adapt to JPEG")
    seconds = time.perf_counter() - t
    after = evaluate(model, bundle.eval, device)
    work.mkdir(parents=True, exist_ok=True)
    save_file(plain_state_dict(model), str(ckpt))
    info = {"config": config, "top1_before": before["accuracy"], "top1_after": after["accuracy"],
            "eval_samples": after["samples"], "images": stats.samples, "seconds": seconds}
    meta.write_text(json.dumps(info, indent=2))
    info = {**info, "cached": False}
    log.info("adapted baseline: top-1 %.2f -> %.2f %% (%d images, %.0f s)", before["accuracy"],
             after["accuracy"], stats.samples, seconds)
    return ckpt, info


def regime_sections(regime: str, target: float, p: dict[str, Any]) -> dict[str, Any]:
    """``schedule`` and ``finetune`` sections: the regime, with the equal image budget."""
    n = {"one-shot": 1, "hybrid": 1 + HYBRID_LATER}.get(regime, ITERATIVE_STEPS)
    per_step = p["budget_steps"] if p.get("per_step") else max(1, p["budget_steps"] // n)
    # Enough epochs that max_steps, not the end of an epoch, ends every step's fine-tune.
    epochs = -(-per_step * p["batch"] // TRAIN_IMAGES)
    finetune: dict[str, Any] = {"epochs": epochs, "max_steps": per_step, "lr": 0.01,
                                "optimizer": "sgd"}
    if regime == "one-shot":
        schedule: dict[str, Any] = {"kind": "one-shot"}
    elif regime == "hybrid":
        schedule = {"kind": "hybrid", "first_step": round(HYBRID_FIRST * target, 4),
                    "steps": HYBRID_LATER}
    else:
        rule = "constant" if regime == "iterative-constant" else "geometric"
        schedule = {"kind": "iterative", "steps": ITERATIVE_STEPS, "step_rule": rule}
    if regime in ("patience", "hybrid"):
        finetune.update({"patience": 2 if regime == "patience" else [4, 2],
                         "monitor": "val_accuracy", "min_delta": 0.1, "max_epochs": epochs,
                         "eval_every": max(1, per_step // 4)})
    return {"schedule": schedule, "finetune": finetune, "steps": n, "per_step": per_step}


def recipe_for(kind: str, target: float, regime: str, ckpt: Path,
               p: dict[str, Any]) -> dict[str, Any]:
    sections = regime_sections(regime, target, p)
    if kind == "unstructured":
        pruning: dict[str, Any] = {"kind": "unstructured", "importance": "l1",
                                   "scope": "global", "ratio": target}
    else:
        # round_to 1: exact widths per step (an iterative step can be smaller than 8 channels).
        pruning = {"kind": "structured", "importance": "l2", "target": {"macs": target},
                   "round_to": 1, "ignored": ["conv1", r"re:layer\d\.\d+\.conv2"]}
    return {"version": 1, "name": f"{kind}-{target}-{regime}",
            "model": {"source": "cifar_resnet", "name": "resnet20", "checkpoint": str(ckpt)},
            "data": data_section(p, val=regime in ("patience", "hybrid")),
            "pruning": pruning, "schedule": sections["schedule"],
            "finetune": sections["finetune"],
            "export": {"onnx": False, "safetensors": False},
            "report": {"latency": False}, "device": p["device"]}


def run_cell(kind: str, target: float, regime: str, ckpt: Path, p: dict[str, Any],
             work: Path, fresh: bool) -> dict[str, Any]:
    """One compress run (cached in ``cells``): top-1, images seen, epochs, wall time.

    A cached cell is reused only when its recipe AND the code version (compress and these
    scripts, :func:`code_key`) are this run's; ``cached`` says which cells were reused."""
    import compress

    cells = work / "cells"
    path = cells / f"{kind}-{target}-{regime}.json"
    recipe = recipe_for(kind, target, regime, ckpt, p)
    if path.is_file() and not fresh:
        cell = json.loads(path.read_text())
        if cell.get("recipe") == recipe and cell.get("code") == code_key():
            return {**cell, "cached": True}
    times: dict[str, float] = {}
    with stopwatch(times, "wall_s"):
        result = compress.apply(recipe, out_dir=work / "runs" / recipe["name"],
                                overwrite=True)
    rep = result.report
    steps = rep["steps"]
    images = sum(s["finetune_steps"] for s in steps) * p["batch"]
    cell = {"kind": kind, "target": target, "regime": regime, "recipe": recipe,
            "code": code_key(), "measured": _dt.datetime.now(_dt.timezone.utc).isoformat(
                timespec="seconds"),
            "top1": rep["compressed"]["accuracy"], "baseline_top1": rep["baseline"]["accuracy"],
            "eval_samples": rep["baseline"]["eval_samples"],
            "weight_sparsity": rep["compressed"]["weight_sparsity"],
            "macs_reduction": rep["macs_reduction"], "pruning_steps": len(steps),
            "finetune_images": images, "finetune_epochs": sum(s["finetune_epochs"] for s in steps),
            "finetune_s": sum(s["finetune_s"] for s in steps), "wall_s": times["wall_s"],
            "steps": [{k: s[k] for k in ("target", "accuracy", "macs_reduction",
                                         "finetune_steps", "finetune_s", "stopped_early")}
                      for s in steps]}
    cells.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cell, indent=2))
    cell = {**cell, "cached": False}
    log.info("%-12s %.2f %-20s top-1 %6.2f  images %6d  %5.0f s", kind, target, regime,
             cell["top1"], images, cell["wall_s"])
    return cell


def _col(kind: str, target: float) -> str:
    return f"{target:.0%} sparsity" if kind == "unstructured" else f"-{target:.0%} MACs"


def crossover_sentence(table: dict[tuple[str, float], dict[str, float]], se: float) -> str:
    """Does one-shot match iterative at moderate sparsity and lose at high sparsity?"""
    parts, moderate, high = [], [], []
    for target in UNSTRUCTURED:
        row = table.get(("unstructured", target))
        if not row or "one-shot" not in row:
            continue
        best_iter = max(v for r, v in row.items() if r != "one-shot")
        gap = best_iter - row["one-shot"]
        (high if target >= 0.9 else moderate).append(gap)
        parts.append(f"{target:.0%}: {gap:+.2f}")
    if not moderate or not high:
        return "Not enough cells to judge the paper's crossover."
    holds = max(moderate) <= 2 * se and min(high) > 2 * se
    verdict = "holds here" if holds else "does not clearly hold here"
    return (f"The paper's crossover (one-shot as good as iterative below ~80 % sparsity, "
            f"iterative ahead above ~90 %) {verdict}: best non-one-shot regime minus one-shot, "
            f"unstructured, in points: {', '.join(parts)} (evaluation standard error about "
            f"{se:.1f} points).")


def render(cells: list[dict[str, Any]], adapted: dict[str, Any], p: dict[str, Any],
           profile: str, wall_total: float) -> str:
    targets = [("unstructured", t) for t in UNSTRUCTURED] + [("structured", t) for t in STRUCTURED]
    table: dict[tuple[str, float], dict[str, float]] = {}
    for c in cells:
        table.setdefault((c["kind"], c["target"]), {})[c["regime"]] = c["top1"]
    targets = [t for t in targets if t in table]
    rows = []
    for regime in REGIMES:
        row = [regime]
        for key in targets:
            vals = table[key]
            if regime not in vals:
                row.append("–")
                continue
            best = max(vals.values())
            text = f"{vals[regime]:.2f}"
            row.append(f"**{text}**" if vals[regime] == best else text)
        rows.append(row)
    n_eval = cells[0]["eval_samples"] if cells else 0
    acc = adapted["top1_after"] / 100
    se = 100 * (acc * (1 - acc) / max(n_eval, 1)) ** 0.5
    budget = p["budget_steps"] * p["batch"]
    if p.get("per_step"):
        split = ("; every PRUNING STEP gets this budget (the paper's protocol), so a run with "
                 "5 steps fine-tunes 5 times as much; patience regimes may stop earlier.\n")
    else:
        split = (", drawn from the whole training split, split evenly over the run's pruning "
                 "steps; patience regimes may stop earlier.\n")
    md = [f"Top-1 (%) on {n_eval} CIFAR-10-JPEG test images after pruning and fine-tuning "
          f"(profile `{profile}`); **bold** = best regime per column. Adapted baseline "
          f"{adapted['top1_after']:.2f} % (the shared checkpoint scored "
          f"{adapted['top1_before']:.2f} % on these images before one short epoch of "
          f"{adapted['images']} JPEG training images). Fine-tuning budget "
          f"{'per pruning step' if p.get('per_step') else 'per run, every regime alike'}: "
          f"{p['budget_steps']} SGD steps of {p['batch']} images = {budget} images "
          f"({budget / TRAIN_IMAGES:.2f} epochs){split}",
          fmt_table(["regime", *[_col(*k) for k in targets]], rows),
          crossover_sentence(table, se) + "\n"]
    # Cost of regimes: fine-tuning actually done, and wall time, summed over the targets.
    by_regime: dict[str, dict[str, float]] = {}
    for c in cells:
        agg = by_regime.setdefault(c["regime"], {"runs": 0, "images": 0, "epochs": 0.0,
                                                 "finetune_s": 0.0, "wall_s": 0.0, "steps": 0})
        agg["runs"] += 1
        agg["images"] += c["finetune_images"]
        agg["epochs"] += c["finetune_images"] / TRAIN_IMAGES
        agg["finetune_s"] += c["finetune_s"]
        agg["wall_s"] += c["wall_s"]
        agg["steps"] += c["pruning_steps"]
    ref = by_regime.get("one-shot", {}).get("wall_s") or None
    cost_rows = [[r, int(a["runs"]), int(a["steps"]), f"{a['images']:,}", f"{a['epochs']:.2f}",
                  f"{a['finetune_s']:.0f}", f"{a['wall_s']:.0f}",
                  f"{a['wall_s'] / ref:.2f}×" if ref else "–"]
                 for r in REGIMES if (a := by_regime.get(r))]
    md += ["\nCost of the regimes, summed over the targets above (wall time includes the "
           "per-step evaluations, the pruning proofs and the MACs searches):\n",
           fmt_table(["regime", "runs", "pruning steps", "images fine-tuned",
                      "epochs (of 50k)", "fine-tune s", "wall s", "wall ÷ one-shot"],
                     cost_rows),
           f"\nWhole table: {wall_total / 60:.1f} minutes wall time (the runs plus the "
           f"baseline adaptation, {adapted['seconds']:.0f} s).\n"]
    return "\n".join(md)


def cache_note(r: dict[str, Any]) -> str:
    """How much of the table this result file's own invocation measured."""
    cells, wall = r["cells"], r["wall_s"]
    summed = sum(c["wall_s"] for c in cells) + r["adapted_baseline"]["seconds"]
    if any("cached" not in c for c in cells):
        return (f"The invocation that wrote this file ran {wall / 60:.1f} minutes; the cells' "
                f"own wall times sum to {summed / 60:.1f}. Its cells record neither whether "
                f"they came from the cache of an earlier invocation nor the code that measured "
                f"them (written before the cache was keyed on the code version).\n")
    reused = [c for c in cells if c["cached"]]
    if not reused:
        return (f"Every cell was measured by the invocation that wrote this file "
                f"({wall / 60:.1f} minutes).\n")
    return (f"{len(reused)} of {len(cells)} cells were reused from the cache, measured by the "
            f"same code version (`{reused[0]['code'][:12]}`) in an earlier invocation; this "
            f"invocation ran {wall / 60:.1f} minutes.\n")


def render_result(r: dict[str, Any]) -> str:
    """The tables from a result file, with what its cache reused."""
    cells = r["cells"]
    md = render(cells, r["adapted_baseline"], r["settings"], r["profile"],
                sum(c["wall_s"] for c in cells) + r["adapted_baseline"]["seconds"])
    return md + "\n" + cache_note(r)


def main() -> None:
    parser = make_parser(__doc__, full="GPU budgets (10 epochs per run).",
                         tiny="Smoke test with tiny budgets.")
    parser.add_argument("--budget-steps", type=int, help="Override the optimizer steps per run.")
    parser.add_argument("--regimes", nargs="+", choices=REGIMES, default=list(REGIMES))
    parser.add_argument("--kinds", nargs="+", choices=("unstructured", "structured"),
                        default=["unstructured", "structured"])
    parser.add_argument("--fresh", action="store_true", help="Ignore finished cells.")
    parser.add_argument("--per-step", action="store_true",
                        help="Give every pruning step the whole budget (the paper's protocol) "
                        "instead of splitting one budget over the steps.")
    add_common_args(parser)
    args = parser.parse_args()
    start(args)
    require_shared(CIFAR_JPG, RESNET_CKPT["resnet20"])
    profile = "full" if args.full else "tiny" if args.tiny else "cpu"
    p = dict(PROFILES[profile])
    if args.budget_steps:
        if args.budget_steps % (ITERATIVE_STEPS * (1 + HYBRID_LATER)):
            parser.error("--budget-steps must split evenly over 1, 3 and 5 pruning steps "
                         "(a multiple of 15)")
        p["budget_steps"] = args.budget_steps
    p["per_step"] = args.per_step
    work = args.work / ("regimes-tiny" if args.tiny else "regimes")
    t0 = time.perf_counter()
    ckpt, adapted = adapt_baseline(p, work)
    targets = ([("unstructured", 0.5), ("structured", 0.3)] if args.tiny else
               [("unstructured", t) for t in UNSTRUCTURED] +
               [("structured", t) for t in STRUCTURED])
    cells = [run_cell(kind, target, regime, ckpt, p, work, args.fresh)
             for kind, target in targets if kind in args.kinds for regime in args.regimes]
    wall = time.perf_counter() - t0
    # Cells reused from an interrupted run count with the time they took then.
    payload = {"profile": profile, "settings": p, "adapted_baseline": adapted,
               "cells": cells, "wall_s": wall}
    md = render_result(payload)
    # Non-default budgets get their own result files: regimes-600.json, regimes-per-step.json.
    name = "regimes" + (f"-{args.budget_steps}" if args.budget_steps else "") + \
        ("-per-step" if args.per_step else "")
    finish(name, args.tiny, payload, md, args.out)


if __name__ == "__main__":
    main()
