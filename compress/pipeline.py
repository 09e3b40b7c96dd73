"""One recipe end to end: model -> data -> baseline -> (prune -> fine-tune -> eval)* -> export
-> measure -> report -> gates.

Example:
    >>> result = run_recipe(load_recipe("recipes/quickstart.yaml"))  # doctest: +SKIP
    >>> result.ok  # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.checkpoint import (FinetuneCheckpoint, latest_snapshot, latest_snapshot_dir,
                                 remove_snapshots)
from compress.context import RunContext, resolve_device
from compress.data import DataBundle, build_data
from compress.data.text import with_default_tokenizer
from compress.distributed import Processes, architecture_digest, processes
from compress.errors import CompressError, InputError
from compress.evaluate import evaluate
from compress.export_hf import save_hf_
from compress.finetune import finetune_
from compress.export import export_model, export_onnx, onnx_size, save_safetensors
from compress.gate import GateOutcome, evaluate_gates, gates_passed
from compress.gpu import cuda_settings
from compress.loop import ResumePoint, run_schedule_
from compress.pruners import StepRecord
from compress.measure import Candidate, measure_latency
from compress.models import build_model
from compress.pruning import count_macs_params
from compress.transformer_pruning import is_transformer
from compress.recipe import ModelSpec, Recipe
from compress.fsutil import write_text_atomic
from compress.report import build_report, write_report
from compress.runstate import (last_finished_step, prepare_run_dir, recipe_digest,
                               restore_rng_state, rng_state, sampler_generator,
                               stop_on_signals, write_status)
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
    if isinstance(out, torch.Tensor) and out.dim() == 3 and not bundle.class_names:
        return  # language model: (batch, length, vocab) logits against token targets
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise InputError(f"the model must return class logits of shape (batch, classes); it "
                         f"returned {getattr(out, 'shape', type(out).__name__)}")
    if out.shape[1] != bundle.num_classes:
        raise InputError(f"the model outputs {out.shape[1]} classes but the data has "
                         f"{bundle.num_classes}; set model.num_classes: {bundle.num_classes}")


def _serving_info(recipe: Recipe, bundle: DataBundle) -> dict[str, Any]:
    """What model.json tells a service: class names, and how inputs were prepared."""
    from compress.data import DATASETS

    return DATASETS.get(recipe.data.source)().serving_info(recipe.data, bundle)


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

    Launched by ``torchrun`` or ``accelerate launch`` (``WORLD_SIZE`` > 1), every process runs
    this and fine-tunes data-parallel; only rank 0 writes, and every rank returns its Result
    (see :mod:`compress.distributed`).
    """
    check_recipe(recipe)  # everything `compress validate` catches fails before any output
    run_dir = Path(out_dir) if out_dir else default_out_dir(recipe)
    recipe_dict = recipe.to_dict()
    device = resolve_device(recipe.device)
    resolve_device(recipe.report.device)  # a GPU that is not there fails before any output
    dist = processes(device)
    resuming = dist.on_main(lambda: _open_run_dir(run_dir, recipe_dict, overwrite, resume))

    def stopped(state: str, message: str, **extra: Any) -> None:
        if dist.is_main:
            write_status(run_dir, state, message, last_finished_step=last_finished_step(run_dir),
                         **extra)

    try:
        with stop_on_signals(), cuda_settings(device):
            result = _run(recipe, run_dir, resuming, dist)
    except KeyboardInterrupt:
        snapshot = latest_snapshot_dir(run_dir / "steps" /
                                       f"{last_finished_step(run_dir) + 1:02d}")
        stopped("interrupted", "interrupted by a signal; continue with --resume",
                finetune_checkpoint=str(snapshot) if snapshot else None)
        raise
    except CompressError as err:
        stopped("failed", str(err))
        raise
    except Exception as err:
        stopped("failed", f"{type(err).__name__}: {err}")
        raise
    if dist.is_main:
        write_status(run_dir, "done", None, report_status=result.report["status"],
                     recipe_sha256=recipe_digest(recipe_dict))
    return result


