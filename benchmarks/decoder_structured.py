"""Structured pruning of a decoder to half its parameters, Minitron-style: which channels, which
blocks, which mix of width and depth, and how well distillation recovers it, in held-out
perplexity.

    python benchmarks/decoder_structured.py --threads 1          # the trained decoder
    python benchmarks/decoder_structured.py --tiny --threads 1   # seconds: what the test runs

The model is the small Llama-style decoder trained on Jane Austen's novels
(``decoder_train.ensure_model``); calibration samples come from the corpus's calibration
split, distillation tokens from its training split, perplexity from its held-out split (blocks
of the training sequence length). Every cell runs in a process of its own (its peak RSS is its
own) and prunes through compress's library, the pruners and the proof ``compress apply`` runs:

* **plan**: ``pruning.target: {params: 0.5}`` with activation importance scores its width/depth
  candidates on the calibration samples (compress's params planner) and picks one;
* **(a) importance**: every scored candidate that keeps all blocks, pruned by ``activation``
  and by ``l2`` at the same fractions (so the same architecture, checked), no recovery; and
  each of its pruned dimensions (heads, FFN, hidden) alone at its fraction;
* **(b) depth**: N blocks dropped as ranked by block importance (``1 - cos``), or the last N
  blocks, for N = 1, 2, half the blocks and the depth candidate's count, no recovery;
* **(c) distillation**: every scored candidate pruned by activation and then distilled from the
  unpruned model (KL on next-token distributions, ``finetune.distill`` with alpha 1) for the
  same token budget, and the chosen candidate's architecture from a random initialisation
  distilled for the same budget. Whether the planner's choice is the best after distillation
  or within noise of it is decided on the paired per-block held-out losses: the mean
  difference at most twice its standard error.

Writes ``benchmarks/results/decoder_structured[-tiny].{json,md}``. ``--tiny``: a seeded random
tiny Llama and this repository's README as the text (a smoke run; its figures mean nothing).

Example:
    >>> within_noise([2.0, 2.2, 2.1, 2.3], [2.0, 2.1, 2.1, 2.2])  # paired: +0.05 ± 0.029
    {'mean_diff': 0.05, 'se': 0.028868, 'within_noise': True}
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Every benchmark module is imported before the provenance clock starts (see llm_sparsity.py).
from _common import ROOT, add_common_args, finish, fmt_table, make_parser, start  # noqa: E402
from llm_sparsity import tiny_inputs, trained_inputs  # noqa: E402
from provenance import peak_rss_mib  # noqa: E402

__all__ = ["TARGET", "TINY_TARGET", "run_cell", "within_noise", "verdicts", "render_result"]

TARGET = 0.5  # share of the parameters removed
# The tiny model is mostly its embedding: only the hidden size can reach a share of it.
TINY_TARGET = 0.1


def within_noise(a: list[float], b: list[float]) -> dict[str, Any]:
    """Paired comparison of two models' per-block held-out losses (``a`` minus ``b``)."""
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else float("inf")
    return {"mean_diff": round(mean, 6), "se": round(se, 6), "within_noise": mean <= 2 * se}


def _data(corpus: Path, model_dir: Path, train: str, heldout: str, seq: int) -> Any:
    from compress.data import build_data
    from compress.recipe.sources import DataSpec

    return build_data(DataSpec(source="text_lm", path=str(corpus), max_length=seq,
                               tokenizer=str(model_dir), train_split=train,
                               eval_split=heldout, batch_size=16, eval_batch_size=16))


def _architecture(model: Any) -> dict[str, Any]:
    from compress.pruning.hf_layout import blocks

    found = blocks(model.hf, model.layout)
    return {"blocks": len(found), "heads": [b.heads for b in found],
            "kv_heads": [b.kv_heads for b in found], "ffn": [b.ffn for b in found],
            "hidden": model.hidden_width()}


