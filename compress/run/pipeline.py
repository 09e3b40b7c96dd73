"""One recipe end to end: model -> data -> baseline -> (prune -> fine-tune -> eval)* -> export
-> measure -> report -> gates.

Example:
    >>> result = run_recipe(load_recipe("recipes/quickstart.yaml"))  # doctest: +SKIP
    >>> result.ok  # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.data import serving_info
from compress.data.calibration import calibration_batches
from compress.errors import CompressError, InputError
from compress.export.hf import save_hf_, write_model_card
from compress.export.model import export_model
from compress.export.onnx import export_onnx, onnx_size
from compress.export.safetensors import save_safetensors
from compress.finetune.checkpoint import FinetuneCheckpoint
from compress.finetune.distributed import Processes, architecture_digest, processes
from compress.finetune.gpu import cuda_settings
from compress.finetune.head import train_head_
from compress.fsutil import FS_FAULTS, write_failure
from compress.gates.gate import GateOutcome, evaluate_gates, gates_passed
from compress.measure.chance import chance_warnings
from compress.measure.counts import count_macs_params
from compress.measure.evaluate import evaluate
from compress.measure.latency import Candidate, headline_speedup, measure_latency
from compress.progress import report_phase
from compress.pruning.base import Pruner, StepRecord
from compress.pruning.latency_plan import LatencyPlanner
from compress.pruning.masks import export_copy
from compress.pruning.transformer import is_transformer
from compress.recipe.base import criterion_of
from compress.recipe.spec import Recipe
from compress.report.build import build_report, write_report
from compress.rng import sampler_generator
from compress.run.context import RunContext, resolve_device
from compress.run.folder import RunFolder, recipe_digest
from compress.run.loop import run_schedule_
from compress.run.preflight import check_recipe
from compress.run.prepare import prepare, resolved_model_spec
from compress.signals import stop_on_signals

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


def run_recipe(recipe: Recipe, out_dir: Path | None = None, *, overwrite: bool = False,
               resume: bool = False) -> Result:
    """Run ``recipe``; outputs go to ``out_dir`` (default ``runs/<recipe name>``).

    A finished run folder is never overwritten unless ``overwrite``; an unfinished one (crash,
    kill, Ctrl-C) continues from its last finished step with ``resume``. ``status.json`` in the
    folder says ``done`` only once every artifact is written.

    Raises :class:`InputError` for bad input and :class:`CheckFailed` when a proof (pruning
    equivalence, export parity) fails. Failing gates do not raise: see ``Result.ok``.

    Launched by ``torchrun`` or ``accelerate launch`` (``WORLD_SIZE`` > 1), every process runs
    this and fine-tunes data-parallel; only rank 0 writes, and every rank returns its Result
    (see :mod:`compress.finetune.distributed`).
    """
    check_recipe(recipe)  # everything `compress validate` catches fails before any output
    folder = RunFolder(Path(out_dir) if out_dir else default_out_dir(recipe))
    recipe_dict = recipe.to_dict()
    device = resolve_device(recipe.device)
    resolve_device(recipe.report.device)  # a GPU that is not there fails before any output
    dist = processes(device)
    # Only rank 0 opens (and locks) the folder; a refusal there is raised on every rank.
    resuming = dist.on_main(lambda: folder.open_(recipe_dict, overwrite=overwrite,
                                                 resume=resume))
    try:
        result = _run_marked(recipe, folder, resuming, dist, device)
        if dist.is_main:
            _mark(lambda: folder.finished(report_status=result.report["status"],
                                          recipe_sha256=recipe_digest(recipe_dict)))
    finally:
        if dist.is_main:
            folder.close()
    return result


def _run_marked(recipe: Recipe, folder: RunFolder, resuming: bool, dist: Processes,
                device: torch.device) -> Result:
    """:func:`_run`, marking the folder ``interrupted`` or ``failed`` (with the reason) when it
    stops early; a full or read-only disk becomes an InputError naming the file."""
    try:
        with stop_on_signals(), cuda_settings(device):
            return _run(recipe, folder, resuming, dist)
    except KeyboardInterrupt:
        if dist.is_main:
            _mark(folder.interrupted)
        raise
    except Exception as err:
        failure = err
        if isinstance(err, OSError) and err.errno in FS_FAULTS:
            failure = InputError(write_failure(Path(err.filename or folder.path), err))
        if dist.is_main:
            reason = str(failure) if isinstance(failure, CompressError) else \
                f"{type(failure).__name__}: {failure}"
            _mark(functools.partial(folder.stopped, "failed", reason),
                  failure if isinstance(failure, CompressError) else None)
        if failure is err:
            raise
        raise failure from None


def _mark(write: Callable[[], None], err: CompressError | None = None) -> None:
    """Write the run's final status; when status.json cannot be written (the disk that failed
    the run), ``err`` (the run's own error) still says what happened, in one sentence."""
    try:
        write()
    except InputError as failed:
        if err is None:
            raise
        err.args = (f"{err}; status.json could not be updated either "
                    f"({str(failed).split(': ', 1)[-1].split(';')[0]})",)


def _run(recipe: Recipe, folder: RunFolder, resuming: bool, dist: Processes) -> Result:
    t0 = time.perf_counter()
    timing: dict[str, float] = {"eval_s": 0.0}
    ctx = RunContext.create(recipe, folder.path)
    ctx.device = dist.device(ctx.device)  # each rank of a multi-GPU launch on its own GPU
    prepared = prepare(recipe)
    bundle, model, probe = prepared.bundle, prepared.model, prepared.probe
    example = probe[:1].to(ctx.device)
    model.to(ctx.device)
    if recipe.model.head != "pretrained":
        t = time.perf_counter()
        train_head_(model, bundle, recipe, ctx.device)
        timing["head_s"] = time.perf_counter() - t
    model_spec = resolved_model_spec(recipe)
    serving = serving_info(recipe.data, bundle)

    def timed_eval(m: nn.Module, task: str | None = None) -> dict[str, float]:
        t = time.perf_counter()
        res = evaluate(m, bundle.eval, ctx.device, task=task)
        timing["eval_s"] += time.perf_counter() - t
        return res

    baseline_eval = timed_eval(model, "baseline evaluation")
    base_macs, base_params = count_macs_params(model, example)
    log.info("baseline: %s MACs, %s parameters", f"{base_macs:,}", f"{base_params:,}")
    baseline_model = copy.deepcopy(model).cpu().eval()
    baseline_onnx = None
    t = time.perf_counter()
    if recipe.report.latency and "onnxruntime" in recipe.report.engines and dist.is_main:
        with report_phase("baseline ONNX export (for timing)"):
            baseline_onnx = export_onnx(baseline_model, ctx.out_dir / "baseline" / "model.onnx",
                                        probe[:2], recipe.export.opset)
    timing["baseline_export_s"] = time.perf_counter() - t
    teacher = None
    if recipe.finetune.distill is not None:
        teacher = copy.deepcopy(baseline_model).to(ctx.device).eval().requires_grad_(False)

    sampler = sampler_generator(bundle.train)
    resume = folder.resume_point(sampler) if resuming else None
    rows_so_far: list[dict[str, Any]] = list(resume.rows) if resume else []

    def write_model(m: nn.Module) -> Callable[[Path], dict[str, Any] | None]:
        def write(step_dir: Path) -> dict[str, Any] | None:
            if recipe.export.steps == "all":
                return export_model(export_copy(m), step_dir, recipe.export, model_spec, probe,
                                    serving)
            save_safetensors(m, step_dir, model_spec, tuple(probe.shape[1:]))
            return None
        return write

    def on_step(step: int, m: nn.Module, row: dict[str, Any], pruner: Pruner) -> None:
        dist.check_same(f"architecture after step {step}", architecture_digest(m))
        dist.on_main(lambda: folder.save_step(step, row, pruner, rows_so_far, sampler,
                                              write_model(m)))

    def checkpoints(step: int, pruner: Pruner, record: StepRecord) -> FinetuneCheckpoint:
        return folder.finetune_checkpoint(step, pruner, record, rows_so_far,
                                          recipe.finetune.checkpoint_every)

    calibration = None
    # Depth pruning ranks blocks on the calibration samples (else on the probe batch); a
    # params target scores its candidates on them.
    target = recipe.pruning.target
    if (criterion_of(recipe.pruning.importance).needs_calibration
            or recipe.pruning.blocks is not None
            or (target is not None and target.params is not None)):
        calibration = calibration_batches(bundle, recipe.calibration, recipe.seed)

    planner = latency_planner(recipe, tuple(probe.shape[1:]), vocab_size=vocab_size_of(model))
    if planner is not None and dist.describe() is not None and not planner.frozen:
        # Each process would time on its own and could plan other widths than the others.
        raise InputError("pruning.target.latency is timed in one process: plan it with a "
                         "single-process compress apply first, its pruning.target.latency_table "
                         "naming the file to keep, then launch with that file")
    if planner is not None and resume is not None:
        # The plan is not redone on a resume (its ratios are kept): nor is its record.
        planner.record = folder.saved_latency_plan() or {}
    t = time.perf_counter()
    steps, pruner = run_schedule_(model, example=example, probe=probe.to(ctx.device),
                                  pruning=recipe.pruning, schedule=recipe.schedule,
                                  finetune=recipe.finetune, train=bundle.train,
                                  evaluate_fn=timed_eval, device=ctx.device, val=bundle.val,
                                  teacher=teacher, on_step=on_step, resume=resume,
                                  # mid-fine-tune snapshots: single-process runs only
                                  checkpoints=checkpoints if dist.describe() is None else None,
                                  dist=dist, calibration=calibration,
                                  block_checkpoints=folder.block_dir if dist.is_main else None,
                                  latency=planner,
                                  on_ratios=lambda r: dist.on_main(lambda: folder.save_ratios(
                                      r, planner.record if planner is not None else None)))
    timing["schedule_s"] = time.perf_counter() - t
    pruner.finalize_()
    return dist.on_main(lambda: _finish(recipe, ctx.out_dir, model, baseline_model, baseline_onnx,
                                        baseline_eval, base_macs, base_params, steps, probe,
                                        timing, t0, dist, serving, planner))


def _finish(recipe: Recipe, out_dir: Path, model: nn.Module, baseline_model: nn.Module,
            baseline_onnx: Path | None, baseline_eval: dict[str, Any], base_macs: int,
            base_params: int, steps: list[dict[str, Any]], probe: torch.Tensor,
            timing: dict[str, float], t0: float, dist: Processes,
            serving: dict[str, Any], planner: LatencyPlanner | None = None) -> Result:
    """Export, measure, report and gates: rank 0 only under a launcher."""
    model_spec = resolved_model_spec(recipe)
    t = time.perf_counter()
    model = model.cpu().eval()
    with report_phase("export") as phase:
        exported = export_model(model, out_dir, recipe.export, model_spec, probe, serving)
        if is_transformer(model) and recipe.export.safetensors:
            exported["hf"] = save_hf_(model, out_dir, probe[: recipe.export.parity_batch],
                                      classes=serving.get("classes"))
        written = [k for k in ("safetensors", "onnx") if exported.get(k)]
        if (exported.get("hf") or {}).get("saved"):
            written.append("hf/")
        phase.result = "wrote " + ", ".join(written) if written else "nothing written"
    timing["export_s"] = time.perf_counter() - t

    latency = None
    t = time.perf_counter()
    if recipe.report.latency:
        compressed_onnx = Path(exported["onnx"]) if "onnx" in exported else None
        # torch says whether there is a GPU, never onnxruntime's provider list.
        where = resolve_device(recipe.report.device)
        latency = measure_latency(Candidate(baseline_model.to(where), baseline_onnx),
                                  Candidate(model.to(where), compressed_onnx),
                                  sample_shape=tuple(recipe.report.sample_shape
                                                     or probe.shape[1:]), spec=recipe.report,
                                  device=where, seed=recipe.seed,
                                  vocab_size=vocab_size_of(model))
    timing["measure_s"] = time.perf_counter() - t
    timing["total_s"] = time.perf_counter() - t0
    baseline = {**baseline_eval, "macs": base_macs, "params": base_params,
                "onnx_bytes": onnx_size(baseline_onnx) if baseline_onnx else None}
    report = build_report(recipe, baseline=baseline, steps=steps, exported=exported,
                          latency=latency, timing=timing, model=model)
    # The class count tells chance level; a model at it is a warning whatever the gates say.
    report["baseline"]["classes"] = len(serving.get("classes") or []) or None
    report["warnings"] = chance_warnings(report)
    report["notes"] = [f"warning: {w}" for w in report["warnings"]] + report["notes"]
    for warning in report["warnings"]:
        log.warning("%s", warning)
    if planner is not None:
        report["latency_target"] = planner.summary(headline_speedup(latency) if latency else None)
    gates = evaluate_gates(report, recipe.gates)
    report["gates"] = [g.to_dict() for g in gates]
    report["status"] = "passed" if gates_passed(gates) else "gate_failed"
    if dist.describe() is not None:
        report["distributed"] = dist.describe()
    if report["outputs"].get("hf"):
        write_model_card(Path(report["outputs"]["hf"]), report, base_path=model.source_path,
                         revision=getattr(model.hf.config, "_commit_hash", None),
                         task=model.task)
    write_report(report, out_dir)
    log.info("wrote %s", out_dir)
    return Result(out_dir, report, gates)


def latency_planner(recipe: Recipe, probe_shape: tuple[int, ...], *,
                    vocab_size: int | None = None,
                    closed_loop: bool = True) -> LatencyPlanner | None:
    """The planner of ``pruning.target.latency``, timing what the report times: onnxruntime,
    the report's threads, its largest batch size and sample shape (token ids below
    ``vocab_size`` for a text model). ``closed_loop=False`` (a dry run) plans from the table
    alone and writes no table file the recipe names (only the cache)."""
    target = recipe.pruning.target
    if target is None or target.latency is None:
        return None
    table = recipe.resolve_path(target.latency_table) if target.latency_table else None
    if table is not None and not closed_loop and not table.exists():
        table = None
    return LatencyPlanner(threads=recipe.report.threads or os.cpu_count() or 1,
                          batch=max(recipe.report.batch_sizes),
                          sample_shape=tuple(recipe.report.sample_shape or probe_shape),
                          table_file=table, protocol=recipe.report, closed_loop=closed_loop,
                          vocab_size=vocab_size)


def vocab_size_of(model: nn.Module) -> int | None:
    """Token-id models are timed on random ids below this; None for float inputs."""
    if getattr(model, "input_name", None) == "input_ids":
        return int(model.hf.config.vocab_size)
    return None
