"""Every example runs (tiny settings), so none can rot."""

import importlib.util
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from compress.cli.app import app
from tests.conftest import ROOT, tiny_recipe


def test_prune_your_own_model(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples/prune_your_own_model.py"),
                           "--epochs", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" in proc.stdout and (tmp_path / "model.safetensors").is_file()


def test_train_quickstart_model_script(tmp_path: Path) -> None:
    out = tmp_path / "w.safetensors"
    proc = subprocess.run([sys.executable, str(ROOT / "examples/train_quickstart_model.py"),
                           "--epochs", "1", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "eval top-1" in proc.stdout


def test_serve_onnx_check_agrees_with_pytorch(finished_run: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples/serve_onnx.py"),
                           str(finished_run), "--check", "--trust-code"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "agree: max |diff|" in proc.stdout and "HTTP /predict answered" in proc.stdout


def _post(url: str, body: bytes, kind: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, body, {"Content-Type": kind})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_serve_onnx_answers_tensors_and_images_like_the_pytorch_model(finished_run: Path
                                                                      ) -> None:
    import compress

    manifest = json.loads((finished_run / "model.json").read_text())
    shape = tuple(manifest["input"]["shape"])
    server = subprocess.Popen([sys.executable, str(ROOT / "examples/serve_onnx.py"),
                               str(finished_run), "--port", "0"], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        line = server.stdout.readline()  # "serving RUN on http://127.0.0.1:PORT"
        assert "http://" in line, line
        base = line.split()[-1]
        with urllib.request.urlopen(base + "/", timeout=60) as response:
            info = json.load(response)
        assert info["classes"] == manifest["classes"] and len(info["classes"]) == 10
        assert info["input_shape"] == ["batch", *shape]

        model = compress.load(finished_run, trust_code=True)
        x = torch.rand((5, *shape), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)
        status, reply = _post(base + "/predict", json.dumps({"inputs": x.tolist()}).encode(),
                              "application/json")
        assert status == 200
        got = reply["predictions"]
        assert [p["class"] for p in got] == probs.argmax(1).tolist()
        assert [p["label"] for p in got] == [manifest["classes"][i] for i in probs.argmax(1)]
        assert max(abs(p["probability"] - float(probs[i].max())) for i, p in enumerate(got)) < 1e-4

        # An uploaded image goes through the run's preparation (here: grayscale, 0..1).
        pixels = (torch.rand(shape[1:], generator=torch.Generator().manual_seed(2)) * 255)
        pixels = pixels.to(torch.uint8)
        png = io.BytesIO()
        Image.fromarray(pixels.numpy(), mode="L").save(png, format="PNG")
        status, reply = _post(base + "/predict", png.getvalue(), "image/png")
        with torch.no_grad():
            expected = model((pixels.float() / 255)[None, None]).argmax(1).item()
        assert status == 200 and reply["predictions"][0]["class"] == expected

        status, reply = _post(base + "/predict", b'{"inputs": [1, 2, 3]}', "application/json")
        assert status == 400 and "inputs must have shape" in reply["error"]
    finally:
        server.terminate()
        server.wait(timeout=60)


WORKFLOW = ROOT / "examples/github-actions/compress.yml"


def _step_runs(step: dict, failed: bool) -> bool:
    """GitHub's `if:` for the conditions the example uses (no condition = success())."""
    condition = str(step.get("if", "success()")).strip()
    assert condition in ("success()", "always()", "failure()"), f"unsupported if: {condition}"
    return {"success()": not failed, "always()": True, "failure()": failed}[condition]


def _run_workflow(tmp_path: Path, env: dict[str, str]) -> tuple[list[tuple[str, str]], bool]:
    """Run the workflow's shell steps as a runner would: `bash -e` per step, in order, later
    steps skipped after a failure unless their `if:` says otherwise. Returns
    ([(step, outcome)], job failed)."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    (job,) = workflow["jobs"].values()
    bin_dir = tmp_path / "bin"  # `compress` on PATH: this checkout's code
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "compress"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m compress.cli.app "$@"\n')
    wrapper.chmod(0o755)
    base = {**os.environ, **workflow.get("env", {}), **job.get("env", {}), **env,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    outcomes, failed = [], False
    for step in job["steps"]:
        name = step.get("name") or step.get("uses")
        if not _step_runs(step, failed):
            outcomes.append((name, "skipped"))
        elif "uses" in step or "pip install" in step["run"]:  # actions; installed already
            outcomes.append((name, "not run here"))
        else:
            assert "${{" not in step["run"], "run: scripts read the environment, no expressions"
            proc = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=tmp_path,
                                  env={**base, **step.get("env", {})}, capture_output=True,
                                  text=True, timeout=600)
            outcomes.append((name, f"exit {proc.returncode}"))
            failed = failed or proc.returncode != 0
    return outcomes, failed


def test_github_actions_workflow_posts_the_report_and_fails_on_a_failed_gate(
        tmp_path: Path) -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert (ROOT / workflow["env"]["RECIPE"]).is_file()  # the recipe it names as shipped
    steps = {s.get("name"): s for s in workflow["jobs"]["compress"]["steps"]}
    assert "GITHUB_STEP_SUMMARY" in steps["Post the report to the job summary"]["run"]
    # The JUnit file the gate step writes is published as a check, also when a gate failed.
    check = steps["Publish the gates as a check"]
    assert check["uses"].startswith("dorny/test-reporter@") and check["if"] == "always()"
    assert check["with"]["reporter"] == "java-junit"
    assert check["with"]["path"] == "${{ env.RUN }}/gates.xml"
    assert '--junit "$RUN/gates.xml"' in steps["Check the gates"]["run"]
    assert workflow["permissions"]["checks"] == "write"

    def run(name: str, gates: dict[str, float]) -> tuple[dict[str, str], bool, Path]:
        folder = tmp_path / name
        folder.mkdir()
        recipe = folder / "recipe.yaml"
        recipe.write_text(yaml.safe_dump(tiny_recipe(folder, gates=gates,
                                                     report={"latency": False})))
        summary = folder / "summary.md"
        outcomes, failed = _run_workflow(folder, {"RECIPE": str(recipe), "RUN": "runs/ci",
                                                  "GITHUB_STEP_SUMMARY": str(summary)})
        return dict(outcomes), failed, summary

    outcomes, failed, summary = run("passing", {"max_accuracy_drop": 100.0})
    assert not failed, outcomes
    assert outcomes["Compress the model"] == outcomes["Check the gates"] == "exit 0"
    assert outcomes["Post the report to the job summary"] == "exit 0"
    run_dir = summary.parent / "runs/ci"
    assert summary.read_text() == (run_dir / "report.md").read_text()
    assert "**Status:** passed" in summary.read_text()
    assert "<testsuite" in (run_dir / "gates.xml").read_text()
    assert "passed" in (run_dir / "gates.md").read_text()

    outcomes, failed, summary = run("failing", {"min_macs_reduction": 0.99})
    assert failed, outcomes
    assert outcomes["Compress the model"] == "exit 0"  # its exit 1 is left to the gate step
    assert outcomes["Check the gates"] == "exit 1"
    assert outcomes["Post the report to the job summary"] == "exit 0"  # if: always()
    assert "**Status:** gate_failed" in summary.read_text()
    assert "FAILED" in (summary.parent / "runs/ci/gates.md").read_text()


def test_github_actions_workflow_fails_on_bad_input(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    outcomes, failed = _run_workflow(tmp_path, {"RECIPE": str(tmp_path / "missing.yaml"),
                                                 "GITHUB_STEP_SUMMARY": str(summary)})
    assert failed and dict(outcomes)["Compress the model"] == "exit 2"
    assert dict(outcomes)["Check the gates"] == "skipped"
    assert "wrote no report" in summary.read_text()


def test_tour_stand_ins_make_a_recipe_that_validates(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples/make_tour_model.py"),
                           "--train-per-class", "4", "--test-per-class", "2", "--epochs", "1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "my-resnet18.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "my-images/test").iterdir()) == \
        ["circle", "cross", "square", "triangle"]
    monkeypatch.chdir(tmp_path)  # as in the tour: init counts the class folders found here
    runner = CliRunner()
    init = runner.invoke(app, ["init", "--model", "torchvision:resnet18", "--checkpoint",
                               "my-resnet18.safetensors", "--data", "imagefolder:my-images",
                               "--image-size", "32", "--target-macs", "0.5"])
    assert init.exit_code == 0, init.output
    (tmp_path / "my-recipe.yaml").write_text(init.stdout)
    check = runner.invoke(app, ["validate", "my-recipe.yaml", "--json"])
    assert check.exit_code == 0, check.output
    recipe = json.loads(check.stdout)["recipe"]
    assert recipe["model"]["num_classes"] == 4 and recipe["data"]["image_size"] == 32


def _serve_module():
    spec = importlib.util.spec_from_file_location("serve_onnx", ROOT / "examples/serve_onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serve_prepares_images_like_the_evaluation_data() -> None:
    from compress.data.base import Transform, pil_to_float

    serve = _serve_module()
    classifier = object.__new__(serve.OnnxClassifier)  # no session needed to prepare images
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    classifier.shape = (3, 32, 32)
    classifier.preprocess = {"image_size": 32, "normalize": {"mean": mean, "std": std}}
    pixels = torch.randint(0, 256, (48, 40, 3), generator=torch.Generator().manual_seed(0))
    image = Image.fromarray(pixels.to(torch.uint8).numpy(), mode="RGB")
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    got = torch.from_numpy(classifier.prepare_image(encoded.getvalue()))
    expected = Transform(image_size=32, mean=tuple(mean), std=tuple(std))(pil_to_float(image))
    assert got.shape == expected.shape == (3, 32, 32)
    # Pillow's and torch's antialiased bilinear resizes differ by rounding only.
    assert (got - expected).abs().mean() < 0.02
