"""Which levers turn removed MACs into onnxruntime CPU speed? Architecture only, no training.

    python benchmarks/latency_levers.py           # ResNet-56, 2x fewer MACs
    python benchmarks/latency_levers.py --tiny    # smoke test (ResNet-20, one round)

The shared pretrained ResNet-56 is pruned to half its MACs (no fine-tuning: latency does not
depend on the weights' values) in several ways, each exported to ONNX, and every file is timed
in ONE interleaved onnxruntime run against the unpruned model exported the same way. The
levers, one at a time: channel rounding, which groups are pruned (the residual stream or only
the blocks' inner widths), how the parameter-free shortcut is exported, and onnxruntime's
optimisation level. Timed twice: with all cores (wall clock) and with one thread (the thread's
CPU time, which other jobs on a shared machine barely disturb).

Writes benchmarks/results/latency_levers.{json,md}; ONNX files under runs/benchmarks/levers/.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

from _common import (
    RESNET_CKPT,
    add_common_args,
    finish,
    fmt_table,
    make_parser,
    require_shared,
    start,
)

log = logging.getLogger("bench")

INNER = ["conv1", r"re:layer\d\.\d+\.conv2"]  # keep the stem and every block's output width
INNER_23 = ["conv1", r"re:layer\d\.\d+\.conv2", r"re:layer1\.\d+\.conv1"]

# name: (what it changes, ignored, round_to, shortcut exported as a 1x1 conv, ORT level)
LEVERS: dict[str, tuple[str, list[str], int, bool, str]] = {
    "readme": ("torch-pruning README way: every group, no rounding", [], 1, False, "all"),
    "round8": ("+ channels rounded to multiples of 8", [], 8, False, "all"),
    "inner8": ("+ residual stream kept (inner widths only)", INNER, 8, False, "all"),
    "inner8_conv": ("+ shortcut exported as 1x1 conv (compress default)", INNER, 8, True, "all"),
    "inner8_ext": ("compress default at ORT_ENABLE_EXTENDED (no NCHWc)", INNER, 8, True,
                   "extended"),
    "inner8_stage23": ("inner widths of stages 2-3 only (stage 1 kept)", INNER_23, 8, True, "all"),
    "round8_conv": ("every group, rounding 8, shortcut as conv", [], 8, True, "all"),
    # AVX-512 CPUs block NCHWc by 16 channels (AVX2 by 8): the rounding that fits the target CPU.
    "inner16_conv": ("compress default, channels rounded to 16", INNER, 16, True, "all"),
    "round16_conv": ("every group, rounding 16, shortcut as conv", [], 16, True, "all"),
}


def build(model: Any, name: str, lever: tuple, work: Path, target: float) -> dict[str, Any]:
    import torch

    from compress.export.onnx import export_onnx
    from compress.measure.counts import count_macs_params
    from compress.pruning.planning import solve_ratio_for_macs
    from compress.pruning.structured import StructuredPruner
    from compress.recipe.pruning import PruningSpec

    _, ignored, round_to, conv, _ = lever
    example = torch.zeros(1, 3, 32, 32)
    spec = PruningSpec(target={"macs": target}, round_to=round_to, ignored=ignored,
                       verify=False)
    # Stage 1 kept, stages 2-3 cannot lose half of all MACs in blocks of 8 channels: accept
    # the closest reduction within 0.06 (speedup is compared with the MACs actually removed).
    ratio, _ = solve_ratio_for_macs(model, example, spec, target, tolerance=0.06)
    pruned = copy.deepcopy(model)
    StructuredPruner(pruned, example, spec, cumulative_ratios=[ratio]).step_(ratio, example)
    path = export_onnx(pruned.eval(), work / f"{name}.onnx", torch.randn(2, 3, 32, 32),
                       layout_rewrites=conv)
    widths = sorted({m.out_channels for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)})
    return {"macs": count_macs_params(pruned, example)[0], "ratio": ratio, "onnx": str(path),
            "conv_widths": widths}


def render_result(r: dict[str, Any]) -> str:
    """The levers table from a result file (``model`` is absent from files before it was
    recorded: the command then says which, ``--tiny`` being ResNet-20)."""
    net = r.get("model") or ("resnet20" if "--tiny" in r["command"] else "resnet56")
    modes = r["timings"]
    rows = []
    for lever in r["levers"].values():
        red = r["base_macs"] / lever["macs"]
        row = [lever["what"], f"{red:.2f}×", " ".join(map(str, lever["conv_widths"]))]
        for mode in modes:
            for speed in lever["speedup"][mode].values():
                row.append(f"{speed:.2f}× → **{speed / red:.2f}**")
        rows.append(row)
    header = ["lever", "MACs reduction", "conv widths"]
    for mode, res in modes.items():
        tag = f"{res['threads']} thr wall" if mode == "all_cores_wall" else "1 thr CPU"
        header += [f"speedup → ÷ MACs red., b{bs} ({tag})" for bs in res["batches"]]
    what = r.get("unreachable_what", {})
    for name, why in r["unreachable"].items():
        rows.append([what.get(name, LEVERS[name][0]), "–", f"not reachable: {why.split(';')[0]}"]
                    + ["–"] * (len(header) - 3))
    rounds = next(iter(modes.values()))["protocol"]["rounds"]
    return (f"{net} pruned to about half its MACs, no fine-tuning; speedup against the "
            f"unpruned model exported and optimised the same way (median of the per-round "
            f"ratios, {rounds} interleaved rounds, every file in every round).\n\n"
            + fmt_table(header, rows))


def main() -> None:
    parser = make_parser(__doc__, tiny="Smoke test (ResNet-20).")
    parser.add_argument("--rounds", type=int, default=9)
    add_common_args(parser)
    args = parser.parse_args()
    start(args)
    net = "resnet20" if args.tiny else "resnet56"
    require_shared(RESNET_CKPT[net])
    import torch

    from compress.errors import InputError
    from compress.export.onnx import export_onnx
    from compress.measure.counts import count_macs_params
    from compress.measure.latency import compare_onnx
    from compress.models import build_model
    from compress.recipe.sources import ModelSpec
    from compress.recipe.stages import ReportSpec

    work = args.work / ("levers-tiny" if args.tiny else "levers")
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(ModelSpec(source="cifar_resnet", name=net,
                                  checkpoint=str(RESNET_CKPT[net]))).eval()
    base_macs = count_macs_params(model, torch.zeros(1, 3, 32, 32))[0]
    x = torch.randn(2, 3, 32, 32)
    refs = {True: export_onnx(model, work / "unpruned.onnx", x),
            False: export_onnx(model, work / "unpruned_plain.onnx", x, layout_rewrites=False)}
    levers = {k: LEVERS[k] for k in (["readme", "inner8_conv"] if args.tiny else LEVERS)}
    built, unreachable = {}, {}
    for name, lever in list(levers.items()):
        t = time.perf_counter()
        try:
            built[name] = build(model, name, lever, work, 0.5)
        except InputError as exc:  # e.g. inner widths in blocks of 16 cannot halve the MACs
            unreachable[name] = str(exc)
            del levers[name]
            log.info("%s: %s", name, exc)
            continue
        log.info("%s: MACs x%.2f, widths %s (%.0f s)", name, base_macs / built[name]["macs"],
                 built[name]["conv_widths"], time.perf_counter() - t)
    # One session per (file, level); each lever is compared with the unpruned model exported
    # and optimised the same way.
    paths: dict[str, Path] = {}
    levels: dict[str, str] = {}
    ref_of: dict[str, str] = {}
    for name, (_, _, _, conv, level) in levers.items():
        ref = f"unpruned[{'conv' if conv else 'plain'},{level}]"
        paths[ref] = refs[conv]
        levels[ref] = level
        paths[name] = Path(built[name]["onnx"])
        levels[name] = level
        ref_of[name] = ref
    common = dict(batch_sizes=[1, 2] if args.tiny else [1, 64],
                  rounds=1 if args.tiny else args.rounds,
                  **({"runs_per_round": 1, "min_block_ms": 0, "warmup": 0} if args.tiny else {}))
    modes = {"all_cores_wall": (ReportSpec(**common), time.perf_counter),
             "one_thread_cpu": (ReportSpec(threads=1, **common), time.thread_time)}
    results: dict[str, Any] = {}
    for mode, (spec, timer) in modes.items():
        results[mode] = compare_onnx(paths, reference=ref_of, sample_shape=(3, 32, 32),
                                     spec=spec, timer=timer, optimization=levels)
    for name in levers:
        for mode in modes:
            for bs, per in results[mode]["batches"].items():
                built[name].setdefault("speedup", {}).setdefault(mode, {})[bs] = \
                    per[name]["speedup"]
    payload = {"model": net, "levers": {k: {"what": v[0], "ignored": v[1], "round_to": v[2],
                                            "shortcut_conv": v[3], "ort_level": v[4],
                                            **built[k]}
                                        for k, v in levers.items()},
               "unreachable": unreachable, "unreachable_what": {k: LEVERS[k][0]
                                                                for k in unreachable},
               "base_macs": base_macs, "timings": results}
    md = render_result(payload)
    finish("latency_levers", args.tiny, payload, md, args.out)


if __name__ == "__main__":
    main()
