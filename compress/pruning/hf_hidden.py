"""The hidden size (residual stream) of encoder transformers: where it lives, how to cut it.

A hidden channel is one column of every embedding table, one entry of every norm over the
stream, one input column of every layer reading the stream (q, k, v, FFN input) and one output
row of every layer writing it (attention output, FFN output). A sequence-classification head's
square layer (BERT's pooler, RoBERTa's ``classifier.dense``, DistilBERT's ``pre_classifier``)
is ``hidden x hidden`` in the config, so its output width is cut to the same size, by its own
importance.

Zeroing a channel does not make it absent: LayerNorm still averages over it. The proof of a
hidden cut therefore takes its reference with every norm computing its statistics over the kept
channels only (:func:`masked_norms`, through :func:`compress.pruning.norms.restricted_norms`),
which is what the cut model computes.

Example:
    >>> from compress.pruning.hf_layout import LAYOUTS
    >>> LAYOUTS.get("bert").hidden.config_key
    'hidden_size'
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compress.pruning.norms import restricted_norms

__all__ = ["HiddenLayout", "Stream", "stream", "zero_hidden_", "cut_hidden_", "masked_norms"]


@dataclass(frozen=True)
class HiddenLayout:
    """Where the hidden size lives in one architecture, apart from the blocks' projections."""

    embeddings: tuple[str, ...]       # nn.Embedding tables, from the base model
    norms: tuple[str, ...]            # norms over the stream outside the blocks, from the base
    block_norms: tuple[str, ...]      # norms over the stream, relative to one block
    config_key: str = "hidden_size"
    # Sequence-classification heads, (square layer, output layer) from the top model; the
    # first pair that exists is used. "{base}" is the base model's attribute name.
    heads: tuple[tuple[str, str], ...] = (("classifier.dense", "classifier.out_proj"),
                                          ("pre_classifier", "classifier"),
                                          ("{base}.pooler.dense", "classifier"))


@dataclass
class Stream:
    """The modules of one model that carry the hidden size, resolved."""

    embeddings: list[nn.Embedding]
    norms: list[nn.Module]
    readers: list[nn.Module]   # input columns are hidden channels
    writers: list[nn.Module]   # output rows are hidden channels
    square: nn.Module          # head layer hidden -> hidden (its output is cut separately)
    head_out: nn.Module        # head layer reading the square layer's output

    @property
    def width(self) -> int:
        return self.embeddings[0].weight.shape[1]

    def slices(self) -> list[tuple[nn.Module, int]]:
        """``(module, dim)``: every weight slice one hidden channel owns (for importance)."""
        return ([(e, 1) for e in self.embeddings] + [(n, 0) for n in self.norms]
                + [(m, _in_dim(m)) for m in self.readers + [self.square]]
                + [(m, 0) for m in self.writers])


def _in_dim(module: nn.Module) -> int:
    assert isinstance(module, nn.Linear), "hidden-size pruning handles nn.Linear layers only"
    return 1


def stream(hf: nn.Module, layout: Any, block_list: list[Any]) -> Stream:
    """Resolve ``layout.hidden`` on the transformers model ``hf`` (a sequence classifier)."""
    hidden: HiddenLayout = layout.hidden
    base = hf.base_model
    stack = base.get_submodule(layout.layers)
    norms = [base.get_submodule(p) for p in hidden.norms]
    norms += [block.get_submodule(p) for block in stack for p in hidden.block_norms]
    readers = [m for b in block_list for m in b.qkv + b.ffn_in]
    writers = [m for b in block_list for m in (b.out, b.ffn_out)]
    for square, out in hidden.heads:
        square = square.format(base=hf.base_model_prefix)
        try:
            pair = hf.get_submodule(square), hf.get_submodule(out)
        except AttributeError:
            continue
        break
    else:
        raise AssertionError(f"no classification head among {hidden.heads}")
    return Stream([base.get_submodule(p) for p in hidden.embeddings], norms, readers, writers,
                  *pair)


@torch.no_grad()
def zero_hidden_(s: Stream, removed: torch.Tensor, head_removed: torch.Tensor) -> None:
    """Zero ``removed`` hidden channels everywhere and the head's ``head_removed`` outputs."""
    for e in s.embeddings:
        e.weight.index_fill_(1, removed, 0.0)
    for n in s.norms:
        n.weight.index_fill_(0, removed, 0.0)
        if getattr(n, "bias", None) is not None:
            n.bias.index_fill_(0, removed, 0.0)
    for m in s.readers + [s.square]:
        m.weight.index_fill_(1, removed, 0.0)
    for m in s.writers:
        m.weight.index_fill_(0, removed, 0.0)
        if m.bias is not None:
            m.bias.index_fill_(0, removed, 0.0)
    s.square.weight.index_fill_(0, head_removed, 0.0)
    if s.square.bias is not None:
        s.square.bias.index_fill_(0, head_removed, 0.0)
    s.head_out.weight.index_fill_(1, head_removed, 0.0)


def _keep(param: nn.Parameter, dim: int, idx: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(param.data.index_select(dim, idx.to(param.device)).clone(),
                        requires_grad=param.requires_grad)


@torch.no_grad()
def cut_hidden_(s: Stream, keep: torch.Tensor, head_keep: torch.Tensor) -> None:
    """Keep only hidden channels ``keep`` and the head's square-layer outputs ``head_keep``."""
    for e in s.embeddings:
        e.weight = _keep(e.weight, 1, keep)
        e.embedding_dim = len(keep)
    for n in s.norms:
        n.weight = _keep(n.weight, 0, keep)
        if getattr(n, "bias", None) is not None:
            n.bias = _keep(n.bias, 0, keep)
        if hasattr(n, "normalized_shape"):
            n.normalized_shape = (len(keep),)
    for m in s.readers + [s.square]:
        m.weight = _keep(m.weight, 1, keep)
        m.in_features = len(keep)
    for m in s.writers + [s.square]:
        rows = head_keep if m is s.square else keep
        m.weight = _keep(m.weight, 0, rows)
        if m.bias is not None:
            m.bias = _keep(m.bias, 0, rows)
        m.out_features = len(rows)
    s.head_out.weight = _keep(s.head_out.weight, 1, head_keep)
    s.head_out.in_features = len(head_keep)


@contextmanager
def masked_norms(s: Stream, keep: torch.Tensor) -> Iterator[Callable[[], None]]:
    """Inside, every norm over the stream normalises over the ``keep`` channels only.

    That is what the cut model computes; the other channels, zeroed upstream, stay zero. Yields
    a function that ends the masking early (before the cut itself).
    """
    kept = set(keep.tolist())
    removed = {n: [i for i in range(s.width) if i not in kept] for n in s.norms}
    with ExitStack() as stack:
        stack.enter_context(restricted_norms(removed, {}))
        yield stack.close
