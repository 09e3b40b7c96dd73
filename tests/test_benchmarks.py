"""The published figures are the result files' render, and the benchmark scripts start, run
their tiny configuration and record where their figures come from (benchmarks are not tests:
their numbers are measured by hand, see BENCHMARKS.md)."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, shared_path

BENCH = ROOT / "benchmarks"
SCRIPTS = ["regimes", "peer_torch_pruning", "overheads", "latency_levers", "conv_efficiency",
           "minilm_sst2", "quickstart", "llama_1b", "proof_cost", "decoder_model",
           "llm_sparsity", "llm_sparsity_1b", "decoder_structured", "latency_target",
           "latency_target_resnet18"]
PROVENANCE = ("command", "code", "machine", "run")


def _run(script: str, *args: str, timeout: int = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(BENCH / f"{script}.py"), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _import(name: str):  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def regimes():
    return _import("regimes")


@pytest.fixture(scope="module")
def render():
    return _import("render")


@pytest.mark.parametrize("doc", ["BENCHMARKS.md", "README.md"])
def test_published_figures_are_the_render_of_the_result_files(render, doc: str) -> None:
    committed = (ROOT / doc).read_text(encoding="utf-8")
    assert render.block_names(committed), f"{doc} has no rendered block"
    assert committed == render.render_doc(ROOT / doc), (
        f"{doc} differs from what benchmarks/results/ renders (a figure typed or edited by "
        f"hand, or a result file changed); regenerate it: {render.REGEN}")


def test_every_block_is_published_and_every_published_block_is_known(render) -> None:
    used = [name for doc in render.DOCS
            for name in render.block_names(doc.read_text(encoding="utf-8"))]
    assert sorted(set(used)) == sorted(render.BLOCKS)
    assert len(used) == len(set(used))


def _readme_sections(text: str, titles: tuple[str, ...]) -> str:
    parts = re.split(r"\n(?=##+ )", text)
    return "\n".join(p for p in parts if p.lstrip("#").strip().startswith(titles))


def test_no_figure_is_typed_by_hand(render) -> None:
    bench = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    readme = _readme_sections((ROOT / "README.md").read_text(encoding="utf-8"),
                              ("Benchmarks", "The quickstart", "Your own torchvision model",
                               "Hugging Face models"))
    assert "## Benchmarks" in readme and "### The quickstart" in readme
    typed = render.typed_figures(bench) + render.typed_figures(readme)
    assert not typed, f"figures outside rendered blocks (render them or drop them): {typed}"


@pytest.mark.parametrize("line", ["top-1 84.67 % vs 81.95 %", "1.45× faster", "in 2 min",
                                  "took 139 s", "7.3 %", "3.27 GB", "2.51x"])
def test_typed_figure_detector_sees_measured_looking_numbers(render, line: str) -> None:
    assert render.typed_figures(f"text\n{line}\n") == [line]
    block = f"<!-- render: x -->\n{line}\n<!-- /render: x -->\n"
    assert render.typed_figures(block) == [] and render.typed_figures(f"`{line}`") == []


def test_a_changed_result_file_changes_the_render(render, tmp_path: Path,
                                                  monkeypatch) -> None:
    results = tmp_path / "results"
    shutil.copytree(render.RESULTS, results)
    data = json.loads((results / "overheads.json").read_text())
    data["loop"]["ratio_wall"] = 0.123456
    (results / "overheads.json").write_text(json.dumps(data))
    monkeypatch.setattr(render, "RESULTS", results)
    block = render.render_block("overheads")
    assert "**0.123**" in block and "MISSED" in block
    assert render.render_block("overheads") != (
        (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8").split(
            "<!-- render: overheads -->\n")[1].split("<!-- /render: overheads -->")[0])


def test_the_source_line_names_missing_provenance(render) -> None:
    old = {"command": "python benchmarks/x.py", "machine": {
        "date": "2026-12-01", "cores": 2, "cpu": "AMD EPYC", "cpu_capability": "AVX512",
        "gpu": None, "load_average_1_5_15": [1.5, 1.0, 0.5], "torch": "2", "onnxruntime": "1"}}
    line = render.source_line(old, "x.json")
    assert "code version not recorded" in line and "flags not recorded" in line
    assert "wall time of the whole script not recorded" in line


def test_the_quickstart_sample_is_the_recorded_output(render) -> None:
    recorded = json.loads((render.RESULTS / "quickstart.json").read_text())
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"```text\n{recorded['stdout'].rstrip()}\n```" in readme
    assert recorded["exit_code"] == 0 and recorded["machine"]["cpu"] in readme


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_starts(script: str) -> None:
    proc = _run(script, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and "--tiny" in proc.stdout


def test_every_regime_gets_the_same_image_budget(regimes) -> None:
    for profile in regimes.PROFILES.values():
        totals = set()
        for regime in regimes.REGIMES:
            sec = regimes.regime_sections(regime, 0.9, profile)
            assert sec["finetune"]["max_steps"] == sec["per_step"]
            # never cut short by the end of an epoch (the full profile trains 10 epochs)
            epochs = sec["finetune"].get("max_epochs", sec["finetune"]["epochs"])
            assert epochs * regimes.TRAIN_IMAGES >= sec["per_step"] * profile["batch"]
            totals.add(sec["steps"] * sec["per_step"])
        assert totals == {profile["budget_steps"]}, (profile, totals)


def test_per_step_gives_every_pruning_step_the_whole_budget(regimes) -> None:
    profile = {**regimes.PROFILES["cpu"], "per_step": True}
    for regime, steps in (("one-shot", 1), ("iterative-geometric", 5), ("hybrid", 3)):
        sec = regimes.regime_sections(regime, 0.9, profile)
        assert sec["steps"] == steps and sec["per_step"] == profile["budget_steps"]


def test_hybrid_starts_at_seventy_percent_of_the_target(regimes) -> None:
    sec = regimes.regime_sections("hybrid", 0.9, regimes.PROFILES["cpu"])
    assert sec["schedule"] == {"kind": "hybrid", "first_step": 0.63, "steps": 2}
    assert sec["finetune"]["patience"] == [4, 2]


def test_crossover_sentence_reads_the_table(regimes) -> None:
    holds = {("unstructured", 0.5): {"one-shot": 80.0, "iterative-geometric": 80.2},
             ("unstructured", 0.7): {"one-shot": 79.0, "iterative-geometric": 79.1},
             ("unstructured", 0.9): {"one-shot": 60.0, "iterative-geometric": 70.0},
             ("unstructured", 0.95): {"one-shot": 40.0, "iterative-geometric": 55.0}}
    assert "holds here" in regimes.crossover_sentence(holds, se=0.9)
    reversed_ = {k: {"one-shot": v["iterative-geometric"], "iterative-geometric": v["one-shot"]}
                 for k, v in holds.items()}
    assert "does not clearly hold" in regimes.crossover_sentence(reversed_, se=0.9)


def test_benchmarks_md_says_what_make_test_runs() -> None:
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert '-m "not slow"' in makefile  # so the --tiny runs, marked slow, are not in it
    assert "make test-slow" in text and "so `make test` does not" in text


@pytest.mark.slow
@pytest.mark.parametrize("script,args", [
    ("regimes", ["--kinds", "unstructured", "--regimes", "one-shot", "hybrid"]),
    ("regimes", ["--kinds", "structured", "--regimes", "iterative-constant", "--per-step"]),
    ("peer_torch_pruning", []),
    ("overheads", []),
    ("latency_levers", []),
    ("conv_efficiency", []),
    ("minilm_sst2", []),
    ("quickstart", []),
    ("llm_sparsity", ["--threads", "1"]),
    ("llm_sparsity_1b", ["--threads", "1"]),
    ("decoder_structured", ["--threads", "1"]),
    ("latency_target", ["--threads", "1"]),
    ("latency_target", ["--model", "minilm", "--threads", "1"]),
    ("latency_target_resnet18", ["--threads", "1"]),
])
def test_tiny_configuration_runs(script: str, args: list[str], tmp_path: Path) -> None:
    minilm = script == "minilm_sst2" or "minilm" in args
    if minilm:
        shared_path("data", "sst2")
    elif script not in ("quickstart", "llm_sparsity", "llm_sparsity_1b", "decoder_structured"):
        shared_path("models", "resnet-cifar10")
        shared_path("data", "cifar10-jpg")
    proc = _run(script, "--tiny", "--out", str(tmp_path), "--work", str(tmp_path / "work"),
                *args, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name = (script + ("-per-step" if "--per-step" in args else "")
            + ("_minilm" if script == "latency_target" and minilm else "") + "-tiny")
    written = {p.name for p in tmp_path.iterdir()}
    assert f"{name}.json" in written and f"{name}.md" in written
    result = json.loads((tmp_path / f"{name}.json").read_text())
    assert_provenance(result, script)
    assert _import(script).render_result(result).strip()  # what render.py publishes


def assert_provenance(result: dict, script: str) -> None:
    """The fields every result file carries (see benchmarks/provenance.py)."""
    assert set(PROVENANCE) <= set(result)
    assert result["command"].startswith(f"python benchmarks/{script}.py --tiny")
    code = result["code"]
    assert len(code["files_sha256"]) == 64 and code["files_hashed"] > 50
    assert code["package"] == "compress" and code["changed_during_run"] is False
    assert code["commit"] is None or len(code["commit"]) == 40
    m = result["machine"]
    assert m["cores"] >= 1 and m["cpu"] and m["cpu_capability"] and m["ram_gib"] > 0
    assert isinstance(m["cpu_flags"], list)
    run = result["run"]
    assert run["wall_s"] > 0 and run["started"] <= run["finished"]
    assert len(run["load_before"]) == 3 and len(run["load_after"]) == 3
    assert run["peak_rss_mib"]["self"] > 0


def test_write_results_records_the_provenance(tmp_path: Path, monkeypatch) -> None:
    common = _import("_common")
    monkeypatch.setattr(sys, "argv", [str(BENCH / "regimes.py"), "--tiny"])
    common.start(type("Args", (), {"verbose": False, "threads": None})())
    js, md = common.write_results("demo-tiny", {"x": 1}, "| a |\n", tmp_path)
    result = json.loads(js.read_text())
    assert result["x"] == 1 and result["benchmark"] == "demo-tiny"
    assert_provenance(result, "regimes")
    # the code version is keyed on the sources: the cache key is that digest
    assert common.code_key() == result["code"]["files_sha256"]
    assert "code " + result["code"]["files_sha256"][:12] in md.read_text()


def test_the_code_digest_covers_the_compress_sources(monkeypatch) -> None:
    provenance = _import("provenance")
    before = provenance.code_digest()
    real = Path.read_bytes

    def edited(path: Path) -> bytes:
        data = real(path)
        return data + b"# edited\n" if path.name == "errors.py" else data

    monkeypatch.setattr(Path, "read_bytes", edited)
    assert provenance.code_digest() != before


def test_a_missing_result_file_renders_no_figure(render, tmp_path: Path, monkeypatch) -> None:
    results = tmp_path / "results"
    shutil.copytree(render.RESULTS, results)
    (results / "overheads.json").unlink()
    monkeypatch.setattr(render, "RESULTS", results)
    block = render.render_block("overheads")
    assert block.startswith("No result file `benchmarks/results/overheads.json`")
    assert "python benchmarks/overheads.py" in block and not re.search(r"\d\.\d", block)
    assert "overheads.json" not in render.render_block("sources")


def test_llm_sparsity_target_is_a_third_of_magnitudes_increase() -> None:
    mod = _import("llm_sparsity")
    ppl = [10.0, 40.0, 20.0, 19.0, 10.0, 12.0, 9.0]  # magnitude's 2:4 increase: none
    rows = [{"criterion": c, "kind": k, "perplexity": p} for (c, k), p in zip(mod.CELLS, ppl)]
    check = mod.target_check(rows)
    assert check["unstructured"]["wanda"]["met"] is True  # 10 / 30: exactly a third
    assert check["unstructured"]["sparsegpt"]["ratio"] == pytest.approx(0.3)
    assert check["n:m"]["wanda"] == {"increase": 2.0, "magnitude_increase": 0.0, "ratio": None,
                                     "met": None}
    rows[2]["perplexity"] = 20.5
    assert mod.target_check(rows)["unstructured"]["wanda"]["met"] is False


def test_decoder_structured_verdicts_read_the_rows() -> None:
    mod = _import("decoder_structured")
    arch = {"blocks": 6}
    rows = [{"part": "a", "candidate": "w", "importance": "activation", "perplexity": 30.0,
             "architecture": arch},
            {"part": "a", "candidate": "w", "importance": "l2", "perplexity": 45.0,
             "architecture": arch},
            {"part": "b", "fixed": {"blocks": 1}, "drop": "importance", "perplexity": 20.0,
             "dropped": [2]},
            {"part": "b", "fixed": {"blocks": 1}, "drop": "last", "perplexity": 25.0,
             "dropped": [5]},
            {"part": "b", "fixed": {"blocks": 2}, "drop": "importance", "perplexity": 26.0,
             "dropped": [4, 5]},
            {"part": "b", "fixed": {"blocks": 2}, "drop": "last", "perplexity": 26.0,
             "dropped": [4, 5]},
            {"part": "c", "init": "pruned", "candidate": "w", "perplexity": 14.0,
             "block_losses": [2.6, 2.7, 2.5, 2.8]},
            {"part": "c", "init": "pruned", "candidate": "d", "perplexity": 13.9,
             "block_losses": [2.6, 2.6, 2.5, 2.8]},
            {"part": "c", "init": "random", "candidate": "w", "perplexity": 60.0}]
    v = mod.verdicts(rows, chosen="w")
    assert v["importance_met_at_choice"] is True and v["importance"]["w"]["same_architecture"]
    assert v["depth_met"] is True  # N=2: the same blocks were chosen, a tie is no defeat
    assert v["distill"] == {"pruned": 14.0, "random": 60.0, "met": True}
    assert v["choice"]["best"] == "d" and v["choice"]["within_noise"] is True
    rows[3]["perplexity"] = 19.0  # the last block now beats the ranked one
    rows[7]["block_losses"] = [2.0, 2.1, 1.9, 2.2]  # and 'd' is clearly better
    v = mod.verdicts(rows, chosen="w")
    assert v["depth_met"] is False and v["choice"]["met"] is False
