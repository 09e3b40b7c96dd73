"""Latency tables: what single layers cost at candidate widths on this machine, kept on disk.

A :class:`LatencyTable` maps a layer signature (kind, hyper-parameters, input shape, widths;
see :class:`~compress.measure.layer_timing.LayerShape`) to its median time in milliseconds.
Missing entries are measured when asked for, all at once (interleaved). A table is valid for
its :func:`table_key`: the CPU and its vector capability (onnxruntime picks its kernels and
channel blocks by it), the onnxruntime version, threads, batch size and the measuring code's
version; the on-disk cache (:func:`cache_dir`) is one file per key, so
a changed key measures afresh. A table read from a file the recipe names is ``frozen``: it is
never measured into, so every machine plans the same widths from it.

Example:
    >>> shape = LayerShape("linear", 8, 8, ())
    >>> table = LatencyTable({"batch": 1}, measure=lambda reqs: [float(o) for _, _, o in reqs])
    >>> table.times([(shape, 8, 4), (shape, 8, 8)]), len(table.entries)
    ([4.0, 8.0], 2)
    >>> table.staircase(shape, steps=4)
    [[2, 2.0], [4, 4.0], [6, 6.0], [8, 8.0]]
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from compress.errors import InputError
from compress.fsutil import write_text_atomic
from compress.jsonio import read_json_object
from compress.measure.layer_timing import LayerShape

__all__ = ["TABLE_FORMAT", "LatencyTable", "Measure", "table_key", "cache_dir", "cached_table",
           "read_table"]

TABLE_FORMAT = 1  # raise when the measuring protocol changes: old caches no longer apply

Request = tuple[LayerShape, int, int]
Measure = Callable[[Sequence[Request]], list[float]]

_DROP = 0.03  # a width is a step of the staircase when the next wider one is this much slower


def table_key(*, threads: int, batch: int) -> dict[str, Any]:
    """What a table's timings depend on, for onnxruntime on this machine's CPU."""
    import torch

    from compress import __version__
    from compress.measure.machine import environment

    env = environment(threads, torch.device("cpu"))
    return {"engine": "onnxruntime", "device": "cpu", "cpu": env["cpu"],
            "cpu_capability": env["cpu_capability"], "onnxruntime": env["onnxruntime"],
            "threads": threads, "batch": batch, "compress": __version__, "format": TABLE_FORMAT}


def cache_dir() -> Path:
    """``latency`` in compress's cache: ``$COMPRESS_CACHE`` (as for datasets), else
    ``$XDG_CACHE_HOME/compress``, else ``~/.cache/compress``."""
    if os.environ.get("COMPRESS_CACHE"):
        return Path(os.environ["COMPRESS_CACHE"]).expanduser() / "latency"
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "compress" / "latency"


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


class LatencyTable:
    """Layer timings (ms) by signature, measured on demand with ``measure`` unless frozen.

    ``plans`` holds the channel ratios planned from this table, by what they were planned for,
    so a table file given back to the recipe reproduces the same widths anywhere.
    """

    def __init__(self, key: dict[str, Any], *, measure: Measure | None = None,
                 entries: dict[str, float] | None = None,
                 plans: dict[str, list[Any]] | None = None, frozen: bool = False,
                 source: Path | None = None) -> None:
        self.key, self.measure, self.frozen, self.source = key, measure, frozen, source
        self.entries: dict[str, float] = dict(entries or {})
        self.plans: dict[str, list[Any]] = dict(plans or {})
        self.measured = 0  # entries this process measured
        self.dirty = False

    def times(self, requests: Sequence[Request]) -> list[float]:
        """Milliseconds of each ``(shape, in, out)``; missing ones measured in one batch."""
        keys = [shape.signature(i, o) for shape, i, o in requests]
        missing: dict[str, Request] = {}
        for k, req in zip(keys, requests):
            if k not in self.entries:
                missing.setdefault(k, req)
        if missing:
            if self.frozen or self.measure is None:
                where = f"the latency table {str(self.source)!r}" if self.source else "the table"
                raise InputError(f"{where} has no timing for layer {next(iter(missing))} "
                                 f"({len(missing)} missing); it was measured for another model "
                                 f"or settings: delete it (or name a new file) to measure "
                                 f"afresh")
            for k, ms in zip(missing, self.measure(list(missing.values()))):
                self.entries[k] = float(ms)
            self.measured += len(missing)
            self.dirty = True
        return [self.entries[k] for k in keys]

    def staircase(self, shape: LayerShape, *, steps: int = 16) -> list[list[float]]:
        """``[width, ms]`` of the output widths where the layer's time drops: each is faster
        than the next wider candidate by more than 3 %; the full width is always listed.

        Candidates are ``steps`` evenly spaced output widths at the full input width.
        """
        full = shape.out_width
        widths = sorted({max(1, round(full * k / steps)) for k in range(1, steps + 1)})
        ms = self.times([(shape, shape.in_width, w) for w in widths])
        stairs = [[w, t] for w, t, wider in zip(widths, ms, ms[1:]) if t < wider * (1 - _DROP)]
        return [*stairs, [full, ms[-1]]]

    def to_json(self) -> dict[str, Any]:
        plans = {k: [r.to_json() if hasattr(r, "to_json") else r for r in v]
                 for k, v in self.plans.items()}
        return {"format": TABLE_FORMAT, "key": self.key, "entries": self.entries,
                "plans": plans}

    def save(self, path: Path) -> None:
        """Write the table whole (atomically) and mark it saved."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n")
        self.dirty = False


