"""Run reports: ``report.json`` (stable keys, ``schema_version``) and ``report.md`` for humans.

Example:
    >>> md = render_markdown({"name": "demo", "status": "passed", "baseline": {"accuracy": 90.0},
    ...                       "compressed": {"accuracy": 89.0}, "steps": [], "gates": []})
    >>> md.splitlines()[0]
    '# compress report: demo'
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from compress.recipe import Recipe

__all__ = ["SCHEMA_VERSION", "build_report", "write_report", "render_markdown", "latency_blocks",
           "write_text_atomic"]

SCHEMA_VERSION = 1


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    Path(tmp).replace(path)


def latency_blocks(latency: dict[str, Any] | None) -> tuple[dict, dict, dict]:
    """Split a measurement into per-model ``latency_ms`` blocks and a ``speedup`` block."""
    base: dict[str, Any] = {}
    comp: dict[str, Any] = {}
    speed: dict[str, Any] = {}
    for engine, per_batch in ((latency or {}).get("engines") or {}).items():
        for bs, row in per_batch.items():
            base.setdefault(engine, {})[bs] = {"median": row["baseline"]["median_ms"],
                                               "p90": row["baseline"]["p90_ms"]}
            comp.setdefault(engine, {})[bs] = {"median": row["compressed"]["median_ms"],
                                               "p90": row["compressed"]["p90_ms"]}
            speed.setdefault(engine, {})[bs] = row["speedup"]
    return base, comp, speed


def _environment() -> dict[str, Any]:
    import onnxruntime
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "cpu": platform.processor() or
            platform.machine(), "threads": torch.get_num_threads()}


def build_report(recipe: Recipe, *, baseline: dict[str, Any], steps: list[dict[str, Any]],
                 exported: dict[str, Any], latency: dict[str, Any] | None,
                 timing: dict[str, float], model: nn.Module) -> dict[str, Any]:
    """Assemble ``report.json``'s content (status and gates are added by the caller)."""
    from compress.measure import headline_speedup
    from compress.sparsity import compressed_size, weight_sparsity

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
    if recipe.pruning.kind != "structured":
        shown = f"{headline:.2f}x" if headline else "not measured"
        notes.append(f"{recipe.pruning.kind} sparsity zeroes weights but keeps dense shapes: "
                     f"dense ONNX/torch latency does not improve from it (measured speedup "
                     f"{shown}); the gain is the compressed file size.")
    return {
        "schema_version": SCHEMA_VERSION,
        "name": recipe.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "status": "passed",
        "kind": recipe.pruning.kind,
        "schedule": recipe.schedule.kind,
        "recipe": recipe.to_dict(),
        "baseline": {"accuracy": acc_b, "loss": baseline["loss"],
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
        "parity": exported["parity"],
        "notes": notes,
        "latency": latency,
        "environment": (latency or {}).get("environment") or _environment(),
        "timing": timing,
        "outputs": {k: v for k, v in exported.items() if k in ("safetensors", "onnx", "manifest")},
    }


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` atomically; return their paths."""
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    write_text_atomic(json_path, json.dumps(report, indent=2, sort_keys=False) + "\n")
    write_text_atomic(md_path, render_markdown(report))
    return json_path, md_path


def _fmt(value: Any, spec: str = ".4g", suffix: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)):
        return f"{value:{spec}}{suffix}"
    return str(value)


def _human(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "n/a"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def render_markdown(report: dict[str, Any]) -> str:
    """A report that fits a CI comment or a GitHub step summary."""
    b, c = report.get("baseline", {}), report.get("compressed", {})
    lines = [f"# compress report: {report.get('name', 'run')}", ""]
    status = report.get("status", "unknown")
    lines += [f"**Status:** {status}", ""]
    lines += ["| | baseline | compressed | change |", "|---|---|---|---|"]
    acc_b, acc_c = b.get("accuracy"), c.get("accuracy")
    drop = None if acc_b is None or acc_c is None else acc_b - acc_c
    lines.append(f"| top-1 accuracy (%) | {_fmt(acc_b, '.2f')} | {_fmt(acc_c, '.2f')} | "
                 f"{_fmt(None if drop is None else -drop, '+.2f')} points |")
    for key, label in (("macs", "MACs"), ("params", "parameters"),
                       ("onnx_bytes", "ONNX size (bytes)")):
        vb, vc = b.get(key), c.get(key)
        ratio = f"{vb / vc:.2f}x smaller" if isinstance(vb, (int, float)) and vc else "n/a"
        lines.append(f"| {label} | {_human(vb)} | {_human(vc)} | {ratio} |")
    speed = report.get("speedup") or {}
    for engine in ("onnxruntime", "torch"):
        for bs, ratio in (speed.get(engine) or {}).items():
            lb = (b.get("latency_ms") or {}).get(engine, {}).get(bs, {})
            lc = (c.get("latency_ms") or {}).get(engine, {}).get(bs, {})
            lines.append(f"| {engine} latency, batch {bs} (ms, median) | "
                         f"{_fmt(lb.get('median'), '.3f')} | {_fmt(lc.get('median'), '.3f')} | "
                         f"{_fmt(ratio, '.2f')}x faster |")
    lines.append("")
    eff = report.get("speedup_per_macs_reduction")
    if eff is not None:
        lines += [f"Measured speedup ÷ MACs reduction: **{eff:.2f}** (1.0 = every MAC removed "
                  f"turned into time saved; onnxruntime, largest batch).", ""]
    steps = report.get("steps") or []
    if steps:
        lines += ["## Pruning steps", "",
                  "| step | target | ratio | MACs | params | accuracy (%) | "
                  "fine-tune epochs | proof max diff |", "|---|---|---|---|---|---|---|---|"]
        for s in steps:
            lines.append(f"| {s['step']} | {_fmt(s.get('target'), '.3f')} | "
                         f"{_fmt(s.get('ratio'), '.3f')} | {_human(s.get('macs'))} | "
                         f"{_human(s.get('params'))} | {_fmt(s.get('accuracy'), '.2f')} | "
                         f"{_fmt(s.get('finetune_epochs'), '.2f')} | "
                         f"{_fmt(s.get('max_abs_diff'), '.1e')} |")
        lines.append("")
    total = report.get("finetune_epochs_total")
    if steps and total is not None:
        lines += [f"Fine-tuning budget: {total:.2f} epochs in total over {len(steps)} step(s).",
                  ""]
    notes = report.get("notes") or []
    if notes:
        lines += [f"> {n}" for n in notes] + [""]
    sparsity = (report.get("compressed") or {}).get("weight_sparsity")
    if sparsity:
        size = (report.get("compressed") or {}).get("safetensors_compressed_bytes") or {}
        gz = f", gzip {_human(size.get('gzip_bytes'))}B" if size.get("gzip_bytes") else ""
        lines += [f"Weight sparsity: {sparsity:.1%} of conv/linear weights are zero{gz}.", ""]
    parity = report.get("parity") or {}
    if parity:
        lines += ["## Export parity", ""]
        lines += [f"- {k}: max |diff| {_fmt(v, '.2e')} (passed)" for k, v in parity.items()]
        lines.append("")
    gates = report.get("gates") or []
    if gates:
        lines += ["## Gates", ""]
        lines += [f"- {'PASS' if g['passed'] else 'FAIL'} {g['message']}" for g in gates]
        lines.append("")
    env = report.get("environment") or {}
    if env:
        lines += ["## Environment", ""]
        lines += [f"- {k}: {v}" for k, v in env.items()]
        lines.append("")
    return "\n".join(lines)
