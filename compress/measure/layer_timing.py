"""Single layers timed alone on onnxruntime's CPU engine: the measurements of a latency table.

A convolution or linear layer is described by :class:`LayerShape` (its hyper-parameters and
the real input shape a forward hook saw); :func:`time_layers` builds a one-layer ONNX graph for
each requested ``(in, out)`` width, with the input at the timed batch size, and times all of
them together in interleaved rounds (order rotating, so drift hits all alike), keeping the
median. The graphs are written with ``onnx.helper`` rather than the exporter, whose tracing
costs seconds per graph; the weights are random (time does not depend on their values).

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Linear(8, 4))
    >>> shapes = capture_layers(net, torch.randn(1, 3, 8, 8))
    >>> shapes["0"].signature(3, 4)
    'conv|3>4|k3x3|s1x1|p1x1|d1x1|g1|b1|in8x8'
    >>> ms = time_layers([(shapes["0"], 3, 4)], batch=1, threads=1, rounds=1)
    >>> len(ms), ms[0] > 0
    (1, True)
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from compress.measure.latency import quiet_timing
from compress.measure.machine import session_options
from compress.measure.timing import Timer, time_interleaved

__all__ = ["LayerShape", "capture_layers", "layer_io_widths", "time_layers"]

_BLOCK_S = 0.02  # a timed block lasts about this long: short layers are not lost in noise


@dataclass(frozen=True)
class LayerShape:
    """What a layer's time depends on besides its widths: its kind, hyper-parameters and input
    shape (batch and channels excluded: ``spatial`` is H x W for a conv, the leading token
    dimensions for a linear layer)."""

    kind: str  # "conv" or "linear"
    in_width: int
    out_width: int
    spatial: tuple[int, ...]
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    bias: bool = True

    def groups_at(self, in_w: int, out_w: int) -> int:
        """Groups at other widths: a depthwise conv stays depthwise; others keep theirs where
        the widths allow it."""
        if self.groups > 1 and self.groups == self.in_width == self.out_width:
            return in_w
        return math.gcd(self.groups, math.gcd(in_w, out_w))

    def signature(self, in_w: int, out_w: int) -> str:
        """The cache key of this layer at widths ``in_w -> out_w`` (no name: equal layers of a
        model share one measurement)."""
        x = "x".join
        if self.kind == "linear":
            return f"linear|{in_w}>{out_w}|b{int(self.bias)}|in{x(map(str, self.spatial))}"
        return (f"conv|{in_w}>{out_w}|k{x(map(str, self.kernel))}|s{x(map(str, self.stride))}"
                f"|p{x(map(str, self.padding))}|d{x(map(str, self.dilation))}"
                f"|g{self.groups_at(in_w, out_w)}|b{int(self.bias)}|in{x(map(str, self.spatial))}")


def _shape_of(module: nn.Module, x: torch.Tensor) -> LayerShape | None:
    if isinstance(module, nn.Linear):
        return LayerShape("linear", module.in_features, module.out_features,
                          tuple(x.shape[1:-1]), bias=module.bias is not None)
    conv = module
    if not isinstance(conv, nn.modules.conv._ConvNd) or conv.transposed or \
            isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return None  # not timed: the table then leaves the layer out of the prediction
    return LayerShape("conv", conv.in_channels, conv.out_channels, tuple(x.shape[2:]),
                      tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding),
                      tuple(conv.dilation), conv.groups, conv.bias is not None)


def capture_layers(model: nn.Module, example: torch.Tensor) -> dict[str, LayerShape]:
    """The shape of every convolution and linear layer the model runs on ``example``, by name.

    Forward hooks see the real input shapes; the model runs once in eval mode, then gets its
    mode back. Layers run twice keep their first shape.
    """
    shapes: dict[str, LayerShape] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            def hook(m: nn.Module, args: tuple[torch.Tensor, ...], _out: object,
                     name: str = name) -> None:
                shape = _shape_of(m, args[0])
                if shape is not None:
                    shapes.setdefault(name, shape)
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return shapes


def layer_io_widths(model: nn.Module, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``(in, out)`` widths of the named layers as the model is now (after pruning)."""
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        m = modules[name]
        out[name] = ((m.in_features, m.out_features) if isinstance(m, nn.Linear)
                     else (m.in_channels, m.out_channels))
    return out


def _graph(shape: LayerShape, in_w: int, out_w: int, batch: int) -> tuple[bytes, np.ndarray]:
    """A one-layer ONNX model (serialised) and an input of the timed shape."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if shape.kind == "linear":
        x_shape = [batch, *shape.spatial, in_w]
        weight = rng.standard_normal((in_w, out_w), dtype=np.float32)
        node = helper.make_node("MatMul", ["x", "w"], ["mm" if shape.bias else "y"])
        nodes = [node] + ([helper.make_node("Add", ["mm", "b"], ["y"])] if shape.bias else [])
    else:
        groups = shape.groups_at(in_w, out_w)
        x_shape = [batch, in_w, *shape.spatial]
        weight = rng.standard_normal((out_w, in_w // groups, *shape.kernel), dtype=np.float32)
        inputs = ["x", "w", "b"] if shape.bias else ["x", "w"]
        nodes = [helper.make_node("Conv", inputs, ["y"], kernel_shape=list(shape.kernel),
                                  strides=list(shape.stride), pads=list(shape.padding) * 2,
                                  dilations=list(shape.dilation), group=groups)]
    inits = [numpy_helper.from_array(weight, "w")]
    if shape.bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(out_w, dtype=np.float32), "b"))
    symbolic = [f"d{i}" for i in range(len(x_shape))]  # onnxruntime infers the output shape
    graph = helper.make_graph(nodes, "layer",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, symbolic)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 8)  # readable by older onnxruntime builds too
    onnx.checker.check_model(model)
    return model.SerializeToString(), rng.standard_normal(x_shape, dtype=np.float32)


def time_layers(requests: Sequence[tuple[LayerShape, int, int]], *, batch: int, threads: int,
                rounds: int = 5, timer: Timer = time.perf_counter) -> list[float]:
    """Median milliseconds of each ``(shape, in, out)`` layer on onnxruntime's CPU engine.

    All layers are timed in the same interleaved rounds; each block repeats its layer for about
    20 ms (calibrated with the real clock on the slowest layer) after one untimed call.
    """
    import onnxruntime as ort

    if not requests:
        return []
    runners = {}
    with quiet_timing(threads):
        for i, (shape, in_w, out_w) in enumerate(requests):
            blob, x = _graph(shape, in_w, out_w, batch)
            sess = ort.InferenceSession(blob, sess_options=session_options(threads),
                                        providers=["CPUExecutionProvider"])
            runners[str(i)] = (lambda s=sess, feed={"x": x}: s.run(None, feed))
        slowest = 1e-9
        for run in runners.values():
            run()  # allocates shape-dependent buffers; never timed
            start = time.perf_counter()
            run()
            slowest = max(slowest, time.perf_counter() - start)
        per_block = max(1, min(50, math.ceil(_BLOCK_S / slowest)))
        times, _ = time_interleaved(runners, warmup=1, rounds=rounds, runs_per_round=per_block,
                                    timer=timer)
    return [1e3 * statistics.median(statistics.median(block) for block in times[str(i)])
            for i in range(len(requests))]