def _block_losses(model: Any, loader: Any) -> list[float]:
    """Mean next-token loss of each held-out block (the perplexity is exp of their mean)."""
    import torch

    from compress.measure.evaluate import IGNORE_INDEX, task_loss

    out: list[float] = []
    model.eval()
    with torch.no_grad():
        for x, y in loader:
            # task_loss shifts (token t predicts t + 1); unscored positions add nothing
            loss = task_loss(model(x).float(), y, reduction="none").view(len(y), -1)
            scored = (y[:, 1:] != IGNORE_INDEX).sum(1).clamp(min=1)
            out += (loss.sum(1) / scored).tolist()
    return out


def _prune(model: Any, data: Any, cell: dict[str, Any], calibration: list[Any]) -> Any:
    from compress.pruning import build_pruner
    from compress.pruning.calibrated import Calibration
    from compress.recipe.pruning import PruningSpec

    spec = PruningSpec(kind="structured", importance=cell["importance"], ratio=cell["ratio"],
                       **cell["fixed"])
    probe = data.probe_batch(2)
    pruner = build_pruner(model, probe[:1], spec, [cell["ratio"]])
    n_blocks, ranked = _architecture(model)["blocks"], pruner._blocks_to_drop
    dropped: list[int] = []

    def drop(x: Any) -> list[int]:
        chosen = ranked(x)  # the blocks' scores are computed (and recorded) either way
        if cell.get("drop") == "last" and chosen:  # the naive rule (b) compares against
            chosen = list(range(n_blocks - len(chosen), n_blocks))
        dropped.extend(chosen)
        return chosen

    pruner._blocks_to_drop = drop
    pruner.use_calibration(Calibration(calibration))
    record = pruner.step_(cell["ratio"], probe)
    pruner.finalize_()
    return record, dropped, [round(v, 6) for v in pruner.block_scores]


def _distill(model: Any, teacher: Any, cell: dict[str, Any], corpus: Path, model_dir: Path,
             splits: dict[str, str], seq: int) -> dict[str, Any]:
    import torch

    from compress.finetune.finetune import finetune_
    from compress.recipe.stages import FinetuneSpec

    train = _data(corpus, model_dir, splits["train"], splits["heldout"], seq)
    spec = FinetuneSpec(epochs=100, max_steps=cell["distill_steps"], optimizer="adamw",
                        lr=cell["lr"], weight_decay=0.0, lr_schedule="cosine", grad_clip=1.0,
                        distill={"alpha": 1.0, "temperature": 1.0})
    torch.manual_seed(cell["seed"])
    stats = finetune_(model, train.train, spec, torch.device("cpu"), teacher=teacher)
    # The fine-tune counts the targets it trained on (y.numel()): a language model's tokens.
    return {"steps": stats.steps, "tokens": stats.samples, "seconds": stats.seconds,
            "final_loss": stats.final_loss}


