import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import compress
from compress.cli.app import app
from compress.export.onnx import onnx_session
from tests.conftest import ROOT, tiny_recipe

runner = CliRunner()


def _write(tmp_path: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    tmp = tmp_path_factory.mktemp("apply")
    recipe = _write(tmp, tiny_recipe(tmp, gates={"max_accuracy_drop": 100.0}))
    old = os.umask(0o022)  # the usual umask, whatever the test runner's is
    try:
        result = runner.invoke(app, ["apply", str(recipe), "--out", str(tmp / "run")])
    finally:
        os.umask(old)
    return tmp / "run", result


def test_apply_end_to_end(tiny_run) -> None:
    out, result = tiny_run
    assert result.exit_code == 0, result.output
    assert "top-1 accuracy" in result.output and "MACs" in result.output
    for name in ("model.safetensors", "model.json", "model.onnx", "report.json", "report.md",
                 "recipe.json", "baseline/model.onnx"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == 1 and report["status"] == "passed"
    for block in ("baseline", "compressed"):
        for key in ("accuracy", "params", "macs", "onnx_bytes", "latency_ms"):
            assert report[block][key] is not None, (block, key)
        assert set(report[block]["latency_ms"]) == {"onnxruntime", "torch"}
        assert set(report[block]["latency_ms"]["onnxruntime"]["2"]) == {"median", "p90"}
    assert report["compressed"]["macs"] < report["baseline"]["macs"]
    assert len(report["steps"]) == 1 and report["steps"][0]["max_abs_diff"] < 1e-4
    assert report["steps"][0]["proof"] == "proven"
    diff = report["steps"][0]["max_abs_diff"]
    assert f"pruning proof     step 1: {diff:.1e}" in result.output
    assert f"| {diff:.1e} |" in (out / "report.md").read_text()
    assert "not proven" not in result.output + (out / "report.md").read_text()
    assert report["speedup"]["headline"] > 0
    assert "# compress report: tiny" in (out / "report.md").read_text()


def test_a_proven_run_passes_the_proof_gate(tiny_run) -> None:
    out, _ = tiny_run
    result = runner.invoke(app, ["gate", str(out), "--require-proof"])
    assert result.exit_code == 0, result.output
    assert "PASS pruning proof: all 1 step(s) proven" in result.output


def test_outputs_honour_the_umask(tiny_run) -> None:
    out, result = tiny_run
    assert result.exit_code == 0, result.output
    modes = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777)
             for p in out.rglob("*") if p.is_file()}
    assert "model.safetensors" in modes and any(name.startswith("steps/") for name in modes)
    assert {name: mode for name, mode in modes.items() if mode != "0o644"} == {}


def test_loaded_model_equals_onnx_output(tiny_run) -> None:
    out, _ = tiny_run
    model = compress.load(out, trust_code=True)
    x = torch.rand(7, 1, 8, 8)
    with torch.no_grad():
        expected = model(x).numpy()
    got = onnx_session(out / "model.onnx").run(None, {"input": x.numpy()})[0]
    assert abs(expected - got).max() < 1e-4


