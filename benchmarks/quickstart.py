"""The README's quickstart, run as a user runs it, with its terminal output kept.

    python benchmarks/quickstart.py          # `compress apply recipes/quickstart.yaml`
    python benchmarks/quickstart.py --tiny   # smoke test: one fine-tune epoch, one round

Runs ``compress apply recipes/quickstart.yaml --overwrite`` in a child process from a scratch
folder (runs/benchmarks/quickstart, so the summary names ``runs/quickstart`` as the README's
does) and keeps what it printed on stdout, its exit code and its stderr's tail, next to the
machine, load and wall time. README.md's quickstart sample is rendered from this file
(``benchmarks/render.py``), so the sample is the output of a recorded run.

Writes benchmarks/results/quickstart.{json,md}.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

from _common import ROOT, add_common_args, finish, make_parser, start
from provenance import peak_rss_mib

log = logging.getLogger("bench")

RECIPE = ROOT / "recipes" / "quickstart.yaml"
COMMAND = "compress apply recipes/quickstart.yaml"
TINY = ["finetune.epochs=1", "report.rounds=1", "report.runs_per_round=1",
        "report.min_block_ms=0"]


def render_result(r: dict[str, Any]) -> str:
    """The sample block: what the command printed, verbatim."""
    return f"```text\n{r['stdout'].rstrip()}\n```\n"


def main() -> None:
    parser = make_parser(__doc__, tiny="Smoke test: one epoch, one timing round.")
    add_common_args(parser)
    args = parser.parse_args()
    start(args, inputs=[RECIPE])
    overrides = [a for o in (TINY if args.tiny else []) for a in ("--set", o)]
    cwd = args.work / ("quickstart-tiny" if args.tiny else "quickstart")
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")]).rstrip(os.pathsep)}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, "-m", "compress.cli.app", "apply", str(RECIPE), "--overwrite",
           *overrides]
    log.info("%s (in %s)", COMMAND, cwd)
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        sys.exit(f"compress apply failed (exit {done.returncode}): {done.stderr[-2000:]}")
    report = json.loads((cwd / "runs" / "quickstart" / "report.json").read_text())
    payload = {"shown_command": COMMAND + " ".join(["", *overrides]).rstrip(),
               "exit_code": done.returncode, "stdout": done.stdout,
               "stderr_tail": done.stderr[-2000:], "apply_wall_s": wall,
               "peak_rss_mib": peak_rss_mib(), "report_timing": report["timing"],
               "environment": report.get("environment")}
    finish("quickstart", args.tiny, payload, render_result(payload), args.out)


if __name__ == "__main__":
    main()