def run_cell(cell: dict[str, Any], model_dir: Path, corpus: Path, splits: dict[str, str],
             samples: int, seq: int) -> dict[str, Any]:
    """One cell in this process: plan, or prune (and distill) one copy and measure it."""
    import torch

    from compress.data.calibration import calibration_batches
    from compress.measure.counts import count_params
    from compress.measure.evaluate import evaluate
    from compress.models import build_model
    from compress.pruning.params_plan import plan_params
    from compress.recipe.calibration import CalibrationSpec
    from compress.recipe.pruning import PruningSpec
    from compress.recipe.sources import ModelSpec

    t0 = time.perf_counter()
    torch.manual_seed(0)
    data = _data(corpus, model_dir, splits["calibration"], splits["heldout"], seq)
    model = build_model(ModelSpec(source="huggingface", name=str(model_dir),
                                  task="causal-lm")).eval()
    calibration = calibration_batches(data, CalibrationSpec(samples=samples, batch_size=8),
                                      seed=0)
    row: dict[str, Any] = {**cell, "params_before": count_params(model),
                           "architecture_before": _architecture(model)}
    if cell["kind"] == "plan":
        spec = PruningSpec(kind="structured", importance="activation",
                           target={"params": cell["target"]})
        _, ratios, record = plan_params(model, data.probe_batch(1), spec, [cell["target"]],
                                        calibration)
        row.update(record=record, ratio=ratios[0], wall_s=time.perf_counter() - t0,
                   peak_rss_mib=peak_rss_mib()["self"])
        return row
    teacher = None
    if cell.get("distill_steps"):
        import copy

        teacher = copy.deepcopy(model).eval()
    t = time.perf_counter()
    if cell["fixed"] or cell["ratio"]:
        record, dropped, scores = _prune(model, data, cell, calibration)
        row.update(proof=record.proof, proof_max_diff=record.max_abs_diff, dropped=dropped,
                   block_scores=scores or None)
    row["prune_s"] = time.perf_counter() - t
    if cell.get("init") == "random":  # the same architecture, its weights drawn afresh
        torch.manual_seed(cell["seed"])
        before = next(model.parameters()).detach().clone()
        model.hf.apply(model.hf._init_weights)
        assert not torch.equal(before, next(model.parameters())), "weights not redrawn"
    if teacher is not None:
        row["distill"] = _distill(model, teacher, cell, corpus, model_dir, splits, seq)
        del teacher
    with torch.no_grad():
        out = evaluate(model, data.eval, torch.device("cpu"))
    row.update(architecture=_architecture(model), params=count_params(model),
               perplexity=out["perplexity"], loss=out["loss"], eval_tokens=out["samples"],
               block_losses=_block_losses(model, data.eval) if cell.get("distill_steps")
               else None, wall_s=time.perf_counter() - t0, peak_rss_mib=peak_rss_mib()["self"])
    return row


def _parts(c: dict[str, Any]) -> list[tuple[str, dict[str, float], float]]:
    """A width candidate's heads, FFN and hidden fractions one at a time (the others kept),
    when it prunes more than one of them: which dimension an importance wins or loses on."""
    fractions = {"heads": c["fixed"].get("heads", c["ratio"]),
                 "ffn": c["fixed"].get("ffn", c["ratio"]), "hidden": c["fixed"].get("hidden", 0)}
    pruned = {k: v for k, v in fractions.items() if v}
    if len(pruned) < 2:
        return []
    return [(f"{c['name']}: {k} {v:g} only", {**dict.fromkeys(fractions, 0.0), k: v}, v)
            for k, v in pruned.items()]


