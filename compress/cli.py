"""The ``compress`` command: a thin typer shell over the library.

Each command parses its arguments, calls one library function, prints the outcome and maps
errors to exit codes: 0 ok, 1 a gate or a proof (equivalence, parity) failed, 2 bad input.

Example (a CI step):
    compress gate runs/quickstart --max-accuracy-drop 1.0 --min-speedup 1.5 --junit gates.xml
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import typer

from compress.errors import CheckFailed, CompressError, InputError

__all__ = ["app", "main"]

app = typer.Typer(add_completion=True, no_args_is_help=True,
                  help="Recipe-driven model compression: prune, fine-tune, export, verify, "
                       "measure.", pretty_exceptions_enable=False)

SetOption = typer.Option(None, "--set", help="Override a recipe key: a.b.c=value (repeatable).")


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    if _rank() != 0:  # under torchrun / accelerate launch rank 0 speaks for the run
        level = max(level, logging.WARNING)
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, rich_tracebacks=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root = logging.getLogger("compress")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _rank() -> int:
    """This process's rank under torchrun / accelerate launch (``RANK``); 0 otherwise."""
    return int(os.environ.get("RANK", "0") or 0)


def _fail(err: CompressError) -> typer.Exit:
    kind = "error" if isinstance(err, InputError) else "check failed"
    if _rank() == 0:  # every rank of a launch fails alike; say it once
        typer.echo(f"{kind}: {err}", err=True)
    return typer.Exit(err.exit_code)


def _summary(report: dict[str, Any]) -> str:
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
    for g in report.get("gates", []):
        lines.append(f"gate {'PASS' if g['passed'] else 'FAIL'}: {g['message']}")
    return "\n".join(lines)


@app.command()
def apply(recipe: Path = typer.Argument(..., help="Recipe YAML file."),
          out: Path | None = typer.Option(None, "--out", help="Output folder "
                                          "(default runs/<recipe name>)."),
          set_: list[str] | None = SetOption,
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing "
                                         "run folder."),
          resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run "
                                      "from its last finished step."),
          json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
          verbose: bool = typer.Option(False, "--verbose", "-v"),
          quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Prune, fine-tune, export and measure the model a recipe describes."""
    _setup_logging(verbose, quiet)
    from compress.pipeline import run_recipe
    from compress.recipe import load_recipe

    try:
        result = run_recipe(load_recipe(recipe, set_ or []), out, overwrite=overwrite,
                            resume=resume)
    except CompressError as err:
        raise _fail(err) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: the run folder is marked 'interrupted'; continue it with "
                   "--resume", err=True)
        raise typer.Exit(130) from None
    if _rank() != 0:
        pass  # rank 0 prints; every rank exits with the same code
    elif json_out:
        typer.echo(json.dumps(result.report, indent=2))
    else:
        typer.echo(_summary(result.report))
        typer.echo(f"outputs: {result.out_dir}")
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def validate(recipe: Path = typer.Argument(..., help="Recipe YAML file."),
             set_: list[str] | None = SetOption) -> None:
    """Check a recipe without running it (keys, types, registry names, paths)."""
    from compress.recipe import load_recipe
    from compress.validate import check_recipe

    try:
        r = check_recipe(load_recipe(recipe, set_ or []))
    except CompressError as err:
        raise _fail(err) from None
    typer.echo(f"{recipe}: valid ({r.model.source} model, {r.data.source} data, "
               f"{r.schedule.kind} schedule)")


@app.command()
def inspect(recipe: Path = typer.Argument(..., help="Recipe YAML file."),
            set_: list[str] | None = SetOption,
            sensitivity: bool = typer.Option(False, "--sensitivity", help="Also prune each "
                                             "group alone and measure the accuracy drop."),
            samples: int = typer.Option(512, "--samples", help="Evaluation samples for "
                                        "--sensitivity."),
            plot: Path | None = typer.Option(None, "--plot", help="Write the sensitivity plot "
                                             "(PNG)."),
            json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
            verbose: bool = typer.Option(False, "--verbose", "-v"),
            quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Dry run: groups, matched patterns and predicted widths/params/MACs per step."""
    _setup_logging(verbose, quiet)
    from compress.inspection import inspect_recipe, plot_sensitivity
    from compress.recipe import load_recipe

    try:
        info = inspect_recipe(load_recipe(recipe, set_ or []), sensitivity=sensitivity,
                              eval_samples=samples)
    except CompressError as err:
        raise _fail(err) from None
    if plot is not None and info.get("sensitivity"):
        plot_sensitivity(info["sensitivity"], plot)
    if json_out:
        typer.echo(json.dumps(info, indent=2))
        return
    _print_inspection(info)


