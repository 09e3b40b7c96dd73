"""One recipe end to end: model -> data -> baseline -> (prune -> fine-tune -> eval)* -> export
-> measure -> report -> gates.

Example:
    >>> result = run_recipe(load_recipe("recipes/quickstart.yaml"))  # doctest: +SKIP
    >>> result.ok  # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
import datetime as _dt
import itertools
import json
import logging
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.context import RunContext
from compress.data import DataBundle, build_data
from compress.errors import InputError
from compress.evaluate import evaluate
from compress.export import export_model, export_onnx
from compress.finetune import finetune_
from compress.gate import GateOutcome, evaluate_gates, gates_passed
from compress.measure import Candidate, headline_speedup, measure_latency
from compress.models import build_model
from compress.pruning import (IMPORTANCE, StructuredPruner, count_macs_params,
                              solve_ratio_for_macs)
from compress.recipe import FinetuneSpec, PruningSpec, Recipe, ScheduleSpec
from compress.report import SCHEMA_VERSION, latency_blocks, write_report, write_text_atomic
from compress.schedules import plan_targets

__all__ = ["Result", "run_recipe", "run_schedule_", "default_out_dir"]

log = logging.getLogger(__name__)


@dataclass
class Result:
    """What :func:`run_recipe` returns: where the outputs are, the report and the gates."""

    out_dir: Path
    report: dict[str, Any]
    gates: list[GateOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return gates_passed(self.gates)


def default_out_dir(recipe: Recipe) -> Path:
    return Path("runs") / (recipe.name or "run")


def _resolved_model_spec(recipe: Recipe) -> Any:
    """The model spec with file paths made absolute, as stored in the manifest."""
    spec = recipe.model
    if spec.factory and ".py:" in spec.factory:
        file, _, attr = spec.factory.rpartition(":")
        spec = spec.model_copy(update={"factory": f"{recipe.resolve_path(file).resolve()}:{attr}"})
    return spec


def _check_outputs(model: nn.Module, bundle: DataBundle, probe: torch.Tensor) -> None:
    with torch.no_grad():
        out = model.eval()(probe[:1])
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise InputError(f"the model must return class logits of shape (batch, classes); it "
                         f"returned {getattr(out, 'shape', type(out).__name__)}")
    if out.shape[1] != bundle.num_classes:
        raise InputError(f"the model outputs {out.shape[1]} classes but the data has "
                         f"{bundle.num_classes}; set model.num_classes: {bundle.num_classes}")


def _environment(device: torch.device) -> dict[str, Any]:
    import onnxruntime

    return {"python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "device": str(device),
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def run_recipe(recipe: Recipe, out_dir: Path | None = None) -> Result:
    """Run ``recipe``; outputs go to ``out_dir`` (default ``runs/<recipe name>``).

    Raises :class:`InputError` for bad input and :class:`CheckFailed` when a proof (pruning
    equivalence, export parity) fails. Failing gates do not raise: see ``Result.ok``.
    """
    t0 = time.perf_counter()
    timing: dict[str, float] = {"eval_s": 0.0}
    ctx = RunContext.create(recipe, Path(out_dir) if out_dir else default_out_dir(recipe))
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(ctx.out_dir / "recipe.json", json.dumps(recipe.to_dict(), indent=2))
    bundle = build_data(recipe.data, resolve=recipe.resolve_path, seed=recipe.seed)
    model = build_model(recipe.model, resolve=recipe.resolve_path)
    probe = bundle.probe_batch(max(recipe.pruning.probe_batch, recipe.export.parity_batch))
    _check_outputs(model, bundle, probe)
    example = probe[:1]
    model.to(ctx.device)

    def timed_eval(m: nn.Module) -> dict[str, float]:
        t = time.perf_counter()
        res = evaluate(m, bundle.eval, ctx.device)
        timing["eval_s"] += time.perf_counter() - t
        return res

    baseline_eval = timed_eval(model)
    base_macs, base_params = count_macs_params(model, example.to(ctx.device))
    log.info("baseline: top-1 %.2f%%, %d MACs, %d params", baseline_eval["accuracy"],
             base_macs, base_params)
    baseline_model = copy.deepcopy(model).cpu().eval()
    baseline_onnx = None
    t = time.perf_counter()
    if recipe.report.latency and "onnxruntime" in recipe.report.engines:
        baseline_onnx = export_onnx(baseline_model, ctx.out_dir / "baseline" / "model.onnx",
                                    probe[:2], recipe.export.opset)
    timing["baseline_export_s"] = time.perf_counter() - t

    t = time.perf_counter()
    steps = run_schedule_(model, example=example.to(ctx.device), probe=probe.to(ctx.device),
                          pruning=recipe.pruning, schedule=recipe.schedule,
                          finetune=recipe.finetune, train=bundle.train, evaluate_fn=timed_eval,
                          device=ctx.device)
    timing["schedule_s"] = time.perf_counter() - t
    t = time.perf_counter()
    model = model.cpu().eval()
    exported = export_model(model, ctx.out_dir, recipe.export, _resolved_model_spec(recipe), probe)
    timing["export_s"] = time.perf_counter() - t

    latency = None
    t = time.perf_counter()
    if recipe.report.latency:
        latency = measure_latency(Candidate(baseline_model, baseline_onnx),
                                  Candidate(model, Path(exported["onnx"]) if "onnx" in exported
                                            else None),
                                  sample_shape=tuple(probe.shape[1:]), spec=recipe.report,
                                  device=torch.device("cpu"))
    timing["measure_s"] = time.perf_counter() - t
    lat_b, lat_c, speed = latency_blocks(latency)
    headline = headline_speedup(latency) if latency else None
    final_eval = steps[-1] if steps else baseline_eval
    macs_red = 1 - steps[-1]["macs"] / base_macs
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": recipe.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "status": "passed",
        "recipe": recipe.to_dict(),
        "baseline": {"accuracy": baseline_eval["accuracy"], "loss": baseline_eval["loss"],
                     "eval_samples": baseline_eval["samples"], "macs": base_macs,
                     "params": base_params,
                     "onnx_bytes": baseline_onnx.stat().st_size if baseline_onnx else None,
                     "latency_ms": lat_b},
        "compressed": {"accuracy": final_eval["accuracy"], "loss": final_eval["loss"],
                       "macs": steps[-1]["macs"], "params": steps[-1]["params"],
                       "onnx_bytes": exported.get("onnx_bytes"),
                       "safetensors_bytes": exported.get("safetensors_bytes"),
                       "latency_ms": lat_c},
        "accuracy_drop": {"points": baseline_eval["accuracy"] - final_eval["accuracy"],
                          "relative_percent": 100 * (baseline_eval["accuracy"]
                                                     - final_eval["accuracy"])
                          / max(baseline_eval["accuracy"], 1e-9)},
        "macs_reduction": macs_red,
        "params_reduction": 1 - steps[-1]["params"] / base_params,
        "speedup": {**speed, "headline": headline},
        "speedup_per_macs_reduction": (headline / (base_macs / steps[-1]["macs"])
                                       if headline else None),
        "steps": steps,
        "parity": exported["parity"],
        "latency": latency,
        "environment": (latency or {}).get("environment") or _environment(ctx.device),
        "timing": {**timing, "total_s": time.perf_counter() - t0},
        "outputs": {k: v for k, v in exported.items() if k in ("safetensors", "onnx",
                                                               "manifest")},
    }
    gates = evaluate_gates(report, recipe.gates)
    report["gates"] = [g.to_dict() for g in gates]
    report["status"] = "passed" if gates_passed(gates) else "gate_failed"
    write_report(report, ctx.out_dir)
    log.info("wrote %s", ctx.out_dir)
    return Result(ctx.out_dir, report, gates)


def run_schedule_(model: nn.Module, *, example: torch.Tensor, probe: torch.Tensor,
                  pruning: PruningSpec, schedule: ScheduleSpec, finetune: FinetuneSpec,
                  train: Iterable[tuple[torch.Tensor, torch.Tensor]] | None,
                  evaluate_fn: Callable[[nn.Module], dict[str, float]],
                  device: torch.device) -> list[dict[str, Any]]:
    """Prune ``model`` in place step by step (each step proven), fine-tuning and evaluating
    after each; return one row per step."""
    base_macs, _ = count_macs_params(model, example)
    criterion = IMPORTANCE.get(pruning.importance)
    if criterion.needs_grad and train is None:
        raise InputError(f"importance {pruning.importance!r} needs gradients; provide "
                         f"training data")
    final = pruning.target.macs if pruning.target else pruning.ratio
    assert final is not None
    targets = plan_targets(schedule, final)
    if pruning.target is None:
        ratios = list(targets)
    else:
        ratios = [solve_ratio_for_macs(model, example, pruning, t,
                                       tolerance=pruning.target.tolerance)[0] for t in targets]
    pruner = StructuredPruner(model, example, pruning, cumulative_ratios=ratios)
    steps: list[dict[str, Any]] = []
    for i, (target, ratio) in enumerate(zip(targets, ratios), start=1):
        if criterion.needs_grad:
            assert train is not None
            pruner.accumulate_gradients(itertools.islice(train, pruning.calibration_batches),
                                        device)
        record = pruner.step_(ratio, probe)
        stats = finetune_(model, train, finetune, device,
                          description=f"step {i}/{len(targets)} fine-tune") \
            if train is not None else None
        step_eval = evaluate_fn(model)
        macs, params = count_macs_params(model, example)
        steps.append({"step": i, "target": target, "channel_ratio": ratio,
                      "macs": macs, "params": params, "macs_reduction": 1 - macs / base_macs,
                      "accuracy": step_eval.get("accuracy"), "loss": step_eval.get("loss"),
                      "finetune_epochs": stats.epochs if stats else 0.0,
                      "finetune_steps": stats.steps if stats else 0,
                      "finetune_s": stats.seconds if stats else 0.0,
                      "groups": record.groups, "channels_removed": record.channels_removed,
                      "max_abs_diff": record.max_abs_diff, "widths": record.widths})
        log.info("step %d/%d: target %.3f, MACs -%.1f%%, top-1 %s", i, len(targets), target,
                 100 * (1 - macs / base_macs), step_eval.get("accuracy"))
    return steps
