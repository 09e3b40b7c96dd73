"""What every pruned decoder must pass after its proof: hf/ written and reloaded by stock
transformers with the same outputs, ``generate()`` (greedy, a few tokens) equal to the in-memory
model's, ONNX parity, and ``compress.load`` rebuilding the same model."""

from __future__ import annotations

from pathlib import Path

import torch

from compress.export.hf import save_hf_
from compress.export.load import load_model
from compress.export.model import export_model
from compress.models.huggingface import TASKS, HFModel
from compress.recipe.sources import ModelSpec
from compress.recipe.stages import ExportSpec


def assert_stock_and_onnx(model: HFModel, x: torch.Tensor, out: Path, folder: Path,
                          task: str) -> None:
    """The checks above on ``model`` (built from ``folder`` for ``task``), written to ``out``."""
    import transformers

    model.eval()
    info = save_hf_(model, out, x)
    assert info["saved"], info
    stock = getattr(transformers, TASKS[task]).from_pretrained(info["path"]).eval()
    reloaded = HFModel(stock, task, pad_token_id=model.pad_token_id).eval()
    with torch.no_grad():
        assert (reloaded(x) - model(x)).abs().max().item() < 1e-5
    if task == "causal-lm":
        prompt = x[:1, :5]
        expected = model.hf.generate(prompt, max_new_tokens=4, do_sample=False)
        assert torch.equal(stock.generate(prompt, max_new_tokens=4, do_sample=False), expected)
    exported = export_model(model, out, ExportSpec(),
                            ModelSpec(source="huggingface", name=str(folder), task=task), x)
    assert exported["parity"]["onnx"] < 1e-4 and exported["parity"]["safetensors"] == 0.0
    with torch.no_grad():
        assert torch.equal(load_model(out, force=True)(x), model(x))