def _print_inspection(info: dict[str, Any]) -> None:
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
    for col in ("step", "target", "MACs", "params", "MACs reduction"):
        steps.add_column(col)
    for st in info["steps"]:
        steps.add_row(str(st["step"]), f"{st['target']:.3f}", f"{st['macs'] / 1e6:.2f}M",
                      f"{st['params']:,}", f"{st['macs_reduction']:.1%}")
    console.print(steps)
    if info.get("sensitivity"):
        sens = Table(title="sensitivity: accuracy drop (points) when pruning one group alone")
        ratios = list(info["sensitivity"][0]["drops"])
        sens.add_column("group")
        for r in ratios:
            sens.add_column(f"ratio {r}")
        for row in info["sensitivity"]:
            sens.add_row(row["group"], *(f"{row['drops'][r]:+.2f}" for r in ratios))
        console.print(sens)


@app.command()
def schema(markdown: bool = typer.Option(False, "--markdown", help="Print the Markdown recipe "
                                         "reference (docs/recipes.md) instead of the JSON "
                                         "Schema.")) -> None:
    """Print the recipe JSON Schema, or with --markdown the recipe reference."""
    if markdown:
        from compress.docs import render_recipe_reference

        # The text ends with its newline: docs/recipes.md must equal it byte for byte.
        typer.echo(render_recipe_reference(), nl=False)
        return
    from compress.recipe import recipe_json_schema

    typer.echo(json.dumps(recipe_json_schema(), indent=2))


@app.command()
def init(model: str = typer.Option(..., "--model", help="SOURCE:NAME: torchvision:resnet50, "
                                   "cifar_resnet:resnet56, python:pkg.mod:fn or "
                                   "python:file.py:fn."),
         data: str = typer.Option(..., "--data", help="SOURCE[:ARG]: imagefolder:PATH, "
                                  "torchvision:CIFAR10 or digits."),
         target_macs: float | None = typer.Option(None, "--target-macs", help="Fraction of "
                                                  "MACs to remove (default 0.5)."),
         target_sparsity: float | None = typer.Option(None, "--target-sparsity",
                                                      help="Fraction of channels to remove, "
                                                      "instead of a MACs target."),
         architecture: str | None = typer.Option(None, "--architecture", help="cnn or "
                                                 "transformer (default: guessed from the "
                                                 "model name).")) -> None:
    """Print a commented starter recipe for a model, data and target (redirect it to a file)."""
    from compress.starter import render_starter_recipe

    try:
        text = render_starter_recipe(model, data, target_macs=target_macs,
                                     target_sparsity=target_sparsity,
                                     architecture_hint=architecture)
    except CompressError as err:
        raise _fail(err) from None
    typer.echo(text, nl=False)


@app.command("list")
def list_() -> None:
    """List the registered model sources, datasets, criteria, pruning kinds and schedules."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from compress.docs import list_registries

    console = Console()
    for title, entries in list_registries().items():
        table = Table(title=title, title_justify="left")
        table.add_column("name", style="bold", no_wrap=True)
        table.add_column("description")
        for name, description in entries:
            table.add_row(escape(name), escape(description))  # "[...]" is not rich markup here
        console.print(table)


def _threshold(flag: str, text: str) -> float | None:
    return typer.Option(None, flag, help=text)


@app.command()
def gate(report: Path = typer.Argument(..., help="report.json, or the run folder holding it."),
         max_accuracy_drop: float | None = _threshold(
             "--max-accuracy-drop", "Largest top-1 drop, absolute percentage points."),
         max_accuracy_drop_relative: float | None = _threshold(
             "--max-accuracy-drop-relative", "Largest top-1 drop, percent of the baseline."),
         min_speedup: float | None = _threshold(
             "--min-speedup", "Smallest onnxruntime speedup at the largest batch size."),
         max_size_mb: float | None = _threshold("--max-size-mb", "Largest ONNX file (MB)."),
         min_macs_reduction: float | None = _threshold(
             "--min-macs-reduction", "Smallest fraction of MACs removed (0..1)."),
         junit: Path | None = typer.Option(None, "--junit", help="Also write JUnit XML: one "
                                           "testcase per gate."),
         markdown: Path | None = typer.Option(None, "--markdown", help="Also write a Markdown "
                                              "table of the gates (e.g. a GitHub step summary).")
         ) -> None:
    """Check a finished run against thresholds; exit 1 if any gate fails.

    Thresholds not given here come from the gates in the run's recipe.
    """
    from compress.gate import check_report
    from compress.junit import gates_junit_xml
    from compress.fsutil import write_text_atomic
    from compress.report import gates_markdown, load_report

    overrides = {"max_accuracy_drop": max_accuracy_drop, "min_speedup": min_speedup,
                 "max_accuracy_drop_relative": max_accuracy_drop_relative,
                 "max_size_mb": max_size_mb, "min_macs_reduction": min_macs_reduction}
    try:
        data, path = load_report(report)
        outcomes = check_report(data, overrides)
    except CompressError as err:
        raise _fail(err) from None
    name = str(data.get("name") or path.parent.name)
    failed = sum(not o.passed for o in outcomes)
    for o in outcomes:
        origin = "  [from the recipe]" if o.source == "recipe" else ""
        typer.echo(f"{'PASS' if o.passed else 'FAIL'} {o.message}{origin}")
    verdict = f"{failed} of {len(outcomes)} gates failed" if failed else \
        f"all {len(outcomes)} gates passed"
    typer.echo(f"{name}: {verdict}")
    if junit:
        write_text_atomic(junit, gates_junit_xml(
            outcomes, name, timestamp=data.get("created"),
            properties={"report": path, "status": data.get("status", "unknown")}))
        typer.echo(f"wrote {junit}", err=True)
    if markdown:
        title = f"compress gates: {name}: {'FAILED' if failed else 'passed'}"
        write_text_atomic(markdown, gates_markdown([o.to_dict() for o in outcomes], title=title)
                          + "\n")
        typer.echo(f"wrote {markdown}", err=True)
    if failed:
        raise typer.Exit(1)


@app.command("report")
def report_(run_dir: Path = typer.Argument(..., help="Run folder (or its report.json)."),
            fmt: str = typer.Option("md", "--format", "-f", help="md, html or json."),
            out: Path | None = typer.Option(None, "--out", help="Write here instead (default: "
                                            "stdout for md/json, RUN_DIR/report.html for html).")
            ) -> None:
    """Re-render a run's report from its report.json."""
    from compress.report import load_report, render_report, write_text_atomic

    try:
        data, path = load_report(run_dir)
        text = render_report(data, fmt)
    except CompressError as err:
        raise _fail(err) from None
    target = out or (path.parent / "report.html" if fmt == "html" else None)
    if target is None:
        typer.echo(text.rstrip("\n"))
    else:
        write_text_atomic(target, text)
        typer.echo(f"wrote {target}")


@app.command()
def compare(runs: list[Path] = typer.Argument(..., help="Run folders (or report.json files), "
                                              "one column each.")) -> None:
    """Compare finished runs side by side: accuracy, MACs, size, speed, budget, schedule."""
    from rich.console import Console
    from rich.table import Table

    from compress.compare import compare_runs

    try:
        result = compare_runs(runs)
    except CompressError as err:
        raise _fail(err) from None
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


def main() -> None:
    try:
        app()
    except (InputError, CheckFailed) as err:  # raised outside a command body
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
