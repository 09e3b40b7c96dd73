"""Planning for a latency target: channel ratios predicted from a latency table, then checked
by timing the pruned model against the baseline (closed loop).

1. Every convolution and linear layer is captured with its real input shape; a
   :class:`~compress.measure.latency_table.LatencyTable` gives its time at any widths
   (measured on onnxruntime's CPU engine with the report's threads and largest batch size,
   cached on disk per machine).
2. The predicted latency of a pruned copy is the sum of its layers' times. Every channel
   group gets its own width (:mod:`~compress.pruning.group_widths`: the channels that cost
   the least importance per millisecond saved go first, the table's staircase crossed where
   the time drops), the steps of an iterative schedule nested in the last; the result is a
   :class:`~compress.pruning.group_widths.GroupRatios` per step. A model pruned inside
   closed blocks only, and a transformers model (its heads and FFN neurons, its linear layers
   timed at the report's sequence length on token ids), get one ratio, searched as for a
   MACs target
   (:func:`~compress.pruning.planning.solve_ratio_for_macs` with the predicted reduction in
   place of the MACs').
3. Closed loop: the baseline and a copy pruned to the final ratio are exported and timed
   interleaved, as the report times them. When the measured reduction falls short of the
   target by more than ``target.tolerance``, the prediction is calibrated: it leaves out what
   is not a conv or linear layer, so the time that makes it agree with the measurement is
   added to every prediction, and the search runs again, for more reduction than the last try
   (no pruning is timed twice: noise would decide). After a few tries, or when no ratio
   predicts enough, the run is refused in one sentence.

A table file named by the recipe is frozen: its timings (and the ratios planned from them,
kept in it) are used as they are, without the closed loop, so another machine plans the same
widths; without one, the plan is fitted to this machine (the report says so).

Example:
    >>> from torch import nn
    >>> from compress.recipe.pruning import PruningSpec
    >>> net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 3)).eval()
    >>> ms = lambda reqs: [i * o / 1e3 for _, i, o in reqs]  # a synthetic table: time ~ MACs
    >>> planner = LatencyPlanner(threads=1, batch=8, sample_shape=(3, 8, 8), measure_layers=ms,
    ...     measure_speedup=lambda base, pruned: 2.0, cache_folder=Path(tempfile.mkdtemp()))
    >>> spec = PruningSpec(target={"latency": 0.25}, round_to=1)
    >>> [step] = planner.ratios(net, torch.zeros(1, 3, 8, 8), spec, [0.25])
    >>> step.groups  # layer 0's own ratio: 4 of its 16 channels
    {'0': 0.25}
    >>> round(planner.record["predicted_speedup"], 4), planner.record["measured_speedup"]
    (1.3333, 2.0)
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.errors import InputError
from compress.measure.latency import compare_onnx, timing_input
from compress.measure.latency_table import (
    LatencyTable,
    Measure,
    cached_table,
    read_table,
    table_key,
)
from compress.measure.layer_timing import capture_layers, layer_io_widths, time_layers
from compress.pruning.group_widths import GroupRatios
from compress.pruning.latency_groups import plan_group_ratios, plannable_groups
from compress.pruning.planning import gradient_free, solve_ratio_for_macs
from compress.pruning.structured_kind import build_structured
from compress.recipe.pruning import PruningSpec

__all__ = ["LatencyPlanner", "SpeedupMeter"]

log = logging.getLogger(__name__)

_STEP = 0.005  # after a shortfall, the next try predicts at least this much more (+ tolerance)

_PLANNER = "per-group widths 2"  # in the plan key: another planner's plans are not reused
SpeedupMeter = Callable[[nn.Module, nn.Module], float]  # (baseline, pruned) -> measured speedup


class LatencyPlanner:
    """Plans the channel ratios of a latency target and keeps what it predicted and measured
    for the report (:meth:`summary`).

    ``measure_layers`` and ``measure_speedup`` replace the onnxruntime timings (tests inject
    deterministic ones); ``table_file`` is the recipe's ``latency_table``; ``protocol``: the
    report's :class:`~compress.recipe.stages.ReportSpec` (rounds, warmup, block lengths), which
    the closed loop times with at ``batch`` and ``threads``. ``closed_loop=False`` plans from
    the table alone and keeps no plan in it (``compress inspect``: a dry run times no model).
    """

    def __init__(self, *, threads: int, batch: int, sample_shape: Sequence[int],
                 table_file: Path | None = None, cache_folder: Path | None = None,
                 measure_layers: Measure | None = None,
                 measure_speedup: SpeedupMeter | None = None, max_tries: int = 4,
                 protocol: Any = None, closed_loop: bool = True,
                 vocab_size: int | None = None) -> None:
        self.threads, self.batch, self.sample_shape = threads, batch, tuple(sample_shape)
        self.vocab_size = vocab_size  # a token-id model: timed on ids below it
        self.table_file, self.cache_folder, self.max_tries = table_file, cache_folder, max_tries
        self.measure_layers = measure_layers or (
            lambda reqs: time_layers(reqs, batch=batch, threads=threads))
        self.measure_speedup, self.protocol = measure_speedup, protocol
        self.closed_loop = closed_loop
        self.record: dict[str, Any] = {}
        self._predict: Callable[[nn.Module], float] | None = None

    def _table(self) -> tuple[LatencyTable, Path]:
        if self.frozen:
            assert self.table_file is not None
            return read_table(self.table_file), self.table_file
        key = table_key(threads=self.threads, batch=self.batch)
        table, cached = cached_table(key, self.measure_layers, self.cache_folder)
        if self.table_file is not None:  # named but not there yet: measured here, written there
            table.source = self.table_file
            return table, self.table_file
        return table, cached

    def ratios(self, model: nn.Module, example: torch.Tensor, spec: PruningSpec,
               targets: Sequence[float]) -> list[float]:
        """The channel ratio of each cumulative latency target (fractions of the baseline's
        latency to remove); the last one is checked by measurement unless the table is frozen.
        """
        assert spec.target is not None and spec.target.latency is not None
        shapes = capture_layers(model, timing_input(1, self.sample_shape, 0, self.vocab_size)
                                .to(example.device))
        table, path = self._table()
        names = sorted(shapes)

        def predict(m: nn.Module) -> float:
            widths = layer_io_widths(m, names)
            return sum(table.times([(shapes[n], *widths[n]) for n in names]))

        full, self._predict = predict(model), predict
        plan_key = _plan_key(spec, targets, shapes)
        measure = self.closed_loop and not table.frozen
        how = "closed loop" if measure else "table"
        tol, goal = spec.target.tolerance, targets[-1]
        ms_at: dict[float, float] = {0.0: full}  # the table's ms by channel ratio tried
        rest = [0.0]  # ms the table leaves out (other ops, overheads), calibrated by timing

        def reduction(ms: float) -> float:
            return 1 - (ms + rest[0]) / (full + rest[0])

        cuts = plannable_groups(model, example, spec, names)
        # A gradient criterion has no gradients in the plan: the groups are ranked by l2.
        ranked_by = (None if cuts is None
                     else gradient_free(spec, "pruning.target.latency").importance)
        by_groups: dict[float, list[float]] = {}  # a group plan's last ratio -> all its steps

        def solve(want: float) -> tuple[float, float]:
            if cuts is not None:  # every group its own width (see group_widths)
                plan = plan_group_ratios(cuts, shapes, table, [*targets[:-1], want],
                                         lambda t: (1 - t) * (full + rest[0]) - rest[0],
                                         reduction, tol)
                by_groups[plan[-1][0]] = [r for r, _ in plan]
                ms_at[plan[-1][0]] = plan[-1][1]
                return plan[-1][0], reduction(plan[-1][1])
            cache = {r: reduction(ms) for r, ms in ms_at.items()}  # trials kept across steps
            found = solve_ratio_for_macs(model, example, spec, want, tolerance=tol, cache=cache,
                                         reduction_of=lambda m: reduction(predict(m)),
                                         quantity="latency")
            ms_at.update({r: (1 - red) * (full + rest[0]) - rest[0] for r, red in cache.items()})
            return found

        attempts: list[dict[str, Any]] = []
        if plan_key in table.plans:
            ratios, how = [GroupRatios.from_json(r) for r in table.plans[plan_key]], "saved plan"
            attempts.append({"ratio": ratios[-1], "predicted": None, "measured": None})
        else:
            for _ in range(self.max_tries):
                want = goal
                if attempts:  # never time the same pruning twice (noise would decide)
                    want = max(want, reduction(ms_at[attempts[-1]["ratio"]]) + tol + _STEP)
                try:
                    ratio, predicted = solve(min(want, 0.999))
                except InputError:
                    if not attempts:
                        raise
                    raise InputError(_short(goal, attempts)) from None
                attempts.append({"ratio": ratio, "predicted": predicted, "measured": None,
                                 "unaccounted_ms": rest[0]})
                if not measure:
                    break
                speedup, ms_at[ratio] = self._speedup(model, example, spec, ratio)
                # The table's figure for the widths really cut (a concatenation's producers
                # lose the channels the step ranks lowest, planned as their share).
                attempts[-1]["predicted"] = reduction(ms_at[ratio])
                attempts[-1]["measured"] = measured = 1 - 1 / speedup
                if measured >= goal - tol:
                    break
                if speedup <= 1:  # no faster at all: no time left out explains it
                    raise InputError(_short(goal, attempts))
                # The time that, added to the table's, gives the speedup just measured.
                rest[0] = max(0.0, (full - speedup * ms_at[ratio]) / (speedup - 1))
            else:
                raise InputError(_short(goal, attempts))
            if cuts is not None:  # the plan's earlier steps, nested in its last
                ratios = by_groups[ratio]
            else:
                ratios = [min(solve(min(t, 0.999))[0], ratio) for t in targets[:-1]]
                ratios.append(ratio)
            if measure:  # an open-loop plan is not what compress apply would keep
                table.plans[plan_key] = ratios
        stairs = {n: table.staircase(s) for n, s in _distinct(shapes).items()}
        if not table.frozen:
            table.save(path)
        last = attempts[-1]
        self.record = {
            "target": goal, "requested_speedup": 1 / (1 - goal), "ratios": ratios,
            "planned_by": how, "tolerance": tol, "baseline_predicted_ms": full,
            "predicted_speedup": _speedup(last["predicted"]),
            "measured_speedup": _speedup(last["measured"]),
            "importance": spec.importance,
            "widths_ranked_by": ranked_by if ranked_by != spec.importance else None,
            "attempts": attempts, "table": str(path), "table_entries": len(table.entries),
            "measured_entries": table.measured, "hardware": table.key,
            "fitted_to_this_machine": not table.frozen, "staircase": stairs}
        log.info("latency target %.0f%%: channel ratio %.4f (%s)", 100 * goal, ratios[-1], how)
        return ratios

    @property
    def frozen(self) -> bool:
        """Whether the plan comes from a table file alone, the same in every process."""
        return self.table_file is not None and self.table_file.exists()

    def predict_ms(self, model: nn.Module) -> float:
        """The table's latency (ms) of ``model``, pruned or not, after :meth:`ratios` planned
        for the model it was pruned from."""
        if self._predict is None:
            raise RuntimeError("predict_ms needs a plan: call ratios first")
        return self._predict(model)

    def _speedup(self, model: nn.Module, example: torch.Tensor, spec: PruningSpec,
                 ratio: float) -> tuple[float, float]:
        """The measured speedup of ``model`` pruned to ``ratio``, and the table's ms of it."""
        pruned = copy.deepcopy(model).eval()
        trial = gradient_free(spec.model_copy(update={"verify": False}),
                              "pruning.target.latency (its closed loop prunes copies)")
        build_structured(pruned, example, trial, cumulative_ratios=[ratio]).step_(ratio, example)
        meter = self.measure_speedup or self._onnx_speedup
        assert self._predict is not None
        return meter(model, pruned), self._predict(pruned)

    def _onnx_speedup(self, baseline: nn.Module, pruned: nn.Module) -> float:
        """Both models exported and timed interleaved on onnxruntime, as the report does."""
        from compress.export.onnx import export_onnx
        from compress.recipe.stages import ReportSpec

        x = timing_input(2, self.sample_shape, 0, self.vocab_size)
        with tempfile.TemporaryDirectory(prefix="compress-latency-") as tmp:
            paths = {n: export_onnx(copy.deepcopy(m).cpu().eval(), Path(tmp) / f"{n}.onnx", x)
                     for n, m in (("baseline", baseline), ("pruned", pruned))}
            spec = (self.protocol or ReportSpec()).model_copy(
                update={"batch_sizes": [self.batch], "threads": self.threads})
            result = compare_onnx(paths, reference="baseline", sample_shape=self.sample_shape,
                                  spec=spec, vocab_size=self.vocab_size)
        return float(result["batches"][str(self.batch)]["pruned"]["speedup"])

    def summary(self, report_speedup: float | None = None) -> dict[str, Any] | None:
        """What the planner did, with the speedup the report measured on the final model;
        None when it planned nothing (a resumed run from a folder that kept no record)."""
        if not self.record:
            return None
        return {**self.record, "report_speedup": report_speedup}


