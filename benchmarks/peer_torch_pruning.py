"""compress against the pipeline a user writes from torch-pruning's README, on the same job.

    python benchmarks/peer_torch_pruning.py                # ResNet-56, 2x fewer MACs, 200 steps
    python benchmarks/peer_torch_pruning.py --full         # the recipe's own fine-tune (2 epochs)
    python benchmarks/peer_torch_pruning.py --tiny         # smoke test (ResNet-20, a few steps)

compress: ``compress apply recipes/resnet56-cifar10.yaml`` (its defaults: the residual stream
kept, channels rounded to multiples of 8, MACs target 0.5). The peer, as torch-pruning's README
shows it: ``BasePruner`` + ``GroupMagnitudeImportance(p=2)`` with the classifier ignored and a
custom pruner for the model's parameter-free shortcut (the README's "customized layers"),
``pruning_ratio`` searched until the peer removes the same MACs compress did, a plain SGD +
cosine fine-tune with the same budget, images and batches, and ``torch.onnx.export``.

Both ONNX files and the unpruned model exported each side's way are then timed in one
interleaved onnxruntime run (rotating order every round) at batch 1 and 64: once with all
cores (wall clock) and once with one thread (the thread's CPU time, which neighbours on a
shared machine barely disturb).
"speedup ÷ MACs reduction" is the measured speedup over the unpruned model divided by its
MACs ratio: 1.0 means the removed MACs turned fully into speed.

Writes benchmarks/results/peer_torch_pruning.{json,md}; work files under runs/benchmarks/peer/.
"""

from __future__ import annotations

import copy
import logging
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
    start,
    stopwatch,
)

log = logging.getLogger("bench")

RECIPE = ROOT / "recipes" / "resnet56-cifar10.yaml"
PROFILES = {
    # Finetune budget of both sides (None = the recipe's epochs); latency protocol.
    # 200 steps of 128 images: about half an epoch, the budget 2 shared CPU cores allow.
    "cpu": dict(overrides=["finetune.epochs=1", "finetune.max_steps=200"], rounds=9,
                batch_sizes=[1, 64]),
    "full": dict(overrides=[], rounds=15, batch_sizes=[1, 64]),
    "tiny": dict(overrides=["model.name=resnet20",
                            f"model.checkpoint={RESNET_CKPT['resnet20']}",
                            "data.eval_subset=64", "data.train_subset=64", "data.batch_size=16",
                            "finetune.max_steps=2", "report.batch_sizes=[1, 4]",
                            "report.rounds=1", "report.runs_per_round=1",
                            "report.min_block_ms=0"],
                 rounds=1, batch_sizes=[1, 4]),
}


def shortcut_pruner() -> Any:
    """A torch-pruning pruner for the model's option-A shortcut, as the README shows for
    custom layers (it only calls the module's own channel methods)."""
    import torch_pruning as tp

    class ShortcutPruner(tp.pruner.function.BasePruningFunc):
        def prune_out_channels(self, layer: Any, idxs: list[int]) -> Any:
            layer.prune_out_channels_(idxs)
            return layer

        def prune_in_channels(self, layer: Any, idxs: list[int]) -> Any:
            layer.prune_in_channels_(idxs)
            return layer

        def get_out_channels(self, layer: Any) -> int:
            return layer.out_channels

        def get_in_channels(self, layer: Any) -> int:
            return layer.in_channels

    return ShortcutPruner()


def readme_prune(model: Any, example: Any, ratio: float) -> Any:
    """torch-pruning's README, applied to ``model`` in place."""
    import torch_pruning as tp

    from compress.models.cifar_resnet import ChannelMapShortcut

    pruner = tp.pruner.BasePruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio, ignored_layers=[model.linear],
        customized_pruners={ChannelMapShortcut: shortcut_pruner()})
    pruner.step()
    return model


def readme_export(model: Any, example: Any, path: Path) -> Path:
    """``torch.onnx.export`` as the README's users call it, with a dynamic batch axis."""
    import torch

    torch.onnx.export(model.eval(), (example,), str(path), input_names=["input"],
                      output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return path


def search_ratio(model: Any, example: Any, target_macs: int) -> tuple[float, int]:
    """Bisection on ``pruning_ratio`` until the pruned copy has about ``target_macs`` MACs."""
    import torch_pruning as tp

    def macs(r: float) -> int:
        trial = readme_prune(copy.deepcopy(model).eval(), example, r)
        return int(tp.utils.count_ops_and_params(trial, example)[0])

    lo, hi = 0.0, 0.9
    best = (hi, macs(hi))
    for _ in range(14):
        mid = (lo + hi) / 2
        m = macs(mid)
        if abs(m - target_macs) < abs(best[1] - target_macs):
            best = (mid, m)
        if m > target_macs:
            lo = mid
        else:
            hi = mid
    return best


def plain_finetune(model: Any, loader: Any, *, epochs: int, max_steps: int | None, lr: float,
                   weight_decay: float) -> dict[str, float]:
    """A plain PyTorch loop: SGD with momentum, cosine schedule, cross-entropy."""
    import torch

    total = len(loader) * epochs if max_steps is None else min(len(loader) * epochs, max_steps)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1))
    model.train()
    step, t = 0, time.perf_counter()
    while step < total:
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step >= total:
                break
    model.eval()
    return {"steps": step, "seconds": time.perf_counter() - t}


