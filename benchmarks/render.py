"""Render BENCHMARKS.md's tables and README.md's benchmark figures from benchmarks/results/.

    python benchmarks/render.py           # rewrite every block in place
    python benchmarks/render.py --check   # exit 1 and name the blocks that differ

A block is the text between ``<!-- render: NAME -->`` and ``<!-- /render: NAME -->``; NAME is a
key of :data:`BLOCKS`, which names the result file(s) it reads and the function that renders
them (each benchmark script's own ``render_result``, so a script's printed Markdown and the
published table are one piece of code). Every block starts with where its figures come from:
the command, date, machine, load, wall time and code version the result file records.
``tests/test_benchmarks.py`` fails when a committed block differs from what the files render,
the way ``tests/authoring/test_reference.py`` guards docs/recipes.md, and when a measured-looking
figure (a decimal, a percentage, a ratio, a duration) stands outside a block.

Example:
    >>> replace_blocks("a\\n<!-- render: x -->\\nold\\n<!-- /render: x -->\\n", {"x": "new\\n"})
    'a\\n<!-- render: x -->\\nnew\\n<!-- /render: x -->\\n'
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from _common import RESULTS, ROOT  # noqa: E402

__all__ = ["BLOCKS", "DOCS", "render_block", "replace_blocks", "render_doc", "block_names",
           "typed_figures", "source_line"]

DOCS = (ROOT / "BENCHMARKS.md", ROOT / "README.md")
REGEN = "python benchmarks/render.py"
_BLOCK = re.compile(r"(<!-- render: (?P<name>[\w-]+) -->\n)(?P<body>.*?)"
                    r"(<!-- /render: (?P=name) -->)", re.S)


def _load(rel: str) -> dict[str, Any]:
    return json.loads((RESULTS / rel).read_text(encoding="utf-8"))


def _script(name: str) -> Callable[[dict[str, Any]], str]:
    """The benchmark script's own renderer (the scripts import each other as top-level
    modules, so their folder must be on sys.path, also when this module was imported)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name).render_result


def _fmt_load(load: Any) -> str:
    return "/".join(f"{x:.1f}" for x in load) if load else "not recorded"


def source_line(r: dict[str, Any], rel: str) -> str:
    """Where a block's figures come from, as the result file records it."""
    m = r["machine"]
    run, code = r.get("run"), r.get("code")
    flags = ", ".join(m.get("cpu_flags") or []) or "flags not recorded"
    ram = f"{m['ram_gib']} GiB" if m.get("ram_gib") else "RAM not recorded"
    gpu = m.get("gpu") or "no GPU"
    when = run["started"] if run else m["date"]
    if run:
        load = (f"load average {_fmt_load(run['load_before'])} before, "
                f"{_fmt_load(run['load_after'])} after (1/5/15 min)")
        wall = f"{run['wall_s'] / 60:.1f} min wall" + (f" at nice {run['nice']}"
                                                        if run.get("nice") else "")
    else:
        load = f"load average {_fmt_load(m.get('load_average_1_5_15'))} at the end (1/5/15 min)"
        wall = "wall time of the whole script not recorded"
    if code:
        changed = code.get("changed_files") or []
        version = (f"code {(code['commit'] or 'no git')[:10]}"
                   + (f" + {len(changed)} changed file(s)" if changed else "")
                   + f", sources sha256 {code['files_sha256'][:12]}")
    else:
        version = "code version not recorded (written before result files recorded it)"
    return (f"`{rel}`, written by `{r['command']}` on {when}: {m['cores']} cores, "
            f"{m['cpu']} (torch: {m['cpu_capability']}; {flags}), {ram}, {gpu}; torch "
            f"{m['torch']}, onnxruntime {m['onnxruntime']}; {load}; {wall}; {version}.")


