"""Block streaming: the inputs each block and layer sees, padding left out."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from compress.models import build_model
from compress.pruning.calibration import (
    BlockInputs,
    model_blocks,
    real_tokens,
    record_inputs,
    stream_blocks,
)
from compress.recipe.sources import ModelSpec
from tests.hf_models import example_input, save_tiny


def test_a_model_without_blocks_is_not_streamed() -> None:
    net = nn.Sequential(nn.Linear(2, 2))
    assert model_blocks(net) is None
    assert stream_blocks(net, [torch.ones(1, 2)], lambda *a: None) is False


def test_blocks_see_the_previous_blocks_outputs_and_layers_see_real_tokens(
        tmp_path: Path) -> None:
    folder, task = save_tiny("bert", tmp_path / "bert")
    model = build_model(ModelSpec(source="huggingface", name=str(folder), task=task,
                                  num_classes=3)).eval()
    x = example_input(model)  # rows 1.. end in 3 padding tokens
    mask = real_tokens(model, x)
    assert mask is not None and int(mask.sum()) == x.numel() - 3 * (len(x) - 1)
    seen: dict[int, list[torch.Tensor]] = {}
    rows: list[int] = []

    def visit(index: int, block: nn.Module, inputs: BlockInputs) -> None:
        seen[index] = [a[0] for a in inputs.args]
        record_inputs(block, inputs, {"q": block.attention.self.query},
                      lambda name, h: rows.append(len(h)))

    assert stream_blocks(model, [x[:2], x[2:]], visit)
    assert rows == [int(mask[:2].sum()), int(mask[2:].sum())] * 2
    with torch.no_grad():
        hidden = model.hf(input_ids=x, attention_mask=mask.long(),
                          output_hidden_states=True).hidden_states
    assert torch.equal(torch.cat(seen[1]), hidden[1])
