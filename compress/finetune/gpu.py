"""The fast path of fine-tuning: mixed precision, memory layout, cuDNN autotuning, compilation.

Everything here is driven by the recipe's ``finetune`` section and by whether *torch* sees a GPU
(never by onnxruntime's provider list, which names CUDA even on machines without one). On the
CPU every helper is a no-op except ``finetune.compile``, so CPU runs stay exactly as they were.

- ``finetune.amp``: ``auto`` is bf16 autocast on a CUDA GPU that supports bf16 and fp16 (with a
  gradient scaler) on one that does not; ``bf16``/``fp16`` force one; ``off`` trains in fp32.
- ``finetune.channels_last``: 4-D weights of conv models in channels-last layout on CUDA while
  fine-tuning (tensor-core convolutions want NHWC); put back to the default layout afterwards,
  so pruning, checkpoints and export never see a strided weight.
- ``finetune.compile``: the training forward goes through :func:`torch.compile`.
- :func:`cuda_settings`: ``torch.backends.cudnn.benchmark`` for the length of a run on CUDA.

Example:
    >>> spec = FinetuneSpec(amp="auto")
    >>> amp_dtype(torch.device("cpu"), spec) is None  # fp32 on the CPU
    True
    >>> grad_scaler(torch.device("cpu"), spec).is_enabled()
    False
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from compress.errors import InputError
from compress.recipe.stages import FinetuneSpec

__all__ = ["amp_dtype", "autocast", "grad_scaler", "channels_last_", "compiled", "cuda_settings"]


def amp_dtype(device: torch.device, spec: FinetuneSpec) -> torch.dtype | None:
    """The autocast dtype of a fine-tune on ``device``, or None for fp32.

    Raises :class:`InputError` for ``bf16``/``fp16`` off CUDA: the fine-tune would run in a
    precision the recipe did not ask for on hardware it was not written for.
    """
    if spec.amp in ("bf16", "fp16") and device.type != "cuda":
        raise InputError(f"finetune.amp: {spec.amp} needs a CUDA device; use auto or off on "
                         f"the CPU")
    if device.type != "cuda" or spec.amp == "off":
        return None
    if spec.amp == "fp16":
        return torch.float16
    if spec.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16  # auto on a GPU without bf16 (before Ampere)


def autocast(device: torch.device, spec: FinetuneSpec) -> torch.autocast:
    """The autocast context of one training forward (disabled for fp32)."""
    dtype = amp_dtype(device, spec)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16,
                          enabled=dtype is not None)


def grad_scaler(device: torch.device, spec: FinetuneSpec) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 (bf16 has fp32's range and needs none).

    Disabled, ``scale`` returns the loss unchanged and ``step`` is ``optimizer.step()``.
    """
    enabled = amp_dtype(device, spec) == torch.float16
    return torch.amp.GradScaler("cuda", enabled=enabled)


def _has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def channels_last_(model: nn.Module, device: torch.device,
                   spec: FinetuneSpec) -> Callable[[], None]:
    """Put conv weights in channels-last layout on CUDA; return the call that puts them back.

    For the length of a fine-tune only: torch-pruning slices weights and safetensors refuses
    non-contiguous tensors, so nothing outside fine-tuning should see the strided layout.
    A no-op (and a no-op undo) on the CPU, with ``channels_last: false`` or without 2-D convs.
    """
    if not (spec.channels_last and device.type == "cuda" and _has_conv2d(model)):
        return lambda: None
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return lambda: model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]


def compiled(net: nn.Module, spec: FinetuneSpec) -> nn.Module:
    """``net`` through :func:`torch.compile` when ``finetune.compile`` is on, else ``net``.

    Called once per fine-tune: pruning changed the shapes since the last one, so the old
    graphs are dropped first (otherwise every step adds recompilations until dynamo's limit
    silently falls back to eager). The compiled module shares ``net``'s parameters.
    """
    if not spec.compile:
        return net
    torch._dynamo.reset()
    return torch.compile(net)  # type: ignore[return-value]


@contextlib.contextmanager
def cuda_settings(device: torch.device) -> Iterator[None]:
    """cuDNN autotuning on CUDA for the length of a run; the previous setting comes back.

    Pruning changes the shapes once per step, so the few autotuning passes per new shape are
    paid back by every batch after them.
    """
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous
