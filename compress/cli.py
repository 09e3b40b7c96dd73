"""The ``compress`` command: a thin typer shell over the library.

Each command parses its arguments, calls one library function, prints the outcome and maps
errors to exit codes: 0 ok, 1 a gate or a proof (equivalence, parity) failed, 2 bad input.
"""

from __future__ import annotations

import json
import logging
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


def _fail(err: CompressError) -> typer.Exit:
    kind = "error" if isinstance(err, InputError) else "check failed"
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
          json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
          verbose: bool = typer.Option(False, "--verbose", "-v"),
          quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Prune, fine-tune, export and measure the model a recipe describes."""
    _setup_logging(verbose, quiet)
    from compress.pipeline import run_recipe
    from compress.recipe import load_recipe

    try:
        result = run_recipe(load_recipe(recipe, set_ or []), out)
    except CompressError as err:
        raise _fail(err) from None
    if json_out:
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
def schema() -> None:
    """Print the recipe JSON Schema."""
    from compress.recipe import recipe_json_schema

    typer.echo(json.dumps(recipe_json_schema(), indent=2))


def main() -> None:
    try:
        app()
    except (InputError, CheckFailed) as err:  # raised outside a command body
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
