"""Activation importance of heads, FFN neurons and hidden channels (Minitron, arXiv 2407.14679).

Each unit's importance is the size of what it computes on the calibration samples, aggregated
as Minitron does: per sample the L2 norm over the (real) tokens of the sequence, then the mean
over the samples. A head's activation at a token is the L2 norm of its slice of the attention
output (the input of the output projection, before it mixes the heads), an FFN neuron's its
input to the FFN output layer, a hidden channel's its value in the normalised stream the block
reads (the input of the query and of the first FFN layer: the RMSNorm / LayerNorm outputs of a
pre-norm decoder), summed over the blocks, and for a decoder also in its final norm's output
(what the LM head reads; Minitron sums over every LayerNorm). The blocks are streamed one at a time
(:func:`~compress.pruning.calibration.stream_blocks`), so memory stays near one block's
activations.

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

__all__ = ["ActivationStats", "activation_stats", "per_sample_l2"]


def per_sample_l2(a: torch.Tensor, mark: torch.Tensor | None) -> torch.Tensor:
    """``(samples, units)``: the L2 norm over the sequence of ``a`` ``(samples, tokens,
    units)``, the tokens ``mark`` says are padding left out."""
    a = a.double()
    if mark is not None and mark.shape == a.shape[:2]:
        a = a * mark.to(a.device, a.dtype)[..., None]
    return a.pow(2).sum(dim=1).sqrt()


@dataclass
class ActivationStats:
    """Per block index: each head's and each FFN neuron's importance; the hidden channels'
    importance summed over the blocks; the number of samples the means are over."""

    heads: dict[int, torch.Tensor] = field(default_factory=dict)
    ffn: dict[int, torch.Tensor] = field(default_factory=dict)
    hidden: torch.Tensor | None = None
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
                     output: bool = False) -> Any:
            def hook(m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
                x = hidden_states_of(out) if output else args[0]
                total = per_sample_l2(per_token(x.detach()), mark[0]).sum(dim=0).cpu()
                sums[(index, key)] = sums.get((index, key), 0) + total
            return hook

        def head_norms(x: torch.Tensor) -> torch.Tensor:
            return x.float().unflatten(-1, (b.heads, b.head_dim)).norm(dim=-1)

        def same(x: torch.Tensor) -> torch.Tensor:
            return x.abs()

        hooks = [(b.out, hook_for("heads", head_norms)), (b.ffn_out, hook_for("ffn", same)),
                 (b.qkv[0], hook_for("hidden", same)), (b.ffn_in[0], hook_for("hidden", same))]
        if final_norm is not None and index == len(block_list) - 1:
            # The last block's output as the output layers read it: from the same run.
            hooks.append((module, hook_for("hidden", final_norm, output=True)))
        run_hooked(module, inputs, hooks, lambda tokens: mark.__setitem__(0, tokens))

    stream_blocks(model, batches, visit)
    n = max(stats.samples, 1)
    for (index, key), total in sums.items():
        if key == "hidden":
            stats.hidden = total / n if stats.hidden is None else stats.hidden + total / n
        else:
            getattr(stats, key)[index] = total / n
    return stats
