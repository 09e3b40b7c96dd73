"""Run reports: ``report.json`` (stable keys, ``schema_version``), ``report.md`` and a
self-contained ``report.html`` for humans.

This module builds, writes and loads reports; the Markdown and HTML forms are drawn by
:mod:`compress.report.markdown` and :mod:`compress.report.html`.

Example:
    >>> md = render_report({"name": "demo", "status": "passed", "baseline": {"accuracy": 90.0},
    ...                     "compressed": {"accuracy": 89.0}, "steps": [], "gates": []}, "md")
    >>> md.splitlines()[0]
    '# compress report: demo'
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.fsutil import write_text_atomic
from compress.report.html import render_html
from compress.report.markdown import render_markdown, zeroes_weights
from compress.report.proof import unproven_steps

if TYPE_CHECKING:
    from torch import nn

    from compress.recipe.spec import Recipe

__all__ = ["SCHEMA_VERSION", "REPORT_FORMATS", "build_report", "write_report", "render_report",
           "load_report", "latency_blocks"]

SCHEMA_VERSION = 1
REPORT_FORMATS = ("md", "html", "json")


def latency_blocks(latency: dict[str, Any] | None) -> tuple[dict, dict, dict]:
    """Split a measurement into per-model ``latency_ms`` blocks and a ``speedup`` block."""
    from compress.measure.latency import latency_summary

    base: dict[str, Any] = {}
    comp: dict[str, Any] = {}
    for engine, per_batch in ((latency or {}).get("engines") or {}).items():
        for bs, row in per_batch.items():
            base.setdefault(engine, {})[bs] = {"median": row["baseline"]["median_ms"],
                                               "p90": row["baseline"]["p90_ms"]}
            comp.setdefault(engine, {})[bs] = {"median": row["compressed"]["median_ms"],
                                               "p90": row["compressed"]["p90_ms"]}
    return base, comp, latency_summary(latency or {})


def load_report(path: str | os.PathLike[str]) -> tuple[dict[str, Any], Path]:
    """Read a ``report.json`` (or the run folder holding one); return it and the file's path.

    Raises :class:`InputError` when the file is missing, is not JSON, or is not a report that
    ``compress apply`` wrote (``schema_version``).

    Example:
        >>> report, path = load_report("runs/quickstart")  # doctest: +SKIP
        >>> path.name, report["schema_version"]  # doctest: +SKIP
        ('report.json', 1)
    """
    from compress.errors import InputError
    from compress.jsonio import read_json_object

    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise InputError(f"{path} does not exist; pass a report.json or the run folder that "
                         f"'compress apply' wrote")
    report = read_json_object(path, hint="pass the report.json that 'compress apply' wrote")
    version = report.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputError(f"{path} is not a compress report (no integer 'schema_version'); pass "
                         f"the report.json that 'compress apply' wrote")
    if version > SCHEMA_VERSION:
        raise InputError(f"{path} has schema_version {version}, newer than this compress reads "
                         f"({SCHEMA_VERSION}); upgrade compress")
    return report, path


def build_report(recipe: Recipe, *, baseline: dict[str, Any], steps: list[dict[str, Any]],
                 exported: dict[str, Any], latency: dict[str, Any] | None,
                 timing: dict[str, float], model: nn.Module) -> dict[str, Any]:
    """Assemble ``report.json``'s content (status and gates are added by the caller)."""
    import torch

    from compress.measure.counts import compressed_size, onnx_widths, weight_sparsity
    from compress.measure.latency import headline_speedup
    from compress.measure.machine import environment

    last = steps[-1]
    lat_b, lat_c, speed = latency_blocks(latency)
    headline = headline_speedup(latency) if latency else None
    macs_ratio = baseline["macs"] / last["macs"]
    sparsity = weight_sparsity(model)
    compressed: dict[str, Any] = {
        "accuracy": last["accuracy"], "loss": last["loss"], "macs": last["macs"],
        "params": last["params"], "onnx_bytes": exported.get("onnx_bytes"),
        "safetensors_bytes": exported.get("safetensors_bytes"), "latency_ms": lat_c,
        "weight_sparsity": sparsity["overall"], "layer_sparsity": sparsity["layers"]}
    if exported.get("safetensors"):
        compressed["safetensors_compressed_bytes"] = compressed_size(Path(exported["safetensors"]))
    acc_b, acc_c = baseline["accuracy"], last["accuracy"]
    notes = []
    for key in ("perplexity",):
        if baseline.get(key) is not None:
            compressed[key] = last.get(key)
    hf = exported.get("hf")
    if hf and not hf.get("saved"):
        notes.append(f"no stock transformers folder (hf/) was written: {hf['reason']}.")
    protected = {n: why for s in steps for n, why in (s.get("protected") or {}).items()}
    for name, why in sorted(protected.items()):
        notes.append(f"layer {name!r} was left unpruned: {why}.")
    for note in dict.fromkeys(s["note"] for s in steps if s.get("note")):
        notes.append(f"{note}.")
    unproven = unproven_steps(steps)
    if unproven:
        notes.append(f"pruning step(s) {', '.join(map(str, unproven))}: not proven "
                     f"(pruning.verify is false, no equivalence check ran).")
    # Read from what the steps removed, not the kind's name: masks keep every dense shape.
    masked = zeroes_weights(steps)
    if masked:
        shown = f"{headline:.2f}x" if headline else "not measured"
        notes.append(f"{recipe.pruning.kind} sparsity zeroes weights but keeps dense shapes: "
                     f"dense ONNX/torch latency does not improve from it (measured speedup "
                     f"{shown}); the gain is the compressed file size.")
    widths: dict[str, int] = {}
    folder = next((Path(exported[k]).parent for k in ("onnx", "safetensors") if exported.get(k)),
                  None)
    # pipeline writes the unpruned model to <out>/baseline/model.onnx for latency runs; original
    # widths mean something only when steps removed channels (masked layers keep their width).
    if not masked and folder and last.get("layers"):
        base_onnx = folder / "baseline" / "model.onnx"
        widths = onnx_widths(base_onnx, last["layers"]) if base_onnx.is_file() else {}
    return {
        "schema_version": SCHEMA_VERSION,
        "name": recipe.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "status": "passed",
        "kind": recipe.pruning.kind,
        "schedule": recipe.schedule.kind,
        "recipe": recipe.to_dict(),
        "baseline": {"accuracy": acc_b, "loss": baseline["loss"],
                     **({"perplexity": baseline["perplexity"]} if "perplexity" in baseline
                        else {}),
                     "eval_samples": baseline["samples"], "macs": baseline["macs"],
                     "params": baseline["params"], "onnx_bytes": baseline["onnx_bytes"],
                     "latency_ms": lat_b},
        "compressed": compressed,
        "accuracy_drop": {"points": acc_b - acc_c,
                          "relative_percent": 100 * (acc_b - acc_c) / max(acc_b, 1e-9)},
        "macs_reduction": last["macs_reduction"],
        "params_reduction": last["params_reduction"],
        "speedup": {**speed, "headline": headline},
        "speedup_per_macs_reduction": headline / macs_ratio if headline else None,
        "finetune_epochs_total": sum(s["finetune_epochs"] for s in steps),
        "steps": steps,
        **({"params_target": searched} if (searched := next(
            (s["params_target"] for s in steps if s.get("params_target")), None)) else {}),
        **({"baseline_widths": widths} if widths else {}),
        "parity": {**exported["parity"],
                   **({"hf": hf["parity"]} if hf and hf.get("saved") else {})},
        "parity_tolerance": {**(exported.get("parity_tolerance") or {}),
                             **({"hf": hf["parity_tolerance"]} if hf and hf.get("saved")
                                and "parity_tolerance" in hf else {})},
        "notes": notes,
        "latency": latency,
        "environment": (latency or {}).get("environment")
        or environment(torch.get_num_threads(), torch.device("cpu")),
        "timing": timing,
        "outputs": {**{k: v for k, v in exported.items()
                       if k in ("safetensors", "onnx", "manifest")},
                    **({"hf": hf["path"]} if hf and hf.get("saved") else {})},
    }


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path, Path]:
    """Write ``report.json``, ``report.md`` and ``report.html`` atomically; return their paths."""
    json_path, md_path, html_path = (out_dir / f"report.{ext}" for ext in ("json", "md", "html"))
    write_text_atomic(json_path, render_report(report, "json"))
    write_text_atomic(md_path, render_report(report, "md"))
    write_text_atomic(html_path, render_report(report, "html"))
    return json_path, md_path, html_path


def render_report(report: dict[str, Any], fmt: str) -> str:
    """The report as text in one of :data:`REPORT_FORMATS`: md, html or json (pretty).

    Example:
        >>> render_report({"schema_version": 1}, "json").splitlines()[1]
        '  "schema_version": 1'
    """
    if fmt == "json":
        return json.dumps(report, indent=2, sort_keys=False) + "\n"
    if fmt == "md":
        return render_markdown(report)
    if fmt == "html":
        return render_html(report)
    from compress.errors import InputError

    raise InputError(f"unknown report format {fmt!r}; allowed formats: {', '.join(REPORT_FORMATS)}")
