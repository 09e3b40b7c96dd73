"""Prune a ~1.1B-parameter Llama-style model on a CPU within a memory budget (issue: scale).

Random init from a config (hidden 2048, 22 blocks, 32 query / 4 kv heads, FFN 5632), then:
25 % of FFN neurons and 25 % of query heads (and, when asked, a share of the hidden size and
whole blocks, ranked on the probe batch) removed in one proven step, ``save_pretrained``
in safetensors shards with a stock ``from_pretrained`` reload compared on a probe, and ONNX
export with external data (the model is over the 2 GB protobuf limit) checked by
onnxruntime on a short sequence. Peak RSS is read from the kernel (``getrusage``) at the end.

    python benchmarks/llama_1b.py --heads 0.5 --ffn 0.25   # the real size (tens of minutes)
    python benchmarks/llama_1b.py --hidden 0.25 --blocks 4  # hidden size and depth too
    python benchmarks/llama_1b.py --tiny --heads 0.5       # seconds; what the test runs

Writes benchmarks/results/llama_1b[-tiny].{json,md} (command, code version, machine, load,
wall time, peak RSS; the config before and after pruning); the model files go under
runs/benchmarks/llama_1b[-tiny] (``--work``).
"""

from __future__ import annotations

import gc
import time
from typing import Any

import torch
from _common import add_common_args, finish, fmt_table, make_parser, start
from provenance import peak_rss_mib

CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "intermediate_size", "tie_word_embeddings")


def _config(tiny: bool):  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=8, num_key_value_heads=2, head_dim=8,
                           intermediate_size=176, tie_word_embeddings=False)
    return LlamaConfig(vocab_size=32000, hidden_size=2048, num_hidden_layers=22,
                       num_attention_heads=32, num_key_value_heads=4, head_dim=64,
                       intermediate_size=5632, tie_word_embeddings=False)


def _config_dict(config: Any) -> dict[str, Any]:
    return {k: getattr(config, k) for k in CONFIG_KEYS}