def _is_fraction(r: Any) -> bool:
    return isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r < 1


def _is_ratio(r: Any) -> bool:
    """A planned step: a channel ratio, or one with each group's own ratio (per-group plans)."""
    if isinstance(r, dict):
        groups = r.get("groups")
        return (set(r) == {"ratio", "groups"} and _is_fraction(r["ratio"])
                and isinstance(groups, dict) and all(map(_is_fraction, groups.values())))
    return _is_fraction(r)


def _parsed(data: dict[str, Any], path: Path) -> tuple[dict, dict, dict]:
    entries, plans, key = data.get("entries"), data.get("plans", {}), data.get("key")
    ok = (data.get("format") == TABLE_FORMAT and isinstance(key, dict)
          and isinstance(entries, dict) and isinstance(plans, dict)
          and all(isinstance(v, (int, float)) and v > 0 for v in entries.values())
          and all(isinstance(v, list) and all(map(_is_ratio, v)) for v in plans.values()))
    if not ok:
        raise InputError(f"{str(path)!r} is not a compress latency table (format "
                         f"{TABLE_FORMAT}); delete it or name another file")
    return key, entries, plans


def read_table(path: Path) -> LatencyTable:
    """The frozen table a recipe names (timings and plans from wherever it was measured)."""
    key, entries, plans = _parsed(read_json_object(path, label="latency table ",
                                                  hint="delete it or name another file"), path)
    return LatencyTable(key, entries=entries, plans=plans, frozen=True, source=path)


def cached_table(key: dict[str, Any], measure: Measure, folder: Path | None = None
                 ) -> tuple[LatencyTable, Path]:
    """This machine's table for ``key`` from the cache (empty when there is none) and the file
    it is saved to. A cache file that does not parse or holds another key is measured over."""
    path = (folder or cache_dir()) / f"{_digest(key)}.json"
    if path.is_file():
        try:
            stored, entries, plans = _parsed(read_json_object(path, label="latency cache "), path)
        except InputError:
            stored, entries, plans = None, {}, {}
        if stored == key:
            return LatencyTable(key, measure=measure, entries=entries, plans=plans,
                                source=path), path
    return LatencyTable(key, measure=measure, source=path), path
