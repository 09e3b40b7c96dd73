"""Serve a compressed model with onnxruntime, and load its safetensors back into PyTorch.

    python examples/serve_onnx.py runs/quickstart --check --trust-code  # torch == onnxruntime?
    python examples/serve_onnx.py runs/quickstart --port 8000    # serve until Ctrl-C

    curl -s localhost:8000/                                       # the model: input, classes
    curl -s localhost:8000/predict -H 'Content-Type: application/json' \\
         -d '{"inputs": [[[[0, 0, 0.3, ...]]]]}'                 # prepared tensors (N, C, H, W)
    curl -s localhost:8000/predict -H 'Content-Type: image/png' --data-binary @digit.png

The service reads only the run folder's ``model.onnx`` and ``model.json`` (input shape, class
names, and how training prepared images: size, scaling, normalisation) and needs only numpy,
onnxruntime and, for image uploads, Pillow: no torch. ``--check`` also needs torch and compress:
it rebuilds the model from ``model.safetensors`` with ``compress.load`` and checks that PyTorch
and onnxruntime agree on the same inputs, then answers one request over HTTP.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np


class OnnxClassifier:
    """``model.onnx`` in an onnxruntime session, described by the run's ``model.json``."""

    def __init__(self, run_dir: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        run_dir = Path(run_dir)
        self.manifest = json.loads((run_dir / "model.json").read_text(encoding="utf-8"))
        self.shape = tuple(self.manifest["input"]["shape"])  # one sample: (C, H, W)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(run_dir / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.classes: list[str] | None = self.manifest.get("classes")
        self.preprocess: dict[str, Any] = self.manifest.get("preprocess") or {}

    def info(self) -> dict[str, Any]:
        return {"input_shape": ["batch", *self.shape], "classes": self.classes,
                "preprocess": self.preprocess}

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw model outputs for a prepared batch ``(N, *shape)``."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.shape == self.shape:
            batch = batch[None]
        if batch.shape[1:] != self.shape:
            raise ValueError(f"inputs must have shape (N, {', '.join(map(str, self.shape))}); "
                             f"got {batch.shape}")
        return self.session.run(None, {self.input_name: batch})[0]

    def predict(self, batch: np.ndarray, top_k: int = 3) -> list[dict[str, Any]]:
        """Top-``top_k`` classes with softmax probabilities, one entry per sample."""
        logits = self.logits(batch)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
        out = []
        for row in probs:
            order = np.argsort(-row)[:top_k]
            top = [{"class": int(i), "label": self.label(int(i)), "probability": float(row[i])}
                   for i in order]
            out.append({**top[0], "top": top})
        return out

    def label(self, index: int) -> str:
        return self.classes[index] if self.classes else str(index)

    def prepare_image(self, data: bytes) -> np.ndarray:
        """An encoded image (PNG, JPEG, ...) prepared the way the run's evaluation data was."""
        from PIL import Image

        channels, height, width = self.shape
        image = Image.open(io.BytesIO(data)).convert("L" if channels == 1 else "RGB")
        if image.size != (width, height):
            # Pillow's bilinear resize filters when shrinking, like the training resize.
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        x = np.asarray(image, dtype=np.float32) / 255.0
        x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
        norm = self.preprocess.get("normalize")
        if norm:
            mean, std = (np.float32(norm[k])[:, None, None] for k in ("mean", "std"))
            x = (x - mean) / std
        return x.astype(np.float32)


def make_server(model: OnnxClassifier, host: str = "127.0.0.1", port: int = 8000
                ) -> ThreadingHTTPServer:
    """``GET /``: the model's description; ``POST /predict``: JSON tensors or an image."""

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.rstrip("/") in ("", "/health"):
                self._reply(200, {"ok": True, **model.info()})
            else:
                self._reply(404, {"error": f"no such path {self.path!r}; try / or /predict"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/predict":
                self._reply(404, {"error": f"no such path {self.path!r}; POST to /predict"})
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            kind = self.headers.get("Content-Type", "")
            try:
                if kind.startswith("image/"):
                    batch = model.prepare_image(body)[None]
                else:
                    batch = np.asarray(json.loads(body)["inputs"], dtype=np.float32)
                self._reply(200, {"predictions": model.predict(batch)})
            except Exception as err:  # a bad request must not stop the service
                self._reply(400, {"error": f"{type(err).__name__}: {err}"})

        def log_message(self, fmt: str, *args: Any) -> None:
            sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    return ThreadingHTTPServer((host, port), Handler)


def check_against_torch(run_dir: str | Path, samples: int = 8, atol: float = 1e-4,
                        trust_code: bool = False) -> float:
    """Rebuild the model from safetensors (``compress.load``) and compare it with onnxruntime
    on the same inputs; return the largest difference (raise ``SystemExit`` above ``atol``).

    ``trust_code``: let ``compress.load`` run the model factory the manifest names (a run of
    your own ``python`` model); without it such a run is refused."""
    import torch

    import compress

    # nn.Module from model.safetensors + model.json, no pickle
    model = compress.load(run_dir, trust_code=trust_code)
    onnx = OnnxClassifier(run_dir)
    x = torch.rand((samples, *onnx.shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    got = onnx.logits(x.numpy())
    diff = float(np.abs(expected - got).max())
    if diff > atol or (expected.argmax(1) != got.argmax(1)).any():
        raise SystemExit(f"PyTorch and onnxruntime disagree: max |diff| {diff:.2e}")
    return diff


def _round_trip(model: OnnxClassifier) -> dict[str, Any]:
    """One /predict request to a server on a free port, then stop it."""
    server = make_server(model, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/predict"
        body = json.dumps({"inputs": np.zeros((1, *model.shape)).tolist()}).encode()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="A finished compress run folder.")
    parser.add_argument("--check", action="store_true", help="Check safetensors-in-PyTorch "
                        "against onnxruntime and one HTTP request, then exit.")
    parser.add_argument("--trust-code", action="store_true", help="--check: run the model "
                        "factory model.json names (a run of your own python model).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port.")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads.")
    args = parser.parse_args()
    model = OnnxClassifier(args.run_dir, threads=args.threads)
    if args.check:
        diff = check_against_torch(args.run_dir, trust_code=args.trust_code)
        print(f"PyTorch (model.safetensors via compress.load) and onnxruntime (model.onnx) "
              f"agree: max |diff| {diff:.2e}")
        reply = _round_trip(model)
        print(f"HTTP /predict answered: {json.dumps(reply['predictions'][0]['top'][:1])}")
        return
    server = make_server(model, args.host, args.port)
    print(f"serving {args.run_dir} on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
