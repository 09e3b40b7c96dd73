"""Report rendering (md, json, html), ``compress report``, ``compress compare``, and the HTML
page in a real headless browser when chromium is installed."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from compress.cli.app import app
from compress.measure.counts import onnx_widths
from compress.report.build import build_report, render_report, write_report
from compress.report.compare import COMPARE_ROWS, compare_reports, compare_runs
from compress.report.html import markdown_to_html, report_plots
from compress.report.markdown import zeroes_weights
from tests.gates.test_gate import make_report, write_run

runner = CliRunner()
_IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
_PLOT_BLUE = np.array([31, 119, 180])  # matplotlib's C0, the "compressed" colour
_BANNER_GREEN = np.array([0x1a, 0x7f, 0x37])  # report.html's "passed" status fill
_VERDICT_GREEN = np.array([0xda, 0xfb, 0xe1])  # a passed gate's verdict cell


def _external_urls(page: str) -> list[str]:
    """Every src/href attribute or CSS url() that would leave the file."""
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page, flags=re.I)
    refs += re.findall(r"url\(\s*['\"]?([^'\")]+)", page, flags=re.I)
    return [r for r in refs if not r.startswith(("data:", "#"))]


def _iterative_unstructured() -> dict[str, Any]:
    report = make_report(name="sparse", kind="unstructured", schedule="iterative")
    report.pop("baseline_widths")
    report["steps"] = [
        {**report["steps"][0], "step": i + 1, "target": t, "macs_reduction": 0.0,
         "accuracy": 99.4 - i * 0.2, "removed_unit": "weights",
         "layers": {"0": t, "3": t, "7": t}}
        for i, t in enumerate((0.26, 0.46, 0.6))]
    report["finetune_epochs_total"] = 9.0
    return report


def _old_format() -> dict[str, Any]:
    """A report from before ``kind``/``schedule`` were top-level and ``layers`` was ``widths``."""
    report = make_report(name="old")
    for key in ("kind", "schedule", "finetune_epochs_total", "baseline_widths"):
        report.pop(key)
    report["steps"][0]["widths"] = report["steps"][0].pop("layers")
    return report


def test_markdown_and_json_render() -> None:
    report = make_report()
    md = render_report(report, "md")
    assert md.startswith("# compress report: quickstart\n")
    assert "| top-1 accuracy (%) | 99.44 | 99.17 | -0.27 points |" in md
    assert "| accuracy drop | 0.27 points | <= 2.0 | ✅ pass |" in md
    assert json.loads(render_report(report, "json")) == report


@pytest.mark.parametrize(("diff", "proof", "cell"), [
    (1.43e-06, "proven", "1.4e-06"),
    (None, "not proven", "not proven")])
def test_step_proof_cell_in_md_html_and_summary(diff, proof, cell) -> None:
    from compress.cli.render import apply_summary

    report = make_report()
    report["steps"][0].update(max_abs_diff=diff, proof=proof)
    md = render_report(report, "md")
    row = next(line for line in md.splitlines() if line.startswith("| 1 |"))
    assert row.endswith(f"| {cell} |") and (diff is not None or "e+00" not in row)
    assert f"<td>{cell}</td>" in render_report(report, "html")
    assert f"pruning proof     step 1: {cell}" in apply_summary(report)


def test_build_report_notes_unproven_steps(tmp_path: Path) -> None:
    report = _one_step_build(tmp_path, "structured", "channels", diff=None)
    assert report["steps"][0]["max_abs_diff"] is None
    assert report["notes"] == ["pruning step(s) 1: not proven (pruning.verify is false, no "
                               "equivalence check ran)."]


@pytest.mark.parametrize("report", [make_report(), _iterative_unstructured(), _old_format(),
                                    make_report(steps=[], speedup={"headline": None},
                                                baseline={"accuracy": 90.0, "macs": 1})],
                         ids=["structured", "unstructured", "old-format", "no-data"])
def test_html_is_self_contained_with_three_plots(report: dict[str, Any]) -> None:
    page = render_report(report, "html")
    pngs = _IMG.findall(page)
    assert len(pngs) == 3
    assert all(base64.b64decode(p).startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert _external_urls(page) == []
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<h2>Plots</h2>" in page and "<table>" in page


def test_html_tables_and_escaping() -> None:
    page = render_report(make_report(name="<script>alert(1)</script>"), "html")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<th>gate</th><th>measured</th><th>threshold</th><th>result</th>" in page
    assert '<td>accuracy drop</td><td>0.27 points</td><td>&lt;= 2.0</td>' \
           '<td><span class="pass">PASS</span></td>' in page
    html = markdown_to_html("## H\n\n- a **b**\n- `c`\n\n> note\n\ntext | with pipe\n"
                            "| x \\| y | z |\n|---|---|\n| 1 | 2 |")
    assert "<h2>H</h2>" in html and "<li>a <strong>b</strong></li>" in html
    assert "<li><code>c</code></li>" in html and "<blockquote><p>note</p></blockquote>" in html
    assert "<p>text | with pipe</p>" in html and "<th>x | y</th><th>z</th>" in html


def test_write_report_writes_json_md_and_html(tmp_path: Path) -> None:
    paths = write_report(make_report(), tmp_path / "run")
    assert [p.name for p in paths] == ["report.json", "report.md", "report.html"]
    assert all(p.is_file() for p in paths)
    assert len(_IMG.findall(paths[2].read_text())) == 3


def test_baseline_widths_from_the_baseline_onnx(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    inits = [helper.make_tensor("conv.weight", TensorProto.FLOAT, [16, 3, 1, 1], [0.0] * 48),
             helper.make_tensor("head.weight", TensorProto.FLOAT, [4, 16], [0.0] * 64)]
    graph = helper.make_graph([], "g", [], [], initializer=inits)
    onnx.save(helper.make_model(graph), tmp_path / "model.onnx")
    layers = {"conv": 8, "head": 4, "folded": 2}
    assert onnx_widths(tmp_path / "model.onnx", layers) == {"conv": 16, "head": 4}
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    assert onnx_widths(tmp_path / "broken.onnx", layers) == {}


def test_plots_follow_what_the_steps_removed_not_the_kind_name() -> None:
    sparse = _iterative_unstructured()
    assert zeroes_weights(sparse["steps"]) and not zeroes_weights(make_report()["steps"])
    renamed = {**sparse, "kind": "block-sparse", "recipe": {"pruning": {"kind": "block-sparse"}}}
    assert render_report(renamed, "html") == render_report(sparse, "html")
    # The same steps recorded as removed channels are drawn as widths, not kept weights.
    as_channels = {**sparse, "steps": [{**s, "removed_unit": "channels"} for s in sparse["steps"]]}
    assert report_plots(as_channels)[2] != report_plots(sparse)[2]


def _one_step_build(tmp_path: Path, kind: str, unit: str,
                    diff: float | None = 0.0) -> dict[str, Any]:
    """build_report for a recipe of pruning kind ``kind`` whose one step removed ``unit``s."""
    import onnx
    from onnx import TensorProto, helper
    from torch import nn

    weight = helper.make_tensor("conv.weight", TensorProto.FLOAT, [16, 3, 1, 1], [0.0] * 48)
    (tmp_path / "baseline").mkdir(parents=True)
    onnx.save(helper.make_model(helper.make_graph([], "g", [], [], initializer=[weight])),
              tmp_path / "baseline" / "model.onnx")
    recipe = SimpleNamespace(name="new", pruning=SimpleNamespace(kind=kind),
                             schedule=SimpleNamespace(kind="one-shot"), to_dict=dict)
    step = {"step": 1, "target": 0.5, "ratio": 0.5, "macs": 50, "params": 5,
            "macs_reduction": 0.5, "params_reduction": 0.5, "accuracy": 80.0, "loss": 0.5,
            "finetune_epochs": 1.0, "groups": 1, "removed": 8, "removed_unit": unit,
            "max_abs_diff": diff, "proof": "proven" if diff is not None else "not proven",
            "layers": {"conv": 8 if unit != "weights" else 0.5}}
    return build_report(recipe, baseline={"accuracy": 81.0, "loss": 0.4, "samples": 10,
                                          "macs": 100, "params": 10, "onnx_bytes": 1000},
                        steps=[step], exported={"parity": {}, "onnx": str(tmp_path / "m.onnx")},
                        latency=None, timing={}, model=nn.Linear(4, 4))


def test_build_report_reads_masking_from_the_steps(tmp_path: Path) -> None:
    # Kind names build_report has never heard of: the steps' unit decides.
    masked = _one_step_build(tmp_path / "a", "block-sparse", "weights")
    assert masked["notes"][0].startswith("block-sparse sparsity zeroes weights but keeps dense")
    assert "baseline_widths" not in masked
    removed = _one_step_build(tmp_path / "b", "channel-v2", "channels")
    assert removed["notes"] == [] and removed["baseline_widths"] == {"conv": 16}
    assert removed["kind"] == "channel-v2"


def test_report_command_formats(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", make_report())
    md = runner.invoke(app, ["report", str(run)])
    assert md.exit_code == 0 and md.stdout.startswith("# compress report: quickstart")
    js = runner.invoke(app, ["report", str(run / "report.json"), "--format", "json"])
    assert js.exit_code == 0 and json.loads(js.stdout)["name"] == "quickstart"
    # Every format prints to stdout, html too; -o writes the same text to a file instead.
    (run / "report.html").unlink(missing_ok=True)
    html = runner.invoke(app, ["report", str(run), "--format", "html"])
    assert html.exit_code == 0 and html.stdout.startswith("<!DOCTYPE html>")
    assert len(_IMG.findall(html.stdout)) == 3 and not (run / "report.html").exists()
    for fmt, head in (("md", "# compress report"), ("html", "<!DOCTYPE html>"),
                      ("json", "{")):
        out = tmp_path / "elsewhere" / f"r.{fmt}"
        wrote = runner.invoke(app, ["report", str(run), "-f", fmt, "-o", str(out)])
        assert wrote.exit_code == 0 and wrote.stdout == "" and str(out) in wrote.stderr
        assert out.read_text().startswith(head)
    assert (tmp_path / "elsewhere" / "r.html").read_text().rstrip("\n") == \
        html.stdout.rstrip("\n")


@pytest.mark.parametrize("args, fragment", [
    (["--format", "pdf"], "unknown report format 'pdf'; allowed formats: md, html, json"),
    (["--format", "md"], "does not exist"),
])
def test_report_command_bad_input(tmp_path: Path, args: list[str], fragment: str) -> None:
    target = write_run(tmp_path / "run", make_report()) if "pdf" in args else tmp_path / "no"
    result = runner.invoke(app, ["report", str(target), *args])
    assert result.exit_code == 2 and fragment in result.stderr
    assert "Traceback" not in result.output


def test_compare_rows() -> None:
    table = compare_reports([("a", make_report()), ("b", _iterative_unstructured()),
                             ("c", _old_format())])
    assert table.columns == ["a", "b", "c"]
    rows = dict(table.rows)
    assert [label for label, _ in table.rows] == [row[0] for row in COMPARE_ROWS]
    assert rows["top-1 accuracy before (%)"] == ["99.44", "99.44", "99.44"]
    assert rows["accuracy drop"][0] == "0.27 points (0.27 %)"
    assert rows["MACs reduction"][0] == "53.4%"
    assert rows["speedup (onnxruntime, largest batch)"][0] == "1.83x"
    assert rows["speedup ÷ MACs reduction"][0] == "0.85"
    assert rows["fine-tune epochs (total)"] == ["3.00", "9.00", "3.00"]  # old: summed steps
    assert rows["schedule"] == ["one-shot (1 step)", "iterative (3 steps)", "one-shot (1 step)"]
    assert rows["kind"] == ["structured", "unstructured", "structured"]
    values = dict(table.values)  # the same figures as numbers, for --json
    assert values["accuracy_before"] == [99.44, 99.44, 99.44]
    assert values["accuracy_drop_points"][0] == pytest.approx(0.27)
    assert values["macs_reduction"][0] == pytest.approx(0.534, abs=1e-3)
    assert values["speedup"][0] == pytest.approx(1.83, abs=5e-3)
    assert values["params"][0] == {"before": 520394, "after": 250114}


def test_compare_command(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", make_report())
    b = write_run(tmp_path / "b", _iterative_unstructured())
    result = runner.invoke(app, ["compare", str(a), str(b / "report.json")])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "quickstart" in line)
    assert "sparse" in header
    for label, *_ in COMPARE_ROWS:
        assert label in result.stdout
    as_json = json.loads(runner.invoke(app, ["compare", str(a), str(b), "--json"]).stdout)
    assert as_json["columns"] == ["quickstart", "sparse"]
    for row in as_json["rows"]:  # numbers (or null), never a pre-formatted string
        assert len(row["values"]) == 2 and len(row["text"]) == 2
        if row["key"] not in ("schedule", "kind", "status"):
            assert all(v is None or isinstance(v, (int, float, dict)) for v in row["values"])
    top = {row["key"]: row["values"] for row in as_json["rows"]}
    assert top["accuracy_before"] == [99.44, 99.44] and isinstance(top["speedup"][0], float)
    same = write_run(tmp_path / "c", make_report())  # same name as a: columns become paths
    assert compare_runs([a, same]).columns == [str(a), str(same)]
    bad = runner.invoke(app, ["compare", str(a), str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "does not exist" in bad.stderr


# -- a real browser -------------------------------------------------------------------------

_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Our page has no scripts: any console message (errors are logged as "CONSOLE") or uncaught
# exception means something in it ran or failed.
_CONSOLE = re.compile(r"CONSOLE|Uncaught")


def _screenshot(page: Path, out: Path) -> str:
    proc = subprocess.run(
        [_CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={out.parent / ('profile-' + out.stem)}",
         f"--screenshot={out}", "--window-size=1200,2400", "--enable-logging=stderr", "--v=0",
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


@pytest.mark.skipif(_CHROMIUM is None, reason="chromium is not installed (Debian: apt-get "
                    "install chromium); the headless-browser check of report.html needs it")
def test_report_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    # First show the log scan sees page errors in this chromium, so a clean log means clean.
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><p>x</p><script>notDefined()</script>")
    log = _screenshot(broken, tmp_path / "broken.png")
    assert _CONSOLE.search(log), "chromium logged no console line for a broken page"

    page = write_run(tmp_path / "run", make_report())
    write_report(json.loads((page / "report.json").read_text()), page)
    png = tmp_path / "report.png"
    log = _screenshot(page / "report.html", png)
    assert [line for line in log.splitlines() if _CONSOLE.search(line)] == []
    image = Image.open(png).convert("RGB")
    assert image.size == (1200, 2400)
    pixels = np.asarray(image).astype(int)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # not a blank page
    # The plots decoded and are on screen: many pixels of the plots' bar/line colour.
    blue = (np.abs(pixels - _PLOT_BLUE).sum(axis=-1) < 40).sum()
    assert blue > 20_000, blue
    # The first screen (900 px) holds the coloured status banner and the gates' verdicts,
    # each told apart by its own colour: the banner's green fill, a verdict's pale green.
    first = pixels[:900]
    banner = (np.abs(first - _BANNER_GREEN).sum(axis=-1) < 12).sum()
    verdict = (np.abs(first - _VERDICT_GREEN).sum(axis=-1) < 12).sum()
    assert banner > 20_000 and verdict > 200, (banner, verdict)
    below = pixels[900:]
    assert (np.abs(below - _VERDICT_GREEN).sum(axis=-1) < 12).sum() < verdict