def _missing(rel: str, command: str | None = None) -> str | None:
    """The block's text when its result file is not there: no figure, and how to make one
    (``command``; default: the script named like the file)."""
    if (RESULTS / rel).is_file():
        return None
    script = rel.split("/")[-1].split(".")[0].split("-")[0]
    return (f"No result file `benchmarks/results/{rel}` is committed, so no figure is shown: "
            f"`{command or f'python benchmarks/{script}.py'}` writes it.\n")


def _table(rel: str, script: str, command: str | None = None) -> Callable[[], str]:
    def render() -> str:
        if (note := _missing(rel, command)) is not None:
            return note
        r = _load(rel)
        return f"<sub>{source_line(r, rel)}</sub>\n\n" + _script(script)(r).strip() + "\n"
    return render


def _pct(x: float) -> str:
    return f"{x:.2f} %"


def _quickstart_sample() -> str:
    rel = "quickstart.json"
    r = _load(rel)
    m, run = r["machine"], r["run"]
    return (_script("quickstart")(r) + "\n"
            f"The output of `{r['shown_command']}` as recorded by `{r['command']}` "
            f"(`benchmarks/results/{rel}`) on {run['started'][:10]}: {m['cores']} cores, "
            f"{m['cpu']} ({m['cpu_capability']}), {m['ram_gib']} GiB, load average "
            f"{_fmt_load(run['load_before'])} before and {_fmt_load(run['load_after'])} after; "
            f"the apply took {r['apply_wall_s'] / 60:.1f} minutes. Latency figures move with "
            f"the machine and its load; the one `--min-speedup` gates is onnxruntime's at the "
            f"largest batch size.\n")


def _minilm_summary() -> str:
    rel = "minilm_sst2.json"
    if (note := _missing(rel)) is not None:
        return note
    r = _load(rel)
    b, c = r["baseline"], r["compressed"]
    speed = ", ".join(f"{x:.2f}× at batch {bs}" for bs, x in r["speedup"]["onnxruntime"].items())
    return (f"Measured with the full recipe by `{r['command']}` (`benchmarks/results/{rel}`, "
            f"{r['run']['started'][:10]}, {r['machine']['cores']} cores, load average "
            f"{_fmt_load(r['run']['load_before'])} before): {r['apply_wall_s'] / 60:.1f} "
            f"minutes wall; baseline {_pct(b['accuracy'])} on the {b['eval_samples']} dev "
            f"sentences, {_pct(c['accuracy'])} after pruning and fine-tuning; MACs "
            f"{b['macs'] / 1e6:.1f}M → {c['macs'] / 1e6:.1f}M; onnxruntime {speed} "
            f"({r['sample_shape'][0]} tokens). Run with `nice` and one torch thread on a "
            f"machine shared with other jobs: the wall time is that load's, not the recipe's "
            f"cost on an idle machine.\n")


def _minilm_expressible() -> str:
    """The comparison of the stock-expressible prunings, and what the inexpressible one
    would gain over the best of them."""
    rel = "minilm_expressible.json"
    if (note := _missing(rel)) is not None:
        return note
    r = _load(rel)
    rows = {v["variant"]: v for v in r["variants"]}
    stock = [v for v in r["variants"] if v["stock_expressible"]]
    best = max(stock, key=lambda v: v["accuracy"])
    text = f"<sub>{source_line(r, rel)}</sub>\n\n" + _script("minilm_expressible")(r).strip()
    other = rows.get("heads+ffn")
    if other is not None:
        gain = other["accuracy"] - best["accuracy"]
        text += (f"\n\nThe stock-expressible pruning that lost least here is `{best['variant']}` "
                 f"({_pct(best['accuracy'])} dev top-1 at {100 * best['macs_reduction']:.1f} % "
                 f"fewer MACs). Fewer heads at the same hidden size (`heads+ffn`, which BERT "
                 f"configs cannot describe, so no `hf/`) scored {_pct(other['accuracy'])}: "
                 f"{gain:+.2f} points against it on these {r['eval_samples']} sentences"
                 + (f", at {other['speedup']:.2f}× against {best['speedup']:.2f}× onnxruntime "
                    f"speedup" if other.get("speedup") and best.get("speedup") else "")
                 + ".")
    return text + "\n"


