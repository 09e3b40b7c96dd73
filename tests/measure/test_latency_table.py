"""Latency tables: layers captured with their real shapes, timed on onnxruntime (a fake clock
where the value matters), cached on disk per key and measured afresh when the key changes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from compress.errors import InputError
from compress.measure import latency_table as lt
from compress.measure.layer_timing import LayerShape, capture_layers, layer_io_widths, time_layers


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 1, bias=False),
                         nn.Flatten(1), nn.Linear(8 * 4 * 4, 5)).eval()


def test_capture_sees_real_input_shapes() -> None:
    shapes = capture_layers(_net(), torch.zeros(1, 3, 8, 8))
    assert sorted(shapes) == ["0", "2", "3", "5"]
    assert shapes["0"].spatial == (8, 8) and shapes["2"].spatial == (4, 4)
    assert shapes["2"].signature(8, 8) == "conv|8>8|k3x3|s1x1|p1x1|d1x1|g8|b1|in4x4"
    assert shapes["2"].groups_at(4, 4) == 4  # depthwise stays depthwise when pruned
    assert shapes["3"].signature(6, 2).endswith("|g1|b0|in4x4")
    assert shapes["5"].signature(128, 5) == "linear|128>5|b1|in"
    assert layer_io_widths(_net(), ["0", "5"]) == {"0": (3, 8), "5": (128, 5)}


def test_layers_time_on_onnxruntime_with_an_injected_clock() -> None:
    shapes = capture_layers(_net(), torch.zeros(1, 3, 8, 8))
    clock = itertools.count(step=0.004)  # every timed call lasts 4 ms on this clock
    reqs = [(shapes["0"], 3, 8), (shapes["2"], 4, 4), (shapes["5"], 128, 3)]
    ms = time_layers(reqs, batch=2, threads=1, rounds=2, timer=lambda: float(next(clock)))
    assert ms == pytest.approx([4.0, 4.0, 4.0])


def _counting(calls: list[int]):
    def measure(reqs):
        calls.append(len(reqs))
        return [float(i * o) for _, i, o in reqs]
    return measure


def test_table_is_cached_reused_and_invalidated_by_its_key(tmp_path: Path) -> None:
    shape = LayerShape("conv", 8, 16, (4, 4), (3, 3), (1, 1), (1, 1), (1, 1))
    calls: list[int] = []
    key = lt.table_key(threads=1, batch=4)
    assert {"cpu", "cpu_capability", "onnxruntime", "threads", "batch", "compress"} <= set(key)
    table, path = lt.cached_table(key, _counting(calls), tmp_path)
    assert table.times([(shape, 8, 16), (shape, 8, 8), (shape, 8, 16)]) == [128.0, 64.0, 128.0]
    assert calls == [2]  # the duplicate is measured once
    table.save(path)
    again, same = lt.cached_table(key, _counting(calls), tmp_path)
    assert same == path and again.times([(shape, 8, 8)]) == [64.0] and calls == [2]
    for changed in (lt.table_key(threads=2, batch=4), lt.table_key(threads=1, batch=8),
                    {**key, "onnxruntime": "0.0.0"}, {**key, "cpu_capability": "other"}):
        fresh, other = lt.cached_table(changed, _counting(calls), tmp_path)
        assert other != path and fresh.entries == {}
        fresh.times([(shape, 8, 8)])
    assert calls == [2, 1, 1, 1, 1]
    # A cache file holding another key under this key's name is measured over, not trusted.
    path.write_text(json.dumps({**json.loads(path.read_text()), "key": {"batch": 99}}))
    assert lt.cached_table(key, _counting(calls), tmp_path)[0].entries == {}
    path.write_text("{not json")
    assert lt.cached_table(key, _counting(calls), tmp_path)[0].entries == {}


def test_cache_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path / "c"))
    assert lt.cache_dir() == tmp_path / "c" / "latency"
    monkeypatch.delenv("COMPRESS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert lt.cache_dir() == tmp_path / "compress" / "latency"


def test_frozen_table_never_measures(tmp_path: Path) -> None:
    shape = LayerShape("linear", 8, 8, ())
    table = lt.LatencyTable({"batch": 1}, measure=_counting([]))
    table.times([(shape, 8, 8)])
    table.save(tmp_path / "t.json")
    frozen = lt.read_table(tmp_path / "t.json")
    assert frozen.frozen and frozen.times([(shape, 8, 8)]) == [64.0]
    with pytest.raises(InputError, match=r"t\.json' has no timing for layer linear\|8>4"):
        frozen.times([(shape, 8, 4)])


@pytest.mark.parametrize("text", ["[]", '{"format": 1, "key": {}, "entries": {"a": -1}}',
                                  '{"format": 7, "key": {}, "entries": {}}'])
def test_a_file_that_is_no_table_is_one_sentence(tmp_path: Path, text: str) -> None:
    (tmp_path / "t.json").write_text(text)
    with pytest.raises(InputError) as err:
        lt.read_table(tmp_path / "t.json")
    assert "t.json" in str(err.value) and "\n" not in str(err.value)


def test_staircase_lists_the_widths_where_time_drops() -> None:
    # A kernel working in blocks of 8 channels: the time is a staircase with steps at 8, 16.
    shape = LayerShape("conv", 8, 24, (4, 4), (1, 1), (1, 1), (0, 0), (1, 1))
    table = lt.LatencyTable({}, measure=lambda reqs: [float(-(-o // 8)) for _, _, o in reqs])
    assert table.staircase(shape, steps=24) == [[8, 1.0], [16, 2.0], [24, 3.0]]
