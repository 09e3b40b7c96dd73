"""Is the reported speedup stable? Measure the same baseline/compressed pair twice.

    python benchmarks/measure_stability.py RUN_DIR [--batch-sizes 1 64] [--rounds 7]

RUN_DIR is a finished ``compress apply`` folder (it has ``baseline/model.onnx`` and
``model.onnx``). Runs the project's interleaved A/B measurement twice, back to back, and prints
both speedups per engine and batch size and their relative difference (target: within 10 %).
Torch-eager timings need the model objects, so only onnxruntime is measured here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from compress.measure.latency import Candidate, measure_latency
from compress.recipe.stages import ReportSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs-per-round", type=int, default=5)
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    manifest = json.loads((args.run_dir / "model.json").read_text())
    shape = tuple(manifest["input"]["shape"])
    spec = ReportSpec(engines=["onnxruntime"], batch_sizes=args.batch_sizes, rounds=args.rounds,
                      runs_per_round=args.runs_per_round)
    dummy = torch.nn.Identity().eval()  # the torch engine is not timed
    base = Candidate(dummy, args.run_dir / "baseline" / "model.onnx")
    comp = Candidate(dummy, args.run_dir / "model.onnx")
    results = [measure_latency(base, comp, sample_shape=shape, spec=spec,
                               device=torch.device("cpu")) for _ in range(2)]
    rows = {}
    for bs in map(str, args.batch_sizes):
        a, b = (r["engines"]["onnxruntime"][bs]["speedup"] for r in results)
        rows[bs] = {"first": a, "second": b, "relative_difference": abs(a - b) / max(a, b)}
        print(f"onnxruntime batch {bs}: speedup {a:.3f} then {b:.3f} "
              f"(differ by {rows[bs]['relative_difference']:.1%})")
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run_dir), "rows": rows,
                                         "environment": results[0]["environment"]}, indent=2))


if __name__ == "__main__":
    main()