def _headlines() -> str:
    peer = _load("peer_torch_pruning.json")
    per_step, over = _load("regimes-per-step.json"), _load("overheads.json")
    lat = peer["latency"]["all_cores_wall"]["batches"]
    b64 = max(lat, key=int)
    red = peer["unpruned"]["macs"] / peer["compress"]["macs"]
    red_peer = peer["unpruned"]["macs"] / peer["peer"]["macs"]
    s_c, s_p = lat[b64]["compress"]["speedup"], lat[b64]["peer"]["speedup"]
    gaps = _crossover_gaps(per_step)
    cost = _wall_over_one_shot(per_step)
    equal = _load("regimes.json")
    wins, columns = _one_shot_best(equal)
    a = over["apply"]
    lines = [
        f"- **Against a hand-written torch-pruning pipeline** (its README's way) on ResNet-56 "
        f"at the same MACs and fine-tune budget: top-1 {_pct(peer['compress']['top1'])} vs "
        f"{_pct(peer['peer']['top1'])}; onnxruntime at batch {b64} {s_c:.2f}× faster vs "
        f"{s_p:.2f}× (speedup ÷ MACs reduction {s_c / red:.2f} vs {s_p / red_peer:.2f}; "
        f"{peer['machine']['cpu_capability']}, {peer['machine']['date']}).",
        _minilm_headline(),
        "- **Regimes** (one-shot / iterative / patience / hybrid, ResNet-20 on CIFAR-10), every "
        "pruning step fine-tuned alike (the paper's protocol): best other regime minus "
        "one-shot, in points, " + ", ".join(f"{k}: {v:+.2f}" for k, v in gaps.items())
        + "; wall time against one-shot's: " + ", ".join(f"{k} {v:.2f}×" for k, v in
                                                         cost.items())
        + f". With one equal, small image budget per run instead, one-shot was best (or tied) "
        f"in {wins} of {columns} columns.",
        f"- compress's own cost: {100 * a['overhead_share']:.1f} % of a `compress apply` beyond "
        f"training and evaluation"
        + ("" if a.get("clock") else " (report writing not counted: see BENCHMARKS.md)")
        + f"; its training loop against a plain PyTorch loop: ratio "
        f"{over['loop']['ratio_wall']:.3f}.",
    ]
    return "\n".join(lines) + "\n"


def _minilm_headline() -> str:
    if _missing("minilm_sst2.json") is not None:
        return ("- **MiniLM on SST-2** (`recipes/minilm-sst2.yaml`): no result file is committed "
                "(`python benchmarks/minilm_sst2.py` writes it).")
    r = _load("minilm_sst2.json")
    b, c = r["baseline"], r["compressed"]
    top = max(r["speedup"]["onnxruntime"], key=int)
    speed = r["speedup"]["onnxruntime"][top]
    p = r.get("pruning")  # absent in results written before the recipe pruned FFN only
    what = ("half the heads and FFN neurons removed" if p is None else
            "FFN neurons only removed (heads kept, so hf/ stays stock-loadable)" if p["heads"] == 0
            else f"heads {p['heads']}, FFN {p['ffn']}, hidden {p['hidden']} pruned")
    return (f"- **MiniLM on SST-2** (`recipes/minilm-sst2.yaml`): {what} in "
            f"{r['apply_wall_s'] / 60:.1f} minutes on "
            f"{r['machine']['cores']} CPU cores (load average "
            f"{_fmt_load(r['run']['load_before'])} before), {b['macs'] / c['macs']:.2f}× fewer "
            f"MACs → {speed:.2f}× faster at batch {top}, dev top-1 {_pct(b['accuracy'])} → "
            f"{_pct(c['accuracy'])}.")


def _latency_target_summary() -> str:
    """README's "Asking for speed": each benchmark's rows, the method in BENCHMARKS.md."""
    return "\n".join(_latency_target_rows(rel, args) for rel, args in LATENCY_TARGETS)


