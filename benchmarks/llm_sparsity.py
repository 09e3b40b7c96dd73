"""One-shot LLM sparsity without retraining: held-out perplexity of a causal LM pruned to 50 %
unstructured and to 2:4 by magnitude, Wanda and SparseGPT, with each run's wall time and peak
RSS.

    python benchmarks/llm_sparsity.py --threads 1          # the trained decoder (decoder_model)
    python benchmarks/llm_sparsity.py --tiny --threads 1   # seconds: what the test runs

The model is the small Llama-style decoder trained on Jane Austen's novels
(``decoder_train.ensure_model``, cached; trained first when missing): calibration samples come
from the corpus's calibration split, the perplexity from its held-out split, in blocks of the
training sequence length (as ``decoder_model.py`` measures it). ``--model`` and ``--corpus``
name another causal-LM folder (with its tokenizer) and ``text_lm`` folder instead. Every cell
(dense, and each criterion × sparsity) runs in a process of its own, so its peak RSS is its own;
each prunes through compress's library (the pruners of ``compress apply``, one step, no
fine-tuning) and measures the perplexity. The papers' target is checked from the measured
figures: the perplexity increase of Wanda and of SparseGPT at most a third of magnitude's.
No sparse engine is timed (torch 2:4 kernels need a CUDA GPU); the result file says why.
Writes ``benchmarks/results/llm_sparsity[-tiny].{json,md}``.

``--tiny``: a seeded random tiny Llama and this repository's README as the text: a smoke run of
the script, whose perplexities mean nothing.

Example:
    >>> ppl = [10.0, 40.0, 18.0, 16.0, 70.0, 40.0, 25.0, 30.0]  # dense, then CELLS' order
    >>> rows = [{"criterion": c, "kind": k, "perplexity": p} for (c, k), p in zip(CELLS, ppl)]
    >>> check = target_check(rows)
    >>> round(check["unstructured"]["wanda"]["ratio"], 3), check["n:m"]["wanda"]["met"]
    (0.267, False)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Every benchmark module is imported here, before the provenance clock starts: the code digest
# then covers the same files at the start and at the end of the run.
from _common import ROOT, add_common_args, finish, fmt_table, make_parser, start  # noqa: E402
from decoder_train import ensure_model  # noqa: E402
from provenance import peak_rss_mib  # noqa: E402

__all__ = ["CELLS", "TARGET", "tiny_inputs", "trained_inputs", "run_cell", "target_check",
           "render_result"]

# "l2-row": magnitude ranked within each output row (scope: row), Wanda's comparison group
# without the activation norms; it tells the group's share of Wanda's result from theirs.
CELLS = [("dense", None), ("l2", "unstructured"), ("wanda", "unstructured"),
         ("sparsegpt", "unstructured"), ("l2", "n:m"), ("wanda", "n:m"), ("sparsegpt", "n:m"),
         ("l2-row", "unstructured")]
SHOWN = {"l2": "magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT", "dense": "dense",
         "l2-row": "magnitude per row"}
TARGET = 1 / 3  # the papers' claim: a third of magnitude's perplexity increase, at most


def run_cell(model_dir: Path, corpus: Path, splits: tuple[str, str], criterion: str,
             kind: str | None, samples: int, seq_len: int) -> dict[str, Any]:
    """Prune one copy of the model (none for ``dense``) and measure its held-out perplexity."""
    import torch

    from compress.data import build_data
    from compress.data.calibration import calibration_batches
    from compress.measure.evaluate import evaluate
    from compress.models import build_model
    from compress.pruning import build_pruner
    from compress.pruning.calibrated import Calibration
    from compress.recipe.calibration import CalibrationSpec
    from compress.recipe.pruning import PruningSpec
    from compress.recipe.sources import DataSpec, ModelSpec

    t0 = time.perf_counter()
    torch.manual_seed(0)
    data = build_data(DataSpec(source="text_lm", path=str(corpus), max_length=seq_len,
                               tokenizer=str(model_dir), train_split=splits[0],
                               eval_split=splits[1], eval_batch_size=16))
    model = build_model(ModelSpec(source="huggingface", name=str(model_dir),
                                  task="causal-lm")).eval()
    row: dict[str, Any] = {"criterion": criterion, "kind": kind, "prune_s": None,
                           "sparsity": 0.0, "proof": None}
    if kind is not None:
        extra: dict[str, Any] = {"ratio": 0.5} if kind == "unstructured" else {}
        if criterion == "l2-row":
            criterion, extra["scope"] = "l2", "row"
        spec = PruningSpec(kind=kind, importance=criterion, **extra)
        probe = data.probe_batch(2)
        t = time.perf_counter()
        pruner = build_pruner(model, probe[:1], spec, [0.5])
        if getattr(pruner, "needs_calibration", False):
            batches = calibration_batches(data, CalibrationSpec(samples=samples, batch_size=8),
                                          seed=0)
            pruner.use_calibration(Calibration(batches))
        record = pruner.step_(0.5, probe)
        pruner.finalize_()
        row["prune_s"] = time.perf_counter() - t
        row["sparsity"] = pruner.sparsity()["overall"]
        row["proof"] = record.proof
    with torch.no_grad():
        out = evaluate(model, data.eval, torch.device("cpu"))
    row.update(perplexity=out["perplexity"], loss=out["loss"], eval_tokens=out["samples"],
               eval_blocks=len(data.eval.dataset),
               params=sum(p.numel() for p in model.parameters()),
               cell_wall_s=time.perf_counter() - t0, peak_rss_mib=peak_rss_mib()["self"])
    return row


def target_check(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per sparsity and calibrated criterion: its perplexity increase ÷ magnitude's, and
    whether that is at most :data:`TARGET` (None when magnitude's increase is not positive,
    where the ratio is no yardstick)."""
    dense = next(x["perplexity"] for x in rows if x["kind"] is None)
    rise = {(x["criterion"], x["kind"]): x["perplexity"] - dense for x in rows}
    check: dict[str, dict[str, Any]] = {}
    for kind in ("unstructured", "n:m"):
        mag = rise[("l2", kind)]
        for crit in ("wanda", "sparsegpt"):
            ratio = rise[(crit, kind)] / mag if mag > 0 else None
            check.setdefault(kind, {})[crit] = {
                "increase": rise[(crit, kind)], "magnitude_increase": mag, "ratio": ratio,
                "met": None if ratio is None else ratio <= TARGET}
    return check


