"""compress/cli/progress.py and Output.progress: the whole run's progress on stderr, as bars
on a terminal and as timed log lines elsewhere (CI), at a bounded rate; third-party progress
bars and load reports silenced unless --verbose."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from compress.cli.app import app
from compress.cli.output import Output
from compress.cli.progress import ProgressBars, ProgressLog
from compress.progress import ProgressEvent
from tests.conftest import tiny_recipe

runner = CliRunner()
LINE = re.compile(r"^\d\d:\d\d:\d\d INFO compress\.progress: (?P<text>.*)$", re.M)


def _apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: str,
           *extra: str) -> list[str]:
    monkeypatch.setattr("compress.cli.output.stderr_is_terminal", lambda: False)
    monkeypatch.setenv("COMPRESS_PROGRESS_INTERVAL", interval)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(
        tmp_path, report={"latency": False}, finetune={"epochs": 1, "max_steps": 8},
        pruning={"target": {"macs": 0.5}, "ratio": None})))
    result = runner.invoke(app, ["apply", str(recipe), "--out", str(tmp_path / "run"), *extra])
    assert result.exit_code == 0, result.output
    assert "━" not in result.stderr  # no bar drawn into a log
    return [m["text"] for m in LINE.finditer(result.stderr)]


def test_a_fine_tune_in_ci_logs_where_it_is_and_when_it_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _apply(tmp_path, monkeypatch, "0")
    during = [t for t in lines if re.match(r"step 1/1 fine-tune: \d+/\d+ \(\d+%\)", t)]
    assert len(during) >= 3, lines  # lines while it runs (one per step), not only at its end
    assert all(re.search(r"\d:\d\d:\d\d elapsed, ETA \d:\d\d:\d\d$", t) for t in during[1:])
    done = [i for i, t in enumerate(lines) if t.startswith("step 1/1 fine-tune: done in ")]
    assert len(done) == 1 and done[0] > lines.index(during[-1])
    # Every phase of the run ends with one line, in order; the width search is one of them.
    ends = [t.split(": done in ")[0] for t in lines if ": done in " in t]
    assert ends == ["baseline evaluation", "width search", "step 1/1 prune",
                    "step 1/1 fine-tune", "step 1/1 evaluation", "export"]
    # Its trials are a heartbeat while it runs (interval 0: every trial), not steps.
    trials = [t for t in lines if t.startswith("width search: ") and "done in" not in t]
    assert trials and all(re.match(r"width search: \d+ done, trial ratio 0\.\d{4}: \d+\.\d%, "
                                    r"\d:\d\d:\d\d elapsed$", t) for t in trials), trials
    search = next(t for t in lines if t.startswith("width search: done"))
    assert re.search(r"channel ratio 0\.\d{4} removes \d+\.\d\d% of MACs \(target 50\.00%\); "
                     rf"{len(trials)} trial prunes\)$", search)


def test_the_rate_is_bounded_per_phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The default interval (15 s) is far longer than this fine-tune: only its end is logged.
    lines = _apply(tmp_path, monkeypatch, "15")
    assert not [t for t in lines if re.match(r"step 1/1 fine-tune: \d+/", t)]
    assert len([t for t in lines if t.startswith("step 1/1 fine-tune: done in")]) == 1
    assert not [t for t in lines if "trial" in t and "done" not in t]


def test_quiet_shows_no_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _apply(tmp_path, monkeypatch, "0", "-q") == []


def test_inspect_sensitivity_shows_its_progress(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("compress.cli.output.stderr_is_terminal", lambda: False)
    monkeypatch.setenv("COMPRESS_PROGRESS_INTERVAL", "0")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, pruning={"ratio": 0.5})))
    result = runner.invoke(app, ["inspect", str(recipe), "--sensitivity", "--samples", "32",
                                 "--json"])
    assert result.exit_code == 0, result.output
    lines = [m["text"] for m in LINE.finditer(result.stderr)]
    during = [t for t in lines if re.match(r"sensitivity: \d+/\d+ \(\d+%\), .+ at 0\.\d+: "
                                           r"[+-]\d+\.\d\d points, ", t)]
    total = int(during[0].split("/")[1].split()[0])
    assert len(during) >= total - 1 and total >= 2, lines  # each group at each ratio
    done = [t for t in lines if t.startswith("sensitivity: done in ")]
    assert len(done) == 1 and done[0].endswith("ratios each)"), lines


def test_log_lines_at_most_one_per_interval_with_an_eta() -> None:
    lines: list[str] = []
    clock = iter(range(0, 1000)).__next__
    show = ProgressLog(lines.append, interval=10.0, clock=lambda: float(clock()))
    for step in range(0, 101):
        show(ProgressEvent("fine-tune", step, 100, "loss 0.5" if step % 20 == 0 else ""))
    show(ProgressEvent("fine-tune", 100, 100, done=True))
    assert len(lines) == 11  # one per 10 s over 100 s, and the end
    assert lines[0] == "fine-tune: 10/100 (10%), loss 0.5, 0:00:10 elapsed, ETA 0:01:30"
    assert lines[-1] == "fine-tune: done in 0:01:41 (100/100, loss 0.5)"


def test_a_silent_phase_gets_heartbeat_lines_in_ci() -> None:
    # An export sends no event between its start and its end: the heartbeat thread writes.
    lines: list[str] = []
    show = ProgressLog(lines.append, interval=0.05, heartbeat=True)
    try:
        show(ProgressEvent("export", 0, 0))
        for _ in range(500):  # until the thread wrote (a loaded machine may be slow)
            if lines:
                break
            time.sleep(0.01)
        show(ProgressEvent("export", 0, 0, "wrote onnx", done=True))
    finally:
        show.close()
    assert lines and re.fullmatch(r"export: \d:\d\d:\d\d elapsed", lines[0]), lines
    assert re.fullmatch(r"export: done in \d:\d\d:\d\d \(wrote onnx\)", lines[-1]), lines
    count = len(lines)
    time.sleep(0.2)  # closed, and nothing running: no more lines
    assert len(lines) == count


def test_a_resumed_fine_tune_estimates_from_where_it_resumed() -> None:
    lines: list[str] = []
    times = iter([0.0, 10.0])
    show = ProgressLog(lines.append, interval=0.0, clock=lambda: next(times))
    show(ProgressEvent("fine-tune", 50, 100))  # resumed at step 50
    show(ProgressEvent("fine-tune", 60, 100))  # 10 steps in 10 s: 40 s left
    assert lines == ["fine-tune: 60/100 (60%), 0:00:10 elapsed, ETA 0:00:40"]


def test_terminal_bars_show_an_eta_and_print_each_phase_end() -> None:
    from rich.console import Console

    console = Console(record=True, force_terminal=True, width=120)
    times = iter([0.0, 5.0, 10.0, 10.0, 11.0, 12.0])
    bars = ProgressBars(console, clock=lambda: next(times))
    bars(ProgressEvent("step 1/1 fine-tune", 0, 100))
    bars(ProgressEvent("step 1/1 fine-tune", 50, 100, "loss 0.3"))
    task = bars.progress.tasks[0]
    assert task.fields["eta"] == "ETA 0:00:05" and task.description == \
        "step 1/1 fine-tune loss 0.3" and task.fields["count"] == "50/100"
    bars(ProgressEvent("step 1/1 fine-tune", 100, 100, done=True))
    bars(ProgressEvent("width search", 0, 0))
    bars(ProgressEvent("width search", 3, 0, "trial ratio 0.2500: 48.0%"))
    assert bars.progress.tasks[0].fields["count"] == "3"  # of an unknown number: no "/?"
    bars(ProgressEvent("width search", 3, 0, "ratio 0.27", done=True))
    assert bars.progress is None  # nothing running: the live display is gone
    text = console.export_text()
    assert "✓ step 1/1 fine-tune: done in 0:00:10 (100/100, loss 0.3)" in text
    assert "✓ width search: done in 0:00:02 (ratio 0.27)" in text


@pytest.mark.parametrize("verbose", [False, True])
def test_third_party_progress_and_load_reports_are_silenced_unless_verbose(
        verbose: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    for key in ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY",
                "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(key, "")  # so that the undo restores what was there before
        monkeypatch.delenv(key)
    before = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()  # where a load report is printed
    try:
        Output("apply", verbose=verbose)
        assert (os.environ.get("TQDM_DISABLE") == "1") is not verbose
        assert (os.environ.get("HF_DATASETS_DISABLE_PROGRESS_BARS") == "1") is not verbose
        quiet = transformers.logging.get_verbosity() == logging.ERROR
        assert quiet is not verbose
    finally:
        transformers.logging.set_verbosity(before)
