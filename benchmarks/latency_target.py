"""Ask for the speed: a latency target against a MACs target of the same measured speed.

    python benchmarks/latency_target.py            # ResNet-56 on CIFAR-10 JPEG, 2x at batch 64
    python benchmarks/latency_target.py --tiny     # smoke test (ResNet-20, seconds, no meaning)

The shared pretrained ResNet-56 is pruned by ``compress apply`` with
``pruning.target.latency: 0.5`` (2x faster on onnxruntime CPU at batch 64, the report's
threads; every group its own width, planned from a latency table measured on this machine,
closed loop), then fine-tuned with a fixed budget. A MACs target is then raised in steps
until a copy pruned to it (no fine-tune) is at least as fast as the latency run's model,
each candidate timed interleaved with the baseline and that model; the first such target is
run by ``compress apply`` with the same fine-tune budget. Finally the baseline and both
results are timed in ONE interleaved onnxruntime run: the speedups in the table come from it,
top-1 from each run's evaluation (the same test images).

Writes benchmarks/results/latency_target.{json,md}; run folders under
runs/benchmarks/latency_target/.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from _common import (
    CIFAR_JPG,
    NORMALIZE,
    RESNET_CKPT,
    add_common_args,
    finish,
    fmt_table,
    make_parser,
    require_shared,
    start,
    stopwatch,
)

log = logging.getLogger("bench")

# steps x batch: the fine-tune budget of both runs; eval_subset: test images for top-1.
PROFILES = {
    "cpu": dict(model="resnet56", steps=150, batch=128, eval_subset=2000, time_batch=64,
                rounds=9, macs_from=0.5, macs_step=0.04),
    "tiny": dict(model="resnet20", steps=2, batch=16, eval_subset=64, time_batch=8,
                 rounds=2, macs_from=0.3, macs_step=0.1),
}
SPEEDUP = 2.0  # requested
MACS_MAX = 0.9


def recipe(name: str, target: dict[str, float], p: dict[str, Any], threads: int,
           table: Path) -> dict[str, Any]:
    pruning: dict[str, Any] = {"kind": "structured", "importance": "l2", "target": target}
    if "latency" in target:
        pruning["target"] = {**target, "latency_table": str(table)}
    return {"version": 1, "name": name,
            "model": {"source": "cifar_resnet", "name": p["model"],
                      "checkpoint": str(RESNET_CKPT[p["model"]])},
            "data": {"source": "imagefolder", "path": str(CIFAR_JPG), "batch_size": p["batch"],
                     "eval_batch_size": 500, "eval_subset": p["eval_subset"],
                     "augment": ["random_crop", "horizontal_flip"], "normalize": NORMALIZE},
            "pruning": pruning, "schedule": {"kind": "one-shot"},
            "finetune": {"epochs": 1, "max_steps": p["steps"], "lr": 0.01, "optimizer": "sgd"},
            "export": {"onnx": True, "safetensors": True},
            "report": {"latency": False, "batch_sizes": [p["time_batch"]], "threads": threads,
                       "rounds": p["rounds"]}}


def apply(rec: dict[str, Any], work: Path) -> dict[str, Any]:
    """One ``compress apply``: top-1 before and after, MACs removed, wall time, the ONNX."""
    import compress

    times: dict[str, float] = {}
    with stopwatch(times, "wall_s"):
        result = compress.apply(rec, out_dir=work / rec["name"], overwrite=True)
    rep = result.report
    return {"top1": rep["compressed"]["accuracy"],
            "baseline_top1": rep["baseline"]["accuracy"],
            "macs_reduction": rep["macs_reduction"], "onnx": str(result.out_dir / "model.onnx"),
            "latency_target": rep.get("latency_target"), "wall_s": times["wall_s"],
            "layers": rep["steps"][-1].get("layers")}


def timed(paths: dict[str, Path], p: dict[str, Any], threads: int) -> dict[str, float]:
    """Speedup of each model over ``baseline``, all timed in one interleaved run."""
    from compress.measure.latency import compare_onnx
    from compress.recipe.stages import ReportSpec

    spec = ReportSpec(batch_sizes=[p["time_batch"]], threads=threads, rounds=p["rounds"])
    out = compare_onnx(paths, reference="baseline", sample_shape=(3, 32, 32), spec=spec)
    row = out["batches"][str(p["time_batch"])]
    return {n: row[n]["speedup"] for n in paths if n != "baseline"}


def macs_copy(model: Any, target: float, path: Path) -> Path:
    """``model`` pruned to ``target`` of its MACs (as compress apply would, no fine-tune)."""
    import torch

    from compress.export.onnx import export_onnx
    from compress.pruning.planning import solve_ratio_for_macs
    from compress.pruning.structured import build_structured
    from compress.recipe.pruning import PruningSpec

    x = torch.zeros(1, 3, 32, 32)
    spec = PruningSpec(target={"macs": target}, verify=False)
    ratio, _ = solve_ratio_for_macs(model, x, spec, target)
    pruned = copy.deepcopy(model).eval()
    build_structured(pruned, x, spec, cumulative_ratios=[ratio]).step_(ratio, x)
    return export_onnx(pruned, path, torch.randn(2, 3, 32, 32))


def main() -> None:
    parser = make_parser(__doc__, tiny="ResNet-20, 2 fine-tune steps, seconds")
    add_common_args(parser)
    args = parser.parse_args()
    p = PROFILES["tiny" if args.tiny else "cpu"]
    require_shared(CIFAR_JPG, RESNET_CKPT[p["model"]])
    start(args)
    import torch

    from compress.export.onnx import export_onnx
    from compress.models import build_model
    from compress.recipe.sources import ModelSpec

    threads = args.threads or torch.get_num_threads()
    work = args.work / ("latency_target" + ("-tiny" if args.tiny else ""))
    work.mkdir(parents=True, exist_ok=True)
    table = work / "latency-table.json"
    table.unlink(missing_ok=True)  # measured afresh on this machine, this run
    model = build_model(ModelSpec(source="cifar_resnet", name=p["model"],
                                  checkpoint=str(RESNET_CKPT[p["model"]]))).eval()
    base = export_onnx(copy.deepcopy(model), work / "baseline.onnx", torch.randn(2, 3, 32, 32))

    log.info("latency target %.1fx", SPEEDUP)
    lat = apply(recipe("latency", {"latency": 1 - 1 / SPEEDUP}, p, threads, table), work)
    search, found = [], None
    target = p["macs_from"]
    while target <= MACS_MAX + 1e-9:
        onnx = macs_copy(model, target, work / f"macs-{target:.2f}.onnx")
        got = timed({"baseline": base, "latency": Path(lat["onnx"]), "macs": onnx}, p, threads)
        search.append({"macs_target": round(target, 4), "speedup": got["macs"],
                       "latency_run_speedup": got["latency"]})
        log.info("MACs target %.2f: %.2fx (latency run %.2fx)", target, got["macs"],
                 got["latency"])
        if got["macs"] >= got["latency"]:
            found = round(target, 4)
            break
        target += p["macs_step"]
    macs = apply(recipe("macs", {"macs": found}, p, threads, table), work) if found else None
    final = timed({"baseline": base, "latency": Path(lat["onnx"]),
                   **({"macs": Path(macs["onnx"])} if macs else {})}, p, threads)
    payload = {"profile": p, "requested_speedup": SPEEDUP, "threads": threads,
               "latency_run": lat, "macs_search": search, "macs_target": found,
               "macs_run": macs, "final_speedups": final,
               "speedup_met": final["latency"] >= 0.95 * SPEEDUP,
               "top1_at_least_macs": None if macs is None else lat["top1"] >= macs["top1"]}
    finish("latency_target", args.tiny, payload, render_result(payload), args.out)


def _x(speedup: float | None) -> str:
    return "not measured" if speedup is None else f"{speedup:.2f}x"


def render_result(r: dict[str, Any]) -> str:
    """The table from a result file (or this run's payload)."""
    p, lat, macs = r["profile"], r["latency_run"], r["macs_run"]
    plan = lat["latency_target"] or {}
    rows = [["baseline", "", "", f"{lat['baseline_top1']:.2f} %", "1.00x", ""]]
    rows.append([f"latency target {r['requested_speedup']:.1f}x", f"{lat['macs_reduction']:.1%}",
                 f"{_x(plan.get('predicted_speedup'))} / {_x(plan.get('measured_speedup'))}",
                 f"{lat['top1']:.2f} %",
                 f"{r['final_speedups']['latency']:.2f}x", f"{lat['wall_s'] / 60:.1f}"])
    if macs is not None:
        rows.append([f"MACs target {r['macs_target']}", f"{macs['macs_reduction']:.1%}", "",
                     f"{macs['top1']:.2f} %", f"{r['final_speedups']['macs']:.2f}x",
                     f"{macs['wall_s'] / 60:.1f}"])
    search = "; ".join(f"{s['macs_target']}: {s['speedup']:.2f}x (latency run "
                       f"{s['latency_run_speedup']:.2f}x)" for s in r["macs_search"])
    return (f"{p['model']} on CIFAR-10 JPEG, onnxruntime CPU at batch {p['time_batch']}, "
            f"{r['threads']} thread(s); both runs fine-tuned {p['steps']} SGD steps of "
            f"{p['batch']} images; top-1 on {p['eval_subset']} test images.\n\n"
            + fmt_table(["model", "MACs removed", "planned: predicted / closed-loop",
                         "top-1", "speedup (one interleaved run)", "run min"], rows)
            + f"\nMACs targets tried (each timed with the baseline and the latency run's "
              f"model): {search or 'none'}.\n"
            + f"Measured speedup at least 0.95 x requested: {r['speedup_met']}; latency run's "
              f"top-1 at least the MACs run's: "
              f"{'not run' if r['top1_at_least_macs'] is None else r['top1_at_least_macs']}.\n")


if __name__ == "__main__":
    main()
