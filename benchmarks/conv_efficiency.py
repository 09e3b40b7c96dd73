"""How fast onnxruntime's CPU convolutions run per multiply-accumulate, by channel width.

    python benchmarks/conv_efficiency.py          # ResNet-56's 3x3 conv shapes, batch 64
    python benchmarks/conv_efficiency.py --tiny   # smoke test

Each 3x3 convolution (+ bias + ReLU) of the CIFAR ResNets' stages, unpruned and with its input
or output width halved, is exported alone and timed with one onnxruntime thread (the thread's
CPU time, interleaved rounds) at ``ORT_ENABLE_ALL``. GMAC/s shows why halving a narrow
convolution's MACs does not halve its time: onnxruntime's blocked (NCHWc) kernels use SIMD
blocks of 8 channels (AVX2; 16 with AVX-512) and several output blocks per pass, so a layer
with 8 or 16 output channels runs at a fraction of the rate of a 64-channel one.

Writes benchmarks/results/conv_efficiency.{json,md}.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

from _common import add_common_args, finish, fmt_table, make_parser, start

log = logging.getLogger("bench")

# (in channels, out channels, spatial size): ResNet-56's block convs, unpruned and halved.
SHAPES = [(16, 16, 32), (16, 8, 32), (8, 16, 32), (8, 8, 32),
          (32, 32, 16), (32, 16, 16), (16, 32, 16), (16, 16, 16),
          (64, 64, 8), (64, 32, 8), (32, 64, 8), (32, 32, 8)]


def _session(cin: int, cout: int, hw: int, work: Any) -> Any:
    import onnxruntime as ort
    import torch

    from compress.export.onnx import export_onnx
    from compress.measure.machine import session_options

    net = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.ReLU()).eval()
    path = export_onnx(net, work / f"conv_{cin}_{cout}_{hw}.onnx", torch.randn(2, cin, hw, hw))
    return ort.InferenceSession(str(path), sess_options=session_options(1),
                                providers=["CPUExecutionProvider"])


def render_result(r: dict[str, Any]) -> str:
    """The table from a result file (files before ``rounds`` was recorded do not say it)."""
    rows = [[f"{c['in']} → {c['out']}", f"{c['hw']}×{c['hw']}", f"{c['macs'] / 1e6:.0f} M",
             f"{c['median_s'] * 1e3:.2f}", f"{c['gmac_per_s']:.1f}"] for c in r["convs"]]
    rounds = f" of {r['rounds']} interleaved rounds" if "rounds" in r else \
        " of interleaved rounds"
    return (f"One 3x3 convolution + ReLU, batch {r['convs'][0]['batch']}, one onnxruntime "
            f"thread (CPU time, median{rounds}), ORT_ENABLE_ALL.\n\n"
            + fmt_table(["channels in → out", "spatial", "MACs", "ms", "GMAC/s"], rows))


def main() -> None:
    parser = make_parser(__doc__, tiny="Smoke test (two shapes, batch 2).")
    parser.add_argument("--rounds", type=int, default=15)
    add_common_args(parser)
    args = parser.parse_args()
    start(args)
    import numpy as np

    shapes = SHAPES[:2] if args.tiny else SHAPES
    batch, rounds = (2, 2) if args.tiny else (64, args.rounds)
    work = args.work / ("convs-tiny" if args.tiny else "convs")
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    runs = {}
    for cin, cout, hw in shapes:
        sess = _session(cin, cout, hw, work)
        x = rng.standard_normal((batch, cin, hw, hw), dtype=np.float32)
        sess.run(None, {"input": x})
        runs[(cin, cout, hw)] = (sess, x)
    times: dict[tuple[int, int, int], list[float]] = {s: [] for s in shapes}
    for _ in range(rounds):  # interleaved: every shape once per round
        for shape, (sess, x) in runs.items():
            t = time.thread_time()
            sess.run(None, {"input": x})
            sess.run(None, {"input": x})
            times[shape].append((time.thread_time() - t) / 2)
    cells = []
    for (cin, cout, hw), ts in times.items():
        med = statistics.median(ts)
        macs = batch * cin * cout * 9 * hw * hw
        cells.append({"in": cin, "out": cout, "hw": hw, "batch": batch, "macs": macs,
                      "median_s": med, "gmac_per_s": macs / med / 1e9})
    payload = {"rounds": rounds, "convs": cells}
    finish("conv_efficiency", args.tiny, payload, render_result(payload), args.out)


if __name__ == "__main__":
    main()
