"""What ``compress`` prints for people: the apply summary and rich tables.

The ``--json`` output of each command is built in :mod:`compress.cli.app`; these functions only
draw the human form of the same results.

Example:
    >>> print(apply_summary({"baseline": {"accuracy": 90.0, "macs": 2e6, "params": 10},
    ...                      "compressed": {"accuracy": 89.5, "macs": 1e6, "params": 5},
    ...                      "macs_reduction": 0.5}))
    top-1 accuracy  90.00% -> 89.50% (-0.50 points)
    MACs            2.00M -> 1.00M (50.0% fewer)
    parameters      10 -> 5
"""

from __future__ import annotations

from typing import Any

from compress.report.proof import proof_cell

__all__ = ["apply_summary", "print_inspection", "print_registries", "print_comparison"]


def apply_summary(report: dict[str, Any]) -> str:
    """``compress apply``'s closing lines: accuracy, MACs, parameters, latency, the pruning
    proof of each step (its max difference, or "not proven"), gates."""
    b, c = report["baseline"], report["compressed"]
    lines = [f"top-1 accuracy  {b['accuracy']:.2f}% -> {c['accuracy']:.2f}% "
             f"({c['accuracy'] - b['accuracy']:+.2f} points)",
             f"MACs            {b['macs'] / 1e6:.2f}M -> {c['macs'] / 1e6:.2f}M "
             f"({report['macs_reduction']:.1%} fewer)",
             f"parameters      {b['params']:,} -> {c['params']:,}"]
    for engine, per_batch in (report.get("speedup") or {}).items():
        if engine == "headline" or not per_batch:
            continue
        for bs, ratio in per_batch.items():
            lb = b["latency_ms"][engine][bs]["median"]
            lc = c["latency_ms"][engine][bs]["median"]
            lines.append(f"{engine:<11} b{bs:<3} {lb:.3f} ms -> {lc:.3f} ms ({ratio:.2f}x)")
    steps = report.get("steps") or []
    if steps:
        lines.append("pruning proof   " + ", ".join(
            f"step {st['step']}: {proof_cell(st)}" for st in steps))
    for g in report.get("gates", []):
        lines.append(f"gate {'PASS' if g['passed'] else 'FAIL'}: {g['message']}")
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
