"""Where a benchmark figure came from: the command, the code version, the machine, the load.

Every result file a benchmark script writes carries this block, so a figure in BENCHMARKS.md
or the README can be traced to the run that measured it and to the code that ran:

* ``code``: the git commit, whether the hashed files differ from it, and a SHA-256 over the
  ``compress`` package's sources and the benchmark scripts that were loaded (``benchmarks/*.py``
  in ``sys.modules``, the running script included). Caches of benchmark cells are keyed on that
  hash too, so a cell measured by other code is measured again.
* ``machine``: CPU model and vector flags (AVX2, AVX-512, ...), cores, RAM, GPU, versions.
  The code version is taken when the clock starts (what ran), and again at the end: a
  difference is recorded (``changed_during_run``).
* ``run``: start and end (UTC), wall time, load average before and after, the process's
  niceness (a benchmark run with ``nice`` on a shared machine says so), peak RSS of the
  script and of the largest child process it waited for (``getrusage``, the kernel's
  high-water mark; a forked child starts with its parent's RSS counted).

Example:
    >>> clock = Clock()
    >>> run = clock.stop()
    >>> clock.code["changed_during_run"]
    False
    >>> sorted(run)
    ['finished', 'load_after', 'load_before', 'nice', 'peak_rss_mib', 'started', 'wall_s']
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import resource
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["Clock", "code_version", "code_digest", "files_digest", "machine", "peak_rss_mib",
           "load_average"]

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
# CPU flags that decide kernel choices (onnxruntime's NCHWc block, torch's vector code path).
FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
         "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "asimd", "sve")


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def peak_rss_mib() -> dict[str, float]:
    """Peak resident set size so far of this process and of its waited-for children (MiB)."""
    # ru_maxrss is KiB on Linux, bytes on macOS.
    unit = 1 if sys.platform == "darwin" else 1024
    return {who: round(resource.getrusage(w).ru_maxrss * unit / 2**20, 1)
            for who, w in (("self", resource.RUSAGE_SELF),
                           ("children", resource.RUSAGE_CHILDREN))}


def package_dir() -> Path:
    """The ``compress`` package that imports here (an installed copy may not be this tree's)."""
    import compress

    return Path(compress.__file__).resolve().parent


def _hashed_files(extra: tuple[Path, ...] = ()) -> list[Path]:
    """The compress sources, the loaded benchmark scripts, and ``extra`` (e.g. a recipe)."""
    files = set(package_dir().rglob("*.py"))
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve().parent == BENCH:
            files.add(Path(path).resolve())
    if sys.argv and sys.argv[0].endswith(".py") and Path(sys.argv[0]).is_file():
        files.add(Path(sys.argv[0]).resolve())
    files.update(Path(p).resolve() for p in extra)
    return sorted(f for f in files if f.is_file())


def files_digest(files: list[Path]) -> str:
    """SHA-256 over the relative path and bytes of each file, in the order given."""
    h = hashlib.sha256()
    for f in files:
        rel = f.relative_to(ROOT) if f.is_relative_to(ROOT) else f
        h.update(str(rel).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def code_digest(extra: tuple[Path, ...] = ()) -> str:
    """SHA-256 over every hashed file (see the module doc)."""
    return files_digest(_hashed_files(extra))


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def code_version(extra: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Git commit, the files that differ from it, and the digest of what ran."""
    files = _hashed_files(extra)
    rel = [str(f.relative_to(ROOT)) for f in files if f.is_relative_to(ROOT)]
    status = _git("status", "--porcelain", "--", *rel) if rel else ""
    changed = sorted(line[3:] for line in (status or "").splitlines())
    commit = _git("rev-parse", "HEAD")
    package = package_dir()
    return {"commit": commit and commit.strip(),
            "package": str(package.relative_to(ROOT) if package.is_relative_to(ROOT)
                           else package),
            "changed_files": changed if status is not None
            else None, "files_sha256": code_digest(extra), "files_hashed": len(files)}


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def _ram_gib() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**30, 1) if pages else None


@cache
def machine() -> dict[str, Any]:
    """CPU model, vector flags, cores, RAM, GPU and versions (torch's own view included)."""
    import torch
    import torch_pruning

    from compress.measure.machine import environment

    env = environment(torch.get_num_threads(), torch.device("cpu"))
    flags = set(_cpuinfo().get("flags", "").split())
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"date": _dt.date.today().isoformat(), "cores": env["logical_cores"],
            "torch_threads": env["threads"], "cpu": env["cpu"],
            "cpu_capability": env["cpu_capability"],
            "cpu_flags": [f for f in FLAGS if f in flags], "ram_gib": _ram_gib(), "gpu": gpu,
            "python": env["python"], "torch": env["torch"],
            "torch_pruning": torch_pruning.__version__, "onnxruntime": env["onnxruntime"]}


class Clock:
    """Started when a benchmark starts; ``stop()`` gives its ``run`` block."""

    def __init__(self, inputs: tuple[Path, ...] = ()) -> None:
        self.code = code_version(inputs)
        self._inputs = inputs
        self.started = _utc_now()
        self.load_before = load_average()
        self._t0 = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        """The run block; ``self.code`` gains ``changed_during_run``."""
        self.code["changed_during_run"] = code_digest(self._inputs) != self.code["files_sha256"]
        return {"started": self.started, "finished": _utc_now(),
                "wall_s": round(time.perf_counter() - self._t0, 2),
                "load_before": self.load_before, "load_after": load_average(),
                "nice": os.nice(0) if hasattr(os, "nice") else None,
                "peak_rss_mib": peak_rss_mib()}
