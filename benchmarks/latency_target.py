"""Ask for the speed: a latency target against a MACs target of the same measured speed.

    python benchmarks/latency_target.py                  # ResNet-56 on CIFAR-10 JPEG, batch 64
    python benchmarks/latency_target.py --model minilm   # MiniLM on SST-2, batch 8 x 128 tokens
    python benchmarks/latency_target.py --tiny           # smoke test (ResNet-20, no meaning)

The model is pruned by ``compress apply`` with ``pruning.target.latency: 0.5`` (2x faster on
onnxruntime CPU at the report's batch size, sequence length and threads; planned from a latency
table measured on this machine, closed loop), then fine-tuned with a fixed budget. ResNet-56
gives every channel group its own width; MiniLM removes heads and FFN neurons by one searched
fraction (hf/ is not written: a BERT config cannot hold fewer heads of the same size). A MACs
target is then raised in steps until a copy pruned to it (no fine-tune) is at least as fast as
the latency run's model, each candidate timed interleaved with the baseline and that model; the
first such target is run by ``compress apply`` with the same fine-tune budget. Finally the
baseline and both results are timed in ONE interleaved onnxruntime run: the speedups in the
table come from it, top-1 from each run's evaluation (the same test images or sentences).

MiniLM first trains a new classification head with its body (``recipes/minilm-sst2.yaml``'s
``head: finetune``) in each run, from the same seed: that model is the baseline. The copies of
the MACs search are pruned from the pretrained body with an untrained head: only their widths
matter for their time, and a uniform fraction does not depend on the weights.

Writes benchmarks/results/latency_target.json (ResNet-56) or latency_target_minilm.json, with
their .md; run folders under runs/benchmarks/latency_target[_minilm]/.
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

log = logging.getLogger("bench")

MINILM_RECIPE = ROOT / "recipes" / "minilm-sst2.yaml"
SST2 = SHARED / "data" / "sst2"
# steps x batch (images) or epochs (sentences): the fine-tune budget of both runs;
# eval_subset: test images for top-1 (None: all SST-2 dev sentences).
PROFILES = {
    "resnet56": dict(kind="cifar", model="resnet56", steps=150, batch=128, eval_subset=2000,
                     time_batch=64, rounds=9, macs_from=0.5, macs_step=0.04),
    "resnet56-tiny": dict(kind="cifar", model="resnet20", steps=2, batch=16, eval_subset=64,
                          time_batch=8, rounds=2, macs_from=0.3, macs_step=0.1),
    "minilm": dict(kind="text", model="all-MiniLM-L6-v2", train_subset=2000, val_subset=300,
                   eval_subset=None, epochs=1, time_batch=8, seq=128, rounds=9,
                   macs_from=0.5, macs_step=0.04),
    "minilm-tiny": dict(kind="text", model="all-MiniLM-L6-v2", train_subset=64, val_subset=32,
                        eval_subset=64, epochs=1, time_batch=2, seq=16, rounds=2,
                        macs_from=0.3, macs_step=0.1),
}
SPEEDUP = 2.0  # requested
MACS_MAX = 0.9


def recipe(name: str, target: dict[str, float], p: dict[str, Any], threads: int,
           table: Path) -> dict[str, Any]:
    """The recipe of one run; ``target`` is ``pruning.target`` (a latency one reads ``table``)."""
    pruning: dict[str, Any] = {"kind": "structured", "importance": "l2", "target": target}
    if "latency" in target:
        pruning["target"] = {**target, "latency_table": str(table)}
    if p["kind"] == "text":
        return _text_recipe(name, pruning, p, threads)
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


def _text_recipe(name: str, pruning: dict[str, Any], p: dict[str, Any],
                 threads: int) -> dict[str, Any]:
    """recipes/minilm-sst2.yaml with heads and FFN pruned (one fraction) and a fixed budget."""
    from compress.recipe.yamlsafe import read_yaml

    rec = read_yaml(MINILM_RECIPE.read_text(encoding="utf-8"), source=str(MINILM_RECIPE))
    rec["name"] = name
    rec["data"].update(path=str(SST2), train_subset=p["train_subset"],
                       val_subset=p["val_subset"])
    if p["eval_subset"] is not None:
        rec["data"]["eval_subset"] = p["eval_subset"]
    rec["pruning"] = pruning  # heads and ffn unset: both take the searched fraction
    rec["finetune"] = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.01,
                       "epochs": p["epochs"]}
    rec["report"] = {"latency": False, "engines": ["onnxruntime"],
                     "batch_sizes": [p["time_batch"]], "sample_shape": [p["seq"]],
                     "threads": threads, "rounds": p["rounds"]}
    return rec


def apply(rec: dict[str, Any], work: Path) -> dict[str, Any]:
    """One ``compress apply``: top-1 before and after, MACs removed, wall time, the ONNX."""
    import compress

    times: dict[str, float] = {}
    with stopwatch(times, "wall_s"):
        result = compress.apply(rec, out_dir=work / rec["name"], overwrite=True)
    rep = result.report
    return {"top1": rep["compressed"]["accuracy"],
            "baseline_top1": rep["baseline"]["accuracy"],
            "eval_samples": rep["baseline"].get("eval_samples"),
            "macs_reduction": rep["macs_reduction"], "onnx": str(result.out_dir / "model.onnx"),
            "latency_target": rep.get("latency_target"), "wall_s": times["wall_s"],
            "layers": rep["steps"][-1].get("layers")}


class Timer:
    """The models of one case, exported and timed as its report would time them."""

    def __init__(self, p: dict[str, Any], threads: int, rec: dict[str, Any]) -> None:
        from compress.recipe.load import parse_recipe
        from compress.run.pipeline import vocab_size_of
        from compress.run.prepare import prepare

        prepared = prepare(parse_recipe(rec), train=False)
        self.model, self.probe = prepared.model.eval(), prepared.probe
        self.pruning = rec["pruning"]
        self.p, self.threads = p, threads
        self.shape = (p["seq"],) if p["kind"] == "text" else tuple(p.get("shape", (3, 32, 32)))
        self.vocab = vocab_size_of(self.model)

    def export(self, model: Any, path: Path) -> Path:
        from compress.export.onnx import export_onnx

        return export_onnx(copy.deepcopy(model).eval(), path, self.probe[:2])

    def macs_copy(self, target: float, path: Path) -> Path:
        """The model pruned to ``target`` of its MACs (as compress apply would, no fine-tune)."""
        from compress.pruning import build_pruner
        from compress.pruning.params_plan import plan_pruning
        from compress.recipe.pruning import PruningSpec

        spec = PruningSpec(**{**self.pruning, "target": {"macs": target}, "verify": False})
        spec, ratios, _ = plan_pruning(self.model, self.probe, spec, [target])
        pruned = copy.deepcopy(self.model).eval()
        pruner = build_pruner(pruned, self.probe, spec, ratios)
        pruner.step_(ratios[0], self.probe)
        pruner.finalize_()
        return self.export(pruned, path)

    def speedups(self, paths: dict[str, Path], batch: int | None = None) -> dict[str, float]:
        """Speedup of each model over ``baseline``, all timed in one interleaved run (at the
        profile's batch size unless ``batch`` is given)."""
        from compress.measure.latency import compare_onnx
        from compress.recipe.stages import ReportSpec

        batch = batch or self.p["time_batch"]
        spec = ReportSpec(batch_sizes=[batch], threads=self.threads, rounds=self.p["rounds"])
        out = compare_onnx(paths, reference="baseline", sample_shape=self.shape, spec=spec,
                           vocab_size=self.vocab)
        row = out["batches"][str(batch)]
        return {n: row[n]["speedup"] for n in paths if n != "baseline"}


def main() -> None:
    parser = make_parser(__doc__, tiny="ResNet-20 (or MiniLM on 64 sentences), seconds")
    parser.add_argument("--model", choices=("resnet56", "minilm"), default="resnet56",
                        help="ResNet-56 on CIFAR-10 JPEG at batch 64 (default), or MiniLM on "
                             "SST-2 at batch 8 x 128 tokens.")
    add_common_args(parser)
    args = parser.parse_args()
    p = PROFILES[args.model + ("-tiny" if args.tiny else "")]
    if p["kind"] == "text":
        require_shared(SST2)
        start(args, [MINILM_RECIPE])
    else:
        require_shared(CIFAR_JPG, RESNET_CKPT[p["model"]])
        start(args)
    import torch

    threads = args.threads or torch.get_num_threads()
    name = "latency_target" + ("_minilm" if p["kind"] == "text" else "")
    work = args.work / (name + ("-tiny" if args.tiny else ""))
    work.mkdir(parents=True, exist_ok=True)
    table = work / "latency-table.json"
    table.unlink(missing_ok=True)  # measured afresh on this machine, this run
    timer = Timer(p, threads, recipe("baseline", {"macs": 0.5}, p, threads, table))
    base = timer.export(timer.model, work / "baseline.onnx")

    log.info("latency target %.1fx", SPEEDUP)
    lat = apply(recipe("latency", {"latency": 1 - 1 / SPEEDUP}, p, threads, table), work)
    search, found = [], None
    target = p["macs_from"]
    while target <= MACS_MAX + 1e-9:
        onnx = timer.macs_copy(target, work / f"macs-{target:.2f}.onnx")
        got = timer.speedups({"baseline": base, "latency": Path(lat["onnx"]), "macs": onnx})
        search.append({"macs_target": round(target, 4), "speedup": got["macs"],
                       "latency_run_speedup": got["latency"]})
        log.info("MACs target %.2f: %.2fx (latency run %.2fx)", target, got["macs"],
                 got["latency"])
        if got["macs"] >= got["latency"]:
            found = round(target, 4)
            break
        target += p["macs_step"]
    macs = apply(recipe("macs", {"macs": found}, p, threads, table), work) if found else None
    final = timer.speedups({"baseline": base, "latency": Path(lat["onnx"]),
                            **({"macs": Path(macs["onnx"])} if macs else {})})
    payload = {"profile": p, "requested_speedup": SPEEDUP, "threads": threads,
               "latency_run": lat, "macs_search": search, "macs_target": found,
               "macs_run": macs, "final_speedups": final,
               "speedup_met": final["latency"] >= 0.95 * SPEEDUP,
               "top1_at_least_macs": None if macs is None else lat["top1"] >= macs["top1"]}
    finish(name, args.tiny, payload, render_result(payload), args.out)


def fmt_plan(plan: dict[str, Any]) -> str:
    """A latency plan's predicted and closed-loop speedups, "not measured" where missing."""
    shown = ["not measured" if x is None else f"{x:.2f}x"
             for x in (plan.get("predicted_speedup"), plan.get("measured_speedup"))]
    return " / ".join(shown)


def describe(r: dict[str, Any]) -> str:
    """What was pruned, timed, fine-tuned and evaluated, in one sentence."""
    p, lat = r["profile"], r["latency_run"]
    if p.get("kind") == "text":
        return (f"{p['model']} on SST-2, heads and FFN neurons by one searched fraction, "
                f"onnxruntime CPU at batch {p['time_batch']} x {p['seq']} tokens, "
                f"{r['threads']} thread(s); each run first trains a new head with the body "
                f"(the baseline), then fine-tunes {p['epochs']} epoch(s) of AdamW on "
                f"{p['train_subset']} sentences; top-1 on {lat['eval_samples']} dev sentences.")
    return (f"{p['model']} on CIFAR-10 JPEG, onnxruntime CPU at batch {p['time_batch']}, "
            f"{r['threads']} thread(s); both runs fine-tuned {p['steps']} SGD steps of "
            f"{p['batch']} images; top-1 on {p['eval_subset']} test images.")


def render_result(r: dict[str, Any]) -> str:
    """The table from a result file (or this run's payload)."""
    lat, macs = r["latency_run"], r["macs_run"]
    plan = lat["latency_target"] or {}
    rows = [["baseline", "", "", f"{lat['baseline_top1']:.2f} %", "1.00x", ""]]
    rows.append([f"latency target {r['requested_speedup']:.1f}x", f"{lat['macs_reduction']:.1%}",
                 fmt_plan(plan),
                 f"{lat['top1']:.2f} %",
                 f"{r['final_speedups']['latency']:.2f}x", f"{lat['wall_s'] / 60:.1f}"])
    if macs is not None:
        rows.append([f"MACs target {r['macs_target']}", f"{macs['macs_reduction']:.1%}", "",
                     f"{macs['top1']:.2f} %", f"{r['final_speedups']['macs']:.2f}x",
                     f"{macs['wall_s'] / 60:.1f}"])
    search = "; ".join(f"{s['macs_target']}: {s['speedup']:.2f}x (latency run "
                       f"{s['latency_run_speedup']:.2f}x)" for s in r["macs_search"])
    return (describe(r) + "\n\n"
            + fmt_table(["model", "MACs removed", "planned: predicted / closed-loop",
                         "top-1", "speedup (one interleaved run)", "run min"], rows)
            + f"\nMACs targets tried (each timed with the baseline and the latency run's "
              f"model): {search or 'none'}.\n"
            + f"Measured speedup at least 0.95 x requested: {r['speedup_met']}; latency run's "
              f"top-1 at least the MACs run's: "
              f"{'not run' if r['top1_at_least_macs'] is None else r['top1_at_least_macs']}.\n")


if __name__ == "__main__":
    main()
