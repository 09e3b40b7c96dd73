"""The ``compress`` command: a thin typer shell over the library.

Each command parses its arguments, calls one library function, prints the outcome and maps
errors to exit codes: 0 ok, 1 a gate or a proof (equivalence, parity) failed, 2 bad input.
Every command takes ``--json``, ``--quiet`` and ``--verbose`` (see :mod:`compress.cli.output`).

Example (a CI step):
    compress gate runs/quickstart --max-accuracy-drop 1.0 --min-speedup 1.5 --junit gates.xml
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import typer

from compress.cli.help import Typer
from compress.cli.output import JsonOption, Output, QuietOption, VerboseOption
from compress.cli.render import apply_summary
from compress.cli.results import register as register_results
from compress.errors import CheckFailed, CompressError, InputError

__all__ = ["app", "main", "resume_command"]

app = Typer(add_completion=True, no_args_is_help=True,
            help="Recipe-driven model compression: prune, fine-tune, export, verify, measure.",
            pretty_exceptions_enable=False)

SetOption = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override a recipe key: "
                         "a.b.c=value (repeatable).")


def _print_version(value: bool) -> None:
    if value:
        from compress import __version__

        typer.echo(f"compress {__version__}")
        raise typer.Exit()


@app.callback()
def _app(version: bool = typer.Option(False, "--version", callback=_print_version,
                                      is_eager=True, help="Print the version and exit.")) -> None:
    """Recipe-driven model compression: prune, fine-tune, export, verify, measure."""


@app.command()
def apply(recipe: Path = typer.Argument(..., help="Recipe YAML file."),
          out: Path | None = typer.Option(None, "--out", help="Output folder "
                                          "(default runs/<recipe name>)."),
          set_: list[str] | None = SetOption,
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing "
                                         "run folder."),
          resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run "
                                      "from its last finished step."),
          json_out: bool = JsonOption, quiet: bool = QuietOption,
          verbose: bool = VerboseOption) -> None:
    """Prune, fine-tune, export and measure the model a recipe describes.

    With --json, stdout holds the report (report.json's content).
    """
    o = Output("apply", json_out=json_out, quiet=quiet, verbose=verbose)
    from compress.recipe.load import load_recipe
    from compress.run.pipeline import run_recipe

    try:
        loaded = load_recipe(recipe, set_ or [])
        with o.progress():
            result = run_recipe(loaded, out, overwrite=overwrite, resume=resume)
    except CompressError as err:
        raise o.fail(err) from None
    except KeyboardInterrupt:
        from compress.run.pipeline import default_out_dir

        command = resume_command(recipe, out or default_out_dir(loaded), set_ or [])
        typer.echo(f"interrupted: the run folder is marked 'interrupted'; continue it with\n"
                   f"  {command}", err=True)
        raise typer.Exit(130) from None
    o.result(result.report)
    o.text(apply_summary(result.report, result.out_dir))
    if o.json or o.quiet:  # the summary above names failed gates; else say it on stderr
        for g in result.report.get("gates", []):
            if not g["passed"]:
                o.problem(f"gate FAIL: {g['message']}")
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def validate(recipe: Path = typer.Argument(..., help="Recipe YAML file."),
             set_: list[str] | None = SetOption, json_out: bool = JsonOption,
             quiet: bool = QuietOption, verbose: bool = VerboseOption) -> None:
    """Check a recipe without running it (keys, types, registry names, paths).

    Side-effect free: no function the recipe names is called, no model's own code is imported
    and nothing is written. With --json: {"ok": true, "recipe_file": ..., "recipe": the
    validated recipe, "notes": [...], "code": [...]}. Notes say what a valid recipe will do that
    may surprise (e.g. no stock transformers folder); code says what apply will import or call.
    """
    o = Output("validate", json_out=json_out, quiet=quiet, verbose=verbose)
    from compress.recipe.load import load_recipe
    from compress.run.preflight import check_recipe, planned_code, recipe_notes

    try:
        r = check_recipe(load_recipe(recipe, set_ or []))
        notes = recipe_notes(r)
        code = planned_code(r)
    except CompressError as err:
        raise o.fail(err) from None
    o.result({"ok": True, "recipe_file": str(recipe), "recipe": r.to_dict(), "notes": notes,
              "code": code})
    o.text(f"{recipe}: valid ({r.model.source} model, {r.data.source} data, "
           f"{r.schedule.kind} schedule)")
    for note in notes:
        o.note(f"note: {note}")
    for line in code:
        o.note(f"code: {line}")


@app.command()
def inspect(recipe: Path = typer.Argument(..., help="Recipe YAML file."),
            set_: list[str] | None = SetOption,
            sensitivity: bool = typer.Option(False, "--sensitivity", help="Also prune each "
                                             "group alone and measure the accuracy drop."),
            samples: int = typer.Option(512, "--samples", help="Evaluation samples for "
                                        "--sensitivity."),
            plot: Path | None = typer.Option(None, "--plot", help="Write the sensitivity plot "
                                             "(PNG)."),
            json_out: bool = JsonOption, quiet: bool = QuietOption,
            verbose: bool = VerboseOption) -> None:
    """Dry run: groups, matched patterns and predicted widths/params/MACs per step."""
    o = Output("inspect", json_out=json_out, quiet=quiet, verbose=verbose)
    from compress.recipe.load import load_recipe
    from compress.run.inspection import inspect_recipe, plot_sensitivity

    try:
        with o.progress():
            info = inspect_recipe(load_recipe(recipe, set_ or []), sensitivity=sensitivity,
                                  eval_samples=samples)
    except CompressError as err:
        raise o.fail(err) from None
    if plot is not None and info.get("sensitivity"):
        plot_sensitivity(info["sensitivity"], plot)
        o.note(f"wrote {plot}")
    o.result(info)
    if not o.json:
        from compress.cli.render import print_inspection

        print_inspection(info)


@app.command()
def schema(markdown: bool = typer.Option(False, "--markdown", help="Print the Markdown recipe "
                                         "reference (docs/recipes.md) instead of the JSON "
                                         "Schema."),
           json_out: bool = JsonOption, quiet: bool = QuietOption,
           verbose: bool = VerboseOption) -> None:
    """Print the recipe JSON Schema, or with --markdown the recipe reference.

    With --json: the JSON Schema, or with --markdown {"markdown": the reference}.
    """
    o = Output("schema", json_out=json_out, quiet=quiet, verbose=verbose)
    if markdown:
        from compress.authoring.reference import render_recipe_reference

        text = render_recipe_reference()
        o.result({"markdown": text})
        # The text ends with its newline: docs/recipes.md must equal it byte for byte.
        o.product(text, nl=False)
        return
    from compress.recipe.load import recipe_json_schema

    schema_ = recipe_json_schema()
    o.result(schema_)
    o.product(json.dumps(schema_, indent=2))


@app.command()
def init(model: str = typer.Option(..., "--model", metavar="SOURCE:NAME",
                                   help="torchvision:resnet50, cifar_resnet:resnet56, "
                                   "huggingface:FOLDER_OR_HUB_ID (or huggingface:module:fn), "
                                   "python:pkg.mod:fn or python:file.py:fn."),
         data: str = typer.Option(..., "--data", metavar="SOURCE[:ARG]",
                                  help="imagefolder:PATH, torchvision:CIFAR10, digits, "
                                  "text:FOLDER (train/dev TSV, CSV or JSON files) or "
                                  "text_lm:FILE (causal-lm token blocks)."),
         target_macs: float | None = typer.Option(None, "--target-macs", help="Fraction of "
                                                  "MACs to remove (default 0.5)."),
         target_sparsity: float | None = typer.Option(None, "--target-sparsity",
                                                      help="Fraction of channels to remove, "
                                                      "instead of a MACs target."),
         target_speedup: float | None = typer.Option(None, "--target-speedup", help="Times "
                                                     "faster on onnxruntime (CPU), e.g. 2: a "
                                                     "latency target instead of a MACs one."),
         architecture: str | None = typer.Option(None, "--architecture", help="cnn or "
                                                 "transformer (default: guessed from the "
                                                 "model name)."),
         checkpoint: str | None = typer.Option(None, "--checkpoint", help="Your trained "
                                               "weights (.safetensors, .pt, .pth, .th)."),
         num_classes: int | None = typer.Option(None, "--num-classes", help="Output classes "
                                                "(default: what the data says, e.g. the class "
                                                "folders of a local imagefolder)."),
         image_size: int | None = typer.Option(None, "--image-size", help="Resize images to "
                                               "this side (default: 224 for torchvision "
                                               "models, else the images' own size)."),
         output: Path | None = typer.Option(None, "-o", "--output", help="Write the recipe to "
                                            "this file (never replaced), with its paths "
                                            "relative to the file's folder, instead of "
                                            "printing it."),
         json_out: bool = JsonOption, quiet: bool = QuietOption,
         verbose: bool = VerboseOption) -> None:
    """Print a commented starter recipe for a model, data and target, or write it with -o.

    Paths on the command line are relative to the current folder; the recipe resolves its own
    against its folder, so use -o rather than redirecting the output to another folder.
    With --json: {"yaml": the commented recipe, "recipe": the same as a mapping, "path": the
    file written or null}.
    """
    o = Output("init", json_out=json_out, quiet=quiet, verbose=verbose)
    import yaml

    from compress.authoring.starter import render_starter_recipe, save_starter_recipe

    try:
        text = render_starter_recipe(model, data, target_macs=target_macs,
                                     target_sparsity=target_sparsity,
                                     target_speedup=target_speedup,
                                     architecture_hint=architecture, checkpoint=checkpoint,
                                     num_classes=num_classes, image_size=image_size,
                                     recipe_dir=output.parent if output else None)
        written = save_starter_recipe(text, output) if output else None
    except CompressError as err:
        raise o.fail(err) from None
    o.result({"yaml": text, "recipe": yaml.safe_load(text),
              "path": str(written) if written else None})
    if written:
        o.note(f"wrote {written}; check it with `compress validate {written}`")
    else:
        o.product(text, nl=False)


@app.command("list")
def list_(json_out: bool = JsonOption, quiet: bool = QuietOption,
          verbose: bool = VerboseOption) -> None:
    """List the registered model sources, datasets, criteria, pruning kinds and schedules.

    With --json: {registry title: [{"name": ..., "description": ...}, ...]}.
    """
    o = Output("list", json_out=json_out, quiet=quiet, verbose=verbose)
    from compress.authoring.reference import list_registries
    from compress.cli.render import print_registries

    registries = list_registries()
    o.result({title: [{"name": n, "description": d} for n, d in entries]
              for title, entries in registries.items()})
    if o.json:
        return
    print_registries(registries)


def resume_command(recipe: Path, out: Path, overrides: list[str]) -> str:
    """The command that continues an interrupted ``compress apply``, ready to paste.

    Example:
        >>> resume_command(Path("my recipe.yaml"), Path("runs/r"), ["finetune.epochs=1"])
        "compress apply 'my recipe.yaml' --out runs/r --set finetune.epochs=1 --resume"
    """
    import shlex

    sets = [arg for item in overrides for arg in ("--set", item)]
    return shlex.join(["compress", "apply", str(recipe), "--out", str(out), *sets, "--resume"])


register_results(app)


def main() -> None:
    try:
        try:
            app()
        except (InputError, CheckFailed) as err:  # raised outside a command body
            typer.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
    except SystemExit as done:
        _end_rank(done)
        raise


def _end_rank(done: SystemExit) -> None:
    """Under a launcher, end this rank now that its output is out, skipping C++ teardown.

    A rank of a finished multi-process run was aborted (SIGABRT from std::terminate on the
    process-group backend's threads) while the interpreter tore down, turning a successful run
    into a failed launch; leaving the group and exiting with ``os._exit`` keeps the exit code.
    """
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1 or "torch" not in sys.modules:
        return
    from compress.finetune.distributed import leave_processes

    if not leave_processes():
        return
    code = done.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
