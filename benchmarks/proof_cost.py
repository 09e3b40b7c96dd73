"""What the pruning proof costs: forward passes and seconds per step, per group vs once + bisection.

    nice python benchmarks/proof_cost.py --threads 1            # ResNet-56, ConvNeXt-T, Swin-T
    python benchmarks/proof_cost.py --tiny                      # ResNet-20 only (smoke run)

Each model is built at random initialisation with a fixed seed (structure is what the proof's
cost depends on; the shared CIFAR ResNet-56 checkpoint is loaded when present), its BatchNorm
statistics recalibrated on random inputs so outputs are not vanishingly small, and pruned by
one structured step (channel ratio 0.3, about half the MACs) twice from the same start: with the
old proof (compare after every group: ``per-group``) and the new one (remove all, compare once,
bisect only on a mismatch: ``bisect``). Forward passes of the probe batch are counted by a hook
on the model, not inferred; seconds are the proof's own wall time (the zeroed reference
included) and the whole step's. ResNet-56 is also run with one group deliberately left
unzeroed (a wrong removal), to show what finding the culprit costs each way.

A model the structured pruner refuses is recorded with the sentence it printed, not skipped; a
step still running after ``--limit`` seconds is recorded with the stage it was in. Writes
benchmarks/results/proof_cost.json and .md (proof_cost-tiny.* with --tiny,
proof_cost-<models>.* with --models).
"""

from __future__ import annotations

import copy
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESNET_CKPT, add_common_args, finish, fmt_table, make_parser, start  # noqa: E402

PROBE = 4
RATIO = 0.3


def build(name: str) -> tuple[Any, Any, str]:
    """(model, probe batch, how it was built)."""
    import torch
    import torchvision

    from compress.models.cifar_resnet import cifar_resnet

    torch.manual_seed(0)
    if name.startswith("resnet"):
        model, size = cifar_resnet(name), 32
        ckpt = RESNET_CKPT.get(name)
        how = "random init"
        if ckpt is not None and ckpt.exists():
            from compress.models.checkpoint import load_checkpoint_

            load_checkpoint_(model, ckpt)
            how = f"checkpoint {ckpt.name}"
    else:
        model, size = torchvision.models.get_model(name, num_classes=10), 64
        how = "random init"
    x = torch.randn(PROBE, 3, size, size, generator=torch.Generator().manual_seed(1))
    if how == "random init":  # recalibrate BatchNorm so outputs are not ~1e-12
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(16, 3, size, size))
    return model.eval(), x, f"{how}, {size} px, probe batch {PROBE}"


class _OutOfTime(BaseException):
    """Raised by the alarm; a BaseException so no ``except Exception`` on the way takes it."""


def _out_of_time(*_: Any) -> None:
    raise _OutOfTime


