"""What the benchmark scripts share: paths, the machine block, JSON results, Markdown tables.

Benchmarks are run by hand (``python benchmarks/<name>.py``); each writes
``benchmarks/results/<name>.json`` (with the provenance of :mod:`provenance`: command, code
version, machine, date, load, wall time, peak RSS) and the Markdown it printed,
``benchmarks/results/<name>.md``. BENCHMARKS.md's tables are rendered from the JSON by
``benchmarks/render.py``, never copied by hand. Work folders (run folders, checkpoints) go under
``runs/benchmarks/`` (ignored by git).

Example:
    >>> fmt_table(["a", "b"], [[1, "x"]]).splitlines()[1]
    '|---|---|'
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from provenance import Clock, machine

__all__ = ["ROOT", "SHARED", "RESULTS", "WORK", "machine", "provenance", "code_key",
           "write_results",
           "fmt_table",
           "stopwatch", "setup_logging", "require_shared", "command_line", "shown_path",
           "add_common_args",
           "start", "finish", "make_parser"]

ROOT = Path(__file__).resolve().parents[1]
# The repository's compress, not an installed copy elsewhere: the scripts run as
# ``python benchmarks/NAME.py``, which puts benchmarks/, not the root, first on sys.path.
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))
SHARED = Path(os.environ.get("COMPRESS_SHARED", ROOT.parent / "shared"))
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "runs" / "benchmarks"

CIFAR_JPG = SHARED / "data" / "cifar10-jpg" / "cifar10-jpg.tar.gz"
RESNET_CKPT = {name: SHARED / "models" / "resnet-cifar10" / f"{name}-{digest}.th"
               for name, digest in (("resnet20", "12fca82f"), ("resnet32", "d509ac18"),
                                    ("resnet56", "4bfd9763"))}
# The normalisation the shared CIFAR ResNets were trained with.
NORMALIZE = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def require_shared(*paths: Path) -> None:
    """Exit with a one-line message when the shared data or weights are missing."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        sys.exit(f"benchmark input missing: {', '.join(missing)} (the ../shared folder)")


def shown_path(path: Path | str) -> str:
    """``path`` as seen from the repository root when it lies inside it, else absolute."""
    full = Path(path).resolve()
    return str(full.relative_to(ROOT) if full.is_relative_to(ROOT) else full)


def command_line() -> str:
    """The command that is running, as a user would type it from the repository root."""
    return " ".join(["python", shown_path(sys.argv[0]), *sys.argv[1:]])


_CLOCK: list[Clock] = []


def provenance() -> dict[str, Any]:
    """Command, code version (taken by :func:`start`), machine, and the run block (dates,
    wall time, load before/after, peak RSS) since :func:`start`."""
    clock = _CLOCK[-1] if _CLOCK else Clock()
    run = clock.stop()
    return {"command": command_line(), "code": clock.code, "machine": machine(), "run": run}


def code_key() -> str:
    """The code version this run started with, to key caches of measured cells on: a cell
    measured by other code (compress or the benchmark scripts) is measured again."""
    if not _CLOCK:
        _CLOCK.append(Clock())
    return _CLOCK[-1].code["files_sha256"]


def write_results(name: str, payload: dict[str, Any], markdown: str,
                  out: Path | None = None) -> tuple[Path, Path]:
    """Write ``<name>.json`` (provenance + payload) and ``<name>.md`` under ``out``."""
    out = out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    full = {"benchmark": name, **provenance(), **payload}
    js, md = out / f"{name}.json", out / f"{name}.md"
    js.write_text(json.dumps(full, indent=2, default=float) + "\n", encoding="utf-8")
    m, run = full["machine"], full["run"]
    head = (f"<!-- written by: {full['command']} -->\n"
            f"Machine: {m['cores']} cores, {m['cpu']} ({m['cpu_capability']}), "
            f"{m['ram_gib']} GiB, GPU: {m['gpu'] or 'none'}; load average "
            f"{run['load_before']} before, {run['load_after']} after; {run['started']}, "
            f"{run['wall_s']:.0f} s; code {full['code']['files_sha256'][:12]}.\n\n")
    md.write_text(head + markdown, encoding="utf-8")
    return js, md


def finish(name: str, tiny: bool, payload: dict[str, Any], markdown: str,
           out: Path | None) -> None:
    """Write the results (``<name>-tiny`` for smoke runs) and print the Markdown."""
    js, md = write_results(name + ("-tiny" if tiny else ""), payload, markdown, out)
    print(markdown)
    print(f"wrote {js} and {md}")


def fmt_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


@contextmanager
def stopwatch(into: dict[str, float], key: str) -> Iterator[None]:
    """Add the wall time of the block to ``into[key]``."""
    t = time.perf_counter()
    try:
        yield
    finally:
        into[key] = into.get(key, 0.0) + time.perf_counter() - t


def make_parser(doc: str | None, *, tiny: str, full: str | None = None) -> argparse.ArgumentParser:
    """The script's parser: its docstring as help, ``--tiny`` (and ``--full``) exclusive."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    if full is not None:
        mode.add_argument("--full", action="store_true", help=full)
    mode.add_argument("--tiny", action="store_true", help=tiny)
    return parser


def add_common_args(parser: Any) -> None:
    """``--threads``, ``--out``, ``--work`` and ``-v``, which every benchmark script takes."""
    parser.add_argument("--threads", type=int, help="torch threads for training and evaluation "
                        "(default: all cores). On a machine shared with other jobs, 1 avoids "
                        "OpenMP workers waiting for each other.")
    parser.add_argument("--out", type=Path, help="Results folder (default benchmarks/results).")
    parser.add_argument("--work", type=Path, default=WORK,
                        help="Folder for run folders and checkpoints (default runs/benchmarks).")
    parser.add_argument("-v", "--verbose", action="store_true")


def start(args: Any, inputs: Sequence[Path] = ()) -> None:
    """Start the provenance clock (the code version: compress, the loaded scripts and
    ``inputs`` such as a recipe); logging and the torch thread count from the arguments."""
    _CLOCK.append(Clock(tuple(inputs)))
    setup_logging(args.verbose)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    # The scripts' own progress lines.
    logging.getLogger("bench").setLevel(logging.INFO)