def test_failing_gate_exits_1_and_marks_the_report(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, gates={"min_speedup": 1000.0}, report={"latency": True,
                         "engines": ["onnxruntime"], "batch_sizes": [2], "rounds": 1,
                         "runs_per_round": 1, "warmup": 0})
    result = runner.invoke(app, ["apply", str(_write(tmp_path, recipe)), "--out",
                                 str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    assert "gate FAIL: speedup" in result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["status"] == "gate_failed"
    assert report["gates"][0]["name"] == "min_speedup" and not report["gates"][0]["passed"]


@pytest.mark.parametrize("change, fragment", [
    ({"pruning": {"ratio": 0.5, "bogus": 1}}, "unknown key 'pruning.bogus'"),
    ({"finetune": {"epochs": "three"}}, "'finetune.epochs': Input should be a valid integer"),
    ({"model": {"source": "cifar_resnet", "name": "resnet99"}}, "unknown cifar_resnet name"),
    ({"model": {"source": "python", "factory": "missing_file.py:f"}}, "does not exist"),
    ({"data": {"source": "imagefolder", "path": "no/such/folder"}}, "does not exist"),
])
def test_bad_input_exits_2_with_one_sentence(tmp_path: Path, change: dict, fragment: str) -> None:
    recipe = tiny_recipe(tmp_path)
    recipe.update(change)
    path = _write(tmp_path, recipe)
    for command in (["validate", str(path)], ["apply", str(path), "--out", str(tmp_path / "r")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert fragment in result.output
        assert "Traceback" not in result.output


def test_bad_input_from_a_real_shell_has_no_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, {"version": 1, "model": {"source": "nope"}})
    proc = subprocess.run([sys.executable, "-m", "compress.cli.app", "apply", str(path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and "unknown model source 'nope'" in proc.stderr


def test_missing_recipe_and_override_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "does not exist" in result.output
    path = _write(tmp_path, tiny_recipe(tmp_path))
    result = runner.invoke(app, ["validate", str(path), "--set", "pruning.ratio=2"])
    assert result.exit_code == 2 and "'pruning.ratio'" in result.output
    result = runner.invoke(app, ["validate", str(path), "--set", "finetune.epochs=2"])
    assert result.exit_code == 0 and "valid" in result.output


def test_schema_prints_json_schema() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["title"] == "Recipe" and "pruning" in schema["properties"]


def test_python_api_apply_with_sections(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, report={"latency": False})
    result = compress.apply(recipe, out_dir=tmp_path / "api", finetune={"epochs": 0},
                            export={"onnx": False})
    assert result.ok and (tmp_path / "api" / "model.safetensors").exists()
    assert not (tmp_path / "api" / "model.onnx").exists()
    assert result.report["steps"][0]["finetune_steps"] == 0


def test_init_writes_a_recipe_that_validates(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", "--model", "python:" + str(ROOT / "examples/quickstart/"
                                 "digits_cnn.py") + ":digits_cnn", "--data", "digits",
                                 "--target-macs", "0.85"])
    assert result.exit_code == 0, result.output
    assert "hybrid" in result.output and "arXiv 2508.13836" in result.output
    path = tmp_path / "starter.yaml"
    path.write_text(result.output)
    assert runner.invoke(app, ["validate", str(path)]).exit_code == 0
    bad = runner.invoke(app, ["init", "--model", "nowhere:x", "--data", "digits"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_list_shows_every_registry() -> None:
    from compress.authoring.reference import list_registries

    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    for entries in list_registries().values():
        for name, _ in entries:
            assert name in result.output


def test_inspect_predicts_steps_and_sensitivity(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, schedule={"kind": "iterative", "steps": 2},
                         pruning={"ratio": 0.5, "round_to": 1, "ignored": ["15"]})
    path = _write(tmp_path, recipe)
    plot = tmp_path / "sens.png"
    result = runner.invoke(app, ["inspect", str(path), "--sensitivity", "--samples", "64",
                                 "--plot", str(plot), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)  # logs go to stderr
    assert info["ignored"] == {"15": ["15"]}
    assert len(info["steps"]) == 2 and info["steps"][1]["macs"] < info["steps"][0]["macs"]
    assert {g["root"] for g in info["groups"]} and "15" not in {g["root"] for g in info["groups"]}
    assert len(info["sensitivity"]) == len(info["groups"]) and plot.stat().st_size > 1000
    human = runner.invoke(app, ["inspect", str(path)])
    assert human.exit_code == 0 and "pruning groups" in human.output
    recipe["pruning"]["ignored"] = ["no_such_layer"]
    bad = runner.invoke(app, ["inspect", str(_write(tmp_path, recipe))])
    assert bad.exit_code == 2 and "matches no module" in bad.output


def test_apply_refuses_a_finished_folder_unless_overwrite(tmp_path: Path) -> None:
    path = _write(tmp_path, tiny_recipe(tmp_path, report={"latency": False},
                                        export={"onnx": False}))
    out = str(tmp_path / "run")
    assert runner.invoke(app, ["apply", str(path), "--out", out]).exit_code == 0
    again = runner.invoke(app, ["apply", str(path), "--out", out])
    assert again.exit_code == 2 and "--overwrite" in again.output and "=True" not in again.output
    assert runner.invoke(app, ["apply", str(path), "--out", out, "--overwrite"]).exit_code == 0


def test_ctrl_c_exits_130_and_prints_the_whole_resume_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import compress.run.pipeline as pipeline

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_recipe", interrupted)
    recipe = ROOT / "recipes" / "quickstart.yaml"
    result = runner.invoke(app, ["apply", str(recipe), "--set", "finetune.epochs=1",
                                 "--set", "name=my run"])
    assert result.exit_code == 130
    command = result.stderr.strip().splitlines()[-1].strip()
    assert command == (f"compress apply {recipe} --out 'runs/my run' --set finetune.epochs=1 "
                       f"--set 'name=my run' --resume")
    out = tmp_path / "elsewhere"
    result = runner.invoke(app, ["apply", str(recipe), "--out", str(out)])
    assert result.exit_code == 130
    assert result.stderr.strip().endswith(f"compress apply {recipe} --out {out} --resume")