def tiny_inputs(work: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT))
    from tests.hf_models import save_tiny

    model_dir, _ = save_tiny("llama", work / "tiny-llama")
    text = work / "tiny-text"
    text.mkdir(parents=True, exist_ok=True)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    half = len(readme) // 2
    (text / "train.txt").write_text(readme[:half], encoding="utf-8")
    (text / "test.txt").write_text(readme[half:], encoding="utf-8")
    return model_dir, text


def trained_inputs() -> tuple[Path, Path, dict[str, Any], dict[str, Any]]:
    """The trained decoder's folder, its corpus, its settings and what a result file records
    about it (trained first when missing)."""
    model_dir, corpus, s = ensure_model()
    training = json.loads((model_dir / "training.json").read_text(encoding="utf-8"))
    return model_dir, corpus, s, {"kind": "trained decoder (decoder_model.py)", "settings": s,
                                  "trained": training["trained"],
                                  "tokens_seen": training["tokens_seen"]}


def _met(c: dict[str, Any]) -> str:
    return "no yardstick" if c["met"] is None else ("met" if c["met"] else "missed")


def render_result(r: dict[str, Any]) -> str:
    """The Markdown table of a result file."""
    check = r["target"]
    table = []
    for x in r["rows"]:
        c = check.get(x["kind"] or "", {}).get(x["criterion"])
        ratio = "-" if c is None or c["ratio"] is None else f"{c['ratio']:.2f} ({_met(c)})"
        dense = r["rows"][0]["perplexity"]
        table.append([SHOWN[x["criterion"]],
                      {"unstructured": "50 %", "n:m": "2:4", None: "-"}[x["kind"]],
                      f"{x['perplexity']:.2f}",
                      "-" if x["kind"] is None else f"{x['perplexity'] - dense:+.2f}",
                      "-" if x["kind"] is None or x["criterion"] == "l2" else ratio,
                      f"{x['sparsity']:.3f}",
                      "-" if x["prune_s"] is None else f"{x['prune_s']:.1f}",
                      f"{x['cell_wall_s']:.0f}", f"{x['peak_rss_mib']:.0f}"])
    met = [c["met"] for per in check.values() for c in per.values()]
    verdict = ("met in every cell" if all(m is True for m in met) else
               f"met in {sum(m is True for m in met)} of {len(met)} cells")
    return (f"Model `{Path(r['model']).name}` ({r['params']:,} parameters), held-out "
            f"perplexity on the {r['eval_blocks']} blocks of {r['seq_len']} tokens of the "
            f"`{r['splits'][1]}` split; {r['samples']} calibration samples of {r['seq_len']} "
            f"tokens from the `{r['splits'][0]}` split; one step, no fine-tuning; every cell a "
            f"process of its own (its peak RSS is its own). Target (the papers'): the increase "
            f"of Wanda and SparseGPT at most a third of magnitude's at the same sparsity: "
            f"{verdict}. Magnitude per row ranks each output row's weights by magnitude, "
            f"half of every row pruned: Wanda's comparison group without its activation "
            f"norms, to tell the group's part in Wanda's result from theirs. Sparse engine: "
            f"{r['sparse_engine']}.\n\n"
            + fmt_table(["criterion", "sparsity", "perplexity", "increase",
                         "increase ÷ magnitude's", "pruned-layer sparsity", "prune s",
                         "cell wall s", "peak RSS MiB"], table))