def run_peer(recipe: Any, target_macs: int, out: Path) -> dict[str, Any]:
    """The README pipeline end to end; returns its numbers and the ONNX path."""
    import torch

    from compress.data import build_data
    from compress.measure.evaluate import evaluate
    from compress.models import build_model

    times: dict[str, float] = {}
    with stopwatch(times, "total_s"):
        torch.manual_seed(recipe.seed)
        bundle = build_data(recipe.data, resolve=recipe.resolve_path, seed=recipe.seed)
        model = build_model(recipe.model, resolve=recipe.resolve_path).eval()
        example = torch.randn(1, *bundle.sample_shape)
        out.mkdir(parents=True, exist_ok=True)
        with stopwatch(times, "export_s"):
            unpruned = readme_export(model, example, out / "unpruned_plain.onnx")
        with stopwatch(times, "search_s"):
            ratio, _ = search_ratio(model, example, target_macs)
        readme_prune(model, example, ratio)
        import torch_pruning as tp

        macs, params = (int(v) for v in tp.utils.count_ops_and_params(model, example))
        before = evaluate(model, bundle.eval, torch.device("cpu"))
        ft = recipe.finetune
        train = plain_finetune(model, bundle.train, epochs=ft.epochs, max_steps=ft.max_steps,
                               lr=ft.lr, weight_decay=ft.weight_decay)
        with stopwatch(times, "eval_s"):
            after = evaluate(model, bundle.eval, torch.device("cpu"))
        with stopwatch(times, "export_s"):
            onnx_path = readme_export(model, example, out / "peer.onnx")
    widths = sorted({m.out_channels for m in model.modules()
                     if isinstance(m, torch.nn.Conv2d)})
    return {"ratio": ratio, "macs": macs, "params": params, "top1_pruned": before["accuracy"],
            "top1": after["accuracy"], "finetune": train, "onnx": str(onnx_path),
            "unpruned_onnx": str(unpruned),
            "conv_widths": widths, "timing": times}


def latency(paths: dict[str, Path], batch_sizes: list[int], rounds: int,
            tiny: bool) -> dict[str, Any]:
    """The four ONNX files in one interleaved run: all cores wall clock, 1 thread CPU time.

    Each side's speedup is against the unpruned model exported its own way (compress's export
    or the README's plain ``torch.onnx.export``)."""
    from compress.measure.latency import compare_onnx
    from compress.recipe.stages import ReportSpec

    common = dict(batch_sizes=batch_sizes, rounds=rounds,
                  **({"runs_per_round": 1, "min_block_ms": 0, "warmup": 0} if tiny else {}))
    refs = {"compress": "unpruned", "peer": "unpruned_plain"}
    return {"all_cores_wall": compare_onnx(paths, reference=refs, sample_shape=(3, 32, 32),
                                           spec=ReportSpec(**common)),
            "one_thread_cpu": compare_onnx(paths, reference=refs, sample_shape=(3, 32, 32),
                                           spec=ReportSpec(threads=1, **common),
                                           timer=time.thread_time)}


