"""What compress costs on top of the work itself.

    python benchmarks/overheads.py                 # ResNet-56
    python benchmarks/overheads.py --tiny          # smoke test (ResNet-20, a few batches)

(a) ``compress apply`` end to end minus training and evaluation, as a share of the total, for
    the ResNet-56 recipe as shipped (2 epochs of fine-tuning): it runs ``compress.apply`` on
    recipes/resnet56-cifar10.yaml into runs/benchmarks/overheads/resnet56-cifar10 (every time:
    a finished folder from another run says nothing of this code) with the clock around the
    whole call, so writing report.md/html/json and status.json counts (the report's own
    ``timing.total_s`` stops before the report is written). Target: at most 10 %.
(b) Training-loop throughput: compress's fine-tuning loop (``compress.finetune.finetune.finetune_``)
    against a minimal plain PyTorch loop (SGD with momentum, cosine schedule: the one in
    peer_torch_pruning.py), each with a fresh optimizer per block, on the same model and the
    same pre-loaded batches (so data loading is out of the picture), timed in interleaved
    blocks (order alternating). Target: compress / plain >= 0.95.

Writes benchmarks/results/overheads.{json,md}.
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from _common import (
    RESNET_CKPT,
    ROOT,
    add_common_args,
    finish,
    fmt_table,
    make_parser,
    require_shared,
    shown_path,
    start,
)
from peer_torch_pruning import plain_finetune

log = logging.getLogger("bench")

RECIPE = ROOT / "recipes" / "resnet56-cifar10.yaml"
PROFILES = {
    "cpu": dict(model="resnet56", overrides=[], batches=12, batch=128,
                rounds=7),
    "tiny": dict(model="resnet20", overrides=["model.name=resnet20",
                                              f"model.checkpoint={RESNET_CKPT['resnet20']}",
                                              "data.eval_subset=64", "data.train_subset=64",
                                              "data.batch_size=16", "finetune.max_steps=2",
                                              "report.batch_sizes=[1]", "report.rounds=1",
                                              "report.min_block_ms=0"],
                 batches=2, batch=8, rounds=2),
}


def apply_overhead(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """(a): the time split of one ``compress apply`` run, timed around the whole call."""
    import compress

    log.info("compress apply %s into %s", RECIPE.name, run_dir)
    t = time.perf_counter()
    compress.apply(RECIPE, out_dir=run_dir, overwrite=True, overrides=overrides)
    total = time.perf_counter() - t
    log.info("compress apply took %.0f s", total)
    report = json.loads((run_dir / "report.json").read_text())
    timing = report["timing"]
    finetune = report["recipe"]["finetune"]
    train = sum(s["finetune_s"] for s in report["steps"])
    evals = timing["eval_s"]
    parts = {
        "training (fine-tune)": train,
        "evaluation (baseline + after each step)": evals,
        "baseline ONNX export": timing["baseline_export_s"],
        "export + parity checks (safetensors, ONNX)": timing["export_s"],
        "latency measurement (A/B, 2 engines x 2 batch sizes)": timing["measure_s"],
    }
    # After the report's clock stopped: report.md/html/json, gates, status.json.
    parts["report (md, html, json) and run folder"] = total - timing["total_s"]
    # The rest: the MACs search and the proven channel removal, loading data and model.
    parts["pruning (MACs search, proven removal), loading"] = total - sum(parts.values())
    overhead = total - train - evals
    return {"run_dir": shown_path(run_dir), "total_s": total, "clock": "around compress.apply",
            "report_total_s": timing["total_s"], "parts_s": parts,
            "overhead_s": overhead, "overhead_share": overhead / total,
            "overhead_share_without_measurement": (overhead - timing["measure_s"]) / total,
            "finetune_epochs": report["finetune_epochs_total"],
            "finetune_max_steps": finetune.get("max_steps")}


def loop_throughput(p: dict[str, Any]) -> dict[str, Any]:
    """(b): compress's fine-tune loop vs a plain loop, interleaved, same model and batches."""
    import torch

    from compress.data import build_data
    from compress.finetune.finetune import finetune_
    from compress.models import build_model
    from compress.recipe.load import load_recipe
    from compress.recipe.stages import FinetuneSpec

    recipe = load_recipe(RECIPE, p["overrides"] + [f"data.batch_size={p['batch']}"])
    bundle = build_data(recipe.data, resolve=recipe.resolve_path, seed=0)
    batches = []
    for x, y in bundle.train:
        batches.append((x, y))
        if len(batches) == p["batches"]:
            break
    model = build_model(recipe.model, resolve=recipe.resolve_path)
    spec = FinetuneSpec(epochs=1, lr=0.01, weight_decay=1e-4, lr_schedule="cosine")
    models = {"compress": model, "plain": copy.deepcopy(model)}
    device = torch.device("cpu")
    n = len(batches)

    def run_compress() -> None:
        finetune_(models["compress"], batches, spec, device)

    def run_plain() -> None:
        plain_finetune(models["plain"], batches, epochs=1, max_steps=None, lr=spec.lr,
                       weight_decay=spec.weight_decay)

    runners = {"compress": run_compress, "plain": run_plain}
    for fn in runners.values():
        fn()  # warm-up: allocator, kernels
    wall: dict[str, list[float]] = {k: [] for k in runners}
    cpu: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(p["rounds"]):
        for name in (("compress", "plain") if r % 2 == 0 else ("plain", "compress")):
            t, c = time.perf_counter(), time.process_time()
            runners[name]()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    images = sum(len(y) for _, y in batches)

    def ratio(d: dict[str, list[float]]) -> float:
        return statistics.median(pl / co for pl, co in zip(d["plain"], d["compress"]))

    return {"model": p["model"], "batches_per_block": n, "images_per_block": images,
            "rounds": p["rounds"], "torch_threads": torch.get_num_threads(),
            "wall_s": wall, "cpu_s": cpu,
            "throughput_img_s": {k: images / statistics.median(v) for k, v in wall.items()},
            "ratio_wall": ratio(wall), "ratio_cpu": ratio(cpu)}


