"""Calibration: run a model block by block on calibration batches and record what its layers see.

A transformer's blocks (decoder or encoder layers) are run one at a time: the inputs of block 0
are captured once from the model's own forward (embeddings, attention masks, rotary position
embeddings: whatever the model passes its blocks), and block ``k + 1`` gets the outputs of
block ``k`` as it is after the caller has visited it (pruned, say). So block ``k`` is
calibrated on what the already pruned blocks ``0..k-1`` produce, and only one block's inputs
are held at a time: the hidden states of the calibration samples, plus the block itself.

* :func:`model_blocks`: a model's list of blocks (None for a model without a known layout);
* :func:`stream_blocks`: visit every block with its inputs, ``visit(index, block, inputs)``;
* :func:`record_inputs`: run one block (or a whole model) over its inputs with hooks that hand
  each named layer's input to a callback as a ``(tokens, features)`` matrix of real tokens
  (padding positions are left out), e.g. to sum per-channel activation statistics.
* :func:`run_hooked`: run one block over its inputs with given forward hooks in place.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> seen = {}
    >>> record_inputs(net, BlockInputs.of_batches([torch.ones(5, 4)]), {"2": net[2]},
    ...               lambda name, x: seen.setdefault(name, tuple(x.shape)))
    >>> seen
    {'2': (5, 3)}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["BlockInputs", "hidden_states_of", "model_blocks", "stream_blocks", "record_inputs",
           "real_tokens", "capture_inputs", "run_hooked"]


def model_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The blocks of a transformers model compress has a layout for (decoders, BERT-family
    encoders, ViT), in order; None for any other model (it is calibrated as one block)."""
    layout = getattr(model, "layout", None)
    hf = getattr(model, "hf", None)
    if layout is None or hf is None:
        return None
    stack = hf.base_model.get_submodule(layout.layers)
    return stack if isinstance(stack, nn.ModuleList) and len(stack) else None


def real_tokens(model: nn.Module, batch: torch.Tensor) -> torch.Tensor | None:
    """Which positions of a batch of token ids are real (not the model's padding id); None
    when all are (no padding id, or not token ids)."""
    pad = getattr(model, "pad_token_id", None)
    if pad is None or batch.is_floating_point() or batch.dim() != 2:
        return None
    return batch != pad


@dataclass
class BlockInputs:
    """What a block receives for each calibration batch: its positional and keyword arguments
    (the hidden states first), and the real-token mask of the batch (None: every position)."""

    args: list[tuple[Any, ...]]
    kwargs: list[dict[str, Any]]
    tokens: list[torch.Tensor | None]

    @classmethod
    def of_batches(cls, batches: Sequence[torch.Tensor],
                   tokens: Sequence[torch.Tensor | None] | None = None) -> BlockInputs:
        """A whole model's inputs: each batch as its one argument."""
        marks = list(tokens) if tokens is not None else [None] * len(batches)
        return cls([(b,) for b in batches], [{} for _ in batches], marks)

    def run(self, block: nn.Module) -> list[torch.Tensor]:
        """``block``'s output hidden states for every batch."""
        with torch.no_grad():
            return [hidden_states_of(block(*a, **k))
                    for a, k in zip(self.args, self.kwargs, strict=True)]

    def advanced(self, block: nn.Module) -> BlockInputs:
        """The next block's inputs: ``block``'s outputs in place of the hidden states."""
        outs = self.run(block)
        args, kwargs = [], []
        for a, k, out in zip(self.args, self.kwargs, outs, strict=True):
            if a:
                args.append((out, *a[1:]))
                kwargs.append(k)
            else:
                args.append(a)
                kwargs.append({**k, "hidden_states": out})
        return BlockInputs(args, kwargs, self.tokens)


def hidden_states_of(out: Any) -> torch.Tensor:
    """A block's output hidden states (transformers blocks return a tensor or a tuple)."""
    # transformers blocks return the hidden states alone or first in a tuple.
    return out if isinstance(out, torch.Tensor) else out[0]


