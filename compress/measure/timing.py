"""Interleaved A/B timing and its arithmetic: blocks A B, B A, A B ... so that machine drift
hits both alike, and per-round ratios summarised by their median.

Example:
    >>> clock = iter(range(100))
    >>> t = time_ab(lambda: None, lambda: None, warmup=0, rounds=2, runs_per_round=1,
    ...             timer=lambda: float(next(clock)))
    >>> len(t.baseline), len(t.compressed)
    (2, 2)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from compress.errors import CompressError

__all__ = ["Timer", "ABTimings", "time_interleaved", "time_ab", "summarize_ab", "latency_stats"]


Timer = Callable[[], float]


@dataclass
class ABTimings:
    """Durations in seconds, one list per round; ``order`` says which block ran first."""

    baseline: list[list[float]] = field(default_factory=list)
    compressed: list[list[float]] = field(default_factory=list)
    order: list[tuple[str, str]] = field(default_factory=list)


def time_interleaved(runners: dict[str, Callable[[], None]], *, warmup: int, rounds: int,
                     runs_per_round: int, timer: Timer = time.perf_counter
                     ) -> tuple[dict[str, list[list[float]]], list[tuple[str, ...]]]:
    """Time ``rounds`` rounds of one block per runner; the order rotates every round.

    Each block is ``warmup`` untimed calls then ``runs_per_round`` timed calls. Returns the
    durations per runner (one list per round) and each round's order. Rotating (A B C, B C A,
    C A B, ...) puts every runner first equally often, so drift hits all of them alike.

    Example:
        >>> t, order = time_interleaved({"a": lambda: None, "b": lambda: None}, warmup=0,
        ...                             rounds=2, runs_per_round=1)
        >>> order
        [('a', 'b'), ('b', 'a')]
    """
    names = list(runners)
    out: dict[str, list[list[float]]] = {n: [] for n in names}
    orders: list[tuple[str, ...]] = []
    for r in range(rounds):
        k = r % len(names)
        order = tuple(names[k:] + names[:k])
        orders.append(order)
        for name in order:
            fn = runners[name]
            for _ in range(warmup):
                fn()
            times = []
            for _ in range(runs_per_round):
                t0 = timer()
                fn()
                times.append(timer() - t0)
            out[name].append(times)
    return out, orders


def time_ab(run_baseline: Callable[[], None], run_compressed: Callable[[], None], *,
            warmup: int, rounds: int, runs_per_round: int,
            timer: Timer = time.perf_counter) -> ABTimings:
    """Time ``rounds`` interleaved block pairs; even rounds run the baseline first, odd last.

    Each block is ``warmup`` untimed calls then ``runs_per_round`` timed calls.
    """
    times, orders = time_interleaved({"baseline": run_baseline, "compressed": run_compressed},
                                     warmup=warmup, rounds=rounds,
                                     runs_per_round=runs_per_round, timer=timer)
    return ABTimings(times["baseline"], times["compressed"],
                     [(a, b) for a, b in orders])  # type: ignore[misc]


def _percentile(values: list[float], q: float) -> float:
    # Linear interpolation between closest ranks (numpy's default), so p90 >= median always.
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def latency_stats(rounds: list[list[float]], batch: int) -> dict[str, float]:
    """Median and p90 latency (ms) over every timed run of ``rounds``, and the throughput."""
    flat = [t for block in rounds for t in block]
    median = statistics.median(flat)
    return {"median_ms": median * 1e3, "p90_ms": _percentile(flat, 0.9) * 1e3,
            "throughput": batch / median, "runs": len(flat)}


def summarize_ab(timings: ABTimings, batch: int) -> dict[str, Any]:
    """Latency stats per candidate and the speedup as the median of per-round ratios."""
    assert timings.baseline and len(timings.baseline) == len(timings.compressed)
    ratios = []
    for base, comp in zip(timings.baseline, timings.compressed):
        b, c = statistics.median(base), statistics.median(comp)
        if b <= 0 or c <= 0:
            raise CompressError("the timer measured a zero duration; the clock is too coarse "
                                "for this model, raise report.batch_sizes")
        ratios.append(b / c)
    return {"baseline": latency_stats(timings.baseline, batch),
            "compressed": latency_stats(timings.compressed, batch),
            "speedup": statistics.median(ratios), "speedup_min": min(ratios),
            "speedup_max": max(ratios), "round_ratios": ratios}
