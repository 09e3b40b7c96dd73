"""Tokenizer, model and training loop of the small trained decoder (see decoder_model.py).

The model's cache key is this file's and decoder_corpus.py's sources, the settings, the corpus
splits' SHA-256 and the torch / transformers / tokenizers versions: not the compress sources
(the model does not depend on them) and not decoder_model.py (which only measures and reports),
so an edit elsewhere never costs a retraining, and an edit here always does.

Example:
    >>> round(_lr(0, SETTINGS["tiny"]) / SETTINGS["tiny"]["lr"], 2)  # warmup's first step
    0.5
    >>> s = SETTINGS["tiny"]
    >>> round(_lr(s["steps"], s) / s["lr"], 2)  # where the schedule ends: a tenth
    0.1
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from decoder_corpus import cache_root, prepare_corpus
from provenance import files_digest, load_average

log = logging.getLogger("bench")

__all__ = ["SETTINGS", "SPECIAL", "ensure_model", "model_folder", "model_key",
           "heldout_perplexity", "train"]

SETTINGS: dict[str, dict[str, Any]] = {
    # Sized by measurement on a shared 2-core machine (one torch thread, load average 4 to
    # 6): hidden 256 trained at ~520 tokens/s, hidden 192 at ~960; in the ~25 minutes
    # allowed, the smaller model sees twice the tokens, which at this scale lowers the
    # held-out perplexity more than the width would.
    "full": {"vocab": 4096, "hidden": 192, "layers": 6, "heads": 8, "kv_heads": 4,
             "ffn": 512, "seq": 256, "batch": 16, "steps": 360, "lr": 3e-3,
             "warmup": 20, "weight_decay": 0.1, "evals": 4, "seed": 0, "train_chars": None},
    "tiny": {"vocab": 384, "hidden": 32, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 64,
             "seq": 32, "batch": 4, "steps": 12, "lr": 2e-3, "warmup": 2,
             "weight_decay": 0.1, "evals": 2, "seed": 0, "train_chars": 60_000},
}
SPECIAL = ["<|endoftext|>", "<pad>"]


def model_key(settings: dict[str, Any], corpus: dict[str, Any]) -> str:
    """The cache key: settings, the corpus splits, the two scripts, the library versions."""
    import tokenizers
    import torch
    import transformers

    here = Path(__file__).resolve().parent
    blob = json.dumps({"settings": settings,
                       "corpus": {s: v["sha256"] for s, v in corpus["splits"].items()},
                       "code": files_digest([here / "decoder_train.py",
                                             here / "decoder_corpus.py"]),
                       "versions": [torch.__version__, transformers.__version__,
                                    tokenizers.__version__]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _tokenizer(text: str, vocab: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.split("\n\n"), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL[0],
                                   eos_token=SPECIAL[0], pad_token=SPECIAL[1])


def _config(s: dict[str, Any], tokenizer: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=s["hidden"],
                       intermediate_size=s["ffn"], num_hidden_layers=s["layers"],
                       num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                       head_dim=s["hidden"] // s["heads"], max_position_embeddings=4 * s["seq"],
                       tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def _ids(tokenizer: Any, text: str) -> Any:
    return tokenizer(text, return_tensors="pt")["input_ids"][0]


def heldout_perplexity(model: Any, ids: Any, seq: int) -> dict[str, float]:
    """compress's evaluation on non-overlapping ``seq``-token blocks (as ``text_lm`` cuts)."""
    import torch
    from torch.utils.data import DataLoader

    from compress.data.text import TokenRows
    from compress.measure.evaluate import evaluate
    from compress.models.huggingface import HFModel

    n = len(ids) // seq
    blocks = ids[: n * seq].view(n, seq)
    wrapped = HFModel(model, "causal-lm", pad_token_id=model.config.pad_token_id)
    loader = DataLoader(TokenRows(blocks, blocks.clone()), batch_size=16)
    out = evaluate(wrapped, loader, torch.device("cpu"))
    return {"perplexity": out["perplexity"], "loss": out["loss"], "tokens": out["samples"]}


def _lr(step: int, s: dict[str, Any]) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < s["warmup"]:
        return s["lr"] * (step + 1) / s["warmup"]
    done = (step - s["warmup"]) / max(1, s["steps"] - s["warmup"])
    return s["lr"] * (0.1 + 0.45 * (1 + math.cos(math.pi * done)))


