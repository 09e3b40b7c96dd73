"""Prune a ~1.1B-parameter Llama-style model on a CPU within a memory budget (issue: scale).

Random init from a config (hidden 2048, 22 blocks, 32 query / 4 kv heads, FFN 5632), then:
25 % of FFN neurons and 25 % of query heads removed in one proven step, ``save_pretrained``
in safetensors shards with a stock ``from_pretrained`` reload compared on a probe, and ONNX
export with external data (the model is over the 2 GB protobuf limit) checked by
onnxruntime on a short sequence. Peak RSS is read from the kernel at the end.

    python benchmarks/llama_1b.py --out /tmp/llama-1b          # the real size
    /usr/bin/time -v python benchmarks/llama_1b.py --out ...   # peak RSS from outside too
    python benchmarks/llama_1b.py --tiny --out /tmp/llama-tiny # seconds; what the test runs
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time
from pathlib import Path

import torch


def _config(tiny: bool):  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=8, num_key_value_heads=2, head_dim=8,
                           intermediate_size=176, tie_word_embeddings=False)
    return LlamaConfig(vocab_size=32000, hidden_size=2048, num_hidden_layers=22,
                       num_attention_heads=32, num_key_value_heads=4, head_dim=64,
                       intermediate_size=5632, tie_word_embeddings=False)


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--heads", type=float, default=0.25, help="query-head fraction removed")
    parser.add_argument("--ffn", type=float, default=0.25, help="FFN-neuron fraction removed")
    args = parser.parse_args()

    from transformers import LlamaForCausalLM

    from compress.export.hf import save_hf_
    from compress.export.onnx import check_parity, export_onnx, onnx_session, onnx_size
    from compress.measure.counts import count_macs_params
    from compress.models.huggingface import HFModel
    from compress.pruning.hf_layout import blocks
    from compress.pruning.transformer import TransformerPruner
    from compress.recipe.pruning import PruningSpec

    args.out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t = time.perf_counter()
    torch.manual_seed(0)
    config = _config(args.tiny)
    model = HFModel(LlamaForCausalLM(config).eval(), "causal-lm")
    model.requires_grad_(False)
    times["init_s"] = time.perf_counter() - t
    params0 = sum(p.numel() for p in model.parameters())
    fp32_gib = params0 * 4 / 2**30
    probe = torch.randint(0, config.vocab_size, (2, args.seq),
                          generator=torch.Generator().manual_seed(0))
    macs0, _ = count_macs_params(model, probe[:1])

    t = time.perf_counter()
    pruner = TransformerPruner(model, probe[:1], PruningSpec(ratio=0.25, heads=args.heads,
                                                             ffn=args.ffn))
    record = pruner.step_(0.25, probe)
    times["prune_s"] = time.perf_counter() - t
    macs1, params1 = count_macs_params(model, probe[:1])
    first = blocks(model.hf, model.layout)[0]

    t = time.perf_counter()
    hf_info = save_hf_(model, args.out, probe, max_shard_size="1GB")
    times["save_pretrained_and_reload_s"] = time.perf_counter() - t
    gc.collect()

    t = time.perf_counter()
    path = export_onnx(model, args.out / "model.onnx", probe)
    with torch.no_grad():
        reference = model(probe[:1])
    session = onnx_session(path)
    out = session.run(None, {session.get_inputs()[0].name: probe[:1].numpy()})[0]
    onnx_diff = check_parity(reference, out, what="ONNX", atol=1e-3, rtol=1e-3)
    times["onnx_export_and_parity_s"] = time.perf_counter() - t
    del session
    gc.collect()

    result = {
        "config": {k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers",
                                                   "num_attention_heads", "num_key_value_heads",
                                                   "head_dim", "intermediate_size")},
        "params_before": params0, "params_after": params1, "fp32_gib_before": fp32_gib,
        "macs_before_seq": macs0, "macs_after_seq": macs1, "seq": args.seq,
        "heads_after": first.heads, "kv_heads_after": first.kv_heads, "ffn_after": first.ffn,
        "proof_max_abs_diff": record.max_abs_diff, "hf": hf_info, "onnx_parity": onnx_diff,
        "onnx_bytes": onnx_size(path),
        "shards": sorted(p.name for p in (args.out / "hf").glob("*.safetensors")),
        "times": times, "peak_rss_gib": _peak_rss_gib(),
        "peak_rss_over_fp32_size": _peak_rss_gib() / fp32_gib,
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
