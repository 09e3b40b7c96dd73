"""Where the mask kinds keep their masks: one bit per weight, the weights zeroed in place.

A pruned weight is set to exactly zero in the parameter itself, so the forward, the state dict
and every export read the pruned model with nothing to fold, and the model costs no more memory
than the dense one. The keep mask is stored beside it packed eight weights to a byte (a bool
mask would add a quarter of the model, a float mask all of it). While the masks are installed,
a gradient hook zeroes the pruned entries of each gradient (an optimizer made after the step,
as every fine-tune makes one, then never moves them: SGD with momentum or weight decay, Adam
and AdamW all leave a weight whose gradient, moments and value are zero at zero), and a hook
after every optimizer step writes the zeros back (an optimizer kept across steps carries
momentum into weights a later step prunes). The forward therefore always reads the pruned
weights, as a mask multiplied in would give; the mask kinds' proofs check the zeros, bit for
bit, at every step and when the masks are removed.

Example:
    >>> lin = nn.Linear(4, 2)
    >>> store = MaskStore()
    >>> store.install_("lin", lin, "weight", torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1]]).bool())
    >>> store.pruned("lin"), int((lin.weight == 0).sum())
    (3, 3)
    >>> lin(torch.ones(1, 4)).sum().backward()
    >>> (lin.weight.grad == 0).sum().item()
    3
    >>> store.remove_all_(); store.keep("lin") is None
    True
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

__all__ = ["pack_bits", "unpack_bits", "PackedMask", "MaskStore"]

_BITS = 8


def pack_bits(keep: torch.Tensor) -> torch.Tensor:
    """``keep`` (bool, any shape) as ``uint8`` bytes, eight entries each, little-endian.

    Example:
        >>> pack_bits(torch.tensor([True, False, True, True, False, False, False, False, True]))
        tensor([13,  1], dtype=torch.uint8)
    """
    flat = keep.reshape(-1).to(torch.uint8)
    pad = -flat.numel() % _BITS
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor([1 << i for i in range(_BITS)], dtype=torch.uint8, device=flat.device)
    return (flat.view(-1, _BITS) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(bits: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The bool tensor of ``shape`` that :func:`pack_bits` packed into ``bits``.

    Example:
        >>> keep = torch.rand(3, 5) > 0.5
        >>> torch.equal(unpack_bits(pack_bits(keep), keep.shape), keep)
        True
    """
    shifts = torch.arange(_BITS, dtype=torch.uint8, device=bits.device)
    flat = ((bits.unsqueeze(1) >> shifts) & 1).view(-1)
    return flat[: torch.Size(shape).numel()].view(shape).bool()


@dataclass
class PackedMask:
    """A keep mask of ``shape`` as bits, with its number of kept entries."""

    bits: torch.Tensor
    shape: torch.Size
    kept: int

    @classmethod
    def of(cls, keep: torch.Tensor) -> PackedMask:
        return cls(pack_bits(keep), keep.shape, int(keep.sum()))

    def unpack(self, device: torch.device | None = None) -> torch.Tensor:
        if device is not None and self.bits.device != device:
            self.bits = self.bits.to(device)  # the model moved: follow it once
        return unpack_bits(self.bits, self.shape)


@dataclass
class MaskStore:
    """The installed masks by key, with the gradient hooks that keep pruned weights at zero.

    A parameter that does not require gradients when its mask is installed (a frozen model
    pruned one-shot) gets no hook: nothing moves it. Should it be unfrozen and trained while
    masked, the mask kinds' finalize proof finds its pruned weights moved and fails the run.
    No hook is registered on a module, so a deep copy of the model is a plain model.
    """

    masks: dict[str, PackedMask] = field(default_factory=dict)
    _params: dict[str, torch.Tensor] = field(default_factory=dict)
    _hooks: dict[str, Any] = field(default_factory=dict)
    _after_steps: Any = None

    def install_(self, key: str, module: nn.Module, param: str, keep: torch.Tensor) -> None:
        """Zero ``module.param`` where ``keep`` is False (in place) and keep ``keep``."""
        weight = getattr(module, param)
        assert keep.shape == weight.shape and keep.dtype == torch.bool, (key, keep.shape)
        with torch.no_grad():
            weight.masked_fill_(~keep.to(weight.device), 0.0)  # +0.0: a zero bit pattern
        self.masks[key] = PackedMask.of(keep.to(weight.device))
        self._params[key] = weight
        if self._after_steps is None:  # weakly: a forgotten store does not stay alive
            ref = weakref.ref(self)
            self._after_steps = register_optimizer_step_post_hook(
                lambda *_: (store := ref()) is not None and store.zero_())
        if key not in self._hooks and weight.requires_grad:
            # The current mask at each backward pass: a later step replaces it.
            self._hooks[key] = weight.register_hook(
                lambda grad: grad.masked_fill(~self.masks[key].unpack(grad.device), 0.0))

    def zero_(self) -> None:
        """Write the zeros back where a weight is pruned (after an optimizer step)."""
        with torch.no_grad():
            for key, weight in self._params.items():
                weight.masked_fill_(~self.masks[key].unpack(weight.device), 0.0)

    def keep(self, key: str, device: torch.device | None = None) -> torch.Tensor | None:
        """The bool keep mask of ``key`` (None: not masked)."""
        mask = self.masks.get(key)
        return None if mask is None else mask.unpack(device)

    def pruned(self, key: str) -> int:
        mask = self.masks.get(key)
        return 0 if mask is None else mask.shape.numel() - mask.kept

    def remove_all_(self) -> None:
        """Forget every mask and hook; the zeros stay in the weights."""
        for handle in [*self._hooks.values(), self._after_steps]:
            if handle is not None:
                handle.remove()
        self.masks.clear()
        self._params.clear()
        self._hooks.clear()
        self._after_steps = None