LATENCY_TARGETS = (("latency_target.json", ""), ("latency_target_minilm.json", " --model minilm"))


def _latency_target_rows(rel: str, args: str) -> str:
    if (note := _missing(rel, f"python benchmarks/latency_target.py{args}")) is not None:
        return note
    r = _load(rel)
    p, lat, macs = r["profile"], r["latency_run"], r["macs_run"]
    rows = [f"| latency target {r['requested_speedup']:.1f}x | {lat['macs_reduction']:.1%} | "
            f"{r['final_speedups']['latency']:.2f}x | {_pct(lat['top1'])} |"]
    if macs is not None:
        rows.append(f"| MACs target {r['macs_target']} | {macs['macs_reduction']:.1%} | "
                    f"{r['final_speedups']['macs']:.2f}x | {_pct(macs['top1'])} |")
    m = r["machine"]
    if p.get("kind") == "text":
        what = (f"{p['model']} on SST-2 (heads and FFN neurons), onnxruntime CPU at batch "
                f"{p['time_batch']} x {p['seq']} tokens")
        budget = f"{p['epochs']} epoch(s) on {p['train_subset']} sentences"
    else:
        what = f"{p['model']} on CIFAR-10 JPEG, onnxruntime CPU at batch {p['time_batch']}"
        budget = f"{p['steps']} steps of {p['batch']} images"
    return (f"{what} ({r['threads']} thread, {m['cpu_capability']}, {r['run']['started'][:10]}); "
            f"baseline top-1 {_pct(lat['baseline_top1'])}, both fine-tuned {budget}:\n\n"
            "| run | MACs removed | speedup (one interleaved run) | top-1 |\n|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def _wall_over_one_shot(r: dict[str, Any]) -> dict[str, float]:
    wall: dict[str, float] = {}
    for c in r["cells"]:
        wall[c["regime"]] = wall.get(c["regime"], 0.0) + c["wall_s"]
    return {k: v / wall["one-shot"] for k, v in wall.items() if k != "one-shot"}


def _one_shot_best(r: dict[str, Any]) -> tuple[int, int]:
    table: dict[tuple[str, float], dict[str, float]] = {}
    for c in r["cells"]:
        table.setdefault((c["kind"], c["target"]), {})[c["regime"]] = c["top1"]
    best = [row["one-shot"] >= max(row.values()) for row in table.values() if "one-shot" in row]
    return sum(best), len(best)


def _crossover_gaps(r: dict[str, Any]) -> dict[str, float]:
    table: dict[float, dict[str, float]] = {}
    for c in r["cells"]:
        if c["kind"] == "unstructured":
            table.setdefault(c["target"], {})[c["regime"]] = c["top1"]
    return {f"{t:.0%} sparsity": max(v for k, v in row.items() if k != "one-shot")
            - row["one-shot"] for t, row in sorted(table.items()) if "one-shot" in row}


def _sources() -> str:
    """Every result file a block reads, with its provenance."""
    rels = sorted({rel for rels, _ in BLOCKS.values() for rel in rels
                   if (RESULTS / rel).is_file()})
    return "".join(f"- {source_line(_load(rel), rel)}\n" for rel in rels)


# name -> (result files it reads, renderer)
BLOCKS: dict[str, tuple[tuple[str, ...], Callable[[], str]]] = {
    "regimes": (("regimes.json",), _table("regimes.json", "regimes")),
    "regimes-per-step": (("regimes-per-step.json",),
                         _table("regimes-per-step.json", "regimes")),
    "peer": (("peer_torch_pruning.json",),
             _table("peer_torch_pruning.json", "peer_torch_pruning")),
    "peer-round16": (("round16/peer_torch_pruning.json",),
                     _table("round16/peer_torch_pruning.json", "peer_torch_pruning")),
    "latency-levers": (("latency_levers.json",), _table("latency_levers.json", "latency_levers")),
    "conv-efficiency": (("conv_efficiency.json",),
                        _table("conv_efficiency.json", "conv_efficiency")),
    "overheads": (("overheads.json",), _table("overheads.json", "overheads")),
    "minilm": (("minilm_sst2.json",), _table("minilm_sst2.json", "minilm_sst2")),
    "proof-cost": (("proof_cost.json",), _table("proof_cost.json", "proof_cost")),
    "decoder-model": (("decoder_model.json",), _table("decoder_model.json", "decoder_model")),
    "llm-sparsity": (("llm_sparsity.json",), _table("llm_sparsity.json", "llm_sparsity")),
    "llm-sparsity-1b": (("llm_sparsity_1b.json",),
                        _table("llm_sparsity_1b.json", "llm_sparsity_1b")),
    "llama-1b": (("llama_1b.json",), _table("llama_1b.json", "llama_1b")),
    "decoder-structured": (("decoder_structured.json",),
                           _table("decoder_structured.json", "decoder_structured")),
    "latency-target": (("latency_target.json",), _table("latency_target.json", "latency_target")),
    "latency-target-resnet18": (("latency_target_resnet18.json",),
                                _table("latency_target_resnet18.json",
                                       "latency_target_resnet18")),
    "latency-target-minilm": (("latency_target_minilm.json",),
                              _table("latency_target_minilm.json", "latency_target",
                                     "python benchmarks/latency_target.py --model minilm")),
    "minilm-summary": (("minilm_sst2.json",), _minilm_summary),
    "latency-target-summary": (tuple(rel for rel, _ in LATENCY_TARGETS),
                               _latency_target_summary),
    "minilm-expressible": (("minilm_expressible.json",), _minilm_expressible),
    "quickstart-sample": (("quickstart.json",), _quickstart_sample),
    "headlines": (("peer_torch_pruning.json", "minilm_sst2.json", "regimes-per-step.json",
                   "regimes.json", "overheads.json"), _headlines),
}
BLOCKS["sources"] = ((), _sources)


def render_block(name: str) -> str:
    """The Markdown of block ``name`` from the result files."""
    return BLOCKS[name][1]()


def block_names(text: str) -> list[str]:
    return [m["name"] for m in _BLOCK.finditer(text)]


def replace_blocks(text: str, bodies: dict[str, str]) -> str:
    """``text`` with each block's body replaced by ``bodies[name]``."""
    return _BLOCK.sub(lambda m: m.group(1) + bodies[m["name"]] + m.group(4), text)


def render_doc(path: Path) -> str:
    """``path``'s text with every block rendered from the result files."""
    text = path.read_text(encoding="utf-8")
    return replace_blocks(text, {name: render_block(name) for name in block_names(text)})


# A figure that looks measured: a decimal, a percentage, a ratio (×, x after a digit), a
# duration, a size. Settings (ResNet-56, 200 steps, batch 64) are whole numbers and pass.
_FIGURE = re.compile(r"\d+\.\d+|\d\s?%|\d\s?[×x]\b|\d\s?×|\b\d+\s?(ms|s|min|minutes|GiB|MB|GB)\b")


def typed_figures(text: str) -> list[str]:
    """Lines outside render blocks, code (fenced or inline: commands and settings) and
    comments that carry a measured-looking figure: each one was typed by hand."""
    text = _BLOCK.sub("", text)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "``", text)
    return [line for line in text.splitlines() if _FIGURE.search(line)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="Change nothing; exit 1 when a document differs from its render.")
    args = parser.parse_args()
    stale = []
    for path in DOCS:
        rendered = render_doc(path)
        if rendered != path.read_text(encoding="utf-8"):
            stale.append(path.name)
            if not args.check:
                path.write_text(rendered, encoding="utf-8")
    if args.check and stale:
        sys.exit(f"{', '.join(stale)} differ from benchmarks/results/; run {REGEN}")
    print(("stale: " if args.check else "rendered: ") + (", ".join(stale) or "nothing changed"))


if __name__ == "__main__":
    main()
