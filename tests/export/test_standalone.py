"""``compress.prune`` results saved like a run folder (``compress.save``) and reloaded by
``compress.load``."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from torch import nn

import compress
from compress.errors import InputError
from compress.models import build_model
from compress.recipe.sources import ModelSpec
from tests.hf_models import example_input, save_tiny


class Net(nn.Module):
    """An own model: conv, batch norm, residual add, pooling, linear head."""

    def __init__(self, width: int = 16, classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.relu(h + self.body(h))
        return self.head(h.mean(dim=(2, 3)))


def test_own_model_prune_export_load_same_outputs_and_onnx_parity(tmp_path: Path) -> None:
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    result = compress.prune(Net(width=16).eval(), x, ratio=0.5, round_to=1)
    out = tmp_path / "pruned"
    info = result.save(out, build=Net, kwargs={"width": 16})
    assert info["parity"]["safetensors"] == 0.0 and info["parity"]["onnx"] < 1e-4
    assert info["onnx"] == str(out / "model.onnx")
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx",
                                                     "model.safetensors"]
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["model"]["factory"].endswith(":Net")
    assert manifest["model"]["kwargs"] == {"width": 16}
    # The manifest names code: compress.load runs it only when the caller names it.
    with pytest.raises(InputError, match="pass build=... or trust_code=True"):
        compress.load(out)
    reloaded = compress.load(out, build=Net)
    assert reloaded.body[0].out_channels == 8
    with torch.no_grad():
        expected = result.model.eval()(x)
        assert torch.equal(reloaded(x), expected)
    session = ort.InferenceSession(str(out / "model.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert (torch.from_numpy(got) - expected).abs().max().item() < 1e-4


def test_transformers_model_exports_with_hf_folder_and_loads_without_build(
        tmp_path: Path) -> None:
    folder, task = save_tiny("phi3", tmp_path / "phi3")
    model = build_model(ModelSpec(source="huggingface", name=str(folder), task=task))
    x = example_input(model)
    result = compress.prune(model, x, ratio=0.5, round_to=1)
    # ONNX parity of this family is proven in tests/pruning/test_transformer_families.py.
    info = compress.save(result.model, tmp_path / "out", x, onnx=False)
    assert info["hf"]["saved"] and info["hf"]["path"] == str(tmp_path / "out" / "hf")
    assert info["parity"]["safetensors"] == 0.0 and "onnx" not in info
    with torch.no_grad():
        assert torch.equal(compress.load(tmp_path / "out")(x), model.eval()(x))


def test_export_needs_build_for_python_models_and_never_overwrites(tmp_path: Path) -> None:
    x = torch.randn(2, 3, 8, 8)
    model = Net(width=8).eval()
    with pytest.raises(InputError, match="needs build=..."):
        compress.save(model, tmp_path / "a", x)
    assert not (tmp_path / "a").exists()
    compress.save(model, tmp_path / "a", x, build=Net, kwargs={"width": 8}, onnx=False)
    with pytest.raises(InputError, match="already exists"):
        compress.save(model, tmp_path / "a", x, build=Net, kwargs={"width": 8})
    compress.save(model, tmp_path / "a", x, build=Net, kwargs={"width": 8}, overwrite=True)
    assert (tmp_path / "a" / "model.onnx").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temp folder left


def test_a_failed_export_leaves_nothing(tmp_path: Path) -> None:
    x = torch.randn(2, 3, 8, 8)
    # The wrong constructor: the reload check fails, and the folder is never published.
    with pytest.raises(InputError, match="does not exist in the rebuilt model"):
        compress.save(Net(width=8).eval(), tmp_path / "b", x,
                        build=lambda **kw: nn.Linear(2, 2))
    assert list(tmp_path.iterdir()) == []
