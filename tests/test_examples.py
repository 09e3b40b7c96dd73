"""Every example runs (tiny settings), so none can rot."""

import io
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import torch
from PIL import Image

from tests.conftest import ROOT


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
                           str(finished_run), "--check"],
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

        model = compress.load(finished_run)
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
