"""Where a measurement ran, and the onnxruntime settings it ran with: CPU and its vector
capability, cores, threads, versions, device and execution providers.

Example:
    >>> sorted(environment(1, torch.device("cpu")))[:3]
    ['cpu', 'cpu_capability', 'device']
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = ["session_options", "ort_providers", "environment"]


def session_options(threads: int, optimization: str = "all") -> ort.SessionOptions:
    """onnxruntime options for timing: fixed threads, full optimisation, no spinning.

    ``optimization`` other than ``all`` is for comparisons only: ``all`` adds the blocked
    (NCHWc) convolution layout, which is what makes CPU convolutions fast.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[optimization]
    # Spinning workers of one session steal cycles from the other when timed back to back.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def ort_providers(device: torch.device) -> list[Any]:
    """CUDA first only when torch sees a GPU and the run is on it (the ORT list lies)."""
    if device.type == "cuda" and torch.cuda.is_available():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}),
                "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int, device: torch.device,
                providers: list[str] | None = None) -> dict:
    """Where a measurement ran: CPU, cores, threads, versions, device, ORT providers."""
    import onnxruntime as ort

    # The vector unit decides kernel choices (onnxruntime blocks NCHWc by 8 channels with AVX2,
    # by 16 with AVX-512), so latency ratios are only comparable between equal capabilities.
    return {"cpu": _cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "logical_cores": os.cpu_count(), "threads": threads,
            "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": ort.__version__, "platform": sys.platform, "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "providers": providers}