def _speedup(reduction: float | None) -> float | None:
    return None if reduction is None else 1 / (1 - reduction)


def _short(goal: float, attempts: list[dict[str, Any]]) -> str:
    best = max((a["measured"] for a in attempts if a["measured"] is not None), default=None)
    got = "" if best is None else f" (the best measured {1 / (1 - best):.2f}x)"
    return (f"pruning.target.latency={goal} ({1 / (1 - goal):.2f}x faster) cannot be reached on "
            f"this machine: {len(attempts)} prunings timed against the baseline fell short"
            f"{got}; lower the target, lower round_to or ignore fewer layers")


def _distinct(shapes: dict[str, Any]) -> dict[str, Any]:
    """One layer name per distinct shape (the first), for the report's staircases."""
    seen: dict[Any, str] = {}
    for name in sorted(shapes):
        seen.setdefault(shapes[name], name)
    return {name: shape for shape, name in seen.items()}


def _plan_key(spec: PruningSpec, targets: Sequence[float], shapes: dict[str, Any]) -> str:
    """What a plan depends on besides the weights: the pruning settings, the schedule's
    targets and the layers (a table file then reproduces widths only for the same model)."""
    settings = spec.model_dump(mode="json", exclude={"target": {"latency_table"}})
    layers = {n: s.signature(s.in_width, s.out_width) for n, s in shapes.items()}
    blob = json.dumps([_PLANNER, settings, list(targets), layers], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
