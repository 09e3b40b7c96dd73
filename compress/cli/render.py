"""What ``compress`` prints for people: the apply summary and rich tables.

The ``--json`` output of each command is built in :mod:`compress.cli.app`; these functions only
draw the human form of the same results.

Example:
    >>> print(apply_summary({"baseline": {"accuracy": 90.0, "macs": 2e6, "params": 10},
    ...                      "compressed": {"accuracy": 89.5, "macs": 1e6, "params": 5},
    ...                      "macs_reduction": 0.5}))
    top-1 accuracy    90.00 % → 89.50 % (-0.50 points)
    MACs              2.00M → 1.00M (50.0% fewer)
    parameters        10 → 5 (50.0% fewer)
    measured speedup  not measured
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.report.figures import key_figures
from compress.report.markdown import architecture_words
from compress.report.proof import proof_cell

__all__ = ["apply_summary", "print_inspection", "print_registries", "print_comparison"]

_HF_NOTE = "no stock transformers folder (hf/) was written: "


def _line(label: str, text: str) -> str:
    return f"{label:<17} {text}".rstrip()


def hf_line(report: dict[str, Any]) -> str | None:
    """Whether ``hf/`` was written (and where), or why not; None for a model that has none."""
    path = (report.get("outputs") or {}).get("hf")
    if path:
        return f"written: {path} (loads with transformers' from_pretrained)"
    why = next((n[len(_HF_NOTE):].rstrip(".") for n in report.get("notes") or []
                if n.startswith(_HF_NOTE)), None)
    return None if why is None else f"not written: {why}"


def apply_summary(report: dict[str, Any], out_dir: Path | None = None) -> str:
    """``compress apply``'s closing lines: accuracy, MACs, parameters, size, latency per engine
    and batch size, the headline speedup, the pruning proof of each step (its max difference,
    or "not proven"), gates, whether ``hf/`` was written, and where the report is."""
    figures = {f.key: f for f in key_figures(report)}
    lines = []

    def add(label: str, key: str) -> None:
        f = figures[key]
        lines.append(_line(label, f.value + (f" ({f.detail})" if f.detail else "")))

    add("top-1 accuracy", "accuracy")
    add("MACs", "macs")
    b, c = report["baseline"], report["compressed"]
    fewer = (f" ({1 - c['params'] / b['params']:.1%} fewer)"
             if b.get("params") and c.get("params") is not None else "")
    lines.append(_line("parameters", f"{b['params']:,} → {c['params']:,}{fewer}"))
    if b.get("onnx_bytes") or c.get("onnx_bytes"):
        add("ONNX size", "size")
    label = "latency"
    for engine, per_batch in (report.get("speedup") or {}).items():
        if engine == "headline" or not per_batch:
            continue
        for bs, ratio in per_batch.items():
            lb = b["latency_ms"][engine][bs]["median"]
            lc = c["latency_ms"][engine][bs]["median"]
            lines.append(_line(label, f"{engine:<11} b{bs:<4} {lb:.3f} ms → {lc:.3f} ms "
                                      f"({ratio:.2f}×)"))
            label = ""
    add("measured speedup", "speedup")
    steps = report.get("steps") or []
    if steps:
        lines.append(_line("pruning proof", ", ".join(
            f"step {st['step']}: {proof_cell(st)}" for st in steps)))
    gates = report.get("gates") or []
    failed = [g for g in gates if not g["passed"]]
    if gates:
        lines.append(_line("gates", f"{len(failed)} of {len(gates)} FAILED" if failed else
                           "passed" if len(gates) == 1 else f"all {len(gates)} passed"))
    lines += [f"gate FAIL: {g['message']}" for g in failed]
    lines += [f"warning: {w}" for w in report.get("warnings") or []]  # e.g. at chance level
    hf = hf_line(report)
    if hf is not None:
        lines.append(_line("hf/", hf))
    if out_dir is not None:
        lines.append(_line("report", str(Path(out_dir) / "report.html")))
    return "\n".join(lines)


def print_inspection(info: dict[str, Any]) -> None:
    """``compress inspect``: groups, ignored patterns, predicted steps, sensitivity."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    m = info["model"]
    console.print(f"model: {m['macs'] / 1e6:.2f}M MACs, {m['params']:,} parameters, input "
                  f"{tuple(m['sample_shape'])}")
    for pattern, hits in info["ignored"].items():
        console.print(f"ignored {pattern!r} matched: {', '.join(hits)}")
    groups = Table(title=f"{len(info['groups'])} pruning groups")
    for col in ("root", "channels", "coupled layers"):
        groups.add_column(col)
    for g in info["groups"]:
        groups.add_row(g["root"], str(g["channels"]), ", ".join(g["members"]))
    console.print(groups)
    searched = info.get("params_target")
    if searched:
        table = Table(title=f"pruning.target.params {searched['target']:g}: candidates "
                            f"(score: {searched['score']}, lowest chosen)")
        for col in ("candidate", "architecture", "params", "score", "skipped because"):
            table.add_column(col)
        for c in searched["candidates"]:
            table.add_row(c["name"] + (" (chosen)" if c["name"] == searched["chosen"] else ""),
                          architecture_words(c.get("architecture")),
                          "n/a" if c.get("params") is None else
                          f"{c['params']:,} (-{c['params_reduction']:.2%})",
                          "n/a" if c.get("score") is None else f"{c['score']:.4g}",
                          c.get("skipped") or "")
        console.print(table)
    steps = Table(title="predicted after each step (no training)")
    timed = info.get("latency_table")
    for col in ("step", "target", "MACs", "params", "MACs reduction",
                *(("latency (layer table)", "speedup") if timed else ())):
        steps.add_column(col)
    for st in info["steps"]:
        steps.add_row(str(st["step"]), f"{st['target']:.3f}", f"{st['macs'] / 1e6:.2f}M",
                      f"{st['params']:,}", f"{st['macs_reduction']:.1%}",
                      *((f"{st['predicted_latency_ms']:.3f} ms",
                         f"{st['predicted_speedup']:.2f}x") if timed else ()))
    console.print(steps)
    if timed:
        hw = timed["hardware"]
        console.print(f"latency predicted from the layer table {timed['table']} (baseline "
                      f"{timed['baseline_predicted_ms']:.3f} ms; onnxruntime on {hw['cpu']}, "
                      f"{hw['threads']} threads, batch {hw['batch']}; conv and linear layers "
                      f"only, not measured on the whole model: compress apply does that)")
    if info.get("run_folder"):
        console.print(f"run folder {info['run_folder']['path']}: {info['run_folder']['state']}")
    if info.get("sensitivity"):
        sens = Table(title="sensitivity: accuracy drop (points) when pruning one group alone")
        ratios = list(info["sensitivity"][0]["drops"])
        sens.add_column("group")
        for r in ratios:
            sens.add_column(f"ratio {r}")
        for row in info["sensitivity"]:
            sens.add_row(row["group"], *(f"{row['drops'][r]:+.2f}" for r in ratios))
        console.print(sens)


def print_registries(registries: dict[str, list[tuple[str, str]]]) -> None:
    """``compress list``: one table per registry."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    for title, entries in registries.items():
        table = Table(title=title, title_justify="left")
        table.add_column("name", style="bold", no_wrap=True)
        table.add_column("description")
        for name, description in entries:
            table.add_row(escape(name), escape(description))  # "[...]" is not rich markup here
        console.print(table)


def print_comparison(result: Any) -> None:
    """``compress compare``: one column per run (a :class:`~compress.report.compare.Comparison`)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    table.add_column("", style="bold", no_wrap=True)
    for name in result.columns:
        table.add_column(name, justify="right", no_wrap=True)
    for label, cells in result.rows:
        table.add_row(label, *cells)
    console = Console()
    if not console.is_terminal:  # piped or captured: never wrap or truncate the table
        widths = [max(len(r[0]) for r in result.rows)] + [
            max([len(c)] + [len(cells[i]) for _, cells in result.rows])
            for i, c in enumerate(result.columns)]
        console = Console(width=max(80, sum(w + 3 for w in widths) + 1))
    console.print(table)