def render_result(r: dict[str, Any]) -> str:
    """Before/after table from a result file."""
    b, a = r["config_before"], r["config_after"]
    rss = r["peak_rss_mib"]["self"] / 1024
    rows = [["parameters", f"{r['params_before']:,} ({r['fp32_gib_before']:.2f} GiB fp32)",
             f"{r['params_after']:,}"],
            [f"MACs, {r['seq']} tokens", f"{r['macs_before_seq'] / 1e9:.2f} G",
             f"{r['macs_after_seq'] / 1e9:.2f} G"],
            ["query / kv heads per block", f"{b['num_attention_heads']} / "
             f"{b['num_key_value_heads']}", f"{r['heads_after']} / {r['kv_heads_after']}"],
            ["FFN width", str(b["intermediate_size"]), str(r["ffn_after"])],
            ["hidden size", str(b["hidden_size"]), str(a["hidden_size"])],
            ["blocks", str(b["num_hidden_layers"]), str(a["num_hidden_layers"])],
            ["proof (zeroed ≡ removed), max abs diff", "", f"{r['proof_max_abs_diff']:.2e}"],
            ["stock `from_pretrained(hf/)` vs in memory", "",
             f"{r['hf']['parity']:.2e} ({len(r['shards'])} shards)" if r["hf"].get("saved")
             else f"not written: {r['hf'].get('reason', '')}"],
            [f"ONNX ({r['onnx_bytes'] / 1e9:.2f} GB) vs torch", "", f"{r['onnx_parity']:.2e}"],
            ["peak RSS (getrusage)", "", f"{rss:.2f} GiB = {rss / r['fp32_gib_before']:.2f} × "
             "the fp32 model"],
            ["peak RSS reached by the end of (GiB)", "",
             ", ".join(f"{k} {v / 1024:.2f}" for k, v in r["peak_rss_after_mib"].items())
             if r.get("peak_rss_after_mib") else "not measured"],
            ["wall time", "", " ".join(f"{k.removesuffix('_s')} {v:.0f} s,"
                                       for k, v in r["times"].items()).rstrip(",")]]
    return (f"Random init, hidden {b['hidden_size']}, {b['num_hidden_layers']} blocks, "
            f"head_dim {b['head_dim']}, vocab {b['vocab_size']}, fp32; after pruning: "
            f"{a['num_attention_heads']} query heads, FFN {a['intermediate_size']}, hidden "
            f"{a['hidden_size']}, {a['num_hidden_layers']} blocks.\n\n"
            + fmt_table(["", "before", "after"], rows))


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0], tiny="A 2-block toy config: seconds.")
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--heads", type=float, default=0.25, help="query-head fraction removed")
    parser.add_argument("--ffn", type=float, default=0.25, help="FFN-neuron fraction removed")
    parser.add_argument("--hidden", type=float, default=0.0,
                        help="hidden-size fraction removed (0: kept)")
    parser.add_argument("--blocks", type=int, default=0, help="whole blocks removed")
    add_common_args(parser)
    args = parser.parse_args()
    start(args)
    work = args.work / ("llama_1b-tiny" if args.tiny else "llama_1b")

    from transformers import LlamaForCausalLM

    from compress.export.hf import save_hf_
    from compress.export.onnx import check_parity, export_onnx, onnx_session, onnx_size
    from compress.measure.counts import count_macs_params
    from compress.models.huggingface import HFModel
    from compress.pruning.hf_layout import blocks
    from compress.pruning.transformer import TransformerPruner
    from compress.recipe.pruning import PruningSpec

    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t = time.perf_counter()
    torch.manual_seed(0)
    config = _config(args.tiny)
    config_before = _config_dict(config)  # pruning edits the model's config in place
    model = HFModel(LlamaForCausalLM(config).eval(), "causal-lm")
    model.requires_grad_(False)
    times["init_s"] = time.perf_counter() - t
    # The kernel's high-water mark after each phase: where the peak was reached.
    peaks = {"init": peak_rss_mib()["self"]}
    params0 = sum(p.numel() for p in model.parameters())
    fp32_gib = params0 * 4 / 2**30
    probe = torch.randint(0, config.vocab_size, (2, args.seq),
                          generator=torch.Generator().manual_seed(0))
    macs0, _ = count_macs_params(model, probe[:1])

    t = time.perf_counter()
    extra: dict[str, Any] = {"hidden": args.hidden} if args.hidden else {}
    extra |= {"blocks": args.blocks} if args.blocks else {}
    pruner = TransformerPruner(model, probe[:1], PruningSpec(ratio=0.25, heads=args.heads,
                                                             ffn=args.ffn, **extra))
    record = pruner.step_(0.25, probe)
    times["prune_s"] = time.perf_counter() - t
    peaks["prune"] = peak_rss_mib()["self"]
    macs1, params1 = count_macs_params(model, probe[:1])
    first = blocks(model.hf, model.layout)[0]

    t = time.perf_counter()
    hf_info = save_hf_(model, work, probe, max_shard_size="1GB")
    times["save_pretrained_and_reload_s"] = time.perf_counter() - t
    peaks["save_pretrained_and_reload"] = peak_rss_mib()["self"]
    gc.collect()

    t = time.perf_counter()
    path = export_onnx(model, work / "model.onnx", probe)
    with torch.no_grad():
        reference = model(probe[:1])
    session = onnx_session(path)
    out = session.run(None, {session.get_inputs()[0].name: probe[:1].numpy()})[0]
    onnx_diff = check_parity(reference, out, what="ONNX", atol=1e-3, rtol=1e-3)
    times["onnx_export_and_parity_s"] = time.perf_counter() - t
    peaks["onnx_export_and_parity"] = peak_rss_mib()["self"]
    del session
    gc.collect()

    rss = peak_rss_mib()
    result = {
        "heads_removed": args.heads, "ffn_removed": args.ffn, "hidden_removed": args.hidden,
        "blocks_removed": args.blocks,
        "config_before": config_before, "config_after": _config_dict(model.hf.config),
        "params_before": params0, "params_after": params1, "fp32_gib_before": fp32_gib,
        "macs_before_seq": macs0, "macs_after_seq": macs1, "seq": args.seq,
        "heads_after": first.heads, "kv_heads_after": first.kv_heads, "ffn_after": first.ffn,
        "proof_max_abs_diff": record.max_abs_diff, "hf": hf_info, "onnx_parity": onnx_diff,
        "onnx_bytes": onnx_size(path),
        "shards": sorted(p.name for p in (work / "hf").glob("*.safetensors")),
        "times": times, "peak_rss_mib": rss, "peak_rss_after_mib": peaks,
        "peak_rss_over_fp32_size": rss["self"] / 1024 / fp32_gib,
    }
    finish("llama_1b", args.tiny, result, render_result(result), args.out)


if __name__ == "__main__":
    main()
