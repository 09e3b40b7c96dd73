"""One recipe end to end: model -> data -> baseline -> (prune -> fine-tune -> eval)* -> export
-> measure -> report -> gates.

Example:
    >>> result = run_recipe(load_recipe("recipes/quickstart.yaml"))  # doctest: +SKIP
    >>> result.ok  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.context import RunContext
from compress.data import DataBundle, build_data
from compress.errors import CompressError, InputError
from compress.evaluate import evaluate
from compress.export import export_model, export_onnx, onnx_size, save_safetensors
from compress.gate import GateOutcome, evaluate_gates, gates_passed
from compress.loop import ResumePoint, run_schedule_
from compress.measure import Candidate, measure_latency
from compress.models import build_model
from compress.pruning import count_macs_params
from compress.recipe import ModelSpec, Recipe
from compress.fsutil import write_text_atomic
from compress.report import build_report, write_report
from compress.runstate import (last_finished_step, prepare_run_dir, recipe_digest,
                               restore_rng_state, rng_state, write_status)
from compress.validate import check_recipe

__all__ = ["Result", "run_recipe", "default_out_dir"]

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


def _resolved_model_spec(recipe: Recipe) -> ModelSpec:
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


def _serving_info(recipe: Recipe, bundle: DataBundle) -> dict[str, Any]:
    """What model.json tells a service: class names, and how inputs were prepared."""
    norm = recipe.data.normalize
    return {"classes": list(bundle.class_names),
            "preprocess": {"pixels": "float32, channels first, scaled to 0..1",
                           "image_size": recipe.data.image_size,
                           "resize": "bilinear, antialiased",
                           "normalize": norm.model_dump() if norm is not None else None}}


def _plain_copy(model: nn.Module) -> nn.Module:
    """A CPU copy with pruning masks folded in, for per-step exports mid-run."""
    clone = copy.deepcopy(model).cpu().eval()
    for module in clone.modules():
        for name in [k[: -len("_orig")] for k, _ in module.named_parameters(recurse=False)
                     if k.endswith("_orig")]:
            torch.nn.utils.prune.remove(module, name)
    return clone


def run_recipe(recipe: Recipe, out_dir: Path | None = None, *, overwrite: bool = False,
               resume: bool = False) -> Result:
    """Run ``recipe``; outputs go to ``out_dir`` (default ``runs/<recipe name>``).

    A finished run folder is never overwritten unless ``overwrite``; an unfinished one (crash,
    kill, Ctrl-C) continues from its last finished step with ``resume``. ``status.json`` in the
    folder says ``done`` only once every artifact is written.

    Raises :class:`InputError` for bad input and :class:`CheckFailed` when a proof (pruning
    equivalence, export parity) fails. Failing gates do not raise: see ``Result.ok``.
    """
    check_recipe(recipe)  # everything `compress validate` catches fails before any output
    run_dir = Path(out_dir) if out_dir else default_out_dir(recipe)
    recipe_dict = recipe.to_dict()
    resuming = prepare_run_dir(run_dir, recipe_dict, overwrite=overwrite, resume=resume)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"--out {str(run_dir)!r} cannot be created ({err.strerror}); choose "
                         f"another --out") from None
    if not resuming:
        write_text_atomic(run_dir / "recipe.json", json.dumps(recipe_dict, indent=2))
    write_status(run_dir, "running", recipe_sha256=recipe_digest(recipe_dict))
    try:
        with _stop_on_sigterm():
            result = _run(recipe, run_dir, resuming)
    except KeyboardInterrupt:
        write_status(run_dir, "interrupted", "interrupted by a signal; continue with --resume",
                     last_finished_step=last_finished_step(run_dir))
        raise
    except CompressError as err:
        write_status(run_dir, "failed", str(err), last_finished_step=last_finished_step(run_dir))
        raise
    except Exception as err:
        write_status(run_dir, "failed", f"{type(err).__name__}: {err}",
                     last_finished_step=last_finished_step(run_dir))
        raise
    write_status(run_dir, "done", None, report_status=result.report["status"],
                 recipe_sha256=recipe_digest(recipe_dict))
    return result


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM stops the run like Ctrl-C does (between Python operations, status written)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _resume_point(run_dir: Path, sampler_generator: torch.Generator | None) -> ResumePoint:
    from safetensors.torch import load_file

    step = last_finished_step(run_dir)
    if step == 0:
        raise InputError(f"nothing to resume in {str(run_dir)!r}: no pruning step finished; "
                         f"start over with --overwrite")
    step_dir = run_dir / "steps" / f"{step:02d}"
    state = json.loads((step_dir / "state.json").read_text(encoding="utf-8"))
    rng = load_file(str(step_dir / "rng.safetensors"))
    return ResumePoint(step=step, pruner_state=state["pruner"],
                       model_state=load_file(str(step_dir / "model.safetensors")),
                       rows=state["rows"],
                       restore_rng=lambda: restore_rng_state(rng, sampler_generator))


def _run(recipe: Recipe, run_dir: Path, resuming: bool) -> Result:
    t0 = time.perf_counter()
    timing: dict[str, float] = {"eval_s": 0.0}
    ctx = RunContext.create(recipe, run_dir)
    bundle = build_data(recipe.data, resolve=recipe.resolve_path, seed=recipe.seed)
    model = build_model(recipe.model, resolve=recipe.resolve_path)
    probe = bundle.probe_batch(max(recipe.pruning.probe_batch, recipe.export.parity_batch))
    _check_outputs(model, bundle, probe)
    example = probe[:1].to(ctx.device)
    model.to(ctx.device)
    model_spec = _resolved_model_spec(recipe)
    serving = _serving_info(recipe, bundle)

    def timed_eval(m: nn.Module) -> dict[str, float]:
        t = time.perf_counter()
        res = evaluate(m, bundle.eval, ctx.device)
        timing["eval_s"] += time.perf_counter() - t
        return res

    baseline_eval = timed_eval(model)
    base_macs, base_params = count_macs_params(model, example)
    log.info("baseline: top-1 %.2f%%, %d MACs, %d params", baseline_eval["accuracy"],
             base_macs, base_params)
    baseline_model = copy.deepcopy(model).cpu().eval()
    baseline_onnx = None
    t = time.perf_counter()
    if recipe.report.latency and "onnxruntime" in recipe.report.engines:
        baseline_onnx = export_onnx(baseline_model, ctx.out_dir / "baseline" / "model.onnx",
                                    probe[:2], recipe.export.opset)
    timing["baseline_export_s"] = time.perf_counter() - t
    teacher = None
    if recipe.finetune.distill is not None:
        teacher = copy.deepcopy(baseline_model).to(ctx.device).eval().requires_grad_(False)

    sampler_generator = getattr(getattr(bundle.train, "sampler", None), "generator", None)
    resume = _resume_point(ctx.out_dir, sampler_generator) if resuming else None
    rows_so_far: list[dict[str, Any]] = list(resume.rows) if resume else []

    def on_step(step: int, m: nn.Module, row: dict[str, Any], pruner: Any) -> None:
        from safetensors.torch import save_file

        step_dir = ctx.out_dir / "steps" / f"{step:02d}"
        (step_dir / "state.json").unlink(missing_ok=True)
        if recipe.export.steps == "all":
            plain = _plain_copy(m)
            row["export"] = export_model(plain, step_dir, recipe.export, model_spec, probe,
                                         serving)
        else:
            save_safetensors(m, step_dir, model_spec, tuple(probe.shape[1:]))
        row["checkpoint"] = str(step_dir)
        rows_so_far.append(row)
        if hasattr(pruner, "get_state"):
            save_file(rng_state(sampler_generator), str(step_dir / "rng.safetensors"))
            state = {"step": step, "pruner": pruner.get_state(), "rows": rows_so_far}
            # Written last: a step folder without state.json is never resumed from.
            write_text_atomic(step_dir / "state.json", json.dumps(state))

    t = time.perf_counter()
    steps, pruner = run_schedule_(model, example=example, probe=probe.to(ctx.device),
                                  pruning=recipe.pruning, schedule=recipe.schedule,
                                  finetune=recipe.finetune, train=bundle.train,
                                  evaluate_fn=timed_eval, device=ctx.device, val=bundle.val,
                                  teacher=teacher, on_step=on_step, resume=resume)
    timing["schedule_s"] = time.perf_counter() - t
    pruner.finalize_()
    t = time.perf_counter()
    model = model.cpu().eval()
    exported = export_model(model, ctx.out_dir, recipe.export, model_spec, probe, serving)
    timing["export_s"] = time.perf_counter() - t

    latency = None
    t = time.perf_counter()
    if recipe.report.latency:
        compressed_onnx = Path(exported["onnx"]) if "onnx" in exported else None
        latency = measure_latency(Candidate(baseline_model, baseline_onnx),
                                  Candidate(model, compressed_onnx),
                                  sample_shape=tuple(probe.shape[1:]), spec=recipe.report,
                                  device=torch.device("cpu"), seed=recipe.seed)
    timing["measure_s"] = time.perf_counter() - t
    timing["total_s"] = time.perf_counter() - t0
    baseline = {**baseline_eval, "macs": base_macs, "params": base_params,
                "onnx_bytes": onnx_size(baseline_onnx) if baseline_onnx else None}
    report = build_report(recipe, baseline=baseline, steps=steps, exported=exported,
                          latency=latency, timing=timing, model=model)
    gates = evaluate_gates(report, recipe.gates)
    report["gates"] = [g.to_dict() for g in gates]
    report["status"] = "passed" if gates_passed(gates) else "gate_failed"
    write_report(report, ctx.out_dir)
    log.info("wrote %s", ctx.out_dir)
    return Result(ctx.out_dir, report, gates)