def render(a: dict[str, Any], b: dict[str, Any]) -> str:
    rows = [[k, f"{v:.1f}", f"{100 * v / a['total_s']:.1f} %"] for k, v in a["parts_s"].items()]
    rows.append(["**total**", f"{a['total_s']:.1f}", "100 %"])
    ok_a = a["overhead_share"] <= 0.10
    ok_b = b["ratio_wall"] >= 0.95
    tp = b["throughput_img_s"]
    steps = a["finetune_max_steps"]
    cap = "" if steps is None else f", at most {steps} steps"
    clock = ("timed around the whole `compress.apply` call, report writing included"
             if a.get("clock") else "the report's own clock, which stops BEFORE report.md, "
             "report.html and report.json are written: report writing is not counted")
    return "".join([
        f"(a) Where the time of one `compress apply` run goes ({a['run_dir']}, "
        f"{a['finetune_epochs']:g} fine-tuning epochs{cap}; {clock}):\n\n",
        fmt_table(["part", "seconds", "share"], rows),
        f"\nOverhead (everything but training and evaluation): "
        f"{a['overhead_s']:.1f} s = **{100 * a['overhead_share']:.1f} %** of the total "
        f"(target ≤ 10 %: **{'met' if ok_a else 'MISSED'}**); without the latency "
        f"measurement, which is a product of the run rather than overhead: "
        f"{100 * a['overhead_share_without_measurement']:.1f} %.\n\n",
        f"(b) Training-loop throughput on {b['model']}, {b['images_per_block']} images per "
        f"block, {b['rounds']} interleaved blocks each, {b['torch_threads']} torch thread(s):\n\n",
        fmt_table(["loop", "images/s (median block, wall)"],
                  [["compress (`finetune_`)", f"{tp['compress']:.1f}"],
                   ["plain PyTorch", f"{tp['plain']:.1f}"]]),
        f"\ncompress ÷ plain: **{b['ratio_wall']:.3f}** wall clock, {b['ratio_cpu']:.3f} CPU "
        f"time (median of per-round ratios; target ≥ 0.95: "
        f"**{'met' if ok_b else 'MISSED'}**).\n"])


def render_result(r: dict[str, Any]) -> str:
    return render(r["apply"], r["loop"])


def main() -> None:
    parser = make_parser(__doc__, tiny="Smoke test (ResNet-20).")
    add_common_args(parser)
    args = parser.parse_args()
    start(args, inputs=[RECIPE])
    require_shared(RESNET_CKPT["resnet56"])
    profile = "tiny" if args.tiny else "cpu"
    p = PROFILES[profile]
    folder = "overheads-tiny" if args.tiny else "overheads"
    run_dir = args.work / folder / RECIPE.stem
    a = apply_overhead(run_dir, p["overrides"])
    b = loop_throughput(p)
    md = render(a, b)
    finish("overheads", args.tiny, {"profile": profile, "apply": a, "loop": b}, md, args.out)


if __name__ == "__main__":
    main()