def _cells_after(plan: dict[str, Any], steps: int, lr: float) -> list[dict[str, Any]]:
    """(a), (b) and (c)'s cells from the plan's candidates."""
    scored = [c for c in plan["record"]["candidates"] if c["score"] is not None]
    chosen = next(c for c in scored if c["name"] == plan["record"]["chosen"])
    cells: list[dict[str, Any]] = [{"kind": "prune", "part": "dense", "fixed": {},
                                    "ratio": None, "importance": "l2"}]
    for c in scored:
        if c["fixed"].get("heads") == 0 and c["fixed"].get("ffn") == 0:
            continue  # depth alone: no channel is ranked, (b) compares its blocks
        for name, fixed, ratio in [(c["name"], c["fixed"], c["ratio"]), *_parts(c)]:
            for importance in ("activation", "l2"):
                cells.append({"kind": "prune", "part": "a", "candidate": name, "fixed": fixed,
                              "ratio": ratio, "importance": importance})
    n = plan["architecture_before"]["blocks"]
    depth = next((c["fixed"]["blocks"] for c in scored if c["name"] == "depth"), None)
    for k in sorted({1, 2, n // 2, depth or 1} & set(range(1, n))):
        for rule in ("importance", "last"):
            cells.append({"kind": "prune", "part": "b", "fixed": {"heads": 0.0, "ffn": 0.0,
                                                                  "blocks": k},
                          "ratio": plan["target"], "importance": "activation",
                          "drop": rule})
    common = {"kind": "prune", "part": "c", "importance": "activation", "distill_steps": steps,
              "lr": lr, "seed": 0}
    for c in scored:
        cells.append({**common, "candidate": c["name"], "fixed": c["fixed"],
                      "ratio": c["ratio"], "init": "pruned"})
    cells.append({**common, "candidate": chosen["name"], "fixed": chosen["fixed"],
                  "ratio": chosen["ratio"], "init": "random"})
    return cells


def verdicts(rows: list[dict[str, Any]], chosen: str) -> dict[str, Any]:
    """The issue's three claims, checked from the measured rows."""
    a: dict[str, Any] = {}
    for r in rows:
        if r["part"] == "a":
            a.setdefault(r["candidate"], {})[r["importance"]] = r
    by_candidate = {
        name: {"activation": x["activation"]["perplexity"], "l2": x["l2"]["perplexity"],
               "same_architecture": x["activation"]["architecture"] == x["l2"]["architecture"],
               "activation_better": x["activation"]["perplexity"] < x["l2"]["perplexity"]}
        for name, x in a.items()}
    b: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r["part"] == "b":
            b.setdefault(r["fixed"]["blocks"], {})[r["drop"]] = r
    depth = {k: {"importance": x["importance"]["perplexity"], "last": x["last"]["perplexity"],
                 "dropped": x["importance"]["dropped"],
                 "same_blocks": x["importance"]["dropped"] == x["last"]["dropped"],
                 "importance_better": x["importance"]["perplexity"] < x["last"]["perplexity"]}
             for k, x in sorted(b.items())}
    c = {r["candidate"]: r for r in rows if r["part"] == "c" and r["init"] == "pruned"}
    rand = next(r for r in rows if r["part"] == "c" and r["init"] == "random")
    best = min(c.values(), key=lambda r: r["perplexity"])
    noise = within_noise(c[chosen]["block_losses"], best["block_losses"])
    return {"importance": by_candidate,
            "importance_met_at_choice": by_candidate.get(chosen, {}).get("activation_better"),
            "depth": depth,
            "depth_met": all(x["importance_better"] or x["same_blocks"]
                             for x in depth.values()) if depth else None,
            "distill": {"pruned": c[chosen]["perplexity"], "random": rand["perplexity"],
                        "met": c[chosen]["perplexity"] < rand["perplexity"]},
            "choice": {"chosen": chosen, "best": best["candidate"], **noise,
                       "met": best["candidate"] == chosen or noise["within_noise"]}}


def _widths(values: int | list[int]) -> str:
    if isinstance(values, int):  # the planner's record writes a uniform width once
        return str(values)
    return str(values[0]) if len(set(values)) == 1 else f"{min(values)}–{max(values)}"


def _arch(a: dict[str, Any] | None) -> str:
    if a is None:
        return "-"
    blocks = f"{a['blocks']} block{'' if a['blocks'] == 1 else 's'}"
    return (f"{blocks}, {_widths(a['heads'])}/{_widths(a['kv_heads'])} heads, "
            f"FFN {_widths(a['ffn'])}, hidden {a['hidden']}")


def _fractions(c: dict[str, Any]) -> str:
    """The candidate's fixed fractions and, where heads or FFN are not fixed, the searched
    ratio that applies to them."""
    parts = [f"{k} {v:g}" for k, v in c["fixed"].items()]
    if c.get("ratio") is not None and not (c["fixed"].get("heads") == 0
                                           and c["fixed"].get("ffn") == 0):
        parts.append(f"ratio {c['ratio']:.3f}")
    return ", ".join(parts) or "-"


def _yes(x: bool | None) -> str:
    return "-" if x is None else ("yes" if x else "no")


def _cost(r: dict[str, Any]) -> list[str]:
    return [f"{r['wall_s']:.0f}", f"{r['peak_rss_mib']:.0f}"]


def render_result(r: dict[str, Any]) -> str:
    """The Markdown of a result file: the plan, (a), (b), (c) and the verdicts."""
    v, rows, plan = r["verdicts"], r["rows"], r["plan"]
    dense = next(x for x in rows if x["part"] == "dense")
    c_rows = {(x["candidate"], x["init"]): x for x in rows if x["part"] == "c"}
    chosen = plan["record"]["chosen"]
    t1 = [[c["name"] + (" (chosen)" if c["name"] == chosen else ""), _fractions(c),
           _arch(c["architecture"]),
           "-" if c["params_reduction"] is None else f"{c['params_reduction']:.1%}",
           "-" if c["score"] is None else f"{c['score']:.2f}",
           f"{c_rows[(c['name'], 'pruned')]['perplexity']:.2f}"
           if (c["name"], "pruned") in c_rows else f"skipped: {c['skipped']}"]
          for c in plan["record"]["candidates"]]
    a = {(x["candidate"], x["importance"]): x for x in rows if x["part"] == "a"}
    t2 = [[name, _arch(a[(name, "activation")]["architecture"]),
           f"{x['activation']:.2f}", f"{x['l2']:.2f}", _yes(x["same_architecture"]),
           _yes(x["activation_better"]),
           *_cost(a[(name, "activation")]), *_cost(a[(name, "l2")])]
          for name, x in v["importance"].items()]
    b = {(x["fixed"]["blocks"], x["drop"]): x for x in rows if x["part"] == "b"}
    t3 = [[k, ", ".join(map(str, x["dropped"])),
           ", ".join(map(str, b[(k, "last")]["dropped"])), f"{x['importance']:.2f}",
           f"{x['last']:.2f}", "same blocks" if x["same_blocks"] else
           _yes(x["importance_better"]), *_cost(b[(k, "importance")])]
          for k, x in ((int(k), x) for k, x in v["depth"].items())]
    best = v["choice"]["best"]
    t4 = []
    for (name, init), x in c_rows.items():
        d = x["distill"]
        t4.append([name, "pruned (activation)" if init == "pruned" else "random init",
                   _arch(x["architecture"]), f"{x['perplexity']:.2f}", f"{d['tokens']:,}",
                   f"{d['seconds']:.0f}", *_cost(x)])
    ch = v["choice"]
    why = ("it is the best" if best == chosen else
           f"the best is {best}; {chosen}'s per-block held-out loss is higher by "
           f"{ch['mean_diff']:+.4f} ± {ch['se']:.4f} (paired standard error): "
           + ("within noise" if ch["within_noise"] else "beyond noise"))
    s = r["settings"]
    budget = s["distill_steps"] * s["batch_size"] * s["seq_len"]
    wins = sum(bool(x["activation_better"]) for x in v["importance"].values())
    return (
        f"Model `{Path(r['model']).name}`: {r['params']:,} parameters, held-out perplexity "
        f"{dense['perplexity']:.2f} ({dense['eval_tokens']:,} scored tokens). Target: "
        f"`pruning.target: {{params: {s['target']}}}`; {s['samples']} calibration samples of "
        f"{s['seq_len']} tokens; one proven step per cell; every cell a process of its own. "
        f"Distillation: KL on next-token distributions from the unpruned model (alpha 1, "
        f"temperature 1), AdamW lr {s['lr']:g} cosine, {s['distill_steps']} steps of "
        f"{s['batch_size']} × {s['seq_len']} tokens ({budget:,} tokens), the same for every "
        f"row of (c). {r['threads'] or 'all'} torch thread(s).\n\n"
        f"**Candidates** (scored by the planner on the calibration samples, before recovery; "
        f"the last column after the same distillation):\n\n"
        + fmt_table(["candidate", "fractions", "architecture", "params removed",
                     "calibration ppl", "held-out ppl after distillation"], t1)
        + f"\n**(a) importance at the same architecture**, held-out perplexity before "
        f"recovery: activation beats l2 at the chosen candidate: "
        f"{_yes(v['importance_met_at_choice'])}; in {wins} of {len(v['importance'])} rows "
        f"(a candidate's rows ending in 'only' prune one of its dimensions alone).\n\n"
        + fmt_table(["candidate", "architecture", "activation", "l2", "same architecture",
                     "activation better", "wall s", "peak RSS MiB", "l2 wall s",
                     "l2 peak RSS MiB"], t2)
        + f"\n**(b) depth**: blocks dropped by block importance (1 − cos) against the last "
        f"blocks, held-out perplexity before recovery: importance better (or the same blocks) "
        f"at every count: {_yes(v['depth_met'])}.\n\n"
        + fmt_table(["blocks dropped", "by importance", "last", "ppl by importance",
                     "ppl last", "importance better", "wall s", "peak RSS MiB"], t3)
        + f"\n**(c) distillation**: the pruned model beats the same architecture from a "
        f"random initialisation after the same budget: {_yes(v['distill']['met'])} "
        f"({v['distill']['pruned']:.2f} against {v['distill']['random']:.2f}); the planner's "
        f"choice ({chosen}) is the best after distillation or within noise: "
        f"{_yes(ch['met'])} ({why}).\n\n"
        + fmt_table(["candidate", "start", "architecture", "held-out ppl", "tokens",
                     "distill s", "wall s", "peak RSS MiB"], t4))


def _inputs(args: argparse.Namespace) -> tuple[Path, Path, dict[str, str], int,
                                               dict[str, Any]]:
    if args.tiny:
        model_dir, text = tiny_inputs(args.work)
        splits = {"calibration": "train", "train": "train", "heldout": "test"}
        return model_dir, text, splits, 32, {"kind": "random tiny Llama"}
    model_dir, corpus, s, about = trained_inputs()
    splits = {"calibration": "calibration", "train": "train", "heldout": "heldout"}
    return model_dir, corpus, splits, s["seq"], about


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0], tiny="A seeded random tiny Llama on the "
                         "README (a smoke run).")
    add_common_args(parser)
    parser.add_argument("--samples", type=int, default=128, help="Calibration samples.")
    parser.add_argument("--distill-steps", type=int, default=96, help="Optimizer steps of "
                        "16 sequences in each distillation of (c).")
    parser.add_argument("--lr", type=float, default=1e-3, help="Distillation learning rate.")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell is not None:  # one cell, in its own process: print its row
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        given = json.loads(args.inputs)
        print(json.dumps(run_cell(json.loads(args.cell), Path(given["model"]),
                                  Path(given["corpus"]), given["splits"], given["samples"],
                                  given["seq"])))
        return
    start(args)
    model_dir, corpus, splits, seq, about = _inputs(args)
    samples = 8 if args.tiny else args.samples
    steps = 4 if args.tiny else args.distill_steps
    inputs = json.dumps({"model": str(model_dir), "corpus": str(corpus), "splits": splits,
                         "samples": samples, "seq": seq})

    def run(cell: dict[str, Any]) -> dict[str, Any]:
        cmd = [sys.executable, __file__, "--cell", json.dumps(cell), "--inputs", inputs]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            sys.exit(f"cell {cell}: {proc.stderr.strip().splitlines()[-1:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{cell['part'] if 'part' in cell else 'plan'} {cell.get('candidate', '')} "
              f"{cell.get('importance', '')} {cell.get('drop', '')} {cell.get('init', '')}: "
              f"{row.get('perplexity', row.get('ratio'))}, {row['wall_s']:.0f} s", flush=True)
        return row

    target = TINY_TARGET if args.tiny else TARGET
    plan = run({"kind": "plan", "part": "plan", "target": target})
    rows = [run(cell) for cell in _cells_after(plan, steps, args.lr)]
    result = {"model": str(model_dir), "corpus": str(corpus), "about_model": about,
              "splits": splits, "params": plan["params_before"], "threads": args.threads,
              "settings": {"samples": samples, "seq_len": seq, "distill_steps": steps,
                           "batch_size": 16, "lr": args.lr, "target": target},
              "plan": plan, "rows": rows,
              "verdicts": verdicts(rows, plan["record"]["chosen"])}
    finish("decoder_structured", args.tiny, result, render_result(result), args.out)


if __name__ == "__main__":
    main()