def render(res: dict[str, Any]) -> str:
    base, comp, peer, lat = res["unpruned"], res["compress"], res["peer"], res["latency"]
    header = ["", "top-1 %", "MACs", "params"]
    for mode in ("all_cores_wall", "one_thread_cpu"):
        threads = lat[mode]["threads"]
        tag = f"{threads} thr wall" if mode == "all_cores_wall" else "1 thr CPU"
        for bs in lat[mode]["batches"]:
            header += [f"ms b{bs} ({tag})", f"speedup ÷ MACs red. b{bs} ({tag})"]
    rows = []
    for key, name, info in (("unpruned", "unpruned (compress export)", base),
                            ("compress", "**compress**", comp),
                            ("unpruned_plain", "unpruned (plain torch.onnx.export)", base),
                            ("peer", "peer (torch-pruning README)", peer)):
        row = [name, f"{info['top1']:.2f}", f"{info['macs'] / 1e6:.2f} M",
               f"{info['params'] / 1e3:.1f} k"]
        for mode in ("all_cores_wall", "one_thread_cpu"):
            for bs, per in lat[mode]["batches"].items():
                stats = per[key]
                row.append(f"{stats['median_ms']:.2f}")
                if key.startswith("unpruned"):
                    row.append("–")
                else:
                    red = base["macs"] / info["macs"]
                    row.append(f"{stats['speedup']:.2f}× ÷ {red:.2f} = "
                               f"**{stats['speedup'] / red:.2f}**")
        rows.append(row)
    b64 = max(lat["all_cores_wall"]["batches"], key=int)
    reduction = base["macs"] / comp["macs"]
    ratio = lat["all_cores_wall"]["batches"][b64]["compress"]["speedup"] / reduction
    ratio1 = lat["one_thread_cpu"]["batches"][b64]["compress"]["speedup"] / reduction
    top_ok = comp["top1"] >= peer["top1"]
    lines = [fmt_table(header, rows),
             f"\nFine-tuning, both sides: {res['budget']}. The peer scored "
             f"{peer['top1_pruned']:.2f} % right after pruning (pruning_ratio "
             f"{peer['ratio']:.4f}; its conv widths {peer['conv_widths']}).\n",
             f"\nTargets: compress top-1 ≥ peer's: **{'met' if top_ok else 'MISSED'}** "
             f"({comp['top1']:.2f} vs {peer['top1']:.2f}); speedup ÷ MACs reduction ≥ 0.9 at "
             f"batch {b64}: **{'met' if ratio >= 0.9 else 'MISSED'}** with all cores "
             f"({ratio:.2f}), {'met' if ratio1 >= 0.9 else 'missed'} with one thread "
             f"({ratio1:.2f}).\n"]
    return "".join(lines)


render_result = render  # the result file holds exactly what render reads


def main() -> None:
    parser = make_parser(__doc__, full="The recipe's own fine-tune budget.",
                         tiny="Smoke test (ResNet-20, 2 steps).")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="Extra recipe override for both sides (e.g. finetune.max_steps=200).")
    add_common_args(parser)
    args = parser.parse_args()
    start(args)
    require_shared(RESNET_CKPT["resnet56"])
    import compress
    from compress.recipe.load import load_recipe

    profile = "full" if args.full else "tiny" if args.tiny else "cpu"
    p = PROFILES[profile]
    overrides = [*p["overrides"], *args.set]
    work = args.work / ("peer-tiny" if args.tiny else "peer")
    recipe = load_recipe(RECIPE, overrides)
    times: dict[str, float] = {}
    log.info("compress apply %s %s", RECIPE.name, " ".join(f"--set {o}" for o in overrides))
    with stopwatch(times, "compress_apply_s"):
        result = compress.apply(RECIPE, out_dir=work / "compress", overwrite=True,
                                overrides=overrides)
    rep = result.report
    comp = {"top1": rep["compressed"]["accuracy"], "macs": rep["compressed"]["macs"],
            "params": rep["compressed"]["params"], "onnx": str(work / "compress" / "model.onnx")}
    log.info("compress: top-1 %.2f, MACs %d", comp["top1"], comp["macs"])
    base = {"top1": rep["baseline"]["accuracy"], "macs": rep["baseline"]["macs"],
            "params": rep["baseline"]["params"],
            "onnx": str(work / "compress" / "baseline" / "model.onnx")}
    with stopwatch(times, "peer_s"):
        peer = run_peer(recipe, comp["macs"], work)
    log.info("peer: top-1 %.2f, MACs %d", peer["top1"], peer["macs"])
    paths = {"unpruned": Path(base["onnx"]), "compress": Path(comp["onnx"]),
             "unpruned_plain": Path(peer["unpruned_onnx"]), "peer": Path(peer["onnx"])}
    lat = latency(paths, p["batch_sizes"], p["rounds"], args.tiny)
    ft = recipe.finetune
    budget = (f"{ft.epochs} epoch(s)" + (f", at most {ft.max_steps} steps" if ft.max_steps else "")
              + f" of {recipe.data.batch_size}-image batches, SGD lr {ft.lr}, cosine")
    res = {"profile": profile, "overrides": overrides, "budget": budget, "unpruned": base,
           "compress": comp, "peer": peer, "latency": lat, "timing": times,
           "compress_report_timing": rep.get("timing")}
    md = render(res)
    finish("peer_torch_pruning", args.tiny, res, md, args.out)


if __name__ == "__main__":
    main()
