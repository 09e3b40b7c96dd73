"""Ask for the speed at ImageNet's input size: torchvision's ResNet-18 at 224 px, speed only.

    python benchmarks/latency_target_resnet18.py --threads 1   # batch 1 and 32 (minutes)
    python benchmarks/latency_target_resnet18.py --tiny        # 64 px, batch 1 and 2, seconds

No pretrained ResNet-18 weights and no labelled images of that size are on this machine, so
top-1 is not measured: the model keeps torchvision's random initialisation, and the CIFAR-10
JPEGs, resized to 224 px, only feed the run (its evaluation is at chance, and the report says
so). What it shows is the other half of the claim: the latency table, the per-group widths and
the closed loop at ImageNet's input size, at a latency-bound batch (1) and a throughput batch
(32). For each batch size, ``compress apply`` with ``pruning.target.latency: 0.5`` (2x faster
on onnxruntime CPU at that batch, the given threads) and no fine-tune; then the baseline and
the pruned model are timed in one interleaved run at that batch.

Writes benchmarks/results/latency_target_resnet18.{json,md}; run folders under
runs/benchmarks/latency_target_resnet18/.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from _common import (
    CIFAR_JPG,
    NORMALIZE,
    add_common_args,
    finish,
    fmt_table,
    make_parser,
    require_shared,
    start,
)
from latency_target import SPEEDUP, Timer, apply, fmt_plan

log = logging.getLogger("bench")

PROFILES = {
    "full": dict(kind="image", model="resnet18", size=224, batches=[1, 32], rounds=9,
                 eval_subset=64),
    "tiny": dict(kind="image", model="resnet18", size=64, batches=[1, 2], rounds=2,
                 eval_subset=16),
}


def recipe(name: str, p: dict[str, Any], batch: int, threads: int, table: Path) -> dict[str, Any]:
    """One latency run at ``batch``: random weights, no fine-tune, its own table."""
    target = {"latency": 1 - 1 / SPEEDUP, "latency_table": str(table)}
    return {"version": 1, "name": name,
            "model": {"source": "torchvision", "name": p["model"], "num_classes": 10},
            "data": {"source": "imagefolder", "path": str(CIFAR_JPG), "image_size": p["size"],
                     "batch_size": 32, "eval_batch_size": 32, "eval_subset": p["eval_subset"],
                     "normalize": NORMALIZE},
            "pruning": {"kind": "structured", "importance": "l2", "target": target},
            "schedule": {"kind": "one-shot"}, "finetune": {"epochs": 0},
            "export": {"onnx": True, "safetensors": True},
            "report": {"latency": False, "batch_sizes": [batch], "threads": threads,
                       "rounds": p["rounds"]}}


def main() -> None:
    parser = make_parser(__doc__, tiny="64 px, batch 1 and 2, seconds (no meaning)")
    add_common_args(parser)
    args = parser.parse_args()
    p = PROFILES["tiny" if args.tiny else "full"]
    require_shared(CIFAR_JPG)
    start(args)
    import torch

    threads = args.threads or torch.get_num_threads()
    work = args.work / ("latency_target_resnet18" + ("-tiny" if args.tiny else ""))
    work.mkdir(parents=True, exist_ok=True)
    tables = {batch: work / f"latency-table-b{batch}.json" for batch in p["batches"]}
    for table in tables.values():
        table.unlink(missing_ok=True)  # measured afresh on this machine, this run
    # The same seeded model and data as every run's: only the batch differs between them.
    timer = Timer({**p, "shape": (3, p["size"], p["size"]), "time_batch": p["batches"][0]},
                  threads, recipe("baseline", p, p["batches"][0], threads, tables[p["batches"][0]]))
    base = timer.export(timer.model, work / "baseline.onnx")
    rows = []
    for batch, table in tables.items():
        log.info("latency target %.1fx at batch %d", SPEEDUP, batch)
        run = apply(recipe(f"latency-b{batch}", p, batch, threads, table), work)
        final = timer.speedups({"baseline": base, "latency": Path(run["onnx"])}, batch)
        rows.append({"batch": batch, "run": run, "final_speedup": final["latency"],
                     "speedup_met": final["latency"] >= 0.95 * SPEEDUP})
    payload = {"profile": p, "requested_speedup": SPEEDUP, "threads": threads, "rows": rows}
    finish("latency_target_resnet18", args.tiny, payload, render_result(payload), args.out)


def render_result(r: dict[str, Any]) -> str:
    """The table from a result file (or this run's payload)."""
    p = r["profile"]
    table = []
    for row in r["rows"]:
        plan = row["run"]["latency_target"] or {}
        table.append([row["batch"], f"{row['run']['macs_reduction']:.1%}",
                      fmt_plan(plan),
                      len(plan.get("attempts") or []), f"{row['final_speedup']:.2f}x",
                      "yes" if row["speedup_met"] else "no", f"{row['run']['wall_s'] / 60:.1f}"])
    return (f"torchvision {p['model']} (random weights: top-1 not measured) at {p['size']} px, "
            f"onnxruntime CPU, {r['threads']} thread(s); latency target "
            f"{r['requested_speedup']:.1f}x, no fine-tune.\n\n"
            + fmt_table(["batch", "MACs removed", "planned: predicted / closed-loop",
                         "closed-loop tries", "speedup (one interleaved run)",
                         "at least 0.95 x requested", "run min"], table))


if __name__ == "__main__":
    main()