def _open_run_dir(run_dir: Path, recipe_dict: dict[str, Any], overwrite: bool,
                  resume: bool) -> bool:
    """Create (or reopen with ``resume``) the run folder, marked running; True when resuming."""
    resuming = prepare_run_dir(run_dir, recipe_dict, overwrite=overwrite, resume=resume)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"--out {str(run_dir)!r} cannot be created ({err.strerror}); choose "
                         f"another --out") from None
    if not resuming:
        write_text_atomic(run_dir / "recipe.json", json.dumps(recipe_dict, indent=2))
    write_status(run_dir, "running", recipe_sha256=recipe_digest(recipe_dict))
    return resuming


def _resume_point(run_dir: Path, sampler: torch.Generator | None) -> ResumePoint:
    """Where to go on: inside the fine-tune after the last finished step, or after that step."""
    from safetensors.torch import load_file

    step = last_finished_step(run_dir)
    for finished in range(1, step + 1):  # a kill between state.json and their removal
        remove_snapshots(run_dir / "steps" / f"{finished:02d}")
    partial = latest_snapshot(run_dir / "steps" / f"{step + 1:02d}")
    if partial is not None:
        context = partial.context
        return ResumePoint(step=step, pruner_state=context["pruner"],
                           pruner_tensors=partial.tensors, model_state=partial.model,
                           rows=context["rows"], restore_rng=lambda: None, finetune=partial,
                           record=StepRecord(**context["record"]))
    if step == 0:
        raise InputError(f"nothing to resume in {str(run_dir)!r}: no pruning step finished; "
                         f"start over with --overwrite")
    step_dir = run_dir / "steps" / f"{step:02d}"
    state = json.loads((step_dir / "state.json").read_text(encoding="utf-8"))
    rng = load_file(str(step_dir / "rng.safetensors"))
    tensors = step_dir / "pruner.safetensors"
    return ResumePoint(step=step, pruner_state=state["pruner"],
                       pruner_tensors=load_file(str(tensors)) if tensors.is_file() else {},
                       model_state=load_file(str(step_dir / "model.safetensors")),
                       rows=state["rows"],
                       restore_rng=lambda: restore_rng_state(rng, sampler))


def _run(recipe: Recipe, run_dir: Path, resuming: bool, dist: Processes) -> Result:
    t0 = time.perf_counter()
    timing: dict[str, float] = {"eval_s": 0.0}
    ctx = RunContext.create(recipe, run_dir)
    ctx.device = dist.device(ctx.device)  # each rank of a multi-GPU launch on its own GPU
    bundle = build_data(with_default_tokenizer(recipe.data, recipe.model.name if
                                               recipe.model.source == "huggingface" else None),
                        resolve=recipe.resolve_path, seed=recipe.seed)
    model = build_model(recipe.model, resolve=recipe.resolve_path)
    probe = bundle.probe_batch(max(recipe.pruning.probe_batch, recipe.export.parity_batch))
    _check_outputs(model, bundle, probe)
    example = probe[:1].to(ctx.device)
    model.to(ctx.device)
    if recipe.model.head != "pretrained":
        t = time.perf_counter()
        _train_head_(model, bundle, recipe, ctx.device)
        timing["head_s"] = time.perf_counter() - t
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
    if recipe.report.latency and "onnxruntime" in recipe.report.engines and dist.is_main:
        baseline_onnx = export_onnx(baseline_model, ctx.out_dir / "baseline" / "model.onnx",
                                    probe[:2], recipe.export.opset)
    timing["baseline_export_s"] = time.perf_counter() - t
    teacher = None
    if recipe.finetune.distill is not None:
        teacher = copy.deepcopy(baseline_model).to(ctx.device).eval().requires_grad_(False)

    sampler = sampler_generator(bundle.train)
    resume = _resume_point(ctx.out_dir, sampler) if resuming else None
    rows_so_far: list[dict[str, Any]] = list(resume.rows) if resume else []

    def on_step(step: int, m: nn.Module, row: dict[str, Any], pruner: Any) -> None:
        dist.check_same(f"architecture after step {step}", architecture_digest(m))
        dist.on_main(lambda: save_step(step, m, row, pruner))

    def save_step(step: int, m: nn.Module, row: dict[str, Any], pruner: Any) -> None:
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
        save_file(rng_state(sampler), str(step_dir / "rng.safetensors"))
        if tensors := pruner.get_tensors():
            save_file(tensors, str(step_dir / "pruner.safetensors"))
        state = {"step": step, "pruner": pruner.get_state(), "rows": rows_so_far}
        # Written last: a step folder without state.json is never resumed from.
        write_text_atomic(step_dir / "state.json", json.dumps(state))
        remove_snapshots(step_dir)  # the fine-tune's own checkpoints are superseded

    def checkpoints(step: int, pruner: Any, record: StepRecord) -> FinetuneCheckpoint:
        context = {"step": step, "pruner": pruner.get_state(), "record": asdict(record),
                   "rows": rows_so_far}
        return FinetuneCheckpoint(ctx.out_dir / "steps" / f"{step:02d}",
                                  recipe.finetune.checkpoint_every, context=context,
                                  tensors=pruner.get_tensors())

    t = time.perf_counter()
    steps, pruner = run_schedule_(model, example=example, probe=probe.to(ctx.device),
                                  pruning=recipe.pruning, schedule=recipe.schedule,
                                  finetune=recipe.finetune, train=bundle.train,
                                  evaluate_fn=timed_eval, device=ctx.device, val=bundle.val,
                                  teacher=teacher, on_step=on_step, resume=resume,
                                  # mid-fine-tune snapshots: single-process runs only
                                  checkpoints=checkpoints if dist.describe() is None else None,
                                  dist=dist)
    timing["schedule_s"] = time.perf_counter() - t
    pruner.finalize_()
    return dist.on_main(lambda: _finish(recipe, ctx.out_dir, model, baseline_model, baseline_onnx,
                                        baseline_eval, base_macs, base_params, steps, probe,
                                        timing, t0, dist, serving))


