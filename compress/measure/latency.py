"""Honest speed measurement: a baseline and a compressed model timed side by side.

Per engine (onnxruntime, torch) and batch size, the two models are timed in interleaved blocks
A B, B A, A B ... so that machine drift (turbo, thermal, neighbours) hits both alike, and the
speedup is the median of the per-round ratios rather than a ratio of two separate runs.

Example:
    >>> from compress.recipe.stages import ReportSpec
    >>> spec = ReportSpec(engines=["torch"], batch_sizes=[1], rounds=3, runs_per_round=2)
    >>> net = torch.nn.Linear(8, 2).eval()
    >>> r = measure_latency(Candidate(net), Candidate(net), sample_shape=(8,), spec=spec,
    ...                     device=torch.device("cpu"))
    >>> sorted(r["engines"]["torch"]["1"])
    ['baseline', 'compressed', 'round_ratios', 'speedup', 'speedup_max', 'speedup_min']
"""

from __future__ import annotations

import gc
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compress.errors import InputError
from compress.measure.machine import environment, ort_providers, session_options
from compress.measure.timing import Timer, latency_stats, summarize_ab, time_ab, time_interleaved
from compress.progress import report_phase

if TYPE_CHECKING:
    import onnxruntime as ort

    from compress.recipe.stages import ReportSpec

logger = logging.getLogger(__name__)

ENGINES = ("onnxruntime", "torch")

__all__ = ["Candidate", "ENGINES", "measure_latency", "compare_onnx", "latency_summary",
           "headline_speedup", "quiet_timing", "timing_input"]


@dataclass
class Candidate:
    """One model to time: the torch module (in eval mode) and, optionally, its ONNX file."""

    model: nn.Module
    onnx_path: Path | None = None


def _validate(sample_shape: tuple[int, ...], spec: ReportSpec, device: torch.device,
              candidates: dict[str, Candidate]) -> None:
    if not sample_shape or any(not isinstance(d, int) or d <= 0 for d in sample_shape):
        raise InputError(f"sample_shape must be a non-empty tuple of positive ints such as "
                         f"(3, 32, 32), got {sample_shape!r}")
    if not spec.engines or any(e not in ENGINES for e in spec.engines):
        raise InputError(f"report.engines must be a non-empty list of {', '.join(ENGINES)}, "
                         f"got {spec.engines!r}")
    if not spec.batch_sizes or any(not isinstance(b, int) or b <= 0 for b in spec.batch_sizes):
        raise InputError(f"report.batch_sizes must be positive ints, got {spec.batch_sizes!r}")
    for key, items in (("engines", spec.engines), ("batch_sizes", spec.batch_sizes)):
        if len(set(items)) != len(items):
            raise InputError(f"report.{key} has duplicates: {items!r}")
    if (spec.warmup < 0 or spec.rounds < 1 or spec.runs_per_round < 1
            or (spec.threads is not None and spec.threads < 1)):
        raise InputError("report needs warmup >= 0, rounds >= 1, runs_per_round >= 1 and "
                         "threads >= 1 (or unset)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device is CUDA but torch sees no GPU; use device: cpu")
    for name, cand in candidates.items():
        if cand.model.training:
            raise InputError(f"the {name} model is in training mode; call model.eval() first")
        p = next(cand.model.parameters(), None)
        if p is not None and p.device != device:
            raise InputError(f"the {name} model is on {p.device}, not on {device}")
        if cand.onnx_path is not None and not Path(cand.onnx_path).is_file():
            raise InputError(f"the {name} ONNX file {str(cand.onnx_path)!r} does not exist")


