"""Depth pruning of transformers: which whole blocks to drop, bypassing them, dropping them.

A block's importance is how much it changes the hidden state it is given (ShortGPT's block
influence, arXiv 2403.03853, as Minitron ranks depth): ``1 - cos(input, output)`` per token,
averaged over the real tokens of the calibration batches, the blocks streamed one at a time
(:func:`~compress.pruning.calibration.stream_blocks`, so memory stays near one block's
activations). The least important blocks are dropped.

The proof's reference is the model run with those blocks bypassed (:func:`bypassed`: each
returns its input unchanged); the drop (:func:`drop_blocks_`) must reproduce it. Dropping
renumbers every ``layer_idx`` (the KV cache is indexed by it) and rewrites the config: the
layer count and the per-layer lists (``layer_types``, ``no_rope_layers``; Qwen's
``max_window_layers`` counts the kept layers below it). :func:`block_count` turns
``pruning.blocks`` into a count (``compress validate`` checks it against a local config too).

Example:
    >>> from torch import nn
    >>> stack = nn.ModuleList([nn.Identity(), nn.Linear(2, 2), nn.Identity()])
    >>> x = torch.ones(1, 2)
    >>> with bypassed([stack[1]]):
    ...     torch.equal(stack[1](x), x)
    True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from compress.errors import InputError
from compress.pruning.calibration import BlockInputs, stream_blocks

__all__ = ["block_importance", "block_count", "bypassed", "drop_blocks_", "PER_LAYER_LISTS"]

# Config lists with one entry per block.
PER_LAYER_LISTS = ("layer_types", "no_rope_layers")


def _hidden_in(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    # transformers blocks return the hidden states alone or first in a tuple.
    return hidden if isinstance(output, torch.Tensor) else (hidden, *output[1:])


def block_importance(model: nn.Module, batches: Sequence[torch.Tensor]) -> list[float]:
    """``1 - cos(block input, block output)`` of each block of ``model`` (compress's wrapper
    around a transformers model), averaged over the real tokens of ``batches``.

    Example:
        >>> block_importance(nn.Linear(2, 2), [torch.ones(1, 2)])  # no blocks: nothing to rank
        []
    """
    scores: list[float] = []

    def visit(index: int, block: nn.Module, inputs: BlockInputs) -> None:
        total, count = 0.0, 0
        outs = inputs.run(block)
        for a, k, out, mark in zip(inputs.args, inputs.kwargs, outs, inputs.tokens,
                                   strict=True):
            h = _hidden_in(a, k)
            cos = torch.nn.functional.cosine_similarity(h.float(), out.float(), dim=-1)
            if mark is not None and cos.shape == mark.shape:
                cos = cos[mark.to(cos.device)]
            total += float((1 - cos).sum())
            count += cos.numel()
        scores.append(total / max(count, 1))

    stream_blocks(model, batches, visit)
    return scores


@contextmanager
def bypassed(modules: Sequence[nn.Module]) -> Iterator[Any]:
    """Inside, each of ``modules`` (blocks) returns the hidden states it is given. Yields a
    function that ends the bypass early (before the blocks are dropped)."""

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
             output: Any) -> Any:
        return _with_hidden(output, _hidden_in(args, kwargs))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules]

    def release() -> None:
        for h in handles:
            h.remove()

    try:
        yield release
    finally:
        release()


def drop_blocks_(stack: nn.ModuleList, config: Any, drop: Sequence[int]) -> None:
    """Remove blocks ``drop`` (indices into ``stack``) and make the rest and ``config``
    consistent: ``layer_idx`` renumbered, layer count and per-layer lists rewritten."""
    gone = set(drop)
    kept = [i for i in range(len(stack)) if i not in gone]
    blocks = [stack[i] for i in kept]
    for _ in range(len(stack)):
        del stack[0]
    for new, block in enumerate(blocks):
        stack.append(block)
        for m in block.modules():  # the attention's cache index (and any block's own)
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = new
    layers = getattr(config, "num_hidden_layers", None)
    if layers is not None and layers == len(kept) + len(gone):
        config.num_hidden_layers = len(kept)
    for key in PER_LAYER_LISTS:
        value = getattr(config, key, None)
        if isinstance(value, list) and len(value) == len(kept) + len(gone):
            setattr(config, key, [value[i] for i in kept])
    window = getattr(config, "max_window_layers", None)
    if isinstance(window, int):
        config.max_window_layers = sum(1 for i in kept if i < window)


def block_count(blocks: int | float | None, n: int) -> int:
    """Blocks to remove by the end of the schedule: ``blocks`` as a count or a fraction of
    ``n``; :class:`InputError` when none would be left."""
    if blocks is None:
        return 0
    count = blocks if isinstance(blocks, int) else round(blocks * n)
    if count == 0:  # a fraction too small to remove even one block would silently do nothing
        raise InputError(f"pruning.blocks: {blocks} of the model's {n} blocks rounds to none; "
                         f"give at least {1 / n:.3g} or a count")
    if count >= n:
        raise InputError(f"pruning.blocks: {blocks} would remove all {n} blocks of the model; "
                         f"give at most {n - 1}")
    return count
