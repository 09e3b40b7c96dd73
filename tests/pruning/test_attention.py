"""``nn.MultiheadAttention`` pruned through torch-pruning's graph: per-head cuts, the score scale
kept, proven by the zeroed == removed check, exported with ONNX parity and reloaded."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
import yaml
from torch import nn

import compress
from compress.errors import CheckFailed, InputError
from compress.export.onnx import onnx_session
from compress.pruning.attention import MultiheadAttentionPruner, zero_attention_
from compress.pruning.structured import StructuredPruner
from compress.recipe.pruning import PruningSpec
from tests.hostile import invoke


class _Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(),
                                 nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.mlp(x)


class PatchAttention(nn.Module):
    """A ViT without norms: patch embedding, two attention blocks on the residual stream."""

    def __init__(self, num_classes: int = 10, width: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, width, 4, stride=4)
        self.blocks = nn.Sequential(_Block(width, heads), _Block(width, heads))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.blocks(tokens).mean(1))


def patch_attention(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return PatchAttention(num_classes)


def _mha_and_input() -> tuple[nn.MultiheadAttention, torch.Tensor]:
    torch.manual_seed(0)
    return nn.MultiheadAttention(16, 4, batch_first=True).eval(), torch.randn(2, 5, 16)


def test_cut_layer_computes_what_the_zeroed_layer_computes() -> None:
    mha, x = _mha_and_input()
    gone = [1, 2, 5, 6, 9, 10, 13, 14]  # offsets 1 and 2 of every head
    keep = [i for i in range(16) if i not in gone]
    with torch.no_grad():
        zero_attention_(mha, gone)
        zeroed = mha(x, x, x, need_weights=False)[0][..., keep]
        theirs = copy.deepcopy(mha)
        MultiheadAttentionPruner().prune_out_channels(mha, gone)
        cut = mha(x[..., keep], x[..., keep], x[..., keep], need_weights=False)[0]
        # torch-pruning's own pruner keeps the q rows as they are: the scores lose their scale
        tp.pruner.function.MultiheadAttentionPruner().prune_out_channels(theirs, gone)
        unscaled = theirs(x[..., keep], x[..., keep], x[..., keep], need_weights=False)[0]
    assert (mha.embed_dim, mha.head_dim, tuple(mha.in_proj_weight.shape)) == (8, 2, (24, 8))
    assert torch.allclose(cut, zeroed, atol=1e-6)
    assert not torch.allclose(unscaled, zeroed, atol=1e-3)


def test_channels_that_differ_between_heads_are_refused() -> None:
    mha, _ = _mha_and_input()
    with pytest.raises(CheckFailed, match="the channels chosen differ between heads"):
        MultiheadAttentionPruner().prune_out_channels(mha, [0, 5])


def test_separate_key_value_widths_are_refused_in_one_sentence() -> None:
    mha = nn.MultiheadAttention(8, 2, kdim=4, vdim=4)
    with pytest.raises(CheckFailed) as err:
        zero_attention_(mha, [0])
    assert "\n" not in str(err.value) and "kdim 4" in str(err.value)


def test_structured_pruner_cuts_the_residual_stream_through_attention() -> None:
    model = patch_attention().eval()
    x = torch.randn(4, 3, 16, 16)
    pruner = StructuredPruner(model, x[:1], PruningSpec(ratio=0.5))
    record = pruner.step_(0.5, x)
    attn = model.blocks[0].attn
    assert record.proof == "proven" and record.max_abs_diff < 1e-5
    assert (attn.embed_dim, attn.head_dim, attn.num_heads) == (16, 4, 4)
    assert model.embed.out_channels == 16 and model.blocks[1].mlp[0].out_features == 32


def test_attention_model_runs_through_a_recipe_exported_and_reloaded(tmp_path: Path) -> None:
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in range(10):
            (tmp_path / "img" / split / f"c{c}").mkdir(parents=True)
            pixels = torch.randint(0, 256, (16, 16, 3), generator=gen, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(tmp_path / "img" / split / f"c{c}" / "0.png")
    recipe = {
        "version": 1, "name": "attention",
        "model": {"source": "python", "factory": f"{Path(__file__)}:patch_attention",
                  "num_classes": 10},
        "data": {"source": "imagefolder", "path": str(tmp_path / "img"), "batch_size": 4,
                 "eval_batch_size": 10},
        "pruning": {"importance": "l2", "target": {"macs": 0.5}},
        "finetune": {"epochs": 0},
        "report": {"latency": False},
        "export": {"parity_batch": 2},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    result = invoke(["apply", tmp_path / "r.yaml", "--out", tmp_path / "run"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text(encoding="utf-8"))
    assert report["steps"][-1]["proof"] == "proven"
    assert report["macs_reduction"] >= 0.45
    model = compress.load(tmp_path / "run", trust_code=True)
    attn = model.blocks[0].attn
    assert attn.embed_dim < 32 and attn.embed_dim == attn.head_dim * attn.num_heads
    x = torch.randn(2, 3, 16, 16, generator=gen)
    with torch.no_grad():
        expected = model(x)
    got = onnx_session(tmp_path / "run" / "model.onnx").run(None, {"input": x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), expected, atol=1e-5, rtol=1e-4)


def test_round_to_is_refused_for_attention_models_in_one_sentence() -> None:
    model = patch_attention().eval()
    with pytest.raises(InputError, match=r"^pruning.round_to: 8 does not apply to models with "
                                         r"nn.MultiheadAttention layers"):
        StructuredPruner(model, torch.randn(1, 3, 16, 16), PruningSpec(ratio=0.5, round_to=8))