def _sparse_engine() -> str:
    import torch

    why = ("this script does not time one" if torch.cuda.is_available()
           else "no CUDA GPU on this machine")
    return f"not measured ({why}); a masked model runs dense, about 1x"


def _inputs(args: argparse.Namespace) -> tuple[Path, Path, tuple[str, str], int,
                                               dict[str, Any]]:
    """Model folder, text folder, (calibration split, perplexity split), sequence length and
    what the result file records about the model."""
    if args.tiny:
        model_dir, text = tiny_inputs(args.work)
        return model_dir, text, ("train", "test"), 32, {"kind": "random tiny Llama"}
    if args.model is not None and args.corpus is not None:
        return args.model, args.corpus, tuple(args.splits), args.seq_len, {"kind": "given"}
    model_dir, corpus, s, about = trained_inputs()
    return model_dir, corpus, ("calibration", "heldout"), args.seq_len or s["seq"], about


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0], tiny="A seeded random tiny Llama on the "
                         "README (a smoke run).")
    add_common_args(parser)
    parser.add_argument("--model", type=Path, help="Causal-LM folder with its tokenizer "
                        "(default: the trained decoder).")
    parser.add_argument("--corpus", type=Path, help="text_lm folder for --model.")
    parser.add_argument("--splits", nargs=2, default=["train", "test"], metavar=("CALIB",
                        "EVAL"), help="--corpus's calibration and perplexity splits.")
    parser.add_argument("--samples", type=int, default=128, help="Calibration samples.")
    parser.add_argument("--seq-len", type=int, help="Tokens per sample and per perplexity "
                        "block (default: the decoder's training length; 512 for --model).")
    parser.add_argument("--cell", nargs=2, metavar=("CRITERION", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell is not None:  # one cell, in its own process: print its row
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        kind = None if args.cell[1] == "-" else args.cell[1]
        print(json.dumps(run_cell(args.model, args.corpus, tuple(args.splits), args.cell[0],
                                  kind, args.samples, args.seq_len)))
        return
    if (args.model is None) != (args.corpus is None):
        sys.exit("give --model and --corpus together (or neither: the trained decoder)")
    start(args)
    model_dir, corpus, splits, seq_len, about = _inputs(args)
    samples = 8 if args.tiny else args.samples
    seq_len = seq_len or 512
    rows = []
    for criterion, kind in CELLS:
        cmd = [sys.executable, __file__, "--cell", criterion, kind or "-", "--model",
               str(model_dir), "--corpus", str(corpus), "--splits", *splits, "--samples",
               str(samples), "--seq-len", str(seq_len)]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            sys.exit(f"{criterion} {kind}: {proc.stderr.strip().splitlines()[-1:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{criterion} {kind}: perplexity {rows[-1]['perplexity']:.2f}, "
              f"{rows[-1]['cell_wall_s']:.0f} s", flush=True)
    result = {"model": str(model_dir), "corpus": str(corpus), "about_model": about,
              "splits": list(splits), "samples": samples, "seq_len": seq_len,
              "eval_blocks": rows[0]["eval_blocks"], "params": rows[0]["params"],
              "threads": args.threads, "rows": rows, "target": target_check(rows),
              "sparse_engine": _sparse_engine()}
    finish("llm_sparsity", args.tiny, result, render_result(result), args.out)


if __name__ == "__main__":
    main()
