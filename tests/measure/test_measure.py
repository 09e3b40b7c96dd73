"""Tests of compress.measure.latency: result layout on real ONNX files, and the A/B arithmetic
exactly
with a scripted clock. Nothing here asserts on wall time or on a speedup value."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from compress.errors import InputError
from compress.measure.counts import count_params
from compress.measure.latency import (
    Candidate,
    compare_onnx,
    headline_speedup,
    latency_summary,
    measure_latency,
)
from compress.measure.machine import ort_providers, session_options
from compress.measure.timing import ABTimings, summarize_ab, time_ab, time_interleaved
from compress.recipe.stages import ReportSpec

SAMPLE = (3, 16, 16)
CPU = torch.device("cpu")


def _net(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()


def _export(model: nn.Module, path: Path) -> Path:
    torch.onnx.export(model, (torch.randn(2, *SAMPLE),), str(path), dynamo=True, verbose=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Candidate, Candidate]:
    d = tmp_path_factory.mktemp("onnx")
    wide, narrow = _net(32), _net(8)
    return (Candidate(wide, _export(wide, d / "wide.onnx")),
            Candidate(narrow, _export(narrow, d / "narrow.onnx")))


def _spec(**kw: object) -> ReportSpec:
    base = {"batch_sizes": [1, 4], "warmup": 1, "rounds": 3, "runs_per_round": 2, "threads": 1,
            "min_block_ms": 0.0}
    return ReportSpec(**{**base, **kw})


def test_count_params() -> None:
    assert count_params(nn.Linear(3, 2)) == 8
    assert count_params(_net(8)) > 0


def test_result_layout_both_engines(pair: tuple[Candidate, Candidate]) -> None:
    result = measure_latency(*pair, sample_shape=SAMPLE, spec=_spec(), device=CPU)
    json.dumps(result, allow_nan=False)  # JSON-safe, no inf/nan
    assert result["threads"] == 1 and result["skipped"] == {}
    assert set(result["engines"]) == {"onnxruntime", "torch"}
    for engine, per_batch in result["engines"].items():
        assert list(per_batch) == ["1", "4"], engine
        for batch, row in per_batch.items():
            for who in ("baseline", "compressed"):
                s = row[who]
                assert s["median_ms"] > 0 and s["p90_ms"] >= s["median_ms"]
                assert s["runs"] == 3 * 2
                assert s["throughput"] == pytest.approx(int(batch) * 1e3 / s["median_ms"])
            assert len(row["round_ratios"]) == 3
            assert row["speedup_min"] <= row["speedup"] <= row["speedup_max"]
    env = result["environment"]
    assert env["providers"] == ["CPUExecutionProvider"] and env["threads"] == 1
    assert env["cpu"] and env["logical_cores"] >= 1 and env["device"] == "cpu"
    assert isinstance(env["cpu_capability"], str) and env["cpu_capability"]  # e.g. AVX2
    assert {"python", "torch", "onnxruntime"} <= set(env)
    assert latency_summary(result)["torch"].keys() == {"1", "4"}
    assert headline_speedup(result) == result["engines"]["onnxruntime"]["4"]["speedup"]


def test_skips_onnxruntime_without_onnx_file() -> None:
    spec = _spec(batch_sizes=[2], rounds=1, runs_per_round=1)
    result = measure_latency(Candidate(_net(8)), Candidate(_net(4)), sample_shape=SAMPLE,
                             spec=spec, device=CPU)
    assert list(result["engines"]) == ["torch"]
    assert "no ONNX file for baseline and compressed" == result["skipped"]["onnxruntime"]
    assert result["environment"]["providers"] is None
    assert headline_speedup(result) == result["engines"]["torch"]["2"]["speedup"]


class _ThreadProbe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add(torch.get_num_threads())
        return x * 2


def test_threads_set_during_timing_and_restored() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        probe = _ThreadProbe().eval()
        spec = _spec(engines=["torch"], batch_sizes=[1], rounds=1, runs_per_round=1, threads=2)
        measure_latency(Candidate(probe), Candidate(probe), sample_shape=(4,), spec=spec,
                        device=CPU)
        assert probe.seen == {2}
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


class _Clock:
    """A fake clock that scripted runners advance by their next duration."""

    def __init__(self) -> None:
        self.now = 0.0
        self.log: list[str] = []

    def runner(self, name: str, durations: list[float]):  # noqa: ANN201
        it = iter(durations)

        def run() -> None:
            self.log.append(name)
            self.now += next(it)
        return run


def test_time_ab_alternates_order_and_skips_warmup() -> None:
    clock = _Clock()
    w = 1000.0  # warm-up duration: must never show up in the timings
    a = clock.runner("A", [w, 1, 2, w, 3, 4, w, 5, 6])
    b = clock.runner("B", [w, 7, 8, w, 9, 10, w, 11, 12])
    t = time_ab(a, b, warmup=1, rounds=3, runs_per_round=2, timer=lambda: clock.now)
    assert t.order == [("baseline", "compressed"), ("compressed", "baseline"),
                       ("baseline", "compressed")]
    assert "".join(clock.log) == "AAABBB" "BBBAAA" "AAABBB"
    assert t.baseline == [[1, 2], [3, 4], [5, 6]]
    assert t.compressed == [[7, 8], [9, 10], [11, 12]]


def test_summarize_is_median_of_round_ratios() -> None:
    ms = 1e-3
    t = ABTimings(baseline=[[10 * ms, 12 * ms, 11 * ms], [20 * ms, 22 * ms, 21 * ms],
                            [9 * ms, 9 * ms, 30 * ms]],
                  compressed=[[5 * ms, 6 * ms, 7 * ms], [7 * ms] * 3, [3 * ms, 4 * ms, 5 * ms]])
    s = summarize_ab(t, batch=4)
    # Per-round medians 11/6, 21/7, 9/4: the median ratio (2.25) is not the ratio of the
    # overall medians (12/6 = 2.0), which is what the per-round design is about.
    assert s["round_ratios"] == pytest.approx([11 / 6, 3.0, 2.25])
    assert s["speedup"] == pytest.approx(2.25)
    assert s["speedup_min"] == pytest.approx(11 / 6) and s["speedup_max"] == pytest.approx(3.0)
    assert s["baseline"]["median_ms"] == pytest.approx(12.0)
    assert s["baseline"]["p90_ms"] == pytest.approx(23.6)  # 22 + 0.2 * (30 - 22)
    assert s["baseline"]["throughput"] == pytest.approx(4 / 0.012)
    assert s["compressed"]["median_ms"] == pytest.approx(6.0)
    assert s["compressed"]["p90_ms"] == pytest.approx(7.0)
    assert s["baseline"]["runs"] == s["compressed"]["runs"] == 9


def test_measure_latency_uses_injected_timer() -> None:
    ticks = iter(range(10_000))
    spec = _spec(engines=["torch"], batch_sizes=[1], rounds=2, runs_per_round=3)
    net = _net(4)
    result = measure_latency(Candidate(net), Candidate(net), sample_shape=SAMPLE, spec=spec,
                             device=CPU, timer=lambda: float(next(ticks)))
    row = result["engines"]["torch"]["1"]
    assert row["baseline"]["median_ms"] == row["compressed"]["median_ms"] == 1000.0
    assert row["speedup"] == row["speedup_min"] == row["speedup_max"] == 1.0


def test_session_options_and_providers() -> None:
    import onnxruntime as ort

    opts = session_options(3)
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.intra_op_num_threads == 3 and opts.inter_op_num_threads == 1
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert ort_providers(CPU) == ["CPUExecutionProvider"]
    if not torch.cuda.is_available():
        # onnxruntime-gpu lists CUDA even without a GPU; we must not believe it.
        assert ort_providers(torch.device("cuda")) == ["CPUExecutionProvider"]


def test_summaries_pick_largest_batch_and_fall_back() -> None:
    row = lambda s: {"speedup": s}  # noqa: E731
    result = {"engines": {"torch": {"64": row(1.1), "8": row(1.3)},
                          "onnxruntime": {"1": row(1.5), "64": row(2.5), "8": row(1.9)}}}
    assert headline_speedup(result) == 2.5
    assert latency_summary(result) == {"torch": {"64": 1.1, "8": 1.3},
                                       "onnxruntime": {"1": 1.5, "64": 2.5, "8": 1.9}}
    assert headline_speedup({"engines": {"torch": {"1": row(1.2), "16": row(1.4)}}}) == 1.4
    assert headline_speedup({"engines": {}, "skipped": {"onnxruntime": "x"}}) is None


@pytest.mark.parametrize("kwargs, match", [
    ({"sample_shape": ()}, "sample_shape"),
    ({"sample_shape": (3, 0, 16)}, "sample_shape"),
    ({"spec": ReportSpec.model_construct(**{**ReportSpec().model_dump(), "rounds": 0})},
     "rounds"),
    ({"spec": ReportSpec(batch_sizes=[4, 4])}, "duplicates"),
])
def test_bad_inputs_raise_input_error(kwargs: dict, match: str) -> None:
    args = {"sample_shape": SAMPLE, "spec": _spec(), "device": CPU, **kwargs}
    with pytest.raises(InputError, match=match):
        measure_latency(Candidate(_net(4)), Candidate(_net(4)), **args)


def test_bad_candidates_raise_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="training mode"):
        measure_latency(Candidate(_net(4).train()), Candidate(_net(4)), sample_shape=SAMPLE,
                        spec=_spec(), device=CPU)
    with pytest.raises(InputError, match="does not exist"):
        measure_latency(Candidate(_net(4), tmp_path / "nope.onnx"), Candidate(_net(4)),
                        sample_shape=SAMPLE, spec=_spec(), device=CPU)
    # A file exported without a dynamic batch axis cannot time other batch sizes.
    fixed = tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_net(4), (torch.randn(2, *SAMPLE),), str(fixed), dynamo=False)
    c = Candidate(_net(4), fixed)
    with pytest.raises(InputError, match="fixed batch size 2"):
        measure_latency(c, c, sample_shape=SAMPLE, spec=_spec(engines=["onnxruntime"]),
                        device=CPU)


def test_fast_models_get_longer_blocks() -> None:
    net = _net(4)
    spec = _spec(engines=["torch"], batch_sizes=[1], rounds=2, runs_per_round=2,
                 min_block_ms=20.0)
    result = measure_latency(Candidate(net), Candidate(net), sample_shape=SAMPLE, spec=spec,
                             device=CPU)
    runs = result["engines"]["torch"]["1"]["baseline"]["runs"]
    assert runs > 2 * 2  # a sub-millisecond model is timed more than runs_per_round per block


class _Slow(nn.Module):
    """Sleeps ``seconds`` per call and counts its calls."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.calls = seconds, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.seconds)
        return x


