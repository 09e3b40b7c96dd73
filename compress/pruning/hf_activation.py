"""Activation importance of heads, FFN neurons and hidden channels (Minitron, arXiv 2407.14679).

Each head's and FFN neuron's importance is the size of what it computes on the calibration
samples, aggregated as Minitron does: per sample the L2 norm over the (real) tokens of the
sequence, then the mean over the samples. A head's activation at a token is the L2 norm of its
slice of the attention output (the input of the output projection, before it mixes the heads),
an FFN neuron's its input to the FFN output layer.

A hidden channel is read by many layers, so its activation alone does not say what removing it
costs. :func:`hidden_importance` weighs it: for every layer that reads the stream (a block's
query, key and value layers and first FFN layers, a decoder's LM head or score layer), the
channel's activation at that layer's input (the same aggregation) times the norm of the layer's
weight column for the channel, summed over the layers. Per sample, that product is exactly the
L2 norm over the tokens of the channel's contribution to the layer's output. The weights are
read when the channels are ranked, after the same step has zeroed its heads and neurons, so a
channel that only the removed units read counts for little. (Minitron ranks hidden channels by
the normalised activations alone, which cannot see which of their readers the step keeps, nor
tell a large activation read by small weights from the same function stored the other way
round.) A classifier's square head layer is not counted: its input is not recorded. The blocks
are streamed one at a time (:func:`~compress.pruning.calibration.stream_blocks`), so memory
stays near one block's activations.

Example:
    >>> a = torch.tensor([[[3.0, 1.0], [4.0, 1.0]], [[0.0, 2.0], [5.0, 2.0]]])  # 2 samples
    >>> per_sample_l2(a, None).float()  # per sample, over its 2 tokens (float64 inside)
    tensor([[5.0000, 1.4142],
            [5.0000, 2.8284]])
    >>> per_sample_l2(a, torch.tensor([[True, True], [True, False]]))[1].tolist()  # no padding
    [0.0, 2.0]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compress.pruning.calibration import (
    BlockInputs,
    hidden_states_of,
    run_hooked,
    stream_blocks,
)
from compress.pruning.hf_hidden import output_norm
from compress.pruning.hf_layout import Block
from compress.pruning.hf_surgery import dims

__all__ = ["ActivationStats", "activation_stats", "hidden_importance", "per_sample_l2"]


def per_sample_l2(a: torch.Tensor, mark: torch.Tensor | None) -> torch.Tensor:
    """``(samples, units)``: the L2 norm over the sequence of ``a`` ``(samples, tokens,
    units)``, the tokens ``mark`` says are padding left out."""
    a = a.double()
    if mark is not None and mark.shape == a.shape[:2]:
        a = a * mark.to(a.device, a.dtype)[..., None]
    return a.pow(2).sum(dim=1).sqrt()


@dataclass
class ActivationStats:
    """Per block index: each head's and each FFN neuron's importance. ``reads``: each hidden
    channel's activation where the stream is read, keyed ``(block index, "attention" | "ffn in")``
    (the input of the block's query and first FFN layers) and ``(-1, "output")`` (a decoder's
    final norm output, what its output layers read). The number of samples the means are over."""

    heads: dict[int, torch.Tensor] = field(default_factory=dict)
    ffn: dict[int, torch.Tensor] = field(default_factory=dict)
    reads: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    samples: int = 0


def activation_stats(model: nn.Module, block_list: Sequence[Block],
                     batches: Sequence[torch.Tensor]) -> ActivationStats:
    """The :class:`ActivationStats` of ``model`` (compress's wrapper of a transformers model
    whose blocks are ``block_list``) on the calibration ``batches``."""
    final_norm = output_norm(model.hf, model.layout)
    stats = ActivationStats(samples=sum(len(b) for b in batches))
    sums: dict[tuple[int, str], torch.Tensor] = {}

    def visit(index: int, module: nn.Module, inputs: BlockInputs) -> None:
        b = block_list[index]
        mark: list[torch.Tensor | None] = [None]

        def hook_for(key: str, per_token: Callable[[torch.Tensor], torch.Tensor], *,
                     output: bool = False, at: int = index) -> Any:
            def hook(m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
                x = hidden_states_of(out) if output else args[0]
                total = per_sample_l2(per_token(x.detach()), mark[0]).sum(dim=0).cpu()
                sums[(at, key)] = sums.get((at, key), 0) + total
            return hook

        def head_norms(x: torch.Tensor) -> torch.Tensor:
            return x.float().unflatten(-1, (b.heads, b.head_dim)).norm(dim=-1)

        def same(x: torch.Tensor) -> torch.Tensor:
            return x.abs()

        hooks = [(b.out, hook_for("heads", head_norms)), (b.ffn_out, hook_for("ffn", same)),
                 (b.qkv[0], hook_for("attention", same)), (b.ffn_in[0], hook_for("ffn in", same))]
        if final_norm is not None and index == len(block_list) - 1:
            # The last block's output as the output layers read it: from the same run.
            hooks.append((module, hook_for("output", final_norm, output=True, at=-1)))
        run_hooked(module, inputs, hooks, lambda tokens: mark.__setitem__(0, tokens))

    stream_blocks(model, batches, visit)
    n = max(stats.samples, 1)
    for (index, key), total in sums.items():
        if key in ("heads", "ffn"):
            getattr(stats, key)[index] = total / n
        else:
            stats.reads[(index, key)] = total / n
    return stats


def hidden_importance(stats: ActivationStats, block_list: Sequence[Block],
                      outputs: Sequence[nn.Module]) -> torch.Tensor:
    """Each hidden channel's importance (float64): over the query, key, value and first FFN
    layers of ``block_list`` (the blocks kept) and the ``outputs`` layers, the channel's
    activation at the layer's input (``stats.reads``) times the norm of the layer's weight
    column for the channel, as the weights are now.

    Example:
        >>> layer = nn.Linear(2, 3, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[3.0, 0.0], [4.0, 1.0], [0.0, 0.0]]))
        >>> stats = ActivationStats(reads={(-1, "output"): torch.tensor([1.0, 10.0])})
        >>> hidden_importance(stats, [], [layer]).tolist()  # column norms 5 and 1
        [5.0, 10.0]
    """
    readers = [((b.index, key), layers) for b in block_list
               for key, layers in (("attention", b.qkv), ("ffn in", b.ffn_in))]
    readers += [((-1, "output"), outputs)] if outputs else []
    total = torch.zeros((), dtype=torch.float64)
    for key, layers in readers:
        assert key in stats.reads, f"no activation statistic for {key}"
        for m in layers:
            column = m.weight.detach().double().pow(2).sum(dim=dims(m)[0]).sqrt().cpu()
            total = total + stats.reads[key].double() * column
    return total
