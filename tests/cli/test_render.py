"""The closing summary of `compress apply` (compress/cli/render.py) and the figures it shares
with report.html (compress/report/figures.py): numbers formatted for people."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from compress.cli.render import apply_summary
from compress.report.figures import environment_rows, key_figures, signed_points
from tests.gates.test_gate import make_report


def test_summary_names_the_headline_speedup_the_report_and_the_gates_beside_figures() -> None:
    text = apply_summary(make_report(), Path("runs/quickstart"))
    lines = text.splitlines()
    assert lines[0] == ("top-1 accuracy    99.44 % → 99.17 % (-0.27 points; gate: drop ≤ 2.0 "
                        "points ✓)")
    assert "measured speedup  1.83× (headline: onnxruntime, batch 64)" in lines
    assert lines[-1] == "report            runs/quickstart/report.html"
    assert "ONNX size         2.10 MB → 1.02 MB (51.6% smaller)" in lines
    assert "gates             passed" in lines
    assert "hf/" not in text  # not a transformers model: nothing to say about hf/


@pytest.mark.parametrize(("after", "change"), [(99.44, "no change"), (99.4401, "no change"),
                                               (99.4399, "no change"), (100.0, "+0.56 points"),
                                               (98.1, "-1.34 points")])
def test_no_signed_zero_and_a_gain_reads_as_a_gain(after: float, change: str) -> None:
    report = make_report()
    report["compressed"]["accuracy"] = after
    text = apply_summary(report)
    assert re.search(r"[+-]0\.00\b", text) is None
    assert f"({change}; gate: drop ≤ 2.0 points ✓)" in text.splitlines()[0]


def test_a_failed_gate_is_marked_beside_its_figure_and_listed() -> None:
    report = make_report()
    report["gates"] = [
        {"name": "min_speedup", "passed": False, "measured": 1.83, "threshold": 2.5,
         "comparison": ">=", "message": "speedup: 1.83x < 2.5 (required >= 2.5)"},
        {"name": "min_macs_reduction", "passed": True, "measured": 0.534, "threshold": 0.45,
         "comparison": ">=", "message": "MACs reduction: 0.534 >= 0.45"}]
    lines = apply_summary(report).splitlines()
    assert ("measured speedup  1.83× (headline: onnxruntime, batch 64; gate: ≥ 2.5× ✗ FAILED)"
            in lines)
    assert "MACs              11.90M → 5.55M (53.4% fewer; gate: ≥ 45% fewer ✓)" in lines
    assert "gates             1 of 2 FAILED" in lines
    assert "gate FAIL: speedup: 1.83x < 2.5 (required >= 2.5)" in lines
    figures = {f.key: f for f in key_figures(report)}
    assert figures["speedup"].passed is False and figures["macs"].passed is True
    assert figures["accuracy"].passed is None  # no accuracy gate in this report


def test_summary_says_whether_hf_was_written() -> None:
    report = make_report()
    report["outputs"] = {"hf": "runs/minilm/hf"}
    assert ("hf/               written: runs/minilm/hf (loads with transformers' "
            "from_pretrained)") in apply_summary(report).splitlines()
    report["outputs"] = {}
    report["notes"] = ["no stock transformers folder (hf/) was written: BERT heads without "
                       "hidden size are not expressible."]
    assert ("hf/               not written: BERT heads without hidden size are not "
            "expressible") in apply_summary(report).splitlines()


def test_unmeasured_figures_say_so() -> None:
    report = make_report()
    report["speedup"] = {"headline": None}
    report["compressed"]["onnx_bytes"] = None
    figures = {f.key: f for f in key_figures(report)}
    assert figures["speedup"].value == "not measured" and figures["speedup"].detail == ""
    assert figures["size"].value == "2.10 MB → n/a" and figures["size"].detail == ""
    assert signed_points(0.0) == "no change"


def test_environment_rows_have_no_python_reprs() -> None:
    rows = dict(environment_rows({"gpu": None, "providers": ["CUDAExecutionProvider",
                                                             "CPUExecutionProvider"],
                                  "threads": 2, "cpu_capability": "AVX2"}))
    assert rows == {"gpu": "none", "providers": "CUDAExecutionProvider, CPUExecutionProvider",
                    "threads": "2", "cpu capability": "AVX2"}
    assert not any(ch in v for v in rows.values() for ch in "[]'{}")
