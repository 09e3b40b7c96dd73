"""The commands that read a finished run: ``gate``, ``report``, ``compare`` and ``push``.

Registered on the CLI's Typer app by :func:`register` (compress.cli.app calls it), so this
module does not import the app.

Example:
    >>> from compress.cli.help import Typer
    >>> demo = Typer()
    >>> register(demo)
    >>> sorted(c.name for c in demo.registered_commands)
    ['compare', 'gate', 'push', 'report']
"""

from __future__ import annotations

from pathlib import Path

import typer

from compress.cli.help import Typer
from compress.cli.output import JsonOption, Output, QuietOption, VerboseOption
from compress.errors import CompressError, InputError

__all__ = ["register"]


def register(app: Typer) -> None:
    """Add the run-reading commands to ``app``."""
    app.command("gate")(gate)
    app.command("report")(report_)
    app.command("compare")(compare)
    app.command("push")(push)


def _threshold(flag: str, text: str) -> float | None:
    return typer.Option(None, flag, help=text)


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