def train(s: dict[str, Any], corpus: Path, out: Path) -> dict[str, Any]:
    """Train and save the model into ``out``; the training record (measured here)."""
    import torch
    from transformers import LlamaForCausalLM

    t0, load_before = time.perf_counter(), load_average()
    text = (corpus / "train.txt").read_text(encoding="utf-8")[: s["train_chars"]]
    tokenizer = _tokenizer(text, s["vocab"])
    train_ids, held = _ids(tokenizer, text), _ids(tokenizer, (corpus / "heldout.txt")
                                                  .read_text(encoding="utf-8"))
    tokenize_s = time.perf_counter() - t0
    torch.manual_seed(s["seed"])
    model = LlamaForCausalLM(_config(s, tokenizer))
    # No weight decay on norms (the usual split): decaying a gain towards 0 only hurts.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s["weight_decay"]},
                             {"params": rest, "weight_decay": 0.0}], lr=s["lr"],
                            betas=(0.9, 0.95))
    # Random windows of the token stream (a fixed generator): every offset can start a row,
    # so repeated passes over a small corpus do not repeat the same rows.
    windows = torch.Generator().manual_seed(s["seed"])
    evals = {round(s["steps"] * (i + 1) / s["evals"]) for i in range(s["evals"])}
    curve, losses, t_train = [], [], time.perf_counter()
    for step in range(s["steps"]):
        for group in opt.param_groups:
            group["lr"] = _lr(step, s)
        starts = torch.randint(0, len(train_ids) - s["seq"], (s["batch"],), generator=windows)
        x = torch.stack([train_ids[i:i + s["seq"]] for i in starts.tolist()])
        model.train()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            log.info("step %d: train loss %.3f", step + 1, sum(losses[-50:]) / 50)
        if step + 1 in evals:
            model.eval()
            ppl = heldout_perplexity(model, held, s["seq"])["perplexity"]
            curve.append({"step": step + 1, "tokens_seen": (step + 1) * s["batch"] * s["seq"],
                          "train_loss_last_50": sum(losses[-50:]) / len(losses[-50:]),
                          "heldout_perplexity": ppl,
                          "elapsed_s": time.perf_counter() - t_train})
            log.info("step %d: held-out perplexity %.2f (%.0f s)", step + 1, ppl,
                     curve[-1]["elapsed_s"])
    model.eval()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    record = {"tokenize_s": tokenize_s, "train_s": time.perf_counter() - t_train,
              "train_tokens": len(train_ids), "tokens_seen": s["steps"] * s["batch"] * s["seq"],
              "curve": curve, "threads": torch.get_num_threads(),
              # the training is cached: what it ran on travels with it
              "load_before": load_before, "load_after": load_average(),
              "nice": os.nice(0), "torch": torch.__version__,
              "train_loss_per_10_steps": [round(sum(losses[i:i + 10]) / len(losses[i:i + 10]), 4)
                                          for i in range(0, len(losses), 10)],
              "trained": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # the cache holds a whole model or none
    return record


def model_folder(tiny: bool, manifest: dict[str, Any]) -> Path:
    """Where the model of these settings and this corpus is cached."""
    s = SETTINGS["tiny" if tiny else "full"]
    name = f"austen-llama-{'tiny-' if tiny else ''}{model_key(s, manifest)}"
    return cache_root() / "decoder" / name


def ensure_model(tiny: bool = False,
                 retrain: bool = False) -> tuple[Path, Path, dict[str, Any]]:
    """The cached model folder (trained when missing), the corpus folder, the settings.

    Example:
        >>> model_dir, corpus, settings = ensure_model()  # doctest: +SKIP
        >>> AutoModelForCausalLM.from_pretrained(model_dir)  # doctest: +SKIP
    """
    s = SETTINGS["tiny" if tiny else "full"]
    corpus, manifest = prepare_corpus()
    folder = model_folder(tiny, manifest)
    if retrain or not (folder / "training.json").is_file():
        log.info("training %s (%s steps)", folder, s["steps"])
        train(s, corpus, folder)
    return folder, corpus, s


