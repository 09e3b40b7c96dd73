"""Train a small Llama-style decoder on Jane Austen's novels: the real decoder to measure on.

No pretrained decoder can be downloaded on these machines, so the decoder benchmarks (structured
pruning, Wanda / SparseGPT) measure on this one: a byte-level BPE tokenizer trained on the
training split (the ``tokenizers`` library), a transformers ``LlamaConfig`` with grouped-query
attention (8 query heads, 4 kv heads), trained from a fixed seed with AdamW on random windows
of the training split, then saved as a stock Hugging Face folder (config.json,
model.safetensors, tokenizer files) that ``AutoModelForCausalLM.from_pretrained`` loads.
The corpus and its held-out split are :mod:`decoder_corpus`'s.

    python benchmarks/decoder_model.py --threads 1          # train (or reuse) and measure
    python benchmarks/decoder_model.py --tiny --threads 1   # seconds: what the test runs

The model is cached under ``$COMPRESS_BENCH_CACHE/decoder/`` (default
``~/.cache/compress-bench``), keyed on this script's and decoder_corpus.py's sources, the
settings and the torch / transformers / tokenizers versions (not on the compress sources: the
model does not depend on them, and a change there must not cost a retraining). Use
:func:`ensure_model` from another benchmark to get the folder. The held-out perplexity is
measured with compress's own evaluation (``compress.measure.evaluate``) on non-overlapping
blocks of ``seq`` tokens of ``heldout.txt``, the way a ``text_lm`` recipe measures it; then
``compress apply`` runs a small recipe on the model (heads and FFN by l2 magnitude, no
fine-tuning) and its report's perplexity before pruning must equal this script's.

Writes benchmarks/results/decoder_model[-tiny].{json,md}.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from _common import add_common_args, finish, fmt_table, make_parser, start
from decoder_corpus import prepare_corpus
from decoder_train import ensure_model, heldout_perplexity, model_folder
from provenance import peak_rss_mib

log = logging.getLogger("bench")

__all__ = ["CHECK", "check_apply", "render_result"]

PROMPT = "It is a truth universally acknowledged, that"
# The compress apply check: a quarter of the heads and FFN neurons by l2 magnitude.
CHECK = {"kind": "structured", "importance": "l2", "ratio": 0.25, "heads": 0.25, "ffn": 0.25}

def check_apply(model_dir: Path, corpus: Path, s: dict[str, Any], work: Path) -> dict[str, Any]:
    """``compress apply`` on the model: a text_lm recipe, heads + FFN by l2, no fine-tune."""
    import compress

    recipe = {"version": 1, "name": "austen-decoder-check",
              "model": {"source": "huggingface", "name": str(model_dir), "task": "causal-lm"},
              "data": {"source": "text_lm", "path": str(corpus), "train_split": "calibration",
                       "eval_split": "heldout", "max_length": s["seq"], "batch_size": 16,
                       "eval_batch_size": 16},
              "pruning": CHECK, "schedule": {"kind": "one-shot"}, "finetune": {"epochs": 0},
              "report": {"latency": False}}
    t = time.perf_counter()
    result = compress.apply(recipe, out_dir=work, overwrite=True)
    r = result.report
    return {"recipe_pruning": CHECK, "wall_s": time.perf_counter() - t, "ok": result.ok,
            "baseline": {k: r["baseline"].get(k) for k in ("perplexity", "params", "macs")},
            "compressed": {k: r["compressed"].get(k) for k in ("perplexity", "params", "macs")},
            "proofs": [st.get("proof") for st in r["steps"]],
            "run_folder": str(work)}


def _load(x: list[float] | None) -> str:
    return "/".join(f"{v:.1f}" for v in x) if x else "not recorded"


def render_result(r: dict[str, Any]) -> str:
    """The model, its training and its held-out perplexity, from a result file."""
    c, t, h, a = r["corpus"], r["training"], r["heldout"], r["apply_check"]
    cfg, s, prune = r["config"], r["settings"], a["recipe_pruning"]
    when = (f"trained {t['trained']} by an earlier run of this script and cached (load average "
            f"{_load(t.get('load_before'))} before, {_load(t.get('load_after'))} after, nice "
            f"{t.get('nice')})" if r["cached"] else "trained in this run")
    rows = [["corpus", f"{c['name']}, Debian package `{c['package']}` {c['version']} "
             f"(sha256 `{c['deb_sha256'][:12]}…`; {c['licence']})"],
            ["split (by chapter)", c["split_rule"]],
            ["tokens: train / held-out", f"{t['train_tokens']:,} / {h['tokens']:,} "
             f"(byte-level BPE trained on the training split, vocab {cfg['vocab_size']})"],
            ["model", f"Llama, hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} blocks, "
             f"{cfg['num_attention_heads']} query / {cfg['num_key_value_heads']} kv heads of "
             f"{cfg['head_dim']}, FFN {cfg['intermediate_size']}, untied LM head: "
             f"{r['params']:,} parameters ({r['params_non_embedding']:,} outside the embedding "
             f"and LM head); cached as `{Path(r['model_dir']).name}`"],
            ["training", f"{t['tokens_seen']:,} tokens seen "
             f"({t['tokens_seen'] / t['train_tokens']:.2f} passes over the training split), "
             f"{s['steps']} AdamW steps of {s['batch']} × {s['seq']} tokens, peak lr {s['lr']}, "
             f"seed {s['seed']}; {t['threads']} torch thread(s), {t['train_s'] / 60:.1f} min; "
             + when],
            ["held-out perplexity", f"**{h['perplexity']:.2f}** ({h['tokens']:,} scored tokens "
             f"in blocks of {s['seq']})"],
            ["held-out perplexity during training", ", ".join(
                f"{p['heldout_perplexity']:.1f} after {p['tokens_seen'] / 1e6:.2f} M tokens"
                for p in t["curve"])],
            [f"`compress apply`: {prune['heads']:.0%} of heads and of FFN neurons by "
             f"{prune['importance']}, no fine-tune",
             f"held-out perplexity {a['baseline']['perplexity']:.2f} → "
             f"{a['compressed']['perplexity']:.2f}; parameters {a['baseline']['params']:,} → "
             f"{a['compressed']['params']:,}; proof: {', '.join(map(str, a['proofs']))}; "
             f"{a['wall_s'] / 60:.1f} min"]]
    if "sample" in r:
        text = " ".join(r["sample"]["greedy_40_tokens"].split()).replace("|", "\\|")
        rows.append(["greedy continuation of the prompt (40 tokens)", f"“{text}”"])
    return fmt_table(["", ""], rows)


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0], tiny="A 2-block toy on a slice of the "
                         "corpus, a dozen steps: seconds.")
    parser.add_argument("--retrain", action="store_true", help="Train even when cached.")
    add_common_args(parser)
    args = parser.parse_args()
    start(args)
    cached = not args.retrain and model_folder(args.tiny, prepare_corpus()[1]).joinpath(
        "training.json").is_file()
    model_dir, corpus, s = ensure_model(args.tiny, args.retrain)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = json.loads((model_dir / "training.json").read_text(encoding="utf-8"))
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    held = tokenizer((corpus / "heldout.txt").read_text(encoding="utf-8"),
                     return_tensors="pt")["input_ids"][0]
    with torch.no_grad():
        heldout = heldout_perplexity(model, held, s["seq"])
        prompt = tokenizer(PROMPT, return_tensors="pt")
        greedy = model.generate(**prompt, max_new_tokens=40, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    sample = tokenizer.decode(greedy[0], skip_special_tokens=True)
    params = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel() + model.lm_head.weight.numel()
    work = args.work / ("decoder_model-tiny" if args.tiny else "decoder_model")
    apply_check = check_apply(model_dir, corpus, s, work)
    manifest = json.loads((corpus / "corpus.json").read_text(encoding="utf-8"))
    payload = {"model_dir": str(model_dir), "corpus_dir": str(corpus), "cached": cached,
               "settings": s, "config": {k: getattr(model.config, k) for k in (
                   "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                   "num_key_value_heads", "head_dim", "intermediate_size",
                   "tie_word_embeddings")},
               "params": params, "params_non_embedding": params - embed,
               "corpus": {**{k: manifest[k] for k in ("name", "version", "deb_sha256",
                                                      "licence", "split_rule", "splits",
                                                      "chapters")},
                          "package": manifest["source"].split()[-1]},
               "training": record, "heldout": heldout, "apply_check": apply_check,
               "sample": {"prompt": PROMPT, "greedy_40_tokens": sample},
               "peak_rss_mib": peak_rss_mib()}
    finish("decoder_model", args.tiny, payload, render_result(payload), args.out)


if __name__ == "__main__":
    main()
