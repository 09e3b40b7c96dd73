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
         require_proof: bool | None = typer.Option(
             None, "--require-proof/--no-require-proof", help="Fail unless every pruning step "
             "was proven exact (a skipped proof is 'not proven'); --no-require-proof drops the "
             "recipe's requirement."),
         min_baseline_accuracy: float | None = _threshold(
             "--min-baseline-accuracy", "Smallest top-1 of the model before pruning (%)."),
         above_chance: bool | None = typer.Option(
             None, "--above-chance/--no-above-chance", help="Fail when the baseline or the "
             "compressed model scores at chance level (100 / classes %, plus two standard "
             "errors)."),
         junit: Path | None = typer.Option(None, "--junit", help="Also write JUnit XML: one "
                                           "testcase per gate."),
         markdown: Path | None = typer.Option(None, "--markdown", help="Also write a Markdown "
                                              "table of the gates (e.g. a GitHub step summary)."),
         json_out: bool = JsonOption, quiet: bool = QuietOption,
         verbose: bool = VerboseOption) -> None:
    """Check a finished run against thresholds; exit 1 if any gate fails.

    Thresholds not given here come from the gates in the run's recipe. With --json:
    {"name", "report", "passed", "failed", "gates": [...], "junit", "markdown"}.
    """
    o = Output("gate", json_out=json_out, quiet=quiet, verbose=verbose)
    from compress.gates.run import run_gate

    overrides = {"max_accuracy_drop": max_accuracy_drop, "min_speedup": min_speedup,
                 "max_accuracy_drop_relative": max_accuracy_drop_relative,
                 "max_size_mb": max_size_mb, "min_macs_reduction": min_macs_reduction,
                 "require_proof": require_proof, "min_baseline_accuracy": min_baseline_accuracy,
                 "above_chance": above_chance}
    try:
        run = run_gate(report, overrides, junit=junit, markdown=markdown)
    except CompressError as err:
        raise o.fail(err) from None
    for passed, line in run.lines:
        (o.text if passed else o.problem)(line)
    o.text(run.verdict)
    for path in run.written:
        o.note(f"wrote {path}")
    o.result(run.to_dict())
    if run.failed:
        raise typer.Exit(1)


@app.command("report")
def report_(run_dir: Path = typer.Argument(..., help="Run folder (or its report.json)."),
            fmt: str = typer.Option("md", "--format", "-f", help="md, html or json."),
            out: Path | None = typer.Option(None, "--out", "-o", help="Write to this file "
                                            "instead of stdout (any format)."),
            json_out: bool = JsonOption, quiet: bool = QuietOption,
            verbose: bool = VerboseOption) -> None:
    """Re-render a run's report from its report.json, on stdout or with -o into a file.

    Every format behaves alike: ``compress report RUN -f html > page.html`` and ``-o page.html``
    give the same page. With --json: the report itself when it goes to stdout, else
    {"wrote": path, "format": ...}.
    """
    o = Output("report", json_out=json_out, quiet=quiet, verbose=verbose)
    from compress.report.build import load_report, render_report, write_text_atomic

    try:
        _refuse_unfinished(run_dir)
        data, _ = load_report(run_dir)
        text = render_report(data, fmt)
    except CompressError as err:
        raise o.fail(err) from None
    if out is None:
        o.result(data)
        o.product(text.rstrip("\n"))
    else:
        write_text_atomic(out, text)
        o.result({"wrote": str(out), "format": fmt})
        o.note(f"wrote {out}")


def resume_command(recipe: Path, out: Path, overrides: list[str]) -> str:
    """The command that continues an interrupted ``compress apply``, ready to paste.

    Example:
        >>> resume_command(Path("my recipe.yaml"), Path("runs/r"), ["finetune.epochs=1"])
        "compress apply 'my recipe.yaml' --out runs/r --set finetune.epochs=1 --resume"
    """
    import shlex

    sets = [arg for item in overrides for arg in ("--set", item)]
    return shlex.join(["compress", "apply", str(recipe), "--out", str(out), *sets, "--resume"])


def _refuse_unfinished(run_dir: Path) -> None:
    """A run folder without its report yet: say what state the run is in, not 'no file'."""
    from compress.run.folder import read_status
    from compress.run.owner import describe_state

    if not run_dir.is_dir() or (run_dir / "report.json").is_file():
        return
    status = read_status(run_dir)
    if status is None:
        return
    state = describe_state(run_dir, status)
    then = "wait for it to end" if state.startswith("running") else \
        "continue it with 'compress apply RECIPE --out RUN_DIR --resume'"
    raise InputError(f"{str(run_dir)!r} has no report yet: its run is {state}; {then}")


@app.command()
def compare(runs: list[Path] = typer.Argument(..., help="Run folders (or report.json files), "
                                              "one column each."),
            json_out: bool = JsonOption, quiet: bool = QuietOption,
            verbose: bool = VerboseOption) -> None:
    """Compare finished runs side by side: accuracy, MACs, size, speed, budget, schedule.

    With --json: {"columns": run names, "rows": [{"key", "label", "values": one number per
    run (null where not measured), "text": the cells as printed}]}.
    """
    o = Output("compare", json_out=json_out, quiet=quiet, verbose=verbose)
    from compress.cli.render import print_comparison
    from compress.report.compare import compare_runs

    try:
        for run in runs:
            _refuse_unfinished(run)
        result = compare_runs(runs)
    except CompressError as err:
        raise o.fail(err) from None
    o.result(result.to_dict())
    if o.json:
        return
    print_comparison(result)


@app.command()
def push(run_dir: Path = typer.Argument(..., help="Run folder whose hf/ folder is uploaded."),
         repo_id: str = typer.Argument(..., help="Hub repository, OWNER/NAME (created when "
                                       "missing)."),
         onnx: bool = typer.Option(False, "--onnx", help="Also upload model.onnx (as "
                                   "onnx/model.onnx)."),
         force: bool = typer.Option(False, "--force", help="Push a run that is not finished or "
                                    "whose gates failed."),
         private: bool = typer.Option(False, "--private", help="Create the repository private."),
         revision: str | None = typer.Option(None, "--revision", help="Branch to commit to "
                                             "(default: main)."),
         dry_run: bool = typer.Option(False, "--dry-run", help="List the files that would be "
                                      "uploaded; send nothing."),
         json_out: bool = JsonOption, quiet: bool = QuietOption,
         verbose: bool = VerboseOption) -> None:
    """Upload a finished run's stock transformers folder (hf/, with its model card) to the Hub.

    Uses huggingface_hub's token (HF_TOKEN or `hf auth login`). With --json: {"repo_id": ...,
    "files": [paths in the repository], "bytes": ..., "dry_run": ..., "url"?: ...}.
    """
    o = Output("push", json_out=json_out, quiet=quiet, verbose=verbose)
    from compress.export.push import push_run

    try:
        done = push_run(run_dir, repo_id, onnx=onnx, force=force, private=private,
                        revision=revision, dry_run=dry_run)
    except CompressError as err:
        raise o.fail(err) from None
    o.result(done)
    size = f"{done['bytes'] / 1e6:.1f} MB"
    if dry_run:
        o.text(f"would upload {len(done['files'])} files ({size}) to {repo_id}:")
        for name in done["files"]:
            o.text(f"  {name}")
    else:
        o.text(f"uploaded {len(done['files'])} files ({size}) to {repo_id}"
               + (f": {done['url']}" if done.get("url") else ""))


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
