"""``report.md``: a run's report as Markdown, and the cell formatters every renderer shares.

Leaf of the report modules: :mod:`compress.report.build` (building, writing, loading),
:mod:`compress.report.html` and :mod:`compress.report.compare` import from here, never the reverse.

Example:
    >>> md = render_markdown({"name": "demo", "status": "passed", "baseline": {"accuracy": 90.0},
    ...                       "compressed": {"accuracy": 89.0}, "steps": [], "gates": []})
    >>> md.splitlines()[0]
    '# compress report: demo'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from compress.report.figures import environment_rows, human_count, megabytes, signed_points
from compress.report.proof import proof_cell, tolerance_words

__all__ = ["render_markdown", "gates_markdown", "latency_target_lines", "params_target_lines",
           "architecture_words", "human_count", "zeroes_weights"]

# The unit a step records when it masks weights inside dense tensors (unstructured, n:m); a
# step that removes whole channels, heads or neurons records those instead.
_MASKED_UNIT = "weights"


def zeroes_weights(steps: Sequence[Mapping[str, Any]]) -> bool:
    """Did the pruning steps zero weights in place (dense shapes kept) rather than remove them?

    Read from the last step's ``removed_unit`` (what the pruner says it removed), so a new
    pruning kind needs no change here. Reports from before masking kinds existed carry no
    unit: those removed channels.

    Example:
        >>> zeroes_weights([{"removed_unit": "weights"}]), zeroes_weights([{"removed_unit":
        ...                                                                  "channels"}])
        (True, False)
        >>> zeroes_weights([{"step": 1}]), zeroes_weights([])
        (False, False)
    """
    return bool(steps) and steps[-1].get("removed_unit") == _MASKED_UNIT


def latency_target_lines(plan: Mapping[str, Any] | None) -> list[str]:
    """The report's section on a latency target: requested, predicted and measured speedups,
    the hardware the widths were fitted to, and each layer shape's staircase.

    Example:
        >>> lines = latency_target_lines({"requested_speedup": 2.0, "predicted_speedup": 2.1,
        ...     "measured_speedup": 1.97, "report_speedup": None, "ratios": [0.4],
        ...     "planned_by": "closed loop", "attempts": [{"unaccounted_ms": 0.5}],
        ...     "fitted_to_this_machine": True,
        ...     "table": "t.json", "hardware": {"cpu": "X", "cpu_capability": "AVX2",
        ...     "threads": 2, "batch": 64, "onnxruntime": "1.0"}, "staircase": {}})
        >>> lines[2].split("; ")[1:]  # doctest: +NORMALIZE_WHITESPACE
        ['predicted from the layer table 2.10x', 'timed while planning 1.97x',
         "the report's timing: not measured (channel ratio 0.400, closed loop, 1 try)."]
        >>> lines[4][:60]
        'The prediction adds 0.500 ms that the layer table leaves out'
    """
    if not plan:
        return []
    hw = plan.get("hardware") or {}
    tries = len(plan.get("attempts") or [])
    lines = ["## Latency target", "",
             f"Requested **{plan['requested_speedup']:.2f}x** faster; predicted from the layer "
             f"table {_speed(plan.get('predicted_speedup'))}; timed while planning "
             f"{_speed(plan.get('measured_speedup'))}; the report's timing: "
             f"{_speed(plan.get('report_speedup'))} (channel ratio "
             f"{plan['ratios'][-1]:.3f}, {plan['planned_by']}, {tries} "
             f"{'try' if tries == 1 else 'tries'}).", ""]
    if plan.get("widths_ranked_by"):
        lines += [f"Each group's width was planned from {plan['widths_ranked_by']} scores "
                  f"(the plan has no gradients); {plan.get('importance')} chose which channels "
                  f"went.", ""]
    rest = (plan.get("attempts") or [{}])[-1].get("unaccounted_ms")
    if rest:
        lines += [f"The prediction adds {rest:.3f} ms that the layer table leaves out (other "
                  f"ops, overheads), solved from an earlier try's measured speedup.", ""]
    where = (f"onnxruntime {hw.get('onnxruntime')} on {hw.get('cpu')} "
             f"({hw.get('cpu_capability')}), {hw.get('threads')} threads, batch {hw.get('batch')}")
    if plan.get("fitted_to_this_machine"):
        lines += [f"The widths were fitted to this machine: {where}. Table: "
                  f"`{plan.get('table')}` (name it in pruning.target.latency_table to plan the "
                  f"same widths on another machine).", ""]
    else:
        lines += [f"The widths come from the table file `{plan.get('table')}`, measured with "
                  f"{where}.", ""]
    stairs = plan.get("staircase") or {}
    if stairs:
        lines += ["| layer (first of its shape) | output widths where time drops (ms) |",
                  "|---|---|"]
        for name, steps in stairs.items():
            cells = ", ".join(f"{int(w)}: {ms:.3f}" for w, ms in steps)
            lines.append(f"| {name} | {cells} |")
        lines.append("")
    return lines


def architecture_words(arch: Mapping[str, Any] | None) -> str:
    """A candidate's architecture in a few words (``n/a`` when it was not pruned).

    Example:
        >>> architecture_words({"blocks": 3, "heads": 8, "kv_heads": 2, "ffn": 96,
        ...                     "hidden": 64})
        '3 blocks, 8 heads (2 k/v), FFN 96, hidden 64'
    """
    if not arch:
        return "n/a"
    kv = f" ({arch['kv_heads']} k/v)" if arch.get("kv_heads") != arch.get("heads") else ""
    hidden = f", hidden {arch['hidden']}" if arch.get("hidden") is not None else ""
    blocks = f"{arch['blocks']} block{'' if arch['blocks'] == 1 else 's'}"
    return f"{blocks}, {arch['heads']} heads{kv}, FFN {arch['ffn']}{hidden}"


def params_target_lines(plan: Mapping[str, Any] | None) -> list[str]:
    """The report's section on a params target: every width/depth candidate, its architecture,
    parameters and calibration score before recovery (or why it was skipped), the chosen one
    in bold.

    Example:
        >>> lines = params_target_lines({"target": 0.5, "chosen": "depth", "score": "s",
        ...     "base_params": 10, "calibration_samples": 4, "candidates": [{"name": "depth",
        ...     "architecture": None, "params": 5, "params_reduction": 0.5, "score": 2.0,
        ...     "skipped": None}]})
        >>> lines[-2]
        '| **depth** | n/a | 5 (-50.00 %) | 2 |  |'
    """
    if not plan:
        return []
    lines = ["## Parameter target", "",
             f"Remove {plan['target']:.1%} of the {human_count(plan['base_params'])} "
             f"parameters; chosen: **{plan['chosen']}**, the lowest {plan['score']} "
             f"({plan['calibration_samples']} samples, after pruning, before recovery).", "",
             "| candidate | architecture | params | score | skipped because |",
             "|---|---|---|---|---|"]
    for c in plan["candidates"]:
        name = f"**{c['name']}**" if c["name"] == plan["chosen"] else c["name"]
        params = ("n/a" if c.get("params") is None else
                  f"{human_count(c['params'])} ({-100 * c['params_reduction']:+.2f} %)")
        lines.append(f"| {name} | {architecture_words(c.get('architecture'))} | {params} | "
                     f"{_fmt(c.get('score'))} | {c.get('skipped') or ''} |")
    return lines + [""]


def _speed(value: float | None) -> str:
    """A speedup, or that it was not measured (never a number from elsewhere)."""
    return "not measured" if value is None else f"{value:.2f}x"


def gates_markdown(gates: list[dict[str, Any]], *, title: str | None = None) -> str:
    """A Markdown table of gate outcomes (``GateOutcome.to_dict()``), e.g. for a step summary.

    Example:
        >>> print(gates_markdown([{"name": "min_speedup", "passed": True, "measured": 1.8,
        ...                        "threshold": 1.5, "comparison": ">="}]))
        | gate | measured | threshold | result |
        |---|---|---|---|
        | speedup | 1.80x | >= 1.5 | ✅ pass |
    """
    # Lazy: compress.gates.gate pulls in the recipe schema (pydantic), which plain rendering skips.
    from compress.gates.gate import gate_cells

    lines = [f"### {title}", ""] if title else []
    lines += ["| gate | measured | threshold | result |", "|---|---|---|---|"]
    for g in gates:
        label, measured, threshold = (c.replace("|", "\\|") for c in gate_cells(g))
        verdict = "✅ pass" if g.get("passed") else "❌ FAIL"
        lines.append(f"| {label} | {measured} | {threshold} | {verdict} |")
    return "\n".join(lines)


def _fmt(value: Any, spec: str = ".4g", suffix: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)):
        return f"{value:{spec}}{suffix}"
    return str(value)


def render_markdown(report: dict[str, Any]) -> str:
    """A report that fits a CI comment or a GitHub step summary.

    Example:
        >>> md = render_markdown({"name": "demo", "baseline": {"accuracy": 90.0},
        ...                       "compressed": {"accuracy": 89.0}})
        >>> [line for line in md.splitlines() if line.startswith("| top-1")]
        ['| top-1 accuracy (%) | 90.00 | 89.00 | -1.00 points |']
    """
    b, c = report.get("baseline", {}), report.get("compressed", {})
    lines = [f"# compress report: {report.get('name', 'run')}", ""]
    status = report.get("status", "unknown")
    lines += [f"**Status:** {status}", ""]
    lines += ["| | baseline | compressed | change |", "|---|---|---|---|"]
    acc_b, acc_c = b.get("accuracy"), c.get("accuracy")
    drop = None if acc_b is None or acc_c is None else acc_b - acc_c
    lines.append(f"| top-1 accuracy (%) | {_fmt(acc_b, '.2f')} | {_fmt(acc_c, '.2f')} | "
                 f"{'n/a' if drop is None else signed_points(-drop)} |")
    if b.get("perplexity") is not None:
        lines.append(f"| perplexity | {_fmt(b.get('perplexity'), '.2f')} | "
                     f"{_fmt(c.get('perplexity'), '.2f')} | |")
    for key, label in (("macs", "MACs"), ("params", "parameters"), ("onnx_bytes", "ONNX size")):
        vb, vc = b.get(key), c.get(key)
        ratio = f"{vb / vc:.2f}x smaller" if isinstance(vb, (int, float)) and vc else "n/a"
        shown = megabytes if key == "onnx_bytes" else human_count
        lines.append(f"| {label} | {shown(vb)} | {shown(vc)} | {ratio} |")
    speed = report.get("speedup") or {}
    for engine in ("onnxruntime", "torch"):
        for bs, ratio in (speed.get(engine) or {}).items():
            lb = (b.get("latency_ms") or {}).get(engine, {}).get(bs, {})
            lc = (c.get("latency_ms") or {}).get(engine, {}).get(bs, {})
            lines.append(f"| {engine} latency, batch {bs} (ms, median) | "
                         f"{_fmt(lb.get('median'), '.3f')} | {_fmt(lc.get('median'), '.3f')} | "
                         f"{_fmt(ratio, '.2f')}x faster |")
    lines.append("")
    gates = report.get("gates") or []
    if gates:  # right below the figures they judge, above the details
        lines += ["## Gates", "", gates_markdown(gates), ""]
    eff = report.get("speedup_per_macs_reduction")
    if eff is not None:
        lines += [f"Measured speedup ÷ MACs reduction: **{eff:.2f}** (1.0 = every MAC removed "
                  f"turned into time saved; onnxruntime, largest batch).", ""]
    lines += latency_target_lines(report.get("latency_target"))
    lines += params_target_lines(report.get("params_target"))
    steps = report.get("steps") or []
    if steps:
        lines += ["## Pruning steps", "",
                  "| step | target | ratio | MACs | params | accuracy (%) | "
                  "fine-tune epochs | proof max diff |", "|---|---|---|---|---|---|---|---|"]
        for s in steps:
            lines.append(f"| {s['step']} | {_fmt(s.get('target'), '.3f')} | "
                         f"{_fmt(s.get('ratio'), '.3f')} | {human_count(s.get('macs'))} | "
                         f"{human_count(s.get('params'))} | {_fmt(s.get('accuracy'), '.2f')} | "
                         f"{_fmt(s.get('finetune_epochs'), '.2f')} | "
                         f"{proof_cell(s)} |")
        lines.append("")
        proven = [s for s in steps if s.get("proof_tolerance")]
        if proven:
            lines += ["Proof tolerance: " + "; ".join(
                f"step {s['step']} {tolerance_words(s['proof_tolerance'], lead='')} "
                f"({s.get('proof_passes') or '?'} forward passes)" for s in proven) + ".", ""]
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
        gz = f", gzip {human_count(size.get('gzip_bytes'))}B" if size.get("gzip_bytes") else ""
        lines += [f"Weight sparsity: {sparsity:.1%} of conv/linear weights are zero{gz}.", ""]
    parity = report.get("parity") or {}
    if parity:
        lines += ["## Export parity", ""]
        tolerances = report.get("parity_tolerance") or {}
        lines += [f"- {k}: max |diff| {_fmt(v, '.2e')} (passed{tolerance_words(tolerances.get(k))})"
                  for k, v in parity.items()]
        lines.append("")
    env = report.get("environment") or {}
    if env:
        lines += ["## Environment", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {v.replace('|', chr(92) + '|')} |" for k, v in environment_rows(env)]
        lines.append("")
    return "\n".join(lines)