def one_step(model: Any, x: Any, strategy: str, wrong: bool = False,
             limit: int = 900) -> dict[str, Any]:
    """Prune one step with ``strategy``; passes and seconds measured, the refusal, or how far
    it got within ``limit`` seconds."""
    import torch

    from compress.errors import CompressError, InputError
    from compress.pruning import base, structured
    from compress.pruning.structured_kind import build_structured
    from compress.recipe.pruning import PruningSpec

    passes = [0]
    hook = model.register_forward_pre_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
    started: list[float] = []  # one proof per step, or one per closed block (Swin, ShuffleNet)
    proofs: list[Any] = []
    row: dict[str, Any] = {"strategy": strategy}
    run_proof = base.run_proof

    def recording(*args: Any, **kwargs: Any) -> Any:
        row["groups"] = row.get("groups", 0) + len(args[2])  # removals given to the proof
        started.append(time.perf_counter())
        result = run_proof(*args, **kwargs)
        proofs.append(result)
        return result
    base.run_proof = recording
    zero = structured.zero_dep_
    if wrong:  # the group of the last block's first conv is removed but never zeroed
        names = {n for n, _ in model.named_modules()}
        last = sorted(n for n in names if n.endswith(".conv1"))[-1]
        skip = {model.get_submodule(last), model.get_submodule(last.replace("conv1", "bn1")),
                model.get_submodule(last.replace("conv1", "conv2"))}
        structured.zero_dep_ = lambda dep, i, o: None if dep.target.module in skip \
            else zero(dep, i, o)
    stage = ["building torch-pruning's dependency graph"]
    signal.signal(signal.SIGALRM, _out_of_time)
    signal.alarm(limit)
    try:
        t = time.perf_counter()
        pruner = build_structured(model, x[:1], PruningSpec(ratio=RATIO),
                                  cumulative_ratios=[RATIO])
        pruner.proof_strategy = strategy
        row["graph_s"] = time.perf_counter() - t
        passes[0] = 0
        stage[0] = "choosing, zeroing and removing the step's groups (the proof included)"
        t = time.perf_counter()
        with torch.no_grad():
            record = pruner.step_(RATIO, x)
        # Closed blocks are proven on their own inputs: the blocks' passes, not the model's.
        row.update(step_s=time.perf_counter() - t, groups=record.groups,
                   passes=passes[0] if record.note is None else record.passes,
                   max_abs_diff=record.max_abs_diff, tolerance=record.tolerance,
                   proof_s=sum(p.seconds for p in proofs),
                   outcome="proven" if record.note is None else f"proven; {record.note}")
    except CompressError as err:
        kind = "refused" if isinstance(err, InputError) else "failed"
        row.update(step_s=time.perf_counter() - t, passes=passes[0], outcome=f"{kind}: {err}",
                   proof_s=(time.perf_counter() - started[0]) if started else None)
    except _OutOfTime:  # passes so far: none of the proof's while the graph is traced
        in_step = "graph" not in stage[0]
        row.update(step_s=None, passes=passes[0] if in_step else None,
                   outcome=f"not finished within {limit} s, while {stage[0]}")
    finally:
        signal.alarm(0)
        base.run_proof = run_proof
        structured.zero_dep_ = zero
        hook.remove()
    return row


def main() -> None:
    parser = make_parser(__doc__, tiny="ResNet-20 only (a smoke run).")
    add_common_args(parser)
    parser.add_argument("--models", nargs="+", help="Measure these models only (resnet names "
                        "from cifar_resnet, others from torchvision).")
    parser.add_argument("--limit", type=int, default=900, help="Seconds one step may take; "
                        "past it the row says where it was (default 900).")
    args = parser.parse_args()
    start(args)
    models = args.models or (["resnet20"] if args.tiny
                             else ["resnet56", "convnext_tiny", "swin_t"])
    rows: list[dict[str, Any]] = []
    for name in models:
        model, x, how = build(name)
        cases = [("bisect", False), ("per-group", False)]
        if name.startswith("resnet"):
            cases += [("bisect", True), ("per-group", True)]
        for strategy, wrong in cases:
            row = one_step(copy.deepcopy(model), x, strategy, wrong, args.limit)
            row.update(model=name, built=how, case="one wrong group" if wrong else "correct")
            print(f"{name} {row['case']} {strategy}: {row['passes'] or 0} passes, "
                  f"{row.get('proof_s') or 0:.2f} s proof, {row['outcome'][:100]}", flush=True)
            rows.append(row)
        # Written after every model, so a run cut short still leaves what it measured.
        report(args, rows, complete=name == models[-1])


def render_result(r: dict[str, Any]) -> str:
    """The Markdown table of a result file (printed by the run, published by render.py)."""
    table = [[x["model"], x["case"], x["strategy"], x.get("groups", "-"),
              "-" if x["passes"] is None else x["passes"],
              f"{x['proof_s']:.2f}" if x.get("proof_s") is not None else "-",
              "-" if x["step_s"] is None else f"{x['step_s']:.2f}", x["outcome"]]
             for x in r["rows"]]
    return (f"One structured step (channel ratio {r['ratio']}, probe batch {r['probe_batch']}) "
            f"per model, the proof run per group (old) and once + bisection (new); forward "
            f"passes of the probe batch counted by a hook"
            f"{'' if r['complete'] else ' (run cut short: the models measured so far)'}.\n\n"
            + fmt_table(["model", "case", "proof", "groups", "forward passes", "proof s",
                         "step s", "outcome"], table))


def report(args: Any, rows: list[dict[str, Any]], complete: bool) -> None:
    result = {"complete": complete, "niceness": os.nice(0), "ratio": RATIO,
              "probe_batch": PROBE, "rows": rows}
    name = "proof_cost" + ("" if args.models is None else "-" + "-".join(args.models))
    finish(name, args.tiny, result, render_result(result), args.out)


if __name__ == "__main__":
    main()
