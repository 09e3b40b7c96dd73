"""One own model with every block kind compress prunes through the dependency graph, pruned
through ``compress.prune`` and through a ``python:`` recipe: proven, exported with ONNX parity,
reloaded.

The kinds: a ConvNeXt block (depthwise conv, channels-last LayerNorm over the pruned channels,
a free per-channel layer scale), DenseNet-style chained concatenations, a GroupNorm, a split
into two branches concatenated again, a chunk whose halves are concatenated with their product
(torch-pruning cannot map it: its producer is protected, the rest pruned) and a
``nn.MultiheadAttention`` over the feature map's positions (packed projections, per-head cuts).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import compress
from compress.export.onnx import onnx_session
from tests.conftest import tiny_recipe
from tests.hostile import invoke

OWN_MODEL = '''
import torch
from torch import nn


class ConvNeXtBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.up = nn.Linear(c, 4 * c)
        self.down = nn.Linear(4 * c, c)
        self.layer_scale = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.down(nn.functional.gelu(self.up(self.norm(y)))) * self.layer_scale
        return x + y.permute(0, 3, 1, 2)


class DenseLayer(nn.Module):
    def __init__(self, c, grow):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.conv = nn.Conv2d(c, grow, 3, padding=1)

    def forward(self, x):
        return torch.cat([x, self.conv(self.bn(x).relu())], 1)


class AllKinds(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, 32, 3, padding=1)
        self.convnext = ConvNeXtBlock(32)
        self.dense = nn.Sequential(DenseLayer(32, 16), DenseLayer(48, 16))  # 32 -> 48 -> 64
        self.transition = nn.Conv2d(64, 64, 1)
        self.gn = nn.GroupNorm(4, 64)
        self.left = nn.Conv2d(32, 32, 3, padding=1)
        self.right = nn.Conv2d(32, 32, 1)
        self.halves = nn.Conv2d(64, 32, 1)  # chunked into p, q; cat([p, q, p * q])
        self.mix = nn.Conv2d(48, 32, 1)
        self.attn_norm = nn.LayerNorm(32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.convnext(self.stem(x).relu())
        x = self.gn(self.transition(self.dense(x))).relu()
        # split sizes read from the branches, so they follow the pruned widths
        a, b = torch.split(x, [self.left.in_channels, self.right.in_channels], dim=1)
        x = torch.cat([self.left(a).relu(), self.right(b).relu()], 1)
        p, q = self.halves(x).relu().chunk(2, dim=1)
        x = self.mix(torch.cat([p, q, p * q], 1)).relu()
        tokens = x.flatten(2).transpose(1, 2)
        t = self.attn_norm(tokens)
        tokens = tokens + self.attn(t, t, t, need_weights=False)[0]
        return self.head(tokens.mean(1))


def all_kinds(num_classes=10):
    torch.manual_seed(0)
    return AllKinds(num_classes)
'''

SIZE = 8  # the digits data of tiny_recipe: 8 x 8 grayscale


@pytest.fixture
def own(tmp_path: Path) -> tuple[Path, dict]:
    path = tmp_path / "own_model.py"
    path.write_text(OWN_MODEL)
    scope: dict = {}
    exec(compile(OWN_MODEL, str(path), "exec"), scope)  # the test's own factory
    return path, scope


def _x(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _widths(net: nn.Module) -> dict[str, int]:
    out = {}
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
        elif isinstance(m, nn.MultiheadAttention):
            out[name] = m.embed_dim
    return out


# Layers whose width must change for each kind to count as pruned, not just left alone.
PRUNED = ["convnext.up", "dense.0.conv", "dense.1.conv", "left", "right", "mix", "attn",
          "transition"]


def test_every_kind_prunes_proven_through_the_api(own, tmp_path: Path) -> None:
    _, scope = own
    net = scope["all_kinds"]().eval()
    before = _widths(net)
    result = compress.prune(net, _x(1), ratio=0.5, probe=_x(), round_to=1)
    step = result.steps[-1]
    assert step["proof"] == "proven" and step["max_abs_diff"] is not None, step
    after = _widths(net)
    assert all(after[n] < before[n] for n in PRUNED), {n: (before[n], after[n]) for n in PRUNED}
    # torch-pruning cannot map the chunk product: its producer keeps its width, the rest is cut.
    assert set(step["protected"]) == {"halves"} and after["halves"] == before["halves"]
    assert net.convnext.layer_scale.numel() == after["stem"] < before["stem"]
    assert net.gn.num_channels == after["transition"] and after["transition"] % 4 == 0

    result.save(tmp_path / "saved", build=scope["all_kinds"])
    reloaded = compress.load(tmp_path / "saved", build=scope["all_kinds"])
    with torch.no_grad():
        assert torch.allclose(reloaded(_x(seed=2)), net(_x(seed=2)), atol=1e-5)


def test_every_kind_prunes_through_a_python_recipe(own, tmp_path: Path) -> None:
    path, scope = own
    recipe = tiny_recipe(tmp_path, model={"source": "python", "factory": f"{path}:all_kinds",
                                          "kwargs": {}, "num_classes": 10},
                         finetune={"epochs": 0}, export={"onnx": True, "safetensors": True},
                         report={"latency": False})
    recipe["pruning"] = {"target": {"macs": 0.5}, "round_to": 1}
    file = tmp_path / "recipe.yaml"
    file.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    result = invoke(["apply", file, "--out", out])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    step = report["steps"][-1]
    assert step["proof"] == "proven" and "halves" in step["protected"], step
    assert report["macs_reduction"] >= 0.45, report["macs_reduction"]
    # A parity check that fails stops the run; both were measured, none skipped.
    assert set(report["parity"]) == {"onnx", "safetensors"}, report["parity"]
    assert all(v is not None for v in report["parity"].values()), report["parity"]

    model = compress.load(out, build=scope["all_kinds"])
    x = _x(2, seed=3)
    with torch.no_grad():
        expected = model(x)
    got = onnx_session(out / "model.onnx").run(None, {"input": x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), expected, atol=1e-4, rtol=1e-3)