def _ort_session(name: str, path: Path, threads: int, device: torch.device,
                 sample_shape: tuple[int, ...], optimization: str = "all",
                 tokens: bool = False) -> ort.InferenceSession:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), sess_options=session_options(threads, optimization),
                                providers=ort_providers(device))
    inputs = sess.get_inputs()
    expected = "tensor(int64)" if tokens else "tensor(float)"
    if len(inputs) != 1 or inputs[0].type != expected:
        raise InputError(f"the {name} ONNX model must have one {expected[7:-1]} input, got "
                         f"{[(i.name, i.type) for i in inputs]}")
    if len(inputs[0].shape) != 1 + len(sample_shape):
        raise InputError(f"the {name} ONNX input has shape {inputs[0].shape}, which does not "
                         f"fit (batch, *{tuple(sample_shape)})")
    return sess


def timing_input(batch: int, sample_shape: tuple[int, ...], seed: int,
                 vocab_size: int | None = None) -> torch.Tensor:
    """The timed input: random floats of ``(batch, *sample_shape)``, or random token ids
    below ``vocab_size`` (id 0, usually padding, excluded), the same for every model timed.

    >>> timing_input(2, (3,), 0, vocab_size=5).dtype, timing_input(1, (3,), 0).shape
    (torch.int64, torch.Size([1, 3]))
    """
    gen = torch.Generator().manual_seed(seed)
    if vocab_size is None:
        return torch.randn((batch, *sample_shape), generator=gen, dtype=torch.float32)
    return torch.randint(1, vocab_size, (batch, *sample_shape), generator=gen)


def _ort_runner(name: str, sess: ort.InferenceSession, x: torch.Tensor) -> Callable[[], None]:
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0]
    if isinstance(fixed, int) and fixed != x.shape[0]:
        raise InputError(f"the {name} ONNX model has a fixed batch size {fixed}; export it with "
                         f"a dynamic batch axis to time batch size {x.shape[0]}")
    feed = {inp.name: x.cpu().numpy()}
    return lambda: sess.run(None, feed)


