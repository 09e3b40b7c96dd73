"""The hidden size (residual stream) of transformers: where it lives, how to cut it.

A hidden channel is one column of every embedding table, one entry of every norm over the
stream (LayerNorm, or the decoders' RMSNorm, the final norm included), one input column of
every layer reading the stream (q, k, v, FFN input, a decoder's LM head or score layer) and
one output row of every layer writing it (attention output, FFN output). An LM head tied to
the token embedding stays tied: it is the same table. A sequence-classification head's square
layer (BERT's pooler, RoBERTa's ``classifier.dense``, DistilBERT's ``pre_classifier``) is
``hidden x hidden`` in the config, so its output width is cut to the same size, by its own
importance. Nothing else moves: a decoder's head size (RoPE's rotation), its query and
key/value head counts stay as they are.

Zeroing a channel does not make it absent: a norm still averages over it. The proof of a
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

from compress.pruning.hf_surgery import dims, keep_in_, keep_out_, zero_in_, zero_out_
from compress.pruning.norms import restricted_norms

__all__ = ["HiddenLayout", "Stream", "stream", "output_norm", "output_layers", "zero_hidden_",
           "cut_hidden_", "masked_norms"]


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
    # Decoders: layers of the top model reading the stream's last state (LM head, score), the
    # ones that exist; with these there is no square head layer.
    outputs: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ("sequence-classification",)  # where the output is not hidden


# Llama, Qwen2/3, Mistral: pre-norm blocks of RMSNorms, a final norm, an LM head or score layer.
DECODER_HIDDEN = HiddenLayout(embeddings=("embed_tokens",), norms=("norm",),
                              block_norms=("input_layernorm", "post_attention_layernorm"),
                              heads=(), outputs=("lm_head", "score"),
                              tasks=("causal-lm", "sequence-classification"))
GPT2_HIDDEN = HiddenLayout(embeddings=("wte", "wpe"), norms=("ln_f",), block_norms=("ln_1", "ln_2"),
                           config_key="n_embd", heads=(), outputs=("lm_head", "score"),
                           tasks=("causal-lm", "sequence-classification"))


@dataclass
class Stream:
    """The modules of one model that carry the hidden size, resolved."""

    embeddings: list[nn.Embedding]
    norms: list[nn.Module]
    readers: list[nn.Module]   # input columns are hidden channels
    writers: list[nn.Module]   # output rows are hidden channels
    square: nn.Module | None   # head layer hidden -> hidden (its output is cut separately)
    head_out: nn.Module | None  # head layer reading the square layer's output

    @property
    def width(self) -> int:
        return self.embeddings[0].weight.shape[1]

    def slices(self) -> list[tuple[nn.Module, int]]:
        """``(module, dim)``: every weight slice one hidden channel owns (for importance); a
        tied LM head counts once, as its embedding."""
        tables = {id(e.weight) for e in self.embeddings}
        readers = [m for m in self._readers() if id(m.weight) not in tables]
        return ([(e, 1) for e in self.embeddings] + [(n, 0) for n in self.norms]
                + [(m, dims(m)[1]) for m in readers] + [(m, dims(m)[0]) for m in self.writers])

    def _readers(self) -> list[nn.Module]:
        return self.readers + ([self.square] if self.square is not None else [])


def output_norm(hf: nn.Module, layout: Any) -> nn.Module | None:
    """A decoder's norm between its last block and its output layers (LM head, score), or
    None (no hidden layout, or a model whose output layers read no such norm)."""
    hidden: HiddenLayout | None = layout.hidden
    if hidden is None or not hidden.outputs or not hidden.norms:
        return None
    return hf.base_model.get_submodule(hidden.norms[-1])


def output_layers(hf: nn.Module, layout: Any) -> list[nn.Module]:
    """A decoder's layers reading the stream's last state (LM head, score) that ``hf`` has;
    none for an encoder (its square head layer is :class:`Stream`'s ``square``)."""
    hidden: HiddenLayout | None = layout.hidden
    return [hf.get_submodule(p) for p in (hidden.outputs if hidden else ()) if _has(hf, p)]


def stream(hf: nn.Module, layout: Any, block_list: list[Any]) -> Stream:
    """Resolve ``layout.hidden`` on the transformers model ``hf`` over the blocks
    ``block_list`` (a sequence classifier, or a decoder with its LM head or score layer)."""
    hidden: HiddenLayout = layout.hidden
    base = hf.base_model
    norms = [base.get_submodule(p) for p in hidden.norms]
    norms += [b.module.get_submodule(p) for b in block_list for p in hidden.block_norms]
    readers = [m for b in block_list for m in b.qkv + b.ffn_in]
    readers += output_layers(hf, layout)
    writers = [m for b in block_list for m in (b.out, b.ffn_out)]
    pair: tuple[nn.Module | None, nn.Module | None] = (None, None)
    for square, out in hidden.heads:
        square = square.format(base=hf.base_model_prefix)
        if _has(hf, square) and _has(hf, out):
            pair = hf.get_submodule(square), hf.get_submodule(out)
            break
    else:
        assert not hidden.heads, f"no classification head among {hidden.heads}"
    return Stream([base.get_submodule(p) for p in hidden.embeddings], norms, readers, writers,
                  *pair)


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


@torch.no_grad()
def zero_hidden_(s: Stream, removed: torch.Tensor, head_removed: torch.Tensor) -> None:
    """Zero ``removed`` hidden channels everywhere and the head's ``head_removed`` outputs."""
    for e in s.embeddings:
        e.weight.index_fill_(1, removed, 0.0)
    for n in s.norms:
        n.weight.index_fill_(0, removed, 0.0)
        if getattr(n, "bias", None) is not None:
            n.bias.index_fill_(0, removed, 0.0)
    for m in s._readers():
        zero_in_(m, removed)
    for m in s.writers:
        zero_out_(m, removed)
    if s.square is not None:
        zero_out_(s.square, head_removed)
        zero_in_(s.head_out, head_removed)


def _keep(param: nn.Parameter, dim: int, idx: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(param.data.index_select(dim, idx.to(param.device)).clone(),
                        requires_grad=param.requires_grad)


@torch.no_grad()
def cut_hidden_(s: Stream, keep: torch.Tensor, head_keep: torch.Tensor) -> None:
    """Keep only hidden channels ``keep`` and the head's square-layer outputs ``head_keep``."""
    tied = [(m, e) for m in s.readers for e in s.embeddings if m.weight is e.weight]
    for e in s.embeddings:
        e.weight = _keep(e.weight, 1, keep)
        e.embedding_dim = len(keep)
    for n in s.norms:
        n.weight = _keep(n.weight, 0, keep)
        if getattr(n, "bias", None) is not None:
            n.bias = _keep(n.bias, 0, keep)
        if hasattr(n, "normalized_shape"):
            n.normalized_shape = (len(keep),)
    for m in s._readers():
        if not any(m is t for t, _ in tied):
            keep_in_(m, keep)
    for m, e in tied:  # an LM head tied to its embedding stays tied: the same table
        m.weight = e.weight
        m.in_features = len(keep)
    for m in s.writers:
        keep_out_(m, keep)
    if s.square is not None:
        keep_out_(s.square, head_keep)
        keep_in_(s.head_out, head_keep)


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
