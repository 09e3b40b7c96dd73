"""Patterns torch-pruning cannot map: one sentence naming the layer (exit 2 when the pattern is
unsupported, exit 1 when the proof fails), or the layer protected and the rest pruned."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import compress
from compress.errors import CheckFailed, InputError
from tests.conftest import tiny_recipe
from tests.hostile import Tree, assert_refused, hostile, invoke

OWN_MODELS = '''
import torch
import torchvision
from torch import nn


class ChunkProduct(nn.Module):
    """cat([p, q, p * q]) of chunk outputs: torch-pruning cannot map the stem's channels."""

    def __init__(self, num_classes=10, c=32):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.mix = nn.Conv2d(c // 2 * 3, 32, 1)
        self.out = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        p, q = self.stem(x).relu().chunk(2, dim=1)
        y = self.out(self.mix(torch.cat([p, q, p * q], 1)).relu()).relu()
        return self.head(y.mean((2, 3)))


class SplitGrouped(nn.Module):
    """split, a grouped conv on one half, cat: the grouped conv's group is mis-mapped."""

    def __init__(self, num_classes=10, groups=32):
        super().__init__()
        self.stem = nn.Conv2d(1, 64, 3, padding=1)
        self.g = nn.Conv2d(32, 32, 3, padding=1, groups=groups)
        self.mix = nn.Conv2d(64, 32, 1)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        a, b = torch.split(self.stem(x), [32, 32], dim=1)
        y = self.mix(torch.cat([self.g(a), b], 1)).relu()
        return self.head(y.mean((2, 3)))


def chunk_product(num_classes=10):
    return ChunkProduct(num_classes)


def split_grouped(num_classes=10):
    return SplitGrouped(num_classes)


def shufflenet(num_classes=10):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 1),
                         torchvision.models.shufflenet_v2_x0_5(num_classes=num_classes))
'''


@pytest.fixture
def own(tmp_path: Path):
    path = tmp_path / "own_models.py"
    path.write_text(OWN_MODELS)
    scope: dict = {}
    exec(compile(OWN_MODELS, str(path), "exec"), scope)  # the test's own factories
    return path, scope


def _x() -> torch.Tensor:
    return torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_channel_shuffle_is_refused_naming_the_layer_without_closed_blocks(own) -> None:
    """With every closed block ignored, nothing is left that compress can prune exactly."""
    _, models = own
    with pytest.raises(InputError, match=r"cannot map the channels around the \w+ after "
                                         r"'1\.stage\d\.0\.branch\d\.\d+' \(ZeroDivisionError "
                                         r"while building the dependency graph"):
        compress.prune(models["shufflenet"](), _x(), ratio=0.5, ignored=[r"re:.*branch2"])


def test_channel_shuffle_prunes_inside_closed_blocks_and_says_so(own) -> None:
    _, models = own
    net = models["shufflenet"]().eval()
    before = {n: m.out_channels for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    step = compress.prune(net, _x(), ratio=0.5).steps[-1]
    assert step["proof"] == "proven" and step["max_abs_diff"] < 1e-4
    assert "inner channels of 16 closed blocks were pruned" in step["note"]
    assert "cannot map the channels around" in step["note"]
    after = {n: m.out_channels for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    changed = {n for n in before if before[n] != after[n]}
    # Only a branch's first 1x1 conv and its depthwise conv lose channels; every width the
    # channel shuffle sees (branch outputs, branch1, stem, conv5) is kept.
    assert changed and all(".branch2." in n and n.endswith((".0", ".3")) for n in changed)
    with torch.no_grad():
        assert net(_x()).shape == (4, 10)


def test_chunk_product_is_pruned_with_its_stem_protected(own) -> None:
    _, models = own
    net = models["chunk_product"]().eval()
    result = compress.prune(net, _x(), ratio=0.5)
    step = result.steps[-1]
    assert step["proof"] == "proven" and step["max_abs_diff"] < 1e-4
    assert set(step["protected"]) == {"stem"} and "cannot map" in step["protected"]["stem"]
    assert net.stem.out_channels == 32 and net.out.out_channels < 32  # the rest was pruned


@pytest.mark.parametrize("target", [{"ratio": 0.5}, {"target_macs": 0.5}])
def test_split_grouped_fails_its_proof_naming_the_layer(own, target: dict) -> None:
    """The removal breaks the model; in the MACs search's trials too (they carry no proof, so
    the failing trial is redone with it to name the group)."""
    _, models = own
    with pytest.raises(CheckFailed, match="pruning group rooted at 'g' broke the model: "
                                          "RuntimeError: .*; add 'g' to pruning.ignored"):
        compress.prune(models["split_grouped"]().eval(), _x(), **target)
    result = compress.prune(models["split_grouped"]().eval(), _x(), ignored=["g"], **target)
    assert result.steps[-1]["proof"] == "proven"


def _recipe(tmp_path: Path, path: Path, factory: str, **pruning: object) -> Path:
    recipe = tiny_recipe(tmp_path, model={"source": "python", "factory": f"{path}:{factory}",
                                          "kwargs": {}, "num_classes": 10},
                         pruning={"ratio": 0.5, **pruning},
                         finetune={"epochs": 0}, export={"onnx": False},
                         report={"latency": False})
    file = tmp_path / "recipe.yaml"
    file.write_text(yaml.safe_dump(recipe))
    return file


@hostile
@pytest.mark.parametrize("factory, code, fragments", [
    ("shufflenet", 2, ["cannot map the channels around", "ZeroDivisionError"]),
    ("split_grouped", 1, ["pruning group rooted at 'g' broke the model", "pruning.ignored"]),
])
def test_cli_says_one_sentence_with_the_right_code(tmp_path: Path, own, factory: str,
                                                   code: int, fragments: list[str]) -> None:
    path, _ = own
    ignored = {"ignored": [r"re:.*branch2"]} if factory == "shufflenet" else {}
    recipe = _recipe(tmp_path, path, factory, **ignored)
    tree = Tree(tmp_path)
    result = invoke(["apply", recipe, "--out", tmp_path / "run"])
    if code == 2:
        assert_refused(result, *fragments, code=code)
    else:  # a failed proof: the CLI says "check failed:", not "error:"
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        lines = [ln for ln in result.stderr.splitlines() if ln.startswith("check failed: ")]
        assert len(lines) == 1 and all(f in lines[0] for f in fragments), result.stderr
    assert tree.new_files(allowed=["run", ".cache", "__pycache__"]) == []


def test_cli_reports_the_protected_layer(tmp_path: Path, own) -> None:
    path, _ = own
    result = invoke(["apply", _recipe(tmp_path, path, "chunk_product"), "--out", tmp_path / "run"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert "stem" in report["steps"][-1]["protected"]
    assert any("layer 'stem' was left unpruned" in n for n in report["notes"])
    md = (tmp_path / "run" / "report.md").read_text()
    assert "left unpruned" in md and "Proof tolerance: step 1 " in md


def test_layers_are_named_from_the_failing_frame() -> None:
    from compress.pruning.graph_errors import graph_errors

    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU())
    with pytest.raises(InputError, match=r"around '0' \(TypeError while testing: boom\)"):
        with graph_errors(net, "while testing"):
            layer = net[0]  # noqa: F841 (read from the frame by the handler)
            raise TypeError("boom")