def _torch_runner(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    if x.device.type == "cuda":
        # Kernels are asynchronous; without a sync the clock measures the launch only.
        def run() -> None:
            model(x)
            torch.cuda.synchronize(x.device)
        return run
    return lambda: model(x)


@contextmanager
def quiet_timing(threads: int) -> Iterator[None]:
    """Pin torch's thread count and pause the garbage collector, restoring both afterwards."""
    # A collection during one block would be charged to one model only.
    previous = torch.get_num_threads()
    gc_enabled = gc.isenabled()
    torch.set_num_threads(threads)
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        if gc_enabled:
            gc.enable()


def _block_size(runs: Any, spec: ReportSpec, cap: int = 200) -> tuple[int, int]:
    """``(warmup, timed runs)`` per block: a block lasts from min_block_ms to max_block_ms.

    Fast models get more timed calls than ``runs_per_round``, so short latencies are not lost in
    timer and scheduler noise; slow ones (a large batch in eager torch) get fewer, down to one,
    and never more warm-up calls than timed ones, so timing does not dwarf the run it reports
    on. Calibrated with the real clock (an injected test timer only scripts the timed calls).
    """
    if spec.min_block_ms <= 0 and spec.max_block_ms <= 0:
        return spec.warmup, spec.runs_per_round
    slowest = 0.0
    for run in runs:
        start = time.perf_counter()
        run()
        slowest = max(slowest, time.perf_counter() - start)
    slowest = max(slowest, 1e-9)
    n = spec.runs_per_round
    if spec.min_block_ms > 0:
        n = max(n, math.ceil(spec.min_block_ms / 1000 / slowest))
    if spec.max_block_ms > 0:
        n = min(n, max(1, math.floor(spec.max_block_ms / 1000 / slowest)))
    n = int(min(cap, n))
    return min(spec.warmup, n), n


def measure_latency(baseline: Candidate, compressed: Candidate, *,
                    sample_shape: tuple[int, ...], spec: ReportSpec, device: torch.device,
                    seed: int = 0, timer: Timer = time.perf_counter,
                    vocab_size: int | None = None) -> dict[str, Any]:
    """Time both candidates per engine and batch size; a JSON-safe result (see module doc).

    Inputs are random floats of ``(batch, *sample_shape)``, or random token ids below
    ``vocab_size`` (id 0, usually padding, excluded) when it is given.

    ``result["engines"][engine][str(batch)]`` holds ``baseline``/``compressed`` stats
    (``median_ms``, ``p90_ms``, ``throughput``, ``runs``) and ``speedup`` (median of per-round
    baseline/compressed ratios) with ``speedup_min``/``speedup_max``/``round_ratios``. Engines
    that could not run are in ``result["skipped"]`` with the reason.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    sample_shape = tuple(sample_shape)
    cands = {"baseline": baseline, "compressed": compressed}
    _validate(sample_shape, spec, device, cands)
    threads = spec.threads or os.cpu_count() or 1
    result: dict[str, Any] = {
        "threads": threads, "engines": {}, "skipped": {},
        "protocol": {"warmup": spec.warmup, "rounds": spec.rounds,
                     "runs_per_round": spec.runs_per_round, "min_block_ms": spec.min_block_ms,
                     "max_block_ms": spec.max_block_ms, "batch_sizes": list(spec.batch_sizes),
                     "sample_shape": list(sample_shape), "seed": seed}}
    providers: list[str] | None = None
    with quiet_timing(threads), \
            report_phase("timing", len(spec.engines) * len(spec.batch_sizes)) as phase:
        for engine in spec.engines:
            if engine == "onnxruntime":
                missing = [n for n, c in cands.items() if c.onnx_path is None]
                if missing:
                    result["skipped"][engine] = f"no ONNX file for {' and '.join(missing)}"
                    logger.info("skipping onnxruntime: %s", result["skipped"][engine])
                    phase.advance(len(spec.batch_sizes))
                    continue
                # One session per model, built once: session start-up is not inference time.
                sessions = {n: _ort_session(n, Path(c.onnx_path), threads, device, sample_shape,
                                            tokens=vocab_size is not None)
                            for n, c in cands.items()}
                providers = sessions["baseline"].get_providers()
            per_batch: dict[str, Any] = {}
            for batch in spec.batch_sizes:
                x = timing_input(batch, sample_shape, seed, vocab_size)
                if engine == "onnxruntime":
                    runs = {n: _ort_runner(n, sessions[n], x) for n in cands}
                else:
                    x = x.to(device)
                    runs = {n: _torch_runner(c.model, x) for n, c in cands.items()}
                with torch.inference_mode():
                    for run in runs.values():
                        run()  # first call allocates shape-dependent buffers; never timed
                    warmup, per_block = _block_size(runs.values(), spec)
                    timings = time_ab(runs["baseline"], runs["compressed"], warmup=warmup,
                                      rounds=spec.rounds, runs_per_round=per_block,
                                      timer=timer)
                row = per_batch[str(batch)] = summarize_ab(timings, batch)
                logger.debug("%s batch %d: %.3f ms -> %.3f ms, speedup %.2fx", engine, batch,
                             row["baseline"]["median_ms"], row["compressed"]["median_ms"],
                             row["speedup"])
                phase.advance(message=f"{engine} batch {batch}: {row['speedup']:.2f}x")
            result["engines"][engine] = per_batch
        headline = headline_speedup(result)
        engine = next((e for e in ENGINES if result["engines"].get(e)), "")
        phase.result = "not measured" if headline is None else \
            f"headline speedup {headline:.2f}x: {engine} at the largest batch"
    result["environment"] = environment(threads, device, providers)
    return result


def compare_onnx(paths: dict[str, Path], *, reference: str | dict[str, str],
                 sample_shape: tuple[int, ...],
                 spec: ReportSpec, timer: Timer = time.perf_counter, seed: int = 0,
                 optimization: dict[str, str] | None = None,
                 vocab_size: int | None = None) -> dict[str, Any]:
    """Time several ONNX models on the CPU in one interleaved run (rotating order per round).

    ``result["batches"][str(batch)][name]`` holds the latency stats of each model and, for every
    model but ``reference``, ``speedup`` (median over rounds of reference / model) with its
    min and max. ``reference`` may instead map each compared model to its own reference.
    ``spec`` gives the protocol (batch sizes, rounds, warmup, threads, ...);
    ``timer=time.thread_time`` with ``spec.threads == 1`` measures the CPU time of the calling
    thread, which other processes on a busy machine barely disturb. ``vocab_size``: the models
    take token ids (see :func:`timing_input`). ``optimization`` maps a model name to an
    onnxruntime optimisation level other than ``all`` (for comparisons).

    Example:
        >>> r = compare_onnx({"base": Path("a.onnx"), "pruned": Path("b.onnx")},
        ...                  reference="base", sample_shape=(3, 32, 32),
        ...                  spec=ReportSpec(batch_sizes=[1]))  # doctest: +SKIP
        >>> r["batches"]["1"]["pruned"]["speedup"]  # doctest: +SKIP
        1.93
    """
    refs = ({n: reference for n in paths if n != reference} if isinstance(reference, str)
            else dict(reference))
    for name, ref in refs.items():
        if name not in paths or ref not in paths or name == ref:
            raise InputError(f"reference {ref!r} of {name!r}: both must be distinct names among "
                             f"{sorted(paths)}")
    device = torch.device("cpu")
    dummy = nn.Identity().eval()
    _validate(tuple(sample_shape), spec, device,
              {n: Candidate(dummy, Path(p)) for n, p in paths.items()})
    threads = spec.threads or os.cpu_count() or 1
    result: dict[str, Any] = {"threads": threads, "reference": refs, "batches": {},
                              "timer": getattr(timer, "__name__", str(timer)),
                              "protocol": {"warmup": spec.warmup, "rounds": spec.rounds,
                                           "runs_per_round": spec.runs_per_round,
                                           "min_block_ms": spec.min_block_ms,
                                           "max_block_ms": spec.max_block_ms, "seed": seed}}
    with quiet_timing(threads):
        levels = optimization or {}
        sessions = {n: _ort_session(n, Path(p), threads, device, tuple(sample_shape),
                                    levels.get(n, "all"), tokens=vocab_size is not None)
                    for n, p in paths.items()}
        for batch in spec.batch_sizes:
            x = timing_input(batch, sample_shape, seed, vocab_size)
            runs = {n: _ort_runner(n, s, x) for n, s in sessions.items()}
            for run in runs.values():
                run()  # first call allocates shape-dependent buffers; never timed
            warmup, per_block = _block_size(runs.values(), spec)
            times, _ = time_interleaved(runs, warmup=warmup, rounds=spec.rounds,
                                        runs_per_round=per_block, timer=timer)
            row: dict[str, Any] = {}
            for name in paths:
                row[name] = latency_stats(times[name], batch)
                if name in refs:
                    ratios = [statistics.median(r) / statistics.median(c)
                              for r, c in zip(times[refs[name]], times[name])]
                    row[name].update(speedup=statistics.median(ratios),
                                     speedup_min=min(ratios), speedup_max=max(ratios))
            result["batches"][str(batch)] = row
    result["environment"] = environment(threads, device, ["CPUExecutionProvider"])
    return result


def latency_summary(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Speedup per engine and batch size, for the report.

    Example:
        >>> latency_summary({"engines": {"torch": {"1": {"speedup": 1.5}}}})
        {'torch': {'1': 1.5}}
    """
    return {engine: {b: row["speedup"] for b, row in per_batch.items()}
            for engine, per_batch in result.get("engines", {}).items()}


def headline_speedup(result: dict[str, Any]) -> float | None:
    """onnxruntime speedup at the largest batch size, else torch's; None when neither ran.

    Example:
        >>> headline_speedup({"engines": {"torch": {"1": {"speedup": 1.2},
        ...                                         "64": {"speedup": 1.9}}}})
        1.9
    """
    engines = result.get("engines", {})
    for engine in ENGINES:
        per_batch = engines.get(engine)
        if per_batch:
            return float(per_batch[max(per_batch, key=int)]["speedup"])
    return None