def _finish(recipe: Recipe, out_dir: Path, model: nn.Module, baseline_model: nn.Module,
            baseline_onnx: Path | None, baseline_eval: dict[str, Any], base_macs: int,
            base_params: int, steps: list[dict[str, Any]], probe: torch.Tensor,
            timing: dict[str, float], t0: float, dist: Processes,
            serving: dict[str, Any]) -> Result:
    """Export, measure, report and gates: rank 0 only under a launcher."""
    model_spec = _resolved_model_spec(recipe)
    t = time.perf_counter()
    model = model.cpu().eval()
    exported = export_model(model, out_dir, recipe.export, model_spec, probe, serving)
    if is_transformer(model) and recipe.export.safetensors:
        exported["hf"] = save_hf_(model, out_dir, probe[: recipe.export.parity_batch])
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
                                  vocab_size=_vocab_size(model))
    timing["measure_s"] = time.perf_counter() - t
    timing["total_s"] = time.perf_counter() - t0
    baseline = {**baseline_eval, "macs": base_macs, "params": base_params,
                "onnx_bytes": onnx_size(baseline_onnx) if baseline_onnx else None}
    report = build_report(recipe, baseline=baseline, steps=steps, exported=exported,
                          latency=latency, timing=timing, model=model)
    gates = evaluate_gates(report, recipe.gates)
    report["gates"] = [g.to_dict() for g in gates]
    report["status"] = "passed" if gates_passed(gates) else "gate_failed"
    if dist.describe() is not None:
        report["distributed"] = dist.describe()
    write_report(report, out_dir)
    log.info("wrote %s", out_dir)
    return Result(out_dir, report, gates)


def _vocab_size(model: nn.Module) -> int | None:
    """Token-id models are timed on random ids below this; None for float inputs."""
    if getattr(model, "input_name", None) == "input_ids":
        return int(model.hf.config.vocab_size)
    return None


def _train_head_(model: nn.Module, bundle: DataBundle, recipe: Recipe,
                 device: torch.device) -> None:
    """Train the parameters the checkpoint lacked (a new classification head), body frozen;
    with ``model.head: finetune`` the body trains too."""
    new = set(getattr(model, "new_parameters", []))
    if recipe.model.head == "finetune":
        new |= {name for name, _ in model.named_parameters()}
    elif not new:
        raise InputError("model.head: train found no newly initialised parameters: the "
                         "checkpoint already has a head; use model.head: pretrained")
    if bundle.train is None:
        raise InputError("model.head: train needs training data")
    frozen = {n: p.requires_grad for n, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.requires_grad_(name in new)
    spec = recipe.finetune.model_copy(update={"epochs": recipe.model.head_epochs,
                                              "patience": None, "distill": None,
                                              "max_steps": None})
    try:
        finetune_(model, bundle.train, spec, device, description="train head")
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(frozen[name])