class _Captured(Exception):
    """Raised by the capture hook: the rest of the forward is not needed."""


def capture_inputs(model: nn.Module, block: nn.Module, batches: Sequence[torch.Tensor],
                   tokens: Sequence[torch.Tensor | None]) -> BlockInputs:
    """``block``'s inputs for each batch, from ``model``'s own forward, stopped at ``block``."""
    args: list[tuple[Any, ...]] = []
    kwargs: list[dict[str, Any]] = []

    def hook(module: nn.Module, a: tuple[Any, ...], k: dict[str, Any]) -> None:
        args.append(a)
        # A KV cache (a decoder classifier makes one) would grow with every run of the block.
        kwargs.append({n: None if type(v).__name__.endswith("Cache") else v
                       for n, v in k.items()})
        raise _Captured

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    model(batch)
                except _Captured:
                    pass
    finally:
        handle.remove()
    assert len(args) == len(batches), "the block was not called once per batch"
    return BlockInputs(args, kwargs, list(tokens))


def stream_blocks(model: nn.Module, batches: Sequence[torch.Tensor],
                  visit: Callable[[int, nn.Module, BlockInputs], None], *,
                  carry: bool = True) -> bool:
    """Call ``visit(index, block, inputs)`` for each of ``model``'s blocks in order, in eval
    mode without gradients; ``inputs`` are computed with the blocks before as ``visit`` left
    them. Returns False (visiting nothing) for a model without blocks.

    ``carry`` (the default) runs each visited block once more to make the next one's inputs;
    ``carry=False`` captures every block's inputs from a whole forward of the model instead
    (the same numbers, at quadratic cost: the reference the streaming is tested against).
    """
    stack = model_blocks(model)
    if stack is None:
        return False
    tokens = [real_tokens(model, b) for b in batches]
    was_training = model.training
    model.eval()
    try:
        inputs = capture_inputs(model, stack[0], batches, tokens)
        for index, block in enumerate(stack):
            if index and not carry:
                inputs = capture_inputs(model, block, batches, tokens)
            visit(index, block, inputs)
            if carry and index + 1 < len(stack):
                inputs = inputs.advanced(block)
    finally:
        model.train(was_training)
    return True


def record_inputs(block: nn.Module, inputs: BlockInputs, layers: dict[str, nn.Module],
                  on_input: Callable[[str, torch.Tensor], None]) -> None:
    """Run ``block`` over ``inputs`` with a hook on each of ``layers`` (name -> module inside
    ``block``) that calls ``on_input(name, x)``: ``x`` is the layer's input as a float matrix
    of shape ``(real tokens, features)``, batch after batch in order."""
    current: list[torch.Tensor | None] = [None]

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            x = args[0].detach()
            mark = current[0]
            if mark is not None and x.shape[:2] == mark.shape:
                x = x[mark.to(x.device)]
            on_input(name, x.reshape(-1, x.shape[-1]).float())
        return hook

    run_hooked(block, inputs, [(m, hook_for(n)) for n, m in layers.items()],
               lambda mark: current.__setitem__(0, mark))


def run_hooked(block: nn.Module, inputs: BlockInputs,
               hooks: Sequence[tuple[nn.Module, Callable[..., None]]],
               on_batch: Callable[[torch.Tensor | None], None]) -> None:
    """Run ``block`` over ``inputs`` without gradients, each forward hook of ``hooks``
    (module, hook) in place; ``on_batch(real-token mask)`` is called before each batch."""
    handles = [m.register_forward_hook(h) for m, h in hooks]
    try:
        with torch.no_grad():
            for a, k, mark in zip(inputs.args, inputs.kwargs, inputs.tokens, strict=True):
                on_batch(mark)
                block(*a, **k)
    finally:
        for h in handles:
            h.remove()