def test_slow_models_get_shorter_blocks_and_less_warmup() -> None:
    a, b = _Slow(0.03).eval(), _Slow(0.03).eval()
    spec = _spec(engines=["torch"], batch_sizes=[1], rounds=2, runs_per_round=5, warmup=3,
                 min_block_ms=10.0, max_block_ms=50.0)
    result = measure_latency(Candidate(a), Candidate(b), sample_shape=SAMPLE, spec=spec,
                             device=CPU)
    assert result["engines"]["torch"]["1"]["baseline"]["runs"] == 2  # one per round
    # Per model: the untimed first call, one calibration call, then 2 rounds of 1 + 1.
    assert a.calls == b.calls == 6


def test_block_bounds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="min_block_ms"):
        ReportSpec(min_block_ms=500.0, max_block_ms=100.0)


def test_time_interleaved_rotates_every_runner_to_the_front() -> None:
    clock = _Clock()
    w = 1000.0
    runners = {n: clock.runner(n, [w, d] * 3) for n, d in (("A", 1), ("B", 2), ("C", 3))}
    times, orders = time_interleaved(runners, warmup=1, rounds=3, runs_per_round=1,
                                     timer=lambda: clock.now)
    assert orders == [("A", "B", "C"), ("B", "C", "A"), ("C", "A", "B")]
    assert "".join(clock.log) == "AABBCC" "BBCCAA" "CCAABB"
    assert times == {"A": [[1], [1], [1]], "B": [[2], [2], [2]], "C": [[3], [3], [3]]}


def test_compare_onnx_times_each_model_against_its_own_reference(
        pair: tuple[Candidate, Candidate]) -> None:
    wide, narrow = pair
    paths = {"wide": wide.onnx_path, "narrow": narrow.onnx_path,
             "wide_again": wide.onnx_path, "narrow_again": narrow.onnx_path}
    refs = {"narrow": "wide", "narrow_again": "wide_again"}
    r = compare_onnx(paths, reference=refs, sample_shape=SAMPLE, spec=_spec())
    assert r["threads"] == 1 and r["reference"] == refs
    for row in r["batches"].values():
        assert set(row) == set(paths)
        assert "speedup" not in row["wide"] and "speedup" not in row["wide_again"]
        for name in refs:
            assert row[name]["speedup_min"] <= row[name]["speedup"] <= row[name]["speedup_max"]
            assert row[name]["runs"] == 3 * 2
    with pytest.raises(InputError, match="reference 'missing'"):
        compare_onnx(paths, reference="missing", sample_shape=SAMPLE, spec=_spec())
